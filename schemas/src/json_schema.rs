//! JSON Schema files for data engineers, generated from the Rust types so
//! they cannot disagree with what the connectors write. They are checked in
//! under `schemas/json/`; a test fails when the types change and the files
//! were not regenerated (`pathflow schemas --out schemas/json`).

use std::path::Path;

use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use crate::event::{Envelope, Event, EventType};

/// One generated schema file: its name under `schemas/json/` and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaFile {
    /// File name, e.g. `referral.created.schema.json`.
    pub name: String,
    /// Pretty-printed JSON with a trailing newline.
    pub text: String,
}

/// Every schema file: `event.schema.json` (any event) and one per event type.
pub fn schema_files() -> Vec<SchemaFile> {
    let union = SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<Event>();
    let mut files = vec![file("event.schema.json", union.to_value())];
    files.extend(
        EventType::ALL
            .iter()
            .map(|t| file(&format!("{}.schema.json", t.name()), event_type_schema(*t))),
    );
    files
}

/// The schema of one event type: the envelope, a constant `event_type`, and its `data`.
fn event_type_schema(event_type: EventType) -> Value {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    let envelope = generator.subschema_for::<Envelope>();
    let data = event_type.data_schema(&mut generator);
    let defs = generator.take_definitions(true);
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": event_type.name(),
        "description": format!(
            "A pathflow `{}` event as written to the `{}` Kafka topic: envelope fields, `event_type` and `data`.",
            event_type.name(),
            event_type.family().default_topic()
        ),
        "type": "object",
        "allOf": [envelope.to_value()],
        "properties": {
            "event_type": {"const": event_type.name()},
            "data": data.to_value(),
        },
        "required": ["event_type", "data"],
        "$defs": defs,
    })
}

fn file(name: &str, schema: Value) -> SchemaFile {
    let mut text = serde_json::to_string_pretty(&schema).expect("a JSON value always serialises");
    text.push('\n');
    SchemaFile {
        name: name.to_string(),
        text,
    }
}

/// Writes every schema file into `dir`, removing stale `*.schema.json` files there.
pub fn write_schema_files(dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let files = schema_files();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".schema.json") && !files.iter().any(|f| f.name == name) {
            std::fs::remove_file(&path)?;
        }
    }
    for f in &files {
        std::fs::write(dir.join(&f.name), &f.text)?;
    }
    Ok(files.len())
}
