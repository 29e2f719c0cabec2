//! The PAS outpatient extracts of provider R9A from `pathflow simulate`
//! (appointments, clinic slots, follow-ups), read as a connector would: every
//! record is accounted for, the injected bad records (and only they) are
//! rejected with file, line and field, opted-out patients vanish, re-reading
//! gives the same event ids, nothing identifiable survives, and the events
//! join the referral and follow-up extracts and count what the CSV shows.

use std::collections::{BTreeMap, HashMap, HashSet};

use pathflow_ingest::sources::pas_outpatients::{PasAppointments, PasClinicSlots, PasFollowups};
use pathflow_ingest::sources::pas_referrals::PasReferrals;
use pathflow_ingest::sources::{CsvFormat, Outcome};
use pathflow_schemas::codes::ContactType;
use pathflow_schemas::event::{AppointmentKind, Event, Payload};
use pathflow_schemas::{EventType, PseudoId};

mod common;
use common::{Outcomes, Sim, leaks, output_values, rows};

const APPOINTMENTS: &str = "pas/R9A/outpatient_appointments.csv";
const SLOTS: &str = "pas/R9A/clinic_slots.csv";
const FOLLOWUPS: &str = "pas/R9A/followups.csv";
const REFERRALS: &str = "pas/R9A/referrals.csv";

/// What [`check_extract`] is told about one file.
struct Extract<'a> {
    file: &'a str,
    feed: &'a str,
    /// The event type every accepted record starts with.
    first: EventType,
    /// Columns holding identifiers that must not survive.
    identifiers: &'a [&'a str],
    /// Lines the connector must reject although the answer key does not list
    /// them (records the generator makes inconsistent by accident), and the field.
    also_rejected: BTreeMap<u64, String>,
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
                assert_eq!(events[0].event_type(), x.first, "line {}", loc.line);
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
    if header.contains(&"nhs_number") {
        assert!(opted_out > 0, "some patients are on the opt-out list");
    } else {
        assert_eq!(opted_out, 0, "{} carries no patient", x.file);
    }

    // Rejected are exactly the injected bad records, naming the broken field,
    // bar duplicated rows (valid, deduplicated by id) and records of opted-out
    // patients: those are dropped before any other field is read, so nothing
    // of theirs reaches the dead letters or quarantine. A stray quote breaks
    // the row itself, and a bad check digit leaves no NHS number to look up.
    let bad = sim.bad_records(x.file);
    let mut expected: BTreeMap<u64, String> = bad
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
    expected.extend(x.also_rejected.clone());
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
    for &i in &second_copies {
        assert_eq!(first[i], first[i - 1], "duplicated row at line {}", i + 2);
    }
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
    // Local numbers are short in a small run (`S1460`), so anything of five
    // characters or more counts; shorter values (a duration, a code) are not identifiers.
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
    assert!(!identifiers.is_empty());
    let values = output_values(&outcomes);
    let leaked = leaks(&identifiers, &values);
    assert!(
        leaked.is_empty(),
        "identifiers found in output, e.g. {leaked:?}"
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

#[test]
fn appointment_extract_becomes_events_rejections_and_opt_outs() {
    let sim = Sim::run("pas-outpatients", 0.02);
    let bad = sim.rejectable_lines(APPOINTMENTS);
    let valid: Vec<HashMap<String, String>> = rows(&sim, APPOINTMENTS)
        .into_iter()
        .filter(|(line, row)| !bad.contains(line) && !sim.row_opted_out(row))
        .map(|(_, row)| row)
        .collect();

    // A cancellation before the booking would be rejected (and once was: the
    // generator booked into slots it had already withdrawn). None may remain.
    let cancelled_before_booking: BTreeMap<u64, String> = rows(&sim, APPOINTMENTS)
        .into_iter()
        .filter(|(line, row)| {
            !bad.contains(line)
                && !sim.row_opted_out(row)
                && !row["cancelled_at"].is_empty()
                && row["cancelled_at"][..10] < row["booked_at"][..10]
        })
        .map(|(line, _)| (line, "cancelled_at".to_string()))
        .collect();
    assert!(
        cancelled_before_booking.is_empty(),
        "cancelled before booked: {cancelled_before_booking:?}"
    );
    let outcomes = check_extract::<PasAppointments>(
        &sim,
        &Extract {
            file: APPOINTMENTS,
            feed: "pas:r9a:outpatient_appointments",
            first: EventType::AppointmentBooked,
            identifiers: &[
                "appointment_id",
                "ubrn",
                "hospital_number",
                "nhs_number",
                "date_of_birth",
                "postcode",
                "slot_id",
                "followup_id",
            ],
            also_rejected: BTreeMap::new(),
        },
    );

    // Attended first appointments: as many events as the CSV's valid rows show.
    let in_csv: HashSet<&str> = valid
        .iter()
        .filter(|r| r["contact_type"] == "1" && r["attendance_status"] == "5")
        .map(|r| r["appointment_id"].as_str())
        .collect();
    assert!(!in_csv.is_empty());
    let first_contacts: HashSet<&PseudoId> = events(&outcomes)
        .filter_map(|e| match &e.payload {
            Payload::AppointmentBooked(b) => match b.kind {
                AppointmentKind::Outpatient {
                    contact: ContactType::First,
                    ..
                } => Some(&b.appointment_id),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let attended_first: HashSet<&PseudoId> = events(&outcomes)
        .filter_map(|e| match &e.payload {
            Payload::AppointmentAttended(a) => Some(&a.appointment_id),
            _ => None,
        })
        .filter(|id| first_contacts.contains(id))
        .collect();
    assert_eq!(attended_first.len(), in_csv.len());

    // Moved appointments: booked for the original start, then rescheduled to the new one.
    let moved = valid
        .iter()
        .filter(|r| !r["original_start"].is_empty())
        .map(|r| r["appointment_id"].as_str())
        .collect::<HashSet<_>>()
        .len();
    let rescheduled: HashSet<&PseudoId> = events(&outcomes)
        .filter_map(|e| match &e.payload {
            Payload::AppointmentRescheduled(r) => Some(&r.appointment_id),
            _ => None,
        })
        .collect();
    assert!(moved > 0);
    assert_eq!(rescheduled.len(), moved);

    // The appointments join their referrals (the same pathway id from the UBRN)
    // and their follow-ups (the same follow-up id from the provider's number),
    // except where the other record was rejected.
    let referrals = sim.read::<PasReferrals>(REFERRALS, &sim.cx("pas:r9a:referrals"));
    let followups = sim.read::<PasFollowups>(FOLLOWUPS, &sim.cx("pas:r9a:followups"));
    let rejected = |o: &Outcomes| {
        o.iter()
            .filter(|(_, o)| matches!(o, Outcome::Rejected(_)))
            .count()
    };
    let referred: HashSet<&PseudoId> = events(&referrals)
        .filter_map(|e| match &e.payload {
            Payload::ReferralCreated(r) => Some(&r.pathway_id),
            _ => None,
        })
        .collect();
    let required: HashSet<&PseudoId> = events(&followups)
        .filter_map(|e| match &e.payload {
            Payload::FollowupRequired(f) => Some(&f.followup_id),
            _ => None,
        })
        .collect();
    let (mut pathways, mut booked_followups) = (HashSet::new(), HashSet::new());
    for e in events(&outcomes) {
        match &e.payload {
            Payload::AppointmentBooked(b) => {
                if let AppointmentKind::Outpatient { pathway_id, .. } = &b.kind {
                    pathways.insert(pathway_id);
                }
            }
            Payload::FollowupBooked(f) => {
                booked_followups.insert(&f.followup_id);
            }
            _ => {}
        }
    }
    assert!(!booked_followups.is_empty());
    let unreferred = pathways.iter().filter(|p| !referred.contains(*p)).count();
    assert!(
        unreferred <= rejected(&referrals),
        "{unreferred} of {} pathways have no referral",
        pathways.len()
    );
    let unrequired = booked_followups
        .iter()
        .filter(|f| !required.contains(*f))
        .count();
    assert!(
        unrequired <= rejected(&followups),
        "{unrequired} of {} booked follow-ups were never required",
        booked_followups.len()
    );
}

#[test]
fn clinic_slot_extract_becomes_capacity_events() {
    let sim = Sim::run("pas-outpatients", 0.02);
    let outcomes = check_extract::<PasClinicSlots>(
        &sim,
        &Extract {
            file: SLOTS,
            feed: "pas:r9a:clinic_slots",
            first: EventType::SlotPublished,
            identifiers: &["slot_id"],
            also_rejected: BTreeMap::new(),
        },
    );

    // Every valid Withdrawn slot, and only those, gives a withdrawal.
    let bad = sim.rejectable_lines(SLOTS);
    let withdrawn_in_csv = rows(&sim, SLOTS)
        .iter()
        .filter(|(line, row)| !bad.contains(line) && row["status"] == "Withdrawn")
        .map(|(_, row)| row["slot_id"].clone())
        .collect::<HashSet<_>>()
        .len();
    let withdrawn = distinct_events(&outcomes, EventType::SlotWithdrawn);
    assert!(withdrawn_in_csv > 0);
    assert_eq!(withdrawn, withdrawn_in_csv);
}

#[test]
fn followup_extract_becomes_followup_events() {
    let sim = Sim::run("pas-outpatients", 0.02);
    let outcomes = check_extract::<PasFollowups>(
        &sim,
        &Extract {
            file: FOLLOWUPS,
            feed: "pas:r9a:followups",
            first: EventType::FollowupRequired,
            identifiers: &[
                "followup_id",
                "ubrn",
                "hospital_number",
                "nhs_number",
                "date_of_birth",
                "postcode",
                "appointment_id",
            ],
            also_rejected: BTreeMap::new(),
        },
    );

    // Completed follow-ups: as many events as the CSV's valid rows show.
    let bad = sim.rejectable_lines(FOLLOWUPS);
    let completed_in_csv = rows(&sim, FOLLOWUPS)
        .iter()
        .filter(|(line, row)| {
            !bad.contains(line) && !sim.row_opted_out(row) && row["status"] == "Completed"
        })
        .map(|(_, row)| row["followup_id"].clone())
        .collect::<HashSet<_>>()
        .len();
    let completed = distinct_events(&outcomes, EventType::FollowupCompleted);
    assert!(completed_in_csv > 0);
    assert_eq!(completed, completed_in_csv);
}
