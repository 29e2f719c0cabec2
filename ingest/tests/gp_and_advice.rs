//! The GP appointment book (`gp/appointments.csv`) and the e-RS Advice &
//! Guidance extract (`ers/advice_and_guidance.csv`) from `pathflow simulate`,
//! read as a connector would: every record is accounted for, the injected bad
//! records (and only they) are rejected with file, line and field, opted-out
//! patients vanish, re-reading gives the same event ids, nothing identifiable
//! survives, the events count what the CSV shows, and conversions join the
//! referrals they became.

use std::collections::{BTreeMap, HashMap, HashSet};

use pathflow_ingest::sources::advice::AdviceAndGuidance;
use pathflow_ingest::sources::gp_appointments::GpAppointments;
use pathflow_ingest::sources::pas_referrals::PasReferrals;
use pathflow_ingest::sources::{CsvFormat, Outcome};
use pathflow_schemas::event::{Event, Payload};
use pathflow_schemas::{EventType, PseudoId};

mod common;
use common::{Outcomes, Sim, leaks, output_values, rows};

const GP: &str = "gp/appointments.csv";
const ADVICE: &str = "ers/advice_and_guidance.csv";
const REFERRALS: &str = "pas/R9A/referrals.csv";

impl Sim {
    /// The rows of `file` that must become events: neither broken nor opted out.
    fn valid_rows(&self, file: &str) -> Vec<HashMap<String, String>> {
        let bad = self.rejectable_lines(file);
        rows(self, file)
            .into_iter()
            .filter(|(line, row)| !bad.contains(line) && !self.row_opted_out(row))
            .map(|(_, row)| row)
            .collect()
    }
}

/// What [`check_extract`] is told about one file.
struct Extract<'a> {
    file: &'a str,
    feed: &'a str,
    /// The event types an accepted record may start with.
    first: &'a [EventType],
    /// Columns holding identifiers (or free text) that must not survive.
    identifiers: &'a [&'a str],
}

/// The checks every extract passes: accounting, rejections, ids and privacy.
fn check_extract<F: CsvFormat>(sim: &Sim, x: &Extract<'_>) -> Outcomes {
    let cx = sim.cx(x.feed);
    let outcomes = sim.read::<F>(x.file, &cx);

    // Every data line is accounted for: read = accepted + rejected + opted out.
    let text = sim.text(x.file);
    let lines: Vec<&str> = text.lines().collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(outcomes.len(), lines.len() - 1);
    let (mut accepted, mut rejected, mut opted_out) = (0, BTreeMap::new(), 0);
    for (loc, outcome) in &outcomes {
        match outcome {
            Outcome::Events(events) => {
                assert!(
                    x.first.contains(&events[0].event_type()),
                    "line {}",
                    loc.line
                );
                accepted += 1;
            }
            Outcome::Rejected(r) => {
                assert_eq!(
                    (r.location.file.as_str(), r.location.line),
                    (x.file, loc.line)
                );
                rejected.insert(loc.line, r.error.field.clone());
            }
            Outcome::OptedOut => opted_out += 1,
        }
    }
    assert_eq!(accepted + rejected.len() + opted_out, outcomes.len());
    assert!(accepted > 0);
    assert!(opted_out > 0, "some patients are on the opt-out list");

    // Rejected are exactly the injected bad records, naming the broken field,
    // bar duplicated rows (valid, deduplicated by id) and records of opted-out
    // patients: those are dropped before any other field is read, so nothing
    // of theirs reaches the dead letters or quarantine. A stray quote breaks
    // the row itself, and a bad check digit leaves no NHS number to look up.
    let bad = sim.bad_records(x.file);
    let expected: BTreeMap<u64, String> = bad
        .iter()
        .filter(|(line, kind, _)| match kind.as_str() {
            "duplicated_row" => false,
            "broken_quoting" | "bad_check_digit" => true,
            _ => !sim.opted_out(&header, lines[*line as usize - 1]),
        })
        .map(|(line, kind, field)| {
            let field = if kind == "broken_quoting" {
                "(row)".to_string()
            } else {
                field.clone()
            };
            (*line, field)
        })
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(rejected, expected, "rejected lines and fields");

    // Re-reading the same file yields exactly the same event ids; the two
    // copies of a duplicated row give the same ids, and no other two facts share one.
    let ids = |outcomes: &Outcomes| -> Vec<Vec<String>> {
        outcomes
            .iter()
            .map(|(_, o)| match o {
                Outcome::Events(e) => e.iter().map(|e| e.envelope.event_id.to_string()).collect(),
                _ => Vec::new(),
            })
            .collect()
    };
    let first = ids(&outcomes);
    assert_eq!(first, ids(&sim.read::<F>(x.file, &cx)));
    let second_copies: HashSet<usize> = bad
        .iter()
        .filter(|(_, kind, _)| kind == "duplicated_row")
        // Outcome i is line i + 2; the answer key names the second copy.
        .map(|(line, _, _)| *line as usize - 2)
        .collect();
    assert!(!second_copies.is_empty());
    let repeated = second_copies
        .iter()
        .filter(|&&i| {
            assert_eq!(first[i], first[i - 1], "duplicated row at line {}", i + 2);
            !first[i].is_empty()
        })
        .count();
    assert!(repeated > 0, "no duplicated row of a kept patient");
    let kept: Vec<&String> = first
        .iter()
        .enumerate()
        .filter(|(i, _)| !second_copies.contains(i))
        .flat_map(|(_, ids)| ids)
        .collect();
    let distinct: HashSet<&String> = kept.iter().copied().collect();
    assert_eq!(distinct.len(), kept.len(), "two facts share an event id");

    // Privacy: no raw identifier of the input appears in any event or rejection,
    // neither as a whole JSON value nor inside one. Dates of birth are checked
    // when they cannot also be an event's own date (events here are after 2000).
    // Anything of five characters or more counts; shorter values are not identifiers.
    let mut identifiers = HashSet::new();
    for line in &lines[1..] {
        let fields: Vec<&str> = line.split(',').collect();
        for name in x.identifiers {
            let i = header.iter().position(|h| h == name).unwrap();
            let Some(v) = fields.get(i).filter(|v| v.len() >= 5) else {
                continue;
            };
            if *name != "date_of_birth" || v.as_bytes()[..2] == *b"19" {
                identifiers.insert(v.to_string());
            }
        }
    }
    for name in x.identifiers {
        let i = header.iter().position(|h| h == name).unwrap();
        assert!(
            lines[1..]
                .iter()
                .any(|l| l.split(',').nth(i).is_some_and(|v| identifiers.contains(v))),
            "no {name} to look for"
        );
    }
    let values = output_values(&outcomes);
    let leaked = leaks(&identifiers, &values);
    assert!(
        leaked.is_empty(),
        "identifiers found in output values, e.g. {leaked:?}"
    );
    outcomes
}

/// Every event of the accepted records.
fn events(outcomes: &Outcomes) -> impl Iterator<Item = &Event> {
    outcomes.iter().flat_map(|(_, o)| match o {
        Outcome::Events(e) => e.as_slice(),
        _ => &[],
    })
}

/// How many distinct events of `event_type` the accepted records give.
fn distinct_events(outcomes: &Outcomes, event_type: EventType) -> usize {
    events(outcomes)
        .filter(|e| e.event_type() == event_type)
        .map(|e| &e.envelope.event_id)
        .collect::<HashSet<_>>()
        .len()
}

/// How many distinct `key`s the rows matching `keep` have.
fn distinct_rows(
    rows: &[HashMap<String, String>],
    keep: impl Fn(&HashMap<String, String>) -> bool,
    key: impl Fn(&HashMap<String, String>) -> String,
) -> usize {
    rows.iter()
        .filter(|r| keep(r))
        .map(key)
        .collect::<HashSet<_>>()
        .len()
}

#[test]
fn gp_appointment_book_becomes_capacity_bookings_and_outcomes() {
    let sim = Sim::run("gp-and-advice", 0.02);
    let outcomes = check_extract::<GpAppointments>(
        &sim,
        &Extract {
            file: GP,
            feed: "gp:csv:appointments",
            first: &[EventType::SlotPublished],
            identifiers: &[
                "appointment_id",
                "slot_id",
                "nhs_number",
                "date_of_birth",
                "postcode",
            ],
        },
    );

    // What a GP capacity dashboard counts: as many slots, bookings, attendances,
    // missed and cancelled appointments as the CSV's valid rows show.
    let valid = sim.valid_rows(GP);
    let slot = |r: &HashMap<String, String>| format!("{}|{}", r["practice_code"], r["slot_id"]);
    let appointment =
        |r: &HashMap<String, String>| format!("{}|{}", r["practice_code"], r["appointment_id"]);
    let with_status =
        |status: &'static str| move |r: &HashMap<String, String>| r["status"] == status;
    let counts = [
        (
            EventType::SlotPublished,
            distinct_rows(&valid, |_| true, slot),
        ),
        (
            EventType::AppointmentBooked,
            distinct_rows(&valid, |r| r["status"] != "Available", appointment),
        ),
        (
            EventType::AppointmentAttended,
            distinct_rows(&valid, with_status("Attended"), appointment),
        ),
        (
            EventType::AppointmentDidNotAttend,
            distinct_rows(&valid, with_status("DNA"), appointment),
        ),
        (
            EventType::AppointmentCancelled,
            distinct_rows(
                &valid,
                |r| r["status"].starts_with("Cancelled"),
                appointment,
            ),
        ),
    ];
    for (event_type, in_csv) in counts {
        assert!(in_csv > 0, "no {event_type:?} rows");
        assert_eq!(
            distinct_events(&outcomes, event_type),
            in_csv,
            "{event_type:?}"
        );
    }

    // Unbooked slots are accepted without any patient, and the practice is on every event.
    assert!(valid.iter().any(|r| r["status"] == "Available"));
    for e in events(&outcomes) {
        assert!(e.envelope.practice.is_some(), "{e:?}");
        assert_eq!(e.envelope.provider, None);
    }
}

#[test]
fn advice_and_guidance_becomes_requests_responses_and_conversions() {
    // The file has about a hundred rows; a high rate puts every kind of bad record in it.
    let sim = Sim::run("gp-and-advice", 0.2);
    let outcomes = check_extract::<AdviceAndGuidance>(
        &sim,
        &Extract {
            file: ADVICE,
            feed: "ers:advice",
            first: &[EventType::AdviceRequested],
            identifiers: &[
                "ag_request_id",
                "nhs_number",
                "date_of_birth",
                "postcode",
                "converted_ubrn",
                "clinical_question",
            ],
        },
    );

    let valid = sim.valid_rows(ADVICE);
    let request = |r: &HashMap<String, String>| r["ag_request_id"].clone();
    let counts = [
        (
            EventType::AdviceRequested,
            distinct_rows(&valid, |_| true, request),
        ),
        (
            EventType::AdviceResponded,
            distinct_rows(&valid, |r| !r["responded_at"].is_empty(), request),
        ),
        (
            EventType::AdviceConverted,
            distinct_rows(&valid, |r| !r["converted_ubrn"].is_empty(), request),
        ),
    ];
    for (event_type, in_csv) in counts {
        assert!(in_csv > 0, "no {event_type:?} rows");
        assert_eq!(
            distinct_events(&outcomes, event_type),
            in_csv,
            "{event_type:?}"
        );
    }

    // A conversion names the pathway that the PAS referral extract derives
    // from the same UBRN, and that referral names the request it came from;
    // only a rejected referral record can leave a conversion unmatched.
    let referrals = sim.read::<PasReferrals>(REFERRALS, &sim.cx("pas:r9a:referrals"));
    let from_advice: HashMap<&PseudoId, Option<&PseudoId>> = events(&referrals)
        .filter_map(|e| match &e.payload {
            Payload::ReferralCreated(r) => Some((&r.pathway_id, r.from_advice.as_ref())),
            _ => None,
        })
        .collect();
    let (mut joined, mut unmatched) = (0, 0);
    for e in events(&outcomes) {
        if let Payload::AdviceConverted(c) = &e.payload {
            match from_advice.get(&c.pathway_id) {
                Some(advice) => {
                    assert_eq!(*advice, Some(&c.advice_id), "pathway {}", c.pathway_id);
                    joined += 1;
                }
                None => unmatched += 1,
            }
        }
    }
    let rejected_referrals = referrals
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Rejected(_)))
        .count();
    assert!(joined > 0);
    assert!(
        unmatched <= rejected_referrals,
        "{unmatched} conversions have no referral"
    );
}
