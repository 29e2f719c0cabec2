//! Kafka messages → Arrow record batches of the bronze `events` table
//! (`pathflow_schemas::bronze::events_schema`): the envelope as typed columns,
//! the payload's `data` as JSON text, and the Kafka coordinates each row came
//! from, which [`crate::commit`] checks against the offsets it commits.
//!
//! A message that is not a pathflow event becomes a [`Rejection`] (where it
//! was and why, never its content) for the caller to count and dead-letter.

use std::fmt;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use chrono::NaiveDate;
use pathflow_schemas::Event;
use pathflow_schemas::bronze::events_schema;

/// One Kafka message as the bronze conversion needs it (borrowed, so a
/// consumer can pass its messages without copying them).
#[derive(Debug, Clone, Copy)]
pub struct MessageRef<'a> {
    /// The topic the message was read from.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// The payload: one pathflow [`Event`] as JSON; `None` for a tombstone.
    pub payload: Option<&'a [u8]>,
}

/// A message that could not become a bronze row, with where it was and why.
/// It never holds the payload: a malformed message may still carry something
/// identifying, and rejections go to logs and the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The topic of the message.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Why it was rejected.
    pub reason: RejectReason,
}

/// Why a message is not a bronze row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    /// The message has no payload (a tombstone) or an empty one.
    EmptyPayload,
    /// The payload is not valid JSON (or not UTF-8) at this line and column.
    NotJson {
        /// 1-based line of the first error.
        line: usize,
        /// 1-based column of the first error.
        column: usize,
    },
    /// The payload is JSON but not a pathflow event of a known type and form.
    NotAnEvent {
        /// 1-based line of the first error.
        line: usize,
        /// 1-based column of the first error.
        column: usize,
        /// What was wrong, with every value from the payload redacted.
        problem: String,
    },
    /// The event's `schema_version` does not fit the table's 16-bit signed column.
    SchemaVersionOutOfRange,
}

impl RejectReason {
    /// A short stable label for metrics and dead letters.
    pub fn label(&self) -> &'static str {
        match self {
            RejectReason::EmptyPayload => "empty_payload",
            RejectReason::NotJson { .. } => "not_json",
            RejectReason::NotAnEvent { .. } => "not_an_event",
            RejectReason::SchemaVersionOutOfRange => "schema_version_out_of_range",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::EmptyPayload => f.write_str("the message has no payload"),
            RejectReason::NotJson { line, column } => write!(
                f,
                "the payload is not JSON (first error at line {line}, column {column})"
            ),
            RejectReason::NotAnEvent {
                line,
                column,
                problem,
            } => write!(
                f,
                "the payload is not a pathflow event: {problem} (at line {line}, column {column}); \
                 see the event JSON Schema in schemas/"
            ),
            RejectReason::SchemaVersionOutOfRange => {
                f.write_str("schema_version is above 32767, which the bronze table cannot hold")
            }
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} partition {} offset {}: {}",
            self.topic, self.partition, self.offset, self.reason
        )
    }
}

impl std::error::Error for Rejection {}

/// Parses a message's payload as an [`Event`], or says why it is not one.
pub fn parse_message(msg: &MessageRef<'_>) -> Result<Event, Rejection> {
    let reject = |reason| Rejection {
        topic: msg.topic.to_string(),
        partition: msg.partition,
        offset: msg.offset,
        reason,
    };
    let payload = match msg.payload {
        Some(p) if !p.is_empty() => p,
        _ => return Err(reject(RejectReason::EmptyPayload)),
    };
    serde_json::from_slice::<Event>(payload).map_err(|e| {
        let (line, column) = (e.line(), e.column());
        reject(match e.classify() {
            serde_json::error::Category::Data => RejectReason::NotAnEvent {
                line,
                column,
                problem: redact(&e.to_string()),
            },
            _ => RejectReason::NotJson { line, column },
        })
    })
}

/// Keeps the shape of a serde message and drops every value it quotes.
///
/// serde quotes payload values ("invalid type: string \"…\"", "unknown
/// variant `…`") and the schema's validated types end their messages with
/// "; got <value>". Field names from our schema ("missing field `x`") are kept:
/// they come from the types, not from the payload.
fn redact(message: &str) -> String {
    let message = message
        .split_once(" at line ")
        .map_or(message, |(head, _)| head);
    let message = message
        .split_once("; got")
        .map_or(message, |(head, _)| head);
    if message.starts_with("missing field") || message.starts_with("duplicate field") {
        return message.to_string();
    }
    let mut out = String::with_capacity(message.len());
    let mut open: Option<char> = None;
    for c in message.chars() {
        match open {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                open = None;
            }
            Some(_) => {}
            None if c == '"' || c == '`' => {
                out.push(c);
                open = Some(c);
            }
            None => out.push(c),
        }
    }
    if open.is_some() {
        out.push('…');
    }
    out
}

/// Days from 1970-01-01, as Arrow's `Date32` counts them.
fn date32(date: NaiveDate) -> i32 {
    // Every NaiveDate is within ±262143 years of the epoch: well inside i32 days.
    (date - NaiveDate::default()).num_days() as i32
}

/// Accumulates bronze rows column by column and emits them as a [`RecordBatch`].
pub struct BronzeBatchBuilder {
    schema: SchemaRef,
    rows: usize,
    event_id: StringBuilder,
    event_type: StringBuilder,
    family: StringBuilder,
    occurred_at: TimestampMicrosecondBuilder,
    recorded_at: TimestampMicrosecondBuilder,
    event_date: Date32Builder,
    source: StringBuilder,
    schema_version: Int16Builder,
    key_id: StringBuilder,
    practice: StringBuilder,
    provider: StringBuilder,
    treatment_function: StringBuilder,
    entity_id: StringBuilder,
    patient_id: StringBuilder,
    age_band: StringBuilder,
    sex: StringBuilder,
    deprivation_decile: Int16Builder,
    data: StringBuilder,
    kafka_topic: StringBuilder,
    kafka_partition: Int32Builder,
    kafka_offset: Int64Builder,
}

impl Default for BronzeBatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BronzeBatchBuilder {
    /// An empty builder for the bronze schema.
    pub fn new() -> Self {
        let utc = || TimestampMicrosecondBuilder::new().with_timezone("UTC");
        Self {
            schema: events_schema(),
            rows: 0,
            event_id: StringBuilder::new(),
            event_type: StringBuilder::new(),
            family: StringBuilder::new(),
            occurred_at: utc(),
            recorded_at: utc(),
            event_date: Date32Builder::new(),
            source: StringBuilder::new(),
            schema_version: Int16Builder::new(),
            key_id: StringBuilder::new(),
            practice: StringBuilder::new(),
            provider: StringBuilder::new(),
            treatment_function: StringBuilder::new(),
            entity_id: StringBuilder::new(),
            patient_id: StringBuilder::new(),
            age_band: StringBuilder::new(),
            sex: StringBuilder::new(),
            deprivation_decile: Int16Builder::new(),
            data: StringBuilder::new(),
            kafka_topic: StringBuilder::new(),
            kafka_partition: Int32Builder::new(),
            kafka_offset: Int64Builder::new(),
        }
    }

    /// Rows added since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row was added since the last [`finish`](Self::finish).
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Parses the message and adds it as a row, or returns why it cannot be one
    /// (the builder is then unchanged).
    pub fn push_message(&mut self, msg: &MessageRef<'_>) -> Result<(), Rejection> {
        let event = parse_message(msg)?;
        self.push_event(&event, msg.topic, msg.partition, msg.offset)
            .map_err(|reason| Rejection {
                topic: msg.topic.to_string(),
                partition: msg.partition,
                offset: msg.offset,
                reason,
            })
    }

    /// Adds an already parsed event read from `topic`/`partition` at `offset`.
    pub fn push_event(
        &mut self,
        event: &Event,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<(), RejectReason> {
        let env = &event.envelope;
        let schema_version =
            i16::try_from(env.schema_version).map_err(|_| RejectReason::SchemaVersionOutOfRange)?;
        // The data is serialised before any column is touched so a failure
        // cannot leave the columns with different lengths.
        let data = data_json(event);

        self.event_id.append_value(env.event_id.as_str());
        self.event_type.append_value(event.event_type().name());
        self.family.append_value(event.family().name());
        self.occurred_at
            .append_value(env.occurred_at.timestamp_micros());
        self.recorded_at
            .append_value(env.recorded_at.timestamp_micros());
        self.event_date.append_value(date32(event.event_date()));
        self.source.append_value(env.source.as_str());
        self.schema_version.append_value(schema_version);
        self.key_id
            .append_option(env.key_id.as_ref().map(|k| k.as_str()));
        self.practice
            .append_option(env.practice.as_ref().map(|o| o.as_str()));
        self.provider
            .append_option(env.provider.as_ref().map(|o| o.as_str()));
        self.treatment_function
            .append_option(env.treatment_function.map(|t| t.wire_name()));
        self.entity_id.append_value(event.payload.key().as_str());
        let patient = event.payload.patient();
        self.patient_id
            .append_option(patient.map(|p| p.id.as_str()));
        self.age_band
            .append_option(patient.map(|p| p.age_band.to_string()));
        self.sex.append_option(patient.map(|p| p.sex.wire_name()));
        self.deprivation_decile.append_option(
            patient
                .and_then(|p| p.deprivation_decile)
                .map(|d| i16::from(d.get())),
        );
        self.data.append_value(data);
        self.kafka_topic.append_value(topic);
        self.kafka_partition.append_value(partition);
        self.kafka_offset.append_value(offset);
        self.rows += 1;
        Ok(())
    }

    /// The rows added so far as one batch of the bronze schema; the builder
    /// starts again empty.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.event_id.finish()),
            Arc::new(self.event_type.finish()),
            Arc::new(self.family.finish()),
            Arc::new(self.occurred_at.finish()),
            Arc::new(self.recorded_at.finish()),
            Arc::new(self.event_date.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.schema_version.finish()),
            Arc::new(self.key_id.finish()),
            Arc::new(self.practice.finish()),
            Arc::new(self.provider.finish()),
            Arc::new(self.treatment_function.finish()),
            Arc::new(self.entity_id.finish()),
            Arc::new(self.patient_id.finish()),
            Arc::new(self.age_band.finish()),
            Arc::new(self.sex.finish()),
            Arc::new(self.deprivation_decile.finish()),
            Arc::new(self.data.finish()),
            Arc::new(self.kafka_topic.finish()),
            Arc::new(self.kafka_partition.finish()),
            Arc::new(self.kafka_offset.finish()),
        ];
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), columns)
    }
}

/// The payload's `data` object as JSON text (`{}` for a type without data).
fn data_json(event: &Event) -> String {
    match serde_json::to_value(&event.payload) {
        Ok(serde_json::Value::Object(mut map)) => map
            .remove("data")
            .map_or_else(|| "{}".to_string(), |d| d.to_string()),
        // A payload is a tagged struct: serialising it to an object cannot fail.
        _ => "{}".to_string(),
    }
}

/// Converts a run of messages into one bronze batch and the rejections.
pub fn to_batch<'a>(
    messages: impl IntoIterator<Item = MessageRef<'a>>,
) -> Result<(RecordBatch, Vec<Rejection>), ArrowError> {
    let mut builder = BronzeBatchBuilder::new();
    let mut rejections = Vec::new();
    for msg in messages {
        if let Err(r) = builder.push_message(&msg) {
            rejections.push(r);
        }
    }
    Ok((builder.finish()?, rejections))
}

/// A bronze row that does not read back as an event (a table written by
/// something else, or damaged): where it is and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bronze row {row}: {reason}")]
pub struct UnreadableRow {
    /// The row's index in its batch.
    pub row: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// The events of bronze rows: the inverse of [`BronzeBatchBuilder::push_event`],
/// for the derived tables, which are folded from bronze rather than from
/// Kafka so that any number of bronze writers can feed one derivation.
///
/// Only the envelope columns, `event_type` and `data` are read; the
/// denormalised patient columns are copies of what `data` holds.
pub fn events_of(batch: &RecordBatch) -> Result<Vec<Event>, UnreadableRow> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int16Type, TimestampMicrosecondType};

    let bad = |row: usize, reason: String| UnreadableRow { row, reason };
    let text = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| bad(0, format!("no text column {name:?}")))
    };
    let instant = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
            .ok_or_else(|| bad(0, format!("no timestamp column {name:?}")))
    };
    let (event_id, event_type, source, data) = (
        text("event_id")?,
        text("event_type")?,
        text("source")?,
        text("data")?,
    );
    let (key_id, practice, provider, treatment_function) = (
        text("key_id")?,
        text("practice")?,
        text("provider")?,
        text("treatment_function")?,
    );
    let (occurred_at, recorded_at) = (instant("occurred_at")?, instant("recorded_at")?);
    let schema_version = batch
        .column_by_name("schema_version")
        .and_then(|c| c.as_primitive_opt::<Int16Type>())
        .ok_or_else(|| bad(0, "no Int16 column \"schema_version\"".to_string()))?;

    let optional = |a: &arrow::array::StringArray, i: usize| {
        if a.is_null(i) {
            serde_json::Value::Null
        } else {
            serde_json::Value::String(a.value(i).to_string())
        }
    };
    let rfc3339 = |micros: i64, i: usize| {
        chrono::DateTime::from_timestamp_micros(micros)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            .ok_or_else(|| bad(i, format!("timestamp {micros} µs is out of range")))
    };
    let mut events = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let data: serde_json::Value = serde_json::from_str(data.value(i))
            .map_err(|e| bad(i, format!("data is not JSON: {e}")))?;
        let object = serde_json::json!({
            "event_id": event_id.value(i),
            "occurred_at": rfc3339(occurred_at.value(i), i)?,
            "recorded_at": rfc3339(recorded_at.value(i), i)?,
            "source": source.value(i),
            "schema_version": schema_version.value(i),
            "key_id": optional(key_id, i),
            "practice": optional(practice, i),
            "provider": optional(provider, i),
            "treatment_function": optional(treatment_function, i),
            "event_type": event_type.value(i),
            "data": data,
        });
        let event: Event = serde_json::from_value(object).map_err(|e| bad(i, e.to_string()))?;
        events.push(event);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bronze_rows_read_back_as_the_events_they_were_made_from() {
        let events = pathflow_schemas::sample::one_of_each();
        let mut builder = BronzeBatchBuilder::new();
        for (offset, e) in events.iter().enumerate() {
            builder.push_event(e, "t", 0, offset as i64).unwrap();
        }
        let batch = builder.finish().unwrap();
        assert_eq!(events_of(&batch).unwrap(), events);
    }

    #[test]
    fn redaction_drops_quoted_values_and_keeps_schema_field_names() {
        assert_eq!(
            redact("invalid type: string \"9434765919\", expected u16 at line 1 column 40"),
            "invalid type: string \"…\", expected u16"
        );
        assert_eq!(
            redact("unknown variant `referral.exploded`, expected one of `referral.created`"),
            "unknown variant `…`, expected one of `…`"
        );
        assert_eq!(
            redact("pseudonym must be 32 lowercase hex digits; got a value"),
            "pseudonym must be 32 lowercase hex digits"
        );
        assert_eq!(
            redact("missing field `event_id` at line 1 column 2"),
            "missing field `event_id`"
        );
    }

    #[test]
    fn event_date_is_days_since_the_epoch() {
        let d = |y, m, day| NaiveDate::from_ymd_opt(y, m, day).unwrap();
        assert_eq!(date32(d(1970, 1, 1)), 0);
        assert_eq!(date32(d(1970, 1, 2)), 1);
        assert_eq!(date32(d(1969, 12, 31)), -1);
    }
}
