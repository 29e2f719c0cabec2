//! The PAS referral extract from `pathflow simulate`, read as a connector
//! would: every record is accounted for, the injected bad records (and only
//! they) are rejected with file, line and field, opted-out patients vanish,
//! re-reading gives the same event ids, and nothing identifiable survives.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use chrono::Utc;
use pathflow_ingest::pseudonymise::Pseudonymiser;
use pathflow_ingest::reference::{DeprivationLookup, OptOutList};
use pathflow_ingest::sources::pas_referrals::PasReferrals;
use pathflow_ingest::sources::{Context, Outcome, read_csv};
use pathflow_schemas::{EventType, SourceName};
use pathflow_simulate::SimConfig;

mod common;
use common::{leaks, output_values};

#[test]
fn referral_extract_becomes_events_rejections_and_opt_outs() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = SimConfig::new(dir.path().join("out"));
    cfg.population = 20_000;
    cfg.weeks = 8;
    cfg.run_in_weeks = 8;
    cfg.bad_record_rate = 0.02;
    pathflow_simulate::run(&cfg, &|_| {}).unwrap();
    let out = &cfg.out;
    let file = "pas/R9A/referrals.csv";
    let path = out.join(file);

    let pseudonymiser = Pseudonymiser::for_tests("pas-referrals");
    let opt_out = OptOutList::load(&out.join("reference/national_data_opt_out.csv")).unwrap();
    let deprivation =
        DeprivationLookup::load(&out.join("reference/postcode_deprivation.csv")).unwrap();
    let cx = Context {
        pseudonymiser: &pseudonymiser,
        opt_out: &opt_out,
        deprivation: &deprivation,
        source: SourceName::parse("pas:r9a:referrals").unwrap(),
        recorded_at: Utc::now(),
    };
    let read = |cx: &Context<'_>| {
        read_csv::<PasReferrals, _>(std::fs::File::open(&path).unwrap(), file, cx)
    };
    let outcomes = read(&cx);

    // Every data line is accounted for: read = accepted + rejected + opted out.
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(outcomes.len(), lines.len() - 1);
    let (mut accepted, mut rejected, mut opted_out) = (0, BTreeMap::new(), 0);
    for (loc, outcome) in &outcomes {
        match outcome {
            Outcome::Events(events) => {
                assert!(!events.is_empty());
                assert_eq!(events[0].event_type(), EventType::ReferralCreated);
                accepted += 1;
            }
            Outcome::Rejected(r) => {
                assert_eq!(
                    (r.location.file.as_str(), r.location.line),
                    (file, loc.line)
                );
                rejected.insert(loc.line, r.error.field.clone());
            }
            Outcome::OptedOut => opted_out += 1,
        }
    }
    assert_eq!(accepted + rejected.len() + opted_out, outcomes.len());
    assert!(
        opted_out > 0,
        "some referred patients are on the opt-out list"
    );

    // Rejected lines are exactly the injected bad records, bar duplicated rows
    // (valid, deduplicated by id) and those of opted-out patients, which are
    // dropped before anything else is looked at (unless the row or number itself is broken).
    let key = std::fs::read_to_string(out.join("bad_records.csv")).unwrap();
    let nhs_column = lines[0].split(',').position(|h| h == "nhs_number").unwrap();
    let opted_out_line = |line: u64| {
        let fields: Vec<&str> = lines[line as usize - 1].split(',').collect();
        pathflow_schemas::NhsNumber::parse(fields[nhs_column]).is_ok_and(|n| opt_out.contains(&n))
    };
    let expected: BTreeSet<u64> = key
        .lines()
        .skip(1)
        .filter(|l| l.starts_with(file) && !l.contains("duplicated_row"))
        .filter_map(|l| {
            let line: u64 = l.split(',').nth(1).unwrap().parse().unwrap();
            let dropped = opted_out_line(line) && !l.contains("broken_quoting");
            (!dropped).then_some(line)
        })
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(
        rejected.keys().copied().collect::<BTreeSet<_>>(),
        expected,
        "rejections: {rejected:?}"
    );

    // Re-reading the same file yields exactly the same event ids, and duplicated rows add none.
    let ids = |outcomes: &[(pathflow_ingest::record::Location, Outcome)]| -> Vec<String> {
        outcomes
            .iter()
            .flat_map(|(_, o)| match o {
                Outcome::Events(e) => e.iter().map(|e| e.envelope.event_id.to_string()).collect(),
                _ => Vec::new(),
            })
            .collect()
    };
    let first = ids(&outcomes);
    assert_eq!(first, ids(&read(&cx)));
    let distinct: HashSet<&String> = first.iter().collect();
    let duplicates = key
        .lines()
        .filter(|l| l.starts_with(file) && l.contains("duplicated_row"))
        .count();
    assert!(duplicates > 0);
    assert!(
        distinct.len() < first.len(),
        "a duplicated row repeats its events' ids"
    );

    // Privacy: no raw identifier of the input appears in any event or rejection,
    // neither as a whole JSON value nor inside one. Dates of birth are checked
    // when they cannot also be an event's own date (events here are after 2000).
    let header: Vec<&str> = lines[0].split(',').collect();
    let mut identifiers = HashSet::new();
    for line in &lines[1..] {
        let fields: Vec<&str> = line.split(',').collect();
        for name in [
            "ubrn",
            "hospital_number",
            "nhs_number",
            "date_of_birth",
            "postcode",
            "ag_request_id",
        ] {
            let i = header.iter().position(|h| *h == name).unwrap();
            let Some(v) = fields.get(i).filter(|v| v.len() >= 6) else {
                continue;
            };
            if name != "date_of_birth" || v.as_bytes()[..2] == *b"19" {
                identifiers.insert(v.to_string());
            }
        }
    }
    let values = output_values(&outcomes);
    let leaked = leaks(&identifiers, &values);
    assert!(
        leaked.is_empty(),
        "identifiers found in output, e.g. {leaked:?}"
    );
}
