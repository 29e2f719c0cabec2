//! The Kafka round trip against a real broker: one event of every type goes
//! out as JSON to its family's topic, keyed by its pathway (or slot, advice
//! request, …), and comes back unchanged, with the same key, on that topic.
//!
//! Needs a broker at `PATHFLOW_TEST_BROKERS` (`host:port`); `scripts/test`
//! starts a throwaway tansu and sets it. The broker need not auto-create topics
//! or support transactions: the test creates its own uniquely named topics.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pathflow_schemas::{Event, Family, sample};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// How long to wait for everything produced to be consumed; generous because
/// a consumer-group join takes several seconds against tansu.
const CONSUME_DEADLINE: Duration = Duration::from_secs(60);

/// The broker to test against, or `None` to skip (never on CI).
fn brokers() -> Option<String> {
    match std::env::var("PATHFLOW_TEST_BROKERS") {
        Ok(brokers) if !brokers.trim().is_empty() => Some(brokers),
        _ if std::env::var_os("CI").is_some() => panic!(
            "PATHFLOW_TEST_BROKERS is not set, and on CI the Kafka tests must run: \
             run them with scripts/test, which starts a tansu broker and sets it"
        ),
        _ => None,
    }
}

/// A suffix no other run of this test (here or on a shared broker) uses.
fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}-{nanos}", std::process::id())
}

/// One message as read back: where it came from and what it held.
struct Received {
    topic: String,
    key: Option<Vec<u8>>,
    event: Event,
}

#[tokio::test(flavor = "multi_thread")]
async fn every_event_type_round_trips_through_its_family_topic() {
    let Some(brokers) = brokers() else {
        println!("skipped: set PATHFLOW_TEST_BROKERS or run scripts/test");
        return;
    };
    let suffix = unique_suffix();
    let topic_of = |family: Family| format!("{}.it-{suffix}", family.default_topic());
    let topics: Vec<String> = Family::ALL.iter().map(|&f| topic_of(f)).collect();

    let mut sent = sample::one_of_each();
    for family in Family::ALL {
        assert!(
            sent.iter().any(|e| e.family() == *family),
            "the sample has no {} event, so its topic would go untested",
            family.name()
        );
    }

    // Topics: the broker may not auto-create them.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("admin client");
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, 3, TopicReplication::Fixed(1)))
        .collect();
    let admin_options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)));
    let created = admin
        .create_topics(&new_topics, &admin_options)
        .await
        .unwrap_or_else(|e| panic!("create topics at {brokers}: {e}"));
    for result in created {
        if let Err((topic, code)) = result {
            panic!("create topic {topic} at {brokers}: {code}");
        }
    }

    // Produce every event to its family's topic, keyed by its entity.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer");
    for event in &sent {
        let topic = topic_of(event.family());
        let payload = serde_json::to_vec(event).expect("events serialise to JSON");
        let record = FutureRecord::to(&topic)
            .key(event.payload.key().as_str())
            .payload(&payload);
        if let Err((err, _)) = producer.send(record, Duration::from_secs(30)).await {
            panic!("produce {:?} to {topic}: {err}", event.event_type());
        }
    }

    // Consume all topics from the start in a group of our own.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("pathflow-it-{suffix}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topic_refs)
        .unwrap_or_else(|e| panic!("subscribe to {topic_refs:?}: {e}"));

    let deadline = Instant::now() + CONSUME_DEADLINE;
    let mut received: Vec<Received> = Vec::with_capacity(sent.len());
    let mut errors = Vec::new();
    while received.len() < sent.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(next) = tokio::time::timeout(left, consumer.recv()).await else {
            break;
        };
        match next {
            Ok(message) => {
                let payload = message.payload().unwrap_or_default();
                let event: Event = serde_json::from_slice(payload).unwrap_or_else(|e| {
                    panic!(
                        "message on {} is not an event ({e}): {}",
                        message.topic(),
                        String::from_utf8_lossy(payload)
                    )
                });
                received.push(Received {
                    topic: message.topic().to_string(),
                    key: message.key().map(<[u8]>::to_vec),
                    event,
                });
            }
            // Transient errors (e.g. during the group join) are retried by
            // librdkafka; keep them to explain a shortfall.
            Err(err) => errors.push(err.to_string()),
        }
    }
    assert_eq!(
        received.len(),
        sent.len(),
        "consumed {} of {} messages within {CONSUME_DEADLINE:?}; consumer errors: {errors:?}",
        received.len(),
        sent.len()
    );

    for message in &received {
        let event = &message.event;
        assert_eq!(
            message.topic,
            topic_of(event.family()),
            "{:?} came from the wrong topic",
            event.event_type()
        );
        assert_eq!(
            message.key.as_deref(),
            Some(event.payload.key().as_str().as_bytes()),
            "{:?} came with the wrong key",
            event.event_type()
        );
    }
    let mut got: Vec<Event> = received.into_iter().map(|m| m.event).collect();
    got.sort_by(|a, b| a.envelope.event_id.cmp(&b.envelope.event_id));
    sent.sort_by(|a, b| a.envelope.event_id.cmp(&b.envelope.event_id));
    assert_eq!(got, sent);
    println!(
        "round trip: {} events through {} topics at {brokers}",
        sent.len(),
        topics.len()
    );

    // Tidy a shared broker; a throwaway one is simply stopped.
    let _ = admin.delete_topics(&topic_refs, &admin_options).await;
}
