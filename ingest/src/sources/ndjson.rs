//! Newline-delimited pathflow events (`format = "ndjson_events"`, or an HTTP
//! push of `application/x-ndjson`): each non-empty line is one event in its
//! wire format (the envelope, `event_type` and `data`, as
//! [`pathflow_schemas::event`] documents), from a system that embeds
//! pathflow's pseudonymiser or from a replay of a topic export.
//!
//! # Why a line that reads is identifier-free
//!
//! A line becomes an [`Event`] only by deserialising into its types, and
//! those cannot hold a raw identifier: every id is a
//! [`PseudoId`](pathflow_schemas::PseudoId) or
//! [`EventId`](pathflow_schemas::EventId) (32 lowercase hex digits),
//! organisations are [`OdsCode`](pathflow_schemas::OdsCode)s (at least one
//! letter), sources and key ids are names that start with a letter, and a
//! patient is only a pseudonym, an age band, a sex and a decile. An NHS
//! number (10 digits) or UBRN (12) fits none of them, so a line holding one
//! where a pseudonym or code belongs fails to deserialise and is rejected;
//! free text has nowhere to go. Fields the wire format does not have (a
//! `"name"`, an `"nhs_number"` beside `data`) are dropped by deserialisation:
//! what reaches Kafka is the event serialised again from its types, never
//! the line.
//!
//! The types check shape, not provenance: a name such as `source` takes
//! digits after a letter, and a zero-padded number is valid hex. So the
//! sender is trusted to have pseudonymised with the connector's key; only
//! systems that embed the pseudonymiser should hold a push token.
//!
//! # Rules
//!
//! - `schema_version` is at most [`SCHEMA_VERSION`] (older events are read as they are).
//! - `key_id` is present and equals the connector's key id: pseudonyms made
//!   under another key would not join with this connector's.
//! - The event keeps its own `event_id` (its producer derived it
//!   deterministically), `source` and `recorded_at`.
//! - The National Data Opt-out: an event whose patient pseudonym is that of a
//!   patient on the opt-out list (pseudonymised under the connector's key) is
//!   dropped and counted as opted out. Events that name no patient (an
//!   attendance, a triage) cannot be linked to one here: the sender applies
//!   the opt-out to them, as it must to everything it pseudonymises.
//! - Blank lines are skipped; a UTF-8 byte order mark and CRLF line ends are fine.
//!
//! A rejection names the 1-based line and the JSON path of the field at fault
//! (`data.patient.id`), and describes the problem in words. serde's own
//! messages quote the offending value, so they are read to classify the
//! problem and never passed on.

use pathflow_schemas::event::{Envelope, Event, EventType, Payload, SCHEMA_VERSION};
use serde_json::Value;

use super::{Context, Outcome, rejection};
use crate::record::{FieldError, Location};

/// The field of a problem with the line as a whole.
pub const LINE_FIELD: &str = "(line)";

/// What every line must be.
const LINE_RULE: &str =
    "one pathflow event per line: a JSON object with the envelope fields, event_type and data";

/// Reads NDJSON, one event per line: each line's location and outcome.
pub fn read_ndjson(bytes: &[u8], file: &str, cx: &Context<'_>) -> Vec<(Location, Outcome)> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut out = Vec::new();
    // Split on \n and strip one \r, as `str::lines` does, so line numbers
    // agree with the quarantine's copy of the rejected lines.
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line = i as u64 + 1;
        out.push(match read_line(raw, cx) {
            Ok(event)
                if event
                    .payload
                    .patient()
                    .is_some_and(|p| cx.opt_out.contains_pseudonym(&p.id, cx.pseudonymiser)) =>
            {
                (
                    Location {
                        file: file.to_string(),
                        line,
                    },
                    Outcome::OptedOut,
                )
            }
            Ok(event) => (
                Location {
                    file: file.to_string(),
                    line,
                },
                Outcome::Events(vec![event]),
            ),
            Err(e) => rejection(cx, file, line, e),
        });
    }
    out
}

fn read_line(raw: &[u8], cx: &Context<'_>) -> Result<Event, FieldError> {
    let value: Value = serde_json::from_slice(raw).map_err(|e| {
        let problem = match e.classify() {
            serde_json::error::Category::Eof => "is not valid JSON (it ends too early)",
            _ if std::str::from_utf8(raw).is_err() => "is not valid UTF-8",
            _ => "is not valid JSON",
        };
        FieldError::new(LINE_FIELD, problem, LINE_RULE)
    })?;
    let Value::Object(mut object) = value else {
        return Err(FieldError::new(
            LINE_FIELD,
            "is not a JSON object",
            LINE_RULE,
        ));
    };
    // The version first: a newer event may have fields this connector cannot read.
    if object
        .get("schema_version")
        .and_then(Value::as_u64)
        .is_some_and(|v| v > u64::from(SCHEMA_VERSION))
    {
        return Err(FieldError::new(
            "schema_version",
            "is newer than this connector reads",
            format!(
                "schema_version {SCHEMA_VERSION} or lower; upgrade the connector to read newer events"
            ),
        ));
    }
    let event_type = event_type(object.remove("event_type"))?;
    let Some(data) = object.remove("data") else {
        return Err(FieldError::new("data", "is missing", data_rule(event_type)));
    };
    let envelope: Envelope = serde_path_to_error::deserialize(Value::Object(object))
        .map_err(|e| field_error("", e, None))?;
    let expected = cx.pseudonymiser.key_id();
    let key_rule = || {
        format!(
            "key_id \"{expected}\", this connector's key: pseudonyms made under another key do not join with its own"
        )
    };
    match &envelope.key_id {
        None => return Err(FieldError::new("key_id", "is missing", key_rule())),
        Some(k) if k != expected => {
            return Err(FieldError::new(
                "key_id",
                "is not this connector's key id",
                key_rule(),
            ));
        }
        Some(_) => {}
    }
    let payload =
        payload(event_type, data).map_err(|e| field_error("data", e, Some(event_type)))?;
    Ok(Event { envelope, payload })
}

type PathError = serde_path_to_error::Error<serde_json::Error>;

/// The payload of `event_type` from its `data`. Read as the concrete type
/// rather than through the tagged [`Payload`], whose content deserialiser
/// would hide the path of an error inside `data`.
fn payload(event_type: EventType, data: Value) -> Result<Payload, PathError> {
    fn de<T: serde::de::DeserializeOwned>(data: Value) -> Result<T, PathError> {
        serde_path_to_error::deserialize(data)
    }
    macro_rules! by_type {
        ($($variant:ident),+ $(,)?) => {
            match event_type {
                $(EventType::$variant => Payload::$variant(de(data)?)),+
            }
        };
    }
    Ok(by_type!(
        ReferralCreated,
        ReferralTriaged,
        ClockStarted,
        ClockStopped,
        ReferralDischarged,
        AdviceRequested,
        AdviceResponded,
        AdviceConverted,
        SlotPublished,
        SlotWithdrawn,
        AppointmentBooked,
        AppointmentRescheduled,
        AppointmentCancelled,
        AppointmentAttended,
        AppointmentDidNotAttend,
        FollowupRequired,
        FollowupBooked,
        FollowupCompleted,
        FollowupCancelled,
    ))
}

fn event_type(value: Option<Value>) -> Result<EventType, FieldError> {
    let rule = || {
        let names: Vec<&str> = EventType::ALL.iter().map(|t| t.name()).collect();
        format!("one of {}", names.join(", "))
    };
    match value {
        None | Some(Value::Null) => Err(FieldError::new("event_type", "is missing", rule())),
        Some(Value::String(name)) => EventType::from_name(&name)
            .ok_or_else(|| FieldError::new("event_type", "is not a known event type", rule())),
        Some(_) => Err(FieldError::new(
            "event_type",
            "has the wrong type (expected a string)",
            rule(),
        )),
    }
}

fn data_rule(event_type: EventType) -> String {
    format!(
        "the fields of {0}, as schemas/json/{0}.schema.json describes",
        event_type.name()
    )
}

/// A key of the path as written in a field name, or `?` when it does not look
/// like one of the wire format's field names (so no value can pass as a key).
fn safe_key(key: &str) -> &str {
    let mut bytes = key.bytes();
    let ok = key.len() <= 40
        && matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'));
    if ok { key } else { "?" }
}

/// The JSON path of a deserialisation error, e.g. `data.patient.id`.
fn path_of(path: &serde_path_to_error::Path) -> Vec<String> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(format!("[{index}]")),
            Segment::Map { key } => Some(safe_key(key).to_string()),
            // Tags name the enum variant, not a field the sender wrote.
            Segment::Enum { .. } => None,
            Segment::Unknown => Some("?".to_string()),
        })
        .collect()
}

fn join(parts: &[String]) -> String {
    let mut out = String::new();
    for p in parts {
        if !out.is_empty() && !p.starts_with('[') {
            out.push('.');
        }
        out.push_str(p);
    }
    out
}

/// Turns a deserialisation error into a field error without any of its text:
/// serde's message is only matched against the forms it takes, and the words
/// passed on are this module's own.
fn field_error(prefix: &str, e: PathError, event_type: Option<EventType>) -> FieldError {
    let mut parts = path_of(e.path());
    if !prefix.is_empty() && parts.first().is_none_or(|p| p != prefix) {
        parts.insert(0, prefix.to_string());
    }
    let message = e.inner().to_string();
    let schema_rule = || match event_type {
        Some(t) => data_rule(t),
        None => "the envelope fields as schemas/json/ describes".to_string(),
    };
    let (problem, rule): (String, String) = if let Some(rest) =
        message.strip_prefix("missing field `")
    {
        let name = rest.split('`').next().unwrap_or("?");
        parts.push(safe_key(name).to_string());
        ("is missing".into(), schema_rule())
    } else if message.starts_with("unknown variant") {
        ("is not one of the allowed values".into(), schema_rule())
    } else if message.starts_with("invalid type") {
        (
            format!("has the wrong type{}", expected_of(&message)),
            schema_rule(),
        )
    } else if message.starts_with("invalid value") {
        (
            format!("is not an allowed value{}", expected_of(&message)),
            schema_rule(),
        )
    } else if message.starts_with("invalid length") {
        ("has the wrong number of elements".into(), schema_rule())
    } else if message.starts_with("a pseudonymous id must be")
        || message.starts_with("an event id must be")
    {
        (
            "is not a 32-character lowercase hex id".into(),
            "32 lowercase hexadecimal characters: a keyed pseudonym, never a raw identifier".into(),
        )
    } else if message.starts_with("an ODS code must be") {
        (
            "is not an ODS code".into(),
            "3 to 6 letters and digits with at least one letter".into(),
        )
    } else if message.starts_with("a source name must be")
        || message.starts_with("a key id must be")
    {
        (
            "is not a name of the allowed form".into(),
            "a lowercase letter then up to 63 of a-z 0-9 _ - . :".into(),
        )
    } else if message.starts_with("expected a 5-year age band") {
        (
            "is not a 5-year age band".into(),
            "a band such as \"35-39\", or \"90+\"".into(),
        )
    } else if message.starts_with("a deprivation decile") {
        (
            "is not a deprivation decile".into(),
            "a whole number from 1 (most deprived) to 10".into(),
        )
    } else if parts.last().is_some_and(|leaf| leaf.ends_with("date")) {
        // chrono's messages ("premature end of input", …) say nothing of the field.
        ("is not a date".into(), "a calendar date YYYY-MM-DD".into())
    } else if parts
        .last()
        .is_some_and(|leaf| leaf.ends_with("_at") || leaf == "start")
    {
        (
            "is not a date-time".into(),
            "an RFC 3339 date-time, e.g. 2025-04-07T09:00:00Z".into(),
        )
    } else {
        ("has a value of the wrong form".into(), schema_rule())
    };
    let field = if parts.is_empty() {
        LINE_FIELD.to_string()
    } else {
        join(&parts)
    };
    FieldError::new(&field, problem, rule)
}

/// ` (expected u16)` from serde's `invalid type: <the value>, expected u16`.
/// The value comes first, so the last `, expected ` is serde's own; what
/// follows is kept only when it reads like a type description.
fn expected_of(message: &str) -> String {
    message
        .rfind(", expected ")
        .map(|i| &message[i + ", expected ".len()..])
        .filter(|exp| {
            // Words such as `u16`, `a string`, `struct Patient`: each starts with a letter.
            exp.len() <= 40
                && exp.split(' ').all(|w| {
                    w.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
                        && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                })
        })
        // How serde describes a unit-variant enum, which is a string on our wire.
        .map(|exp| {
            if exp == "string or map" {
                "a string"
            } else {
                exp
            }
        })
        .map(|exp| format!(" (expected {exp})"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use pathflow_schemas::KeyId;
    use pathflow_schemas::sample::one_of_each;
    use proptest::prelude::*;

    use super::*;
    use crate::sources::testing::with_context;

    /// Reads `text` with the unit tests' context (key id `test`, which the samples are stamped with).
    fn read(text: &[u8]) -> Vec<(Location, Outcome)> {
        with_context("ndjson", "push:test", |cx| {
            read_ndjson(text, "push-1.ndjson", cx)
        })
    }

    fn samples() -> Vec<Event> {
        one_of_each()
            .into_iter()
            .map(|mut e| {
                e.envelope.key_id = Some(KeyId::parse("test").unwrap());
                e
            })
            .collect()
    }

    fn line_of(event: &Event) -> String {
        serde_json::to_string(event).unwrap()
    }

    fn rejected(outcome: &Outcome) -> &FieldError {
        match outcome {
            Outcome::Rejected(r) => &r.error,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn every_event_type_round_trips_keeping_its_id_and_source() {
        let events = samples();
        let text: String = events.iter().map(|e| line_of(e) + "\n").collect();
        let out = read(text.as_bytes());
        assert_eq!(out.len(), events.len());
        for ((loc, outcome), (i, sent)) in out.iter().zip(events.iter().enumerate()) {
            assert_eq!(loc.line, i as u64 + 1);
            assert_eq!(outcome, &Outcome::Events(vec![sent.clone()]));
        }
    }

    #[test]
    fn events_of_an_opted_out_patient_are_dropped() {
        let opted_out = crate::pseudonymise::Pseudonymiser::for_tests("ndjson").patient(
            &pathflow_schemas::NhsNumber::parse(crate::sources::testing::OPTED_OUT).unwrap(),
        );
        let event = samples()
            .into_iter()
            .find(|e| e.payload.patient().is_some())
            .unwrap();
        let mut value = serde_json::to_value(&event).unwrap();
        value["data"]["patient"]["id"] = opted_out.as_str().into();
        let text = format!("{}\n{}\n", value, line_of(&event));
        let out = read(text.as_bytes());
        assert_eq!(out[0].1, Outcome::OptedOut);
        assert_eq!(out[1].1, Outcome::Events(vec![event]));
    }

    #[test]
    fn unknown_fields_are_dropped_not_forwarded() {
        let event = samples().remove(0);
        let mut value = serde_json::to_value(&event).unwrap();
        value["nhs_number"] = "9434765919".into();
        value["data"]["patient"]["name"] = "Jane Smith".into();
        let out = read(value.to_string().as_bytes());
        let Outcome::Events(read_back) = &out[0].1 else {
            panic!("expected the event, got {:?}", out[0].1);
        };
        assert_eq!(read_back, &vec![event]);
        let forwarded = serde_json::to_string(read_back).unwrap();
        assert!(!forwarded.contains("9434765919") && !forwarded.contains("Jane"));
    }

    #[test]
    fn another_key_id_or_none_is_rejected_naming_the_expected_one() {
        let mut event = samples().remove(0);
        event.envelope.key_id = Some(KeyId::parse("k2024z").unwrap());
        let mut none = event.clone();
        none.envelope.key_id = None;
        let out = read(format!("{}\n{}\n", line_of(&event), line_of(&none)).as_bytes());
        let wrong = rejected(&out[0].1);
        assert_eq!(wrong.field, "key_id");
        assert_eq!(wrong.problem, "is not this connector's key id");
        assert!(wrong.rule.contains("\"test\""), "{wrong:?}");
        assert!(!format!("{wrong:?}").contains("k2024z"), "{wrong:?}");
        let missing = rejected(&out[1].1);
        assert_eq!(
            (missing.field.as_str(), missing.problem.as_str()),
            ("key_id", "is missing")
        );
    }

    #[test]
    fn an_nhs_number_in_a_pseudo_id_is_rejected_without_repeating_it() {
        let event = samples().remove(0);
        let mut value = serde_json::to_value(&event).unwrap();
        value["data"]["patient"]["id"] = "9434765919".into();
        let mut pathway = serde_json::to_value(&event).unwrap();
        pathway["data"]["pathway_id"] = "9434765919".into();
        let mut typed = serde_json::to_value(&event).unwrap();
        typed["data"]["priority"] = 9434765919u64.into();
        let mut variant = serde_json::to_value(&event).unwrap();
        variant["data"]["priority"] = "9434765919".into();
        let mut envelope = serde_json::to_value(&event).unwrap();
        envelope["practice"] = "9434765919".into();
        let mut event_type = serde_json::to_value(&event).unwrap();
        event_type["event_type"] = "9434765919".into();
        let text: String = [value, pathway, typed, variant, envelope, event_type]
            .iter()
            .map(|v| v.to_string() + "\n")
            .collect();
        let out = read(text.as_bytes());
        let expected = [
            ("data.patient.id", "is not a 32-character lowercase hex id"),
            ("data.pathway_id", "is not a 32-character lowercase hex id"),
            ("data.priority", "has the wrong type (expected a string)"),
            ("data.priority", "is not one of the allowed values"),
            ("practice", "is not an ODS code"),
            ("event_type", "is not a known event type"),
        ];
        for ((_, outcome), (field, problem)) in out.iter().zip(expected) {
            let e = rejected(outcome);
            assert_eq!((e.field.as_str(), e.problem.as_str()), (field, problem));
            assert!(!format!("{e:?}").contains("9434765919"), "{e:?}");
        }
        assert_eq!(out.len(), expected.len());
    }

    #[test]
    fn missing_fields_and_newer_versions_name_the_field() {
        let event = samples().remove(0);
        let mut no_priority = serde_json::to_value(&event).unwrap();
        no_priority["data"]
            .as_object_mut()
            .unwrap()
            .remove("priority");
        let mut no_occurred = serde_json::to_value(&event).unwrap();
        no_occurred.as_object_mut().unwrap().remove("occurred_at");
        let mut newer = serde_json::to_value(&event).unwrap();
        newer["schema_version"] = (SCHEMA_VERSION + 1).into();
        let mut version = serde_json::to_value(&event).unwrap();
        version["schema_version"] = "1".into();
        let mut bad_time = serde_json::to_value(&event).unwrap();
        bad_time["occurred_at"] = "2025-04-07 09:00".into();
        let text: String = [no_priority, no_occurred, newer, version, bad_time]
            .iter()
            .map(|v| v.to_string() + "\n")
            .collect();
        let out = read(text.as_bytes());
        let got: Vec<(&str, &str)> = out
            .iter()
            .map(|(_, o)| rejected(o))
            .map(|e| (e.field.as_str(), e.problem.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("data.priority", "is missing"),
                ("occurred_at", "is missing"),
                ("schema_version", "is newer than this connector reads"),
                ("schema_version", "has the wrong type (expected u16)"),
                ("occurred_at", "is not a date-time"),
            ]
        );
        assert!(
            rejected(&out[0].1)
                .rule
                .contains("referral.created.schema.json")
        );
    }

    #[test]
    fn a_bad_line_costs_one_line_and_line_numbers_count_blanks_and_crlf() {
        let events = samples();
        let text = format!(
            "\u{feff}{}\r\n\r\n{{\"event_id\": \"9434765919\", oops\r\n   \n{}\r\n\"just a string\"\n{}",
            line_of(&events[0]),
            line_of(&events[1]),
            line_of(&events[2]),
        );
        let out = read(text.as_bytes());
        let lines: Vec<u64> = out.iter().map(|(l, _)| l.line).collect();
        assert_eq!(lines, [1, 3, 5, 6, 7]);
        assert_eq!(out[0].1, Outcome::Events(vec![events[0].clone()]));
        let bad = rejected(&out[1].1);
        assert_eq!(
            (bad.field.as_str(), bad.problem.as_str()),
            (LINE_FIELD, "is not valid JSON")
        );
        assert!(!format!("{bad:?}").contains("9434765919"));
        assert_eq!(out[2].1, Outcome::Events(vec![events[1].clone()]));
        assert_eq!(rejected(&out[3].1).problem, "is not a JSON object");
        assert_eq!(out[4].1, Outcome::Events(vec![events[2].clone()]));
        assert!(read(b"").is_empty() && read(b"\n \r\n\n").is_empty());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let out = read(&bytes);
            for (_, outcome) in &out {
                prop_assert!(!matches!(outcome, Outcome::OptedOut));
            }
        }

        #[test]
        fn mangled_events_never_panic_nor_echo(cut in 0usize..600, junk in "[0-9]{10}") {
            let line = line_of(&samples()[10]);
            let cut = cut.min(line.len());
            let mangled = format!("{}\"{junk}\"{}", &line[..cut], &line[cut..]);
            for (_, outcome) in read(mangled.as_bytes()) {
                if let Outcome::Rejected(r) = outcome {
                    prop_assert!(!format!("{r:?}").contains(&junk), "{:?}", r);
                }
            }
        }
    }
}
