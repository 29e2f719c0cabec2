//! What a consumer of the topics sees: JSON events with stable names that
//! round-trip, one of every type, and JSON Schema files that match the types.

use pathflow_schemas::json_schema::schema_files;
use pathflow_schemas::{Event, EventType, sample};

#[test]
fn every_event_type_round_trips_through_json() {
    let events = sample::one_of_each();
    let types: Vec<EventType> = events.iter().map(Event::event_type).collect();
    assert_eq!(
        types,
        EventType::ALL,
        "the sample covers every event type in order"
    );
    for event in events {
        let json = serde_json::to_string(&event).unwrap();
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back, event, "{json}");
    }
}

#[test]
fn wire_names_are_stable_snake_case() {
    let event = &sample::one_of_each()[0];
    let value = serde_json::to_value(event).unwrap();
    let obj = value.as_object().unwrap();
    for key in [
        "event_id",
        "event_type",
        "occurred_at",
        "recorded_at",
        "source",
        "schema_version",
        "practice",
        "provider",
        "treatment_function",
        "data",
    ] {
        assert!(obj.contains_key(key), "missing {key} in {value}");
    }
    assert_eq!(value["event_type"], "referral.created");
    assert_eq!(value["treatment_function"], "110");
    assert_eq!(value["data"]["priority"], "urgent");
    assert_eq!(value["data"]["patient"]["age_band"], "45-49");
    assert_eq!(value["schema_version"], 1);
    let booked = serde_json::to_value(&sample::one_of_each()[10]).unwrap();
    assert_eq!(booked["data"]["setting"], "outpatient");
    assert_eq!(booked["data"]["contact"], "first");
}

#[test]
fn unknown_event_types_and_bad_ids_are_rejected() {
    let mut value = serde_json::to_value(&sample::one_of_each()[0]).unwrap();
    value["event_type"] = "referral.teleported".into();
    assert!(serde_json::from_value::<Event>(value).is_err());
    let mut value = serde_json::to_value(&sample::one_of_each()[0]).unwrap();
    value["data"]["pathway_id"] = "9990000018".into();
    assert!(serde_json::from_value::<Event>(value).is_err());
}

/// Fails when a type changed and `schemas/json/` was not regenerated.
#[test]
fn checked_in_json_schemas_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("json");
    let expected = schema_files();
    let mut stale = Vec::new();
    for file in &expected {
        let on_disk = std::fs::read_to_string(dir.join(&file.name)).unwrap_or_default();
        if on_disk != file.text {
            stale.push(file.name.clone());
        }
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.retain(|n| n.ends_with(".schema.json") && !expected.iter().any(|f| &f.name == n));
    stale.extend(
        names
            .into_iter()
            .map(|n| format!("{n} (no longer generated)")),
    );
    assert!(
        stale.is_empty(),
        "schemas/json/ is out of date with the event types: {stale:?}\n\
         regenerate with `cargo run -- schemas --out schemas/json` and commit the result"
    );
    assert_eq!(expected.len(), EventType::ALL.len() + 1);
}

#[test]
fn per_type_schemas_pin_the_event_type() {
    let files = schema_files();
    let f = files
        .iter()
        .find(|f| f.name == "appointment.booked.schema.json")
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&f.text).unwrap();
    assert_eq!(v["properties"]["event_type"]["const"], "appointment.booked");
    assert!(f.text.contains("appointment_id"));
    assert!(!f.text.contains("nhs_number"));
}

/// The checked-in schema files accept every sample event and reject a broken one.
#[test]
fn sample_events_validate_against_the_checked_in_schemas() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("json");
    let load = |name: &str| -> serde_json::Value {
        let text =
            std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        serde_json::from_str(&text).unwrap()
    };
    let any_event = jsonschema::validator_for(&load("event.schema.json")).unwrap();
    for event in sample::one_of_each() {
        let value = serde_json::to_value(&event).unwrap();
        let name = format!("{}.schema.json", event.event_type().name());
        let own = jsonschema::validator_for(&load(&name)).unwrap();
        let errors: Vec<String> = own.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{name}: {errors:?}\n{value}");
        assert!(
            any_event.is_valid(&value),
            "event.schema.json rejects {value}"
        );

        let mut broken = value.clone();
        broken["occurred_at"] = "yesterday".into();
        broken["data"].as_object_mut().unwrap().clear();
        assert!(
            !own.is_valid(&broken),
            "{name} accepts an event without data fields"
        );
    }
}
