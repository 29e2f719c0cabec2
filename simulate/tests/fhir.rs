//! FHIR practices' appointment books are R4 Bundles a FHIR connector can read:
//! resources link up, NHS numbers sit under the NHS identifier system.

mod common;

use std::collections::HashSet;

use common::Run;
use pathflow_schemas::NhsNumber;
use pathflow_simulate::fhir::NHS_NUMBER_SYSTEM;

#[test]
fn bundles_are_linked_fhir_r4_with_nhs_numbers() {
    let run = Run::new(|c| {
        c.population = 20_000;
        c.weeks = 2;
        c.run_in_weeks = 2;
        c.fhir_share = 0.5;
    });
    let bundles = run.files("gp/fhir", ".json");
    assert!(!bundles.is_empty());
    let mut kinds = HashSet::new();
    for path in bundles {
        let b: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(b["resourceType"], "Bundle");
        assert_eq!(b["type"], "collection");
        let entries = b["entry"].as_array().unwrap();
        let urls: HashSet<String> = entries
            .iter()
            .map(|e| {
                format!(
                    "{}/{}",
                    e["resource"]["resourceType"].as_str().unwrap(),
                    e["resource"]["id"].as_str().unwrap()
                )
            })
            .collect();
        for e in entries {
            let r = &e["resource"];
            kinds.insert(r["resourceType"].as_str().unwrap().to_string());
            match r["resourceType"].as_str().unwrap() {
                "Patient" => {
                    let id = &r["identifier"][0];
                    assert_eq!(id["system"], NHS_NUMBER_SYSTEM);
                    assert!(NhsNumber::parse(id["value"].as_str().unwrap()).is_ok());
                }
                "Appointment" => {
                    for reference in [
                        &r["slot"][0]["reference"],
                        &r["participant"][0]["actor"]["reference"],
                    ] {
                        let reference = reference.as_str().unwrap();
                        assert!(
                            urls.contains(reference),
                            "{} refers to {reference}, which is not in the bundle",
                            path.display()
                        );
                    }
                    assert!(
                        r["start"].as_str().unwrap().ends_with(":00"),
                        "instants carry an offset"
                    );
                }
                _ => {}
            }
        }
    }
    for kind in ["Slot", "Appointment", "Patient", "Encounter"] {
        assert!(kinds.contains(kind), "no {kind} resources");
    }
}
