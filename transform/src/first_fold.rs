//! The deriver's first fold (its first step, and `--rebuild`): every bronze
//! event into the store, with memory bounded and without one store round
//! trip per event.
//!
//! Folding event by event into the store ([`Fold::apply`] on a store-backed
//! fold) reads an entity's state from disk for nearly every event once the
//! entities outnumber memory, and writes each back many times: at ICB scale
//! (42M events) that ran for hours. Here the events are first spread over
//! bucket files in the scratch directory by the key of the entity each is
//! folded into ([`Fold::home`]); then each bucket is folded whole in memory
//! and its states are written to the store once, in key order.
//!
//! - Buckets are ranges of the key's leading hex digits (pseudonyms are
//!   uniformly spread), so each bucket's states are one run of the store's
//!   keys and its writes do not rewrite the rest of the store.
//! - Events homed on appointments, slots, follow-ups and A&G requests are
//!   folded first. What they add to referrals (first attendances, A&G
//!   conversions) is written, as partial referral states, to the bucket of
//!   the pathway; the referral buckets are folded last and merge them in. A
//!   fold is a union of facts, so the states equal those of one fold over
//!   every event in any order.
//! - The number of buckets comes from the bronze row count, so a bucket
//!   holds about [`EVENTS_PER_BUCKET`] events.
//!
//! Bucket files are unnamed temporary files: they go when the fold ends or
//! the process dies.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use snap::read::FrameDecoder;
use snap::write::FrameEncoder;

use pathflow_schemas::{Event, PseudoId};

use crate::fold::{Fold, Home, ReferralState};
use crate::spill::SpillError;

/// Events folded in memory at a time: each bucket's share of the bronze
/// rows. Folded state is a few hundred bytes per event, so a bucket's fold
/// stays well under 200 MB.
pub const EVENTS_PER_BUCKET: u64 = 250_000;

/// The most buckets of each kind (two files each, open at once).
const MAX_BUCKETS: usize = 256;

/// A record in a bucket file.
const EVENT: u8 = 0;
const PARTIAL_REFERRAL: u8 = 1;

/// How many buckets of each kind `events` bronze rows need.
pub fn buckets_for(events: u64) -> usize {
    let n = events.div_ceil(EVENTS_PER_BUCKET).max(1);
    usize::try_from(n).unwrap_or(MAX_BUCKETS).min(MAX_BUCKETS)
}

/// The bucket of `id` among `n`: its leading four hex digits scaled to `n`,
/// so buckets are key ranges. Any other id still gets a bucket (its digits
/// read as 0); only the spread suffers, never the result.
fn bucket_of(id: &PseudoId, n: usize) -> usize {
    let digits = id.as_str().as_bytes();
    let leading = (0..4).fold(0usize, |v, i| {
        let d = digits
            .get(i)
            .and_then(|b| char::from(*b).to_digit(16))
            .unwrap_or(0);
        v * 16 + d as usize
    });
    (leading * n) >> 16
}

/// One bucket: an unnamed file, written, then read once. Snappy-framed:
/// events as JSON shrink about fourfold, so the buckets take about as much
/// disk as the bronze table.
struct Bucket {
    out: FrameEncoder<File>,
}

/// The events of one first fold, spread over buckets, and the fold of them.
pub struct FirstFold {
    scratch: String,
    /// Buckets of events homed on appointments, slots, follow-ups and A&G.
    others: Vec<Bucket>,
    /// Buckets of events homed on pathways, and the partial referral states.
    pathways: Vec<Bucket>,
    json: Vec<u8>,
}

impl FirstFold {
    /// `n` buckets of each kind, as files in `scratch`.
    pub fn create(scratch: &Path, n: usize) -> Result<Self, SpillError> {
        let failed = |e: std::io::Error| SpillError {
            path: scratch.display().to_string(),
            reason: format!(
                "cannot create a bucket file of the first fold: {e}; set [derive] scratch_dir to a writable local directory with room for about the size of the bronze table"
            ),
        };
        let buckets = || -> Result<Vec<Bucket>, SpillError> {
            (0..n.max(1))
                .map(|_| {
                    let file = tempfile::tempfile_in(scratch).map_err(failed)?;
                    Ok(Bucket {
                        out: FrameEncoder::new(file),
                    })
                })
                .collect()
        };
        Ok(FirstFold {
            scratch: scratch.display().to_string(),
            others: buckets()?,
            pathways: buckets()?,
            json: Vec::with_capacity(1024),
        })
    }

    /// Puts `event` in the bucket of its home entity.
    pub fn push(&mut self, event: &Event) -> Result<(), SpillError> {
        self.json.clear();
        serde_json::to_writer(&mut self.json, event)
            .map_err(|e| error(&self.scratch, "encoding", e))?;
        let (buckets, id) = match Fold::home(event) {
            Home::Pathway(id) => (&mut self.pathways, id),
            Home::Other(id) => (&mut self.others, id),
        };
        let n = buckets.len();
        let bucket = &mut buckets[bucket_of(id, n)];
        write_record(&mut bucket.out, EVENT, &self.json)
            .map_err(|e| error(&self.scratch, "writing", e))
    }

    /// Folds every bucket into `into` (a fold holding none of these
    /// entities yet), writing its store after each bucket.
    pub fn fold_into(mut self, into: &mut Fold) -> Result<(), SpillError> {
        let others = std::mem::take(&mut self.others);
        for bucket in others {
            let mut fold = Fold::new();
            self.read(bucket, &mut fold)?;
            // What these events add to referrals goes with the pathway.
            for partial in fold.take_referrals() {
                let bytes = postcard::to_stdvec(&partial)
                    .map_err(|e| error(&self.scratch, "encoding", e))?;
                let n = self.pathways.len();
                let bucket = &mut self.pathways[bucket_of(partial.pathway_id(), n)];
                write_record(&mut bucket.out, PARTIAL_REFERRAL, &bytes)
                    .map_err(|e| error(&self.scratch, "writing", e))?;
            }
            fold.move_into(into);
            into.flush()?;
        }
        let pathways = std::mem::take(&mut self.pathways);
        for bucket in pathways {
            let mut fold = Fold::new();
            self.read(bucket, &mut fold)?;
            fold.move_into(into);
            into.flush()?;
        }
        Ok(())
    }

    /// Folds one bucket's records into `fold`.
    fn read(&self, bucket: Bucket, fold: &mut Fold) -> Result<(), SpillError> {
        let mut file = bucket
            .out
            .into_inner()
            .map_err(|e| error(&self.scratch, "writing", e.error()))?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| error(&self.scratch, "reading", e))?;
        let mut input = BufReader::with_capacity(64 * 1024, FrameDecoder::new(file));
        let mut bytes = Vec::with_capacity(1024);
        while let Some(kind) =
            read_record(&mut input, &mut bytes).map_err(|e| error(&self.scratch, "reading", e))?
        {
            match kind {
                EVENT => {
                    let event: Event = serde_json::from_slice(&bytes)
                        .map_err(|e| error(&self.scratch, "decoding", e))?;
                    fold.apply(&event);
                }
                PARTIAL_REFERRAL => {
                    let partial: ReferralState = postcard::from_bytes(&bytes)
                        .map_err(|e| error(&self.scratch, "decoding", e))?;
                    fold.merge_referral(partial);
                }
                other => {
                    return Err(error(
                        &self.scratch,
                        "reading",
                        format!("unknown record kind {other}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn error(scratch: &str, doing: &str, e: impl std::fmt::Display) -> SpillError {
    SpillError {
        path: scratch.to_string(),
        reason: format!("{doing} a bucket file of the first fold: {e}"),
    }
}

fn write_record(out: &mut impl Write, kind: u8, bytes: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| std::io::Error::other("a record of more than 4 GiB"))?;
    out.write_all(&[kind])?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(bytes)
}

/// The next record's kind, its bytes in `bytes`; `None` at the end.
fn read_record(input: &mut impl Read, bytes: &mut Vec<u8>) -> std::io::Result<Option<u8>> {
    let mut head = [0u8; 5];
    match input.read_exact(&mut head[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    input.read_exact(&mut head[1..])?;
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    bytes.resize(len, 0);
    input.read_exact(bytes)?;
    Ok(Some(head[0]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spill::Store;

    /// A small simulated ICB's events.
    fn simulated_events() -> Vec<Event> {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("sim");
        let mut cfg = pathflow_simulate::SimConfig::new(out.clone());
        cfg.population = 3_000;
        cfg.weeks = 8;
        cfg.run_in_weeks = 8;
        pathflow_simulate::run(&cfg, &|_| {}).unwrap();
        let recorded_at = chrono::DateTime::parse_from_rfc3339("2026-06-01T00:00:00Z")
            .unwrap()
            .to_utc();
        pathflow_ingest::simulated::events(&out, "test", recorded_at).unwrap()
    }

    fn id(hex: &str) -> PseudoId {
        PseudoId::parse(&format!("{hex:0<32}")).unwrap()
    }

    #[test]
    fn buckets_are_key_ranges_and_their_number_follows_the_row_count() {
        assert_eq!(bucket_of(&id("0000"), 4), 0);
        assert_eq!(bucket_of(&id("3fff"), 4), 0);
        assert_eq!(bucket_of(&id("4000"), 4), 1);
        assert_eq!(bucket_of(&id("ffff"), 4), 3);
        assert_eq!(bucket_of(&id("ffff"), 1), 0);
        assert_eq!(buckets_for(0), 1);
        assert_eq!(buckets_for(EVENTS_PER_BUCKET), 1);
        assert_eq!(buckets_for(EVENTS_PER_BUCKET + 1), 2);
        assert_eq!(buckets_for(u64::MAX), MAX_BUCKETS);
    }

    /// The bucketed fold into a store gives the states of a plain fold of
    /// the same events, cross-entity facts (first attendances, A&G
    /// conversions) included, whatever the number of buckets.
    #[test]
    fn a_bucketed_fold_equals_a_plain_fold() {
        let events = simulated_events();
        let mut plain = Fold::new();
        for e in &events {
            plain.apply(e);
        }
        assert!(
            plain
                .referrals()
                .iter()
                .any(|r| r.first_attendance().is_some()),
            "the sample has first attendances to carry across buckets"
        );
        for n in [1, 3, 16] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::create(dir.path()).unwrap();
            let mut into = Fold::on(&store);
            let mut first = FirstFold::create(dir.path(), n).unwrap();
            for e in &events {
                first.push(e).unwrap();
            }
            first.fold_into(&mut into).unwrap();
            assert_eq!(into.referrals(), plain.referrals(), "{n} buckets");
            assert_eq!(into.appointments(), plain.appointments(), "{n} buckets");
            assert_eq!(into.slots(), plain.slots(), "{n} buckets");
            assert_eq!(into.followups(), plain.followups(), "{n} buckets");
            assert_eq!(
                into.advice_requests(),
                plain.advice_requests(),
                "{n} buckets"
            );
            assert!(store.failure().is_none());
        }
    }
}
