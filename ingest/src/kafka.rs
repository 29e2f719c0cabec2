//! Kafka: topics and the producer. Events go as JSON to their family's topic,
//! keyed by the entity they belong to (so one pathway's events stay in
//! order); rejections go to the dead-letter topic. The producer is
//! idempotent (`enable.idempotence`, `acks=all`) and never gives up on a
//! message (`message.timeout.ms=0`): while the broker is down librdkafka
//! keeps retrying, and when its bounded queue is full, sending waits rather
//! than dropping or growing memory.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pathflow_schemas::{DEAD_LETTER_TOPIC, Event, Family};
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use serde::Deserialize;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::sources::Outcome;

/// Where and how to produce.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Prefix of the topic names: `<prefix>.referral`, … and `<prefix>.dead_letter`.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// Partitions of topics created at start-up (existing topics are left alone).
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of topics created at start-up.
    #[serde(default = "default_replication")]
    pub replication: i32,
    /// Messages the producer may hold in memory before sending waits.
    #[serde(default = "default_queue")]
    pub max_queued_messages: u32,
}

fn default_prefix() -> String {
    "pathflow".to_string()
}
fn default_partitions() -> i32 {
    6
}
fn default_replication() -> i32 {
    3
}
fn default_queue() -> u32 {
    100_000
}

impl KafkaConfig {
    /// A config for `brokers` with every default.
    pub fn new(brokers: &str) -> Self {
        KafkaConfig {
            brokers: brokers.to_string(),
            topic_prefix: default_prefix(),
            partitions: default_partitions(),
            replication: default_replication(),
            max_queued_messages: default_queue(),
        }
    }

    /// The topic of `family`.
    pub fn topic(&self, family: Family) -> String {
        format!("{}.{}", self.topic_prefix, family.name())
    }

    /// The dead-letter topic.
    pub fn dead_letter_topic(&self) -> String {
        let default_suffix = DEAD_LETTER_TOPIC.trim_start_matches("pathflow.");
        format!("{}.{default_suffix}", self.topic_prefix)
    }

    /// Every topic the connectors write.
    pub fn topics(&self) -> Vec<String> {
        let mut all: Vec<String> = Family::ALL.iter().map(|f| self.topic(*f)).collect();
        all.push(self.dead_letter_topic());
        all
    }
}

/// Producing failed in a way retrying will not mend.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The client could not be created (bad configuration).
    #[error(
        "cannot create a Kafka client for {brokers}: {source}; check `kafka.brokers` (host:port)"
    )]
    Client {
        /// The configured brokers.
        brokers: String,
        /// Why.
        source: KafkaError,
    },
    /// A topic could not be created.
    #[error(
        "cannot create topic {topic}: {code}; create it by hand or give the connector's user the right to"
    )]
    Topic {
        /// The topic.
        topic: String,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
    /// The admin request failed as a whole.
    #[error("cannot reach the brokers at {brokers} to create topics: {source}")]
    Admin {
        /// The configured brokers.
        brokers: String,
        /// Why.
        source: KafkaError,
    },
    /// The broker refused a message for good.
    #[error("the broker refused a message on {topic}: {source}")]
    Delivery {
        /// The topic.
        topic: String,
        /// Why.
        source: KafkaError,
    },
}

/// Creates the topics that do not exist yet (tansu and many clusters do not auto-create).
pub async fn ensure_topics(cfg: &KafkaConfig) -> Result<(), ProduceError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .create()
        .map_err(|source| ProduceError::Client {
            brokers: cfg.brokers.clone(),
            source,
        })?;
    let names = cfg.topics();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|t| NewTopic::new(t, cfg.partitions, TopicReplication::Fixed(cfg.replication)))
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&topics, &options)
        .await
        .map_err(|source| ProduceError::Admin {
            brokers: cfg.brokers.clone(),
            source,
        })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(ProduceError::Topic { topic, code }),
        }
    }
    Ok(())
}

/// What a batch of records produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records that became events.
    pub accepted: u64,
    /// Records rejected to the dead-letter topic.
    pub rejected: u64,
    /// Records dropped because the patient opted out.
    pub opted_out: u64,
    /// Events delivered.
    pub events: u64,
    /// Events skipped because an identical event (same id) was already sent in this batch.
    pub duplicates: u64,
    /// Records of a file acknowledged before a restart, counted above but not sent again.
    pub resumed: u64,
}

/// The idempotent producer of events and dead letters.
pub struct EventProducer {
    producer: ThreadedProducer<Deliveries>,
    /// Topic of each family, in `Family` declaration order (named once, not per event).
    topics: Vec<String>,
    dead_letters: String,
}

/// What the producer's delivery callback reports to: the metrics, and the
/// batch each message belongs to. A callback per message rather than a
/// future per message: no allocation or wake-up per message on the hot path.
struct Deliveries {
    metrics: Metrics,
    dead_letters: String,
}

/// One batch's messages awaiting acknowledgement.
#[derive(Default)]
struct Acks {
    pending: AtomicU64,
    /// The first permanent failure, if any.
    failure: Mutex<Option<(String, KafkaError)>>,
    settled: Notify,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Arc<Acks>;

    fn delivery(&self, result: &DeliveryResult<'_>, acks: Arc<Acks>) {
        match result {
            Ok(m) => {
                // librdkafka stamps each message when it is produced (CreateTime, ms).
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                let latency = m.timestamp().to_millis().map_or(Duration::ZERO, |t| {
                    Duration::from_millis(now.saturating_sub(t).max(0) as u64)
                });
                let dead_letter = m.topic() == self.dead_letters;
                self.metrics
                    .delivered(m.topic(), m.payload_len(), latency, dead_letter);
            }
            Err((e, m)) => {
                self.metrics.failed();
                let mut failure = acks.failure.lock().unwrap_or_else(|p| p.into_inner());
                failure.get_or_insert_with(|| (m.topic().to_string(), e.clone()));
            }
        }
        if acks.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            acks.settled.notify_one();
        }
    }
}

/// Hashes event ids, which are already uniformly spread keyed digests, by
/// folding their bits: SipHash over every id cost more than the lookup.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = (n as u64) ^ ((n >> 64) as u64);
    }
}

/// One source's records on their way to the broker (see [`EventProducer::sending`]).
pub struct Sending<'p> {
    producer: &'p EventProducer,
    counts: Counts,
    /// Ids of the events sent so far (as numbers: 16 bytes each, not a string).
    sent: HashSet<u128, BuildHasherDefault<IdHasher>>,
    acks: Arc<Acks>,
    /// Earlier generations of acks, each with the records it completes.
    marks: VecDeque<(u64, Arc<Acks>)>,
}

/// A chunk of records' messages serialised ahead of sending, so the JSON can
/// be written on the thread that parses while another thread produces.
#[derive(Debug, Default)]
pub struct Prepared {
    bytes: Vec<u8>,
    messages: Vec<PreparedMessage>,
    /// Where each record's messages start in `messages` (one entry a record, plus the end).
    starts: Vec<usize>,
}

#[derive(Debug)]
struct PreparedMessage {
    /// The family's topic index, or `None` for the dead-letter topic.
    topic: Option<usize>,
    /// The event id as a number (none for a dead letter).
    id: Option<u128>,
    key: std::ops::Range<usize>,
    payload: std::ops::Range<usize>,
}

impl Prepared {
    /// The messages of `outcomes`: each event's JSON on its family's topic,
    /// each rejection's on the dead-letter topic; opt-outs have none.
    pub fn of(outcomes: &[(crate::record::Location, Outcome)]) -> Prepared {
        let n = outcomes.len();
        let mut p = Prepared {
            bytes: Vec::with_capacity(n * 1200),
            messages: Vec::with_capacity(n * 3),
            starts: Vec::with_capacity(n + 1),
        };
        for (_, outcome) in outcomes {
            p.starts.push(p.messages.len());
            match outcome {
                Outcome::OptedOut => {}
                Outcome::Rejected(r) => {
                    let key = p.push(|b| {
                        use std::io::Write;
                        let _ = write!(b, "{}:{}", r.location.file, r.location.line);
                    });
                    // Serialising these plain structs into a Vec cannot fail.
                    let payload = p.push(|b| {
                        let _ = serde_json::to_writer(b, r);
                    });
                    p.messages.push(PreparedMessage {
                        topic: None,
                        id: None,
                        key,
                        payload,
                    });
                }
                Outcome::Events(events) => {
                    for event in events {
                        let key = p
                            .push(|b| b.extend_from_slice(event.payload.key().as_str().as_bytes()));
                        let payload = p.push(|b| {
                            let _ = serde_json::to_writer(b, event);
                        });
                        p.messages.push(PreparedMessage {
                            topic: Some(event.family() as usize),
                            id: u128::from_str_radix(event.envelope.event_id.as_str(), 16).ok(),
                            key,
                            payload,
                        });
                    }
                }
            }
        }
        p.starts.push(p.messages.len());
        p
    }

    fn push(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> std::ops::Range<usize> {
        let start = self.bytes.len();
        write(&mut self.bytes);
        start..self.bytes.len()
    }
}

impl Sending<'_> {
    /// Sends record `index` of a chunk whose messages `prepared` holds;
    /// `outcome` is that record's outcome (for the counts).
    pub async fn send_prepared(
        &mut self,
        outcome: &Outcome,
        prepared: &Prepared,
        index: usize,
    ) -> Result<(), ProduceError> {
        let p = self.producer;
        match outcome {
            Outcome::OptedOut => self.counts.opted_out += 1,
            Outcome::Rejected(_) => self.counts.rejected += 1,
            Outcome::Events(_) => self.counts.accepted += 1,
        }
        let (from, to) = (prepared.starts[index], prepared.starts[index + 1]);
        for m in &prepared.messages[from..to] {
            let topic = match m.topic {
                None => &p.dead_letters,
                Some(family) => {
                    // A duplicated source row repeats its events' ids: send them once.
                    if m.id.is_some_and(|id| !self.sent.insert(id)) {
                        self.counts.duplicates += 1;
                        continue;
                    }
                    self.counts.events += 1;
                    &p.topics[family]
                }
            };
            let (key, payload) = (
                &prepared.bytes[m.key.clone()],
                &prepared.bytes[m.payload.clone()],
            );
            p.enqueue(topic, key, payload, &self.acks).await?;
        }
        Ok(())
    }

    /// Counts a record acknowledged before a restart without sending it again
    /// (its event ids still count as sent, so a later duplicate is not sent).
    pub fn skip(&mut self, outcome: &Outcome) {
        self.counts.resumed += 1;
        match outcome {
            Outcome::OptedOut => self.counts.opted_out += 1,
            Outcome::Rejected(_) => self.counts.rejected += 1,
            Outcome::Events(events) => {
                self.counts.accepted += 1;
                for event in events {
                    if let Ok(id) = u128::from_str_radix(event.envelope.event_id.as_str(), 16) {
                        self.sent.insert(id);
                    }
                }
            }
        }
    }

    /// Marks the messages sent so far as those of the first `records`
    /// records: [`Sending::acknowledged`] says when the broker has them all.
    /// Sending goes on meanwhile (each mark starts a new generation of acks).
    pub fn mark(&mut self, records: u64) {
        let done = std::mem::take(&mut self.acks);
        self.marks.push_back((records, done));
    }

    /// The largest mark all of whose messages (and every earlier mark's) the
    /// broker has acknowledged, if one became so since the last call.
    pub fn acknowledged(&mut self) -> Result<Option<u64>, ProduceError> {
        let mut latest = None;
        while let Some((records, acks)) = self.marks.front() {
            if acks.pending.load(Ordering::Acquire) > 0 {
                break;
            }
            failed(acks)?;
            latest = Some(*records);
            self.marks.pop_front();
        }
        Ok(latest)
    }

    /// Waits until the broker has acknowledged every message sent, and counts them.
    pub async fn finish(self) -> Result<Counts, ProduceError> {
        for acks in self.marks.iter().map(|(_, a)| a).chain([&self.acks]) {
            loop {
                let settled = acks.settled.notified();
                if acks.pending.load(Ordering::Acquire) == 0 {
                    break;
                }
                settled.await;
            }
            failed(acks)?;
        }
        Ok(self.counts)
    }
}

/// The first permanent failure among `acks`' messages, as an error.
fn failed(acks: &Acks) -> Result<(), ProduceError> {
    let failure = acks
        .failure
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    match failure {
        Some((topic, source)) => Err(ProduceError::Delivery { topic, source }),
        None => Ok(()),
    }
}

impl EventProducer {
    /// A producer for `cfg`, reporting to `metrics`.
    pub fn new(cfg: &KafkaConfig, metrics: &Metrics) -> Result<Self, ProduceError> {
        let deliveries = Deliveries {
            metrics: metrics.clone(),
            dead_letters: cfg.dead_letter_topic(),
        };
        let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
            .set("bootstrap.servers", &cfg.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Never expire a message: an outage delays delivery, it does not lose records.
            .set("message.timeout.ms", "0")
            .set("linger.ms", "5")
            .set(
                "queue.buffering.max.messages",
                cfg.max_queued_messages.to_string(),
            )
            .create_with_context(deliveries)
            .map_err(|source| ProduceError::Client {
                brokers: cfg.brokers.clone(),
                source,
            })?;
        Ok(EventProducer {
            producer,
            topics: {
                debug_assert!(
                    Family::ALL
                        .iter()
                        .enumerate()
                        .all(|(i, f)| *f as usize == i)
                );
                Family::ALL.iter().map(|f| cfg.topic(*f)).collect()
            },
            dead_letters: cfg.dead_letter_topic(),
        })
    }

    /// Produces the events and dead letters of a batch of outcomes and waits
    /// until the broker has acknowledged every one of them.
    pub async fn produce(
        &self,
        outcomes: &[(crate::record::Location, Outcome)],
    ) -> Result<Counts, ProduceError> {
        let prepared = Prepared::of(outcomes);
        let mut sending = self.sending();
        for (index, (_, outcome)) in outcomes.iter().enumerate() {
            sending.send_prepared(outcome, &prepared, index).await?;
        }
        sending.finish().await
    }

    /// Starts sending one source's records, outcome by outcome. Memory is
    /// bounded by the producer's queue (`max_queued_messages`): when it is
    /// full, sending waits.
    pub fn sending(&self) -> Sending<'_> {
        Sending {
            producer: self,
            counts: Counts::default(),
            sent: HashSet::default(),
            acks: Arc::default(),
            marks: VecDeque::new(),
        }
    }

    /// Enqueues one message (librdkafka copies it), waiting while the queue is full.
    async fn enqueue(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        acks: &Arc<Acks>,
    ) -> Result<(), ProduceError> {
        acks.pending.fetch_add(1, Ordering::AcqRel);
        let mut record = BaseRecord::with_opaque_to(topic, acks.clone())
            .key(key)
            .payload(payload);
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.producer.context().metrics.enqueued();
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((source, _)) => {
                    // No delivery report will come for it.
                    acks.pending.fetch_sub(1, Ordering::AcqRel);
                    return Err(ProduceError::Delivery {
                        topic: topic.to_string(),
                        source,
                    });
                }
            }
        }
    }
}

// Serialising these types cannot fail (plain structs, string keys), so an
// empty payload below is unreachable rather than a silent loss.

/// An event as it goes on the wire.
pub fn event_json(event: &Event) -> Vec<u8> {
    serde_json::to_vec(event).unwrap_or_default()
}
