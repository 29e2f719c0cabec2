//! The Arrow schema of the bronze `events` table: one row per event, the
//! envelope as typed columns, the payload as JSON text, and the Kafka
//! coordinates the row came from (the commit protocol needs them).
//! Types are those Delta Lake can hold: no unsigned integers, timestamps in
//! microseconds UTC, and `event_date` as the partition column.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Name of the bronze table.
pub const EVENTS_TABLE: &str = "events";

/// The column the bronze table is partitioned by.
pub const PARTITION_COLUMN: &str = "event_date";

/// The schema of the bronze `events` table.
pub fn events_schema() -> SchemaRef {
    let utc = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        text("event_id", false),
        text("event_type", false),
        text("family", false),
        Field::new("occurred_at", utc(), false),
        Field::new("recorded_at", utc(), false),
        Field::new(PARTITION_COLUMN, DataType::Date32, false),
        text("source", false),
        Field::new("schema_version", DataType::Int16, false),
        text("key_id", true),
        text("practice", true),
        text("provider", true),
        text("treatment_function", true),
        // The Kafka message key: pathway, appointment, slot or advice pseudonym.
        text("entity_id", false),
        text("patient_id", true),
        text("age_band", true),
        text("sex", true),
        Field::new("deprivation_decile", DataType::Int16, true),
        // The payload (`data`) as JSON, so new event fields need no schema change here.
        text("data", false),
        text("kafka_topic", false),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bronze_has_envelope_payload_and_provenance_columns() {
        let schema = events_schema();
        for name in [
            "event_id",
            "occurred_at",
            "event_date",
            "practice",
            "treatment_function",
            "data",
            "kafka_offset",
        ] {
            assert!(schema.field_with_name(name).is_ok(), "{name}");
        }
        let no_unsigned = schema
            .fields()
            .iter()
            .all(|f| !f.data_type().is_unsigned_integer());
        assert!(no_unsigned, "Delta Lake has no unsigned integer types");
        for forbidden in [
            "nhs_number",
            "date_of_birth",
            "postcode",
            "ubrn",
            "hospital_number",
        ] {
            assert!(schema.field_with_name(forbidden).is_err(), "{forbidden}");
        }
    }
}
