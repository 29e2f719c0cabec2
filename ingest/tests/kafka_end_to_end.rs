//! A PAS referral extract from `pathflow simulate`, through the connector
//! pipeline, into a real Kafka-protocol broker (tansu in CI), and read back as
//! a consumer would: every valid record's events exactly once on their
//! family's topic, every bad record on the dead-letter topic with file, line,
//! field and reason, no identifier anywhere, and a re-sent file adding no new
//! event id.
//!
//! Needs `PATHFLOW_TEST_BROKERS` (`scripts/test` starts tansu and sets it).

use std::collections::{HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::Utc;
use pathflow_ingest::kafka::{EventProducer, KafkaConfig, ensure_topics};
use pathflow_ingest::metrics::Metrics;
use pathflow_ingest::pseudonymise::Pseudonymiser;
use pathflow_ingest::reference::{DeprivationLookup, OptOutList};
use pathflow_ingest::sources::pas_referrals::PasReferrals;
use pathflow_ingest::sources::{Context, read_csv};
use pathflow_schemas::{Event, Family, SourceName};
use pathflow_simulate::SimConfig;

mod common;
use common::{collect_strings, consume_topics as consume, leaks, test_brokers as brokers};

#[tokio::test(flavor = "multi_thread")]
async fn referral_extract_reaches_kafka_exactly_once_and_identifier_free() {
    let Some(brokers) = brokers() else {
        println!("skipped: set PATHFLOW_TEST_BROKERS or run scripts/test");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut sim = SimConfig::new(dir.path().join("out"));
    sim.population = 20_000;
    sim.weeks = 4;
    sim.run_in_weeks = 4;
    sim.bad_record_rate = 0.02;
    pathflow_simulate::run(&sim, &|_| {}).unwrap();
    let out = &sim.out;
    let file = "pas/R9A/referrals.csv";

    let pseudonymiser = Pseudonymiser::for_tests("kafka-e2e");
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
    let outcomes =
        read_csv::<PasReferrals, _>(std::fs::File::open(out.join(file)).unwrap(), file, &cx);

    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut kafka = KafkaConfig::new(&brokers);
    kafka.topic_prefix = format!("e2e{nanos}");
    kafka.partitions = 3;
    kafka.replication = 1;
    ensure_topics(&kafka).await.unwrap();
    ensure_topics(&kafka)
        .await
        .expect("creating existing topics again is fine");

    let producer = EventProducer::new(&kafka, &Metrics::new()).unwrap();
    let counts = producer.produce(&outcomes).await.unwrap();
    let lines = std::fs::read_to_string(out.join(file))
        .unwrap()
        .lines()
        .count() as u64
        - 1;
    assert_eq!(
        counts.accepted + counts.rejected + counts.opted_out,
        lines,
        "{counts:?}"
    );
    assert!(
        counts.rejected > 0 && counts.opted_out > 0 && counts.duplicates > 0,
        "{counts:?}"
    );

    let topics = kafka.topics();
    let want = (counts.events + counts.rejected) as usize;
    let messages = consume(&brokers, &topics, want).await;
    assert_eq!(
        messages.len(),
        want,
        "consumed {} messages; {want} were sent",
        messages.len()
    );

    // Events: each id exactly once, on its family's topic, keyed by its entity.
    let mut ids = HashSet::new();
    let mut dead_letters = Vec::new();
    for (topic, key, payload) in &messages {
        if *topic == kafka.dead_letter_topic() {
            dead_letters.push(serde_json::from_slice::<serde_json::Value>(payload).unwrap());
            continue;
        }
        let event: Event = serde_json::from_slice(payload).unwrap();
        assert_eq!(*topic, kafka.topic(event.family()));
        assert_eq!(key.as_slice(), event.payload.key().as_str().as_bytes());
        assert!(
            ids.insert(event.envelope.event_id.clone()),
            "event {} arrived twice",
            event.envelope.event_id
        );
    }
    assert_eq!(ids.len() as u64, counts.events);
    assert!(
        messages
            .iter()
            .any(|(t, ..)| *t == kafka.topic(Family::Referral))
    );

    // Dead letters: one per rejected record, saying where and why.
    assert_eq!(dead_letters.len() as u64, counts.rejected);
    for d in &dead_letters {
        for field in [
            "source",
            "file",
            "line",
            "field",
            "problem",
            "rule",
            "rejected_at",
        ] {
            assert!(!d[field].is_null(), "dead letter without {field}: {d}");
        }
        assert_eq!(d["file"], file);
    }

    // Privacy: no identifier of the input in any key or payload on any topic.
    let text = std::fs::read_to_string(out.join(file)).unwrap();
    let mut rows = text.lines();
    let header: Vec<&str> = rows.next().unwrap().split(',').collect();
    let columns: HashMap<&str, usize> = header.iter().enumerate().map(|(i, h)| (*h, i)).collect();
    let mut identifiers = HashSet::new();
    for line in rows {
        let fields: Vec<&str> = line.split(',').collect();
        for name in ["ubrn", "hospital_number", "nhs_number", "postcode"] {
            if let Some(v) = fields.get(columns[name]).filter(|v| v.len() >= 6) {
                identifiers.insert(v.to_string());
            }
        }
        if let Some(dob) = fields
            .get(columns["date_of_birth"])
            .filter(|v| v.starts_with("19"))
        {
            identifiers.insert(dob.to_string());
        }
    }
    let mut values: HashSet<String> = HashSet::new();
    for (_, key, payload) in &messages {
        values.insert(String::from_utf8_lossy(key).into_owned());
        collect_strings(&serde_json::from_slice(payload).unwrap(), &mut values);
    }
    let leaked = leaks(&identifiers, &values);
    assert!(
        leaked.is_empty(),
        "identifiers on the topics, e.g. {leaked:?}"
    );

    // Re-sending the same file adds messages but no new event id.
    producer.produce(&outcomes).await.unwrap();
    let again = consume(&brokers, &topics, 2 * want).await;
    assert_eq!(again.len(), 2 * want);
    for (topic, _, payload) in again
        .iter()
        .filter(|(t, ..)| *t != kafka.dead_letter_topic())
    {
        let event: Event = serde_json::from_slice(payload).unwrap();
        assert!(
            ids.contains(&event.envelope.event_id),
            "re-sending created a new event id on {topic}"
        );
    }
}
