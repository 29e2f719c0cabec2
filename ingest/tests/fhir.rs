//! The FHIR practices' appointment books (`gp/fhir/<practice>/<week>.json`)
//! from `pathflow simulate`, read as the connector reads them: every
//! Appointment and Slot is accounted for at its entry, opted-out patients
//! (and only they) vanish, the outcomes are the Appointments' statuses,
//! event ids are unique and repeat on a re-read under another name, and no
//! identifier of the input survives.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use pathflow_ingest::sources::Outcome;
use pathflow_ingest::sources::fhir::read_bundle;
use pathflow_schemas::{EventType, NhsNumber};
use serde_json::Value;

mod common;
use common::{Outcomes, Sim, leaks, output_values};

/// What one entry of a generated Bundle must become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    /// The patient is on the opt-out list.
    OptedOut,
    /// Slot published, booked, then this outcome.
    Booked(EventType),
    /// A slot no Appointment books: published alone.
    Free,
}

/// The generated bundle's entries that must have an outcome, by line, and the
/// identifiers it holds.
fn expected(sim: &Sim, bundle: &Value) -> (BTreeMap<u64, Expected>, HashSet<String>) {
    let entries = bundle["entry"].as_array().unwrap();
    let resource = |e: &Value| e["resource"].clone();
    let mut patients = BTreeMap::new();
    let mut identifiers = HashSet::new();
    let mut booked = HashSet::new();
    for e in entries.iter().map(resource) {
        let id = e["id"].as_str().unwrap().to_string();
        match e["resourceType"].as_str().unwrap() {
            "Patient" => {
                let nhs = e["identifier"][0]["value"].as_str().unwrap().to_string();
                let dob = e["birthDate"].as_str().unwrap().to_string();
                // Only dates that cannot also be an event's own date (events are after 2000).
                if dob.starts_with("19") {
                    identifiers.insert(dob);
                }
                identifiers.insert(e["address"][0]["postalCode"].as_str().unwrap().to_string());
                identifiers.insert(nhs.clone());
                identifiers.insert(id.clone());
                patients.insert(format!("Patient/{id}"), nhs);
            }
            "Appointment" => {
                booked.insert(e["slot"][0]["reference"].as_str().unwrap().to_string());
                identifiers.insert(id);
            }
            "Slot" => {
                identifiers.insert(id);
            }
            _ => {}
        }
    }
    let mut lines = BTreeMap::new();
    for (i, e) in entries.iter().map(resource).enumerate() {
        let line = i as u64 + 1;
        match e["resourceType"].as_str().unwrap() {
            "Appointment" => {
                let patient =
                    &patients[e["participant"][0]["actor"]["reference"].as_str().unwrap()];
                let nhs = NhsNumber::parse(patient).unwrap();
                let outcome = if sim.opt_out.contains(&nhs) {
                    Expected::OptedOut
                } else {
                    Expected::Booked(match e["status"].as_str().unwrap() {
                        "fulfilled" => EventType::AppointmentAttended,
                        "noshow" => EventType::AppointmentDidNotAttend,
                        "cancelled" => EventType::AppointmentCancelled,
                        other => panic!("status {other}"),
                    })
                };
                lines.insert(line, outcome);
            }
            "Slot" => {
                let id = e["id"].as_str().unwrap();
                if !booked.contains(&format!("Slot/{id}")) {
                    lines.insert(line, Expected::Free);
                }
            }
            _ => {}
        }
    }
    (lines, identifiers)
}

/// The event ids of each outcome, in order.
fn ids(outcomes: &Outcomes) -> Vec<Vec<String>> {
    outcomes
        .iter()
        .map(|(_, o)| match o {
            Outcome::Events(e) => e.iter().map(|e| e.envelope.event_id.to_string()).collect(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn fhir_appointment_books_are_accounted_for_opted_out_and_unidentifiable() {
    let sim = Sim::run_with("fhir-books", |cfg| cfg.fhir_share = 0.5);
    let cx = sim.cx("gp:fhir:appointments");
    let files = sim.files_under("gp/fhir");
    assert!(files.len() >= 8, "{files:?}");

    let mut all = Outcomes::new();
    let mut identifiers = HashSet::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut all_ids = Vec::new();
    for file in &files {
        assert!(file.ends_with(".json"), "{file}");
        let bytes = std::fs::read(sim.out.join(file)).unwrap();
        let bundle: Value = serde_json::from_slice(&bytes).unwrap();
        let (expected, ids_in_file) = expected(&sim, &bundle);
        identifiers.extend(ids_in_file);

        let outcomes = read_bundle(&bytes, file, &cx);
        // Every Appointment and unbooked Slot has exactly one outcome, at its entry.
        let lines: Vec<u64> = outcomes.iter().map(|(l, _)| l.line).collect();
        assert_eq!(
            lines,
            expected.keys().copied().collect::<Vec<_>>(),
            "{file}"
        );
        for ((location, outcome), (line, want)) in outcomes.iter().zip(&expected) {
            assert_eq!(location.file, *file);
            let got = match outcome {
                Outcome::OptedOut => Expected::OptedOut,
                Outcome::Events(events) => {
                    let types: Vec<EventType> = events.iter().map(|e| e.event_type()).collect();
                    match types.as_slice() {
                        [EventType::SlotPublished] => Expected::Free,
                        [EventType::SlotPublished, EventType::AppointmentBooked, last] => {
                            Expected::Booked(*last)
                        }
                        other => panic!("{file}:{line}: {other:?}"),
                    }
                }
                // The generator writes no bad records into bundles.
                Outcome::Rejected(r) => panic!("{file}:{line}: rejected: {r}"),
            };
            assert_eq!(got, *want, "{file}:{line}");
            *counts.entry(format!("{want:?}")).or_default() += 1;
            if let Outcome::Events(events) = outcome {
                for e in events {
                    assert!(e.envelope.practice.is_some(), "{e:?}");
                    assert!(file.contains(e.envelope.practice.as_ref().unwrap().as_str()));
                }
            }
        }

        // Re-reading the bundle under another name (as the HTTP connector
        // names a request) repeats every id.
        let again = read_bundle(&bytes, "request-0001", &cx);
        assert_eq!(ids(&outcomes), ids(&again), "{file}");
        all_ids.extend(ids(&outcomes).into_iter().flatten());
        all.extend(outcomes);
    }
    for kind in [
        "OptedOut",
        "Free",
        "Booked(AppointmentAttended)",
        "Booked(AppointmentDidNotAttend)",
        "Booked(AppointmentCancelled)",
    ] {
        assert!(
            counts.get(kind).is_some_and(|&n| n > 0),
            "no {kind}: {counts:?}"
        );
    }

    // No two facts share an event id, across every bundle.
    let distinct: BTreeSet<&String> = all_ids.iter().collect();
    assert_eq!(distinct.len(), all_ids.len(), "two facts share an event id");

    // Privacy: no NHS number, date of birth, postcode or local id of the
    // input appears in any event, whole or inside a value.
    assert!(identifiers.len() > 1000);
    let values = output_values(&all);
    let leaked = leaks(&identifiers, &values);
    assert!(
        leaked.is_empty(),
        "identifiers found in output values, e.g. {leaked:?}"
    );
}
