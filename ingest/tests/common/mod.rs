//! What the ingest integration tests share: one simulated ICB read the way a
//! connector reads it, and the JSON walk of the privacy scans.
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use chrono::Utc;
use pathflow_ingest::pseudonymise::Pseudonymiser;
use pathflow_ingest::record::Location;
use pathflow_ingest::reference::{DeprivationLookup, OptOutList};
use pathflow_ingest::sources::{Context, CsvFormat, Outcome, read_csv};
use pathflow_schemas::{NhsNumber, SourceName};
use pathflow_simulate::SimConfig;

/// One simulated ICB and what a connector reads it with.
pub struct Sim {
    _dir: tempfile::TempDir,
    pub out: PathBuf,
    pub pseudonymiser: Pseudonymiser,
    pub opt_out: OptOutList,
    pub deprivation: DeprivationLookup,
    /// `bad_records.csv`: the generator's list of the records it broke.
    pub answer_key: String,
}

pub type Outcomes = Vec<(Location, Outcome)>;

impl Sim {
    /// Four weeks of a 20,000-patient ICB with a share `bad_record_rate` of bad rows;
    /// `label` seeds the test key.
    pub fn run(label: &str, bad_record_rate: f64) -> Sim {
        Sim::run_with(label, |cfg| cfg.bad_record_rate = bad_record_rate)
    }

    pub fn cx(&self, feed: &str) -> Context<'_> {
        Context {
            pseudonymiser: &self.pseudonymiser,
            opt_out: &self.opt_out,
            deprivation: &self.deprivation,
            source: SourceName::parse(feed).unwrap(),
            recorded_at: Utc::now(),
        }
    }

    pub fn read<F: CsvFormat>(&self, file: &str, cx: &Context<'_>) -> Outcomes {
        read_csv::<F, _>(std::fs::File::open(self.out.join(file)).unwrap(), file, cx)
    }

    pub fn text(&self, file: &str) -> String {
        std::fs::read_to_string(self.out.join(file)).unwrap()
    }

    /// The answer key's entries for `file`: (line, kind, field).
    pub fn bad_records(&self, file: &str) -> Vec<(u64, String, String)> {
        self.answer_key
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[0] == file).then(|| (f[1].parse().unwrap(), f[2].to_string(), f[3].to_string()))
            })
            .collect()
    }

    /// Lines of `file` the answer key lists as broken (a duplicated row is valid).
    pub fn rejectable_lines(&self, file: &str) -> BTreeSet<u64> {
        self.bad_records(file)
            .into_iter()
            .filter(|(_, kind, _)| kind != "duplicated_row")
            .map(|(line, _, _)| line)
            .collect()
    }

    /// Whether a parsed row's patient opted out.
    pub fn row_opted_out(&self, row: &HashMap<String, String>) -> bool {
        NhsNumber::parse(&row["nhs_number"]).is_ok_and(|nhs| self.opt_out.contains(&nhs))
    }

    /// Whether `line`'s patient (the `nhs_number` field, when valid) opted out.
    pub fn opted_out(&self, header: &[&str], line: &str) -> bool {
        let Some(i) = header.iter().position(|h| *h == "nhs_number") else {
            return false;
        };
        line.split(',')
            .nth(i)
            .and_then(|v| NhsNumber::parse(v).ok())
            .is_some_and(|nhs| self.opt_out.contains(&nhs))
    }
}

/// Every string and number in a JSON value, as text.
pub fn collect_strings(v: &serde_json::Value, out: &mut HashSet<String>) {
    match v {
        serde_json::Value::String(s) => {
            out.insert(s.clone());
        }
        serde_json::Value::Number(n) => {
            out.insert(n.to_string());
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}

/// The data lines of `file` as records by column name, with their line numbers.
pub fn rows(sim: &Sim, file: &str) -> Vec<(u64, HashMap<String, String>)> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(sim.out.join(file))
        .unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    reader
        .records()
        .filter_map(Result::ok)
        .map(|r| {
            let line = r.position().unwrap().line() + 1;
            let row = header
                .iter()
                .cloned()
                .zip(r.iter().map(String::from))
                .collect();
            (line, row)
        })
        .collect()
}

/// Every string and number in the events and rejections of `outcomes`.
pub fn output_values(outcomes: &Outcomes) -> HashSet<String> {
    let mut values = HashSet::new();
    for (_, o) in outcomes {
        let json = match o {
            Outcome::Events(events) => serde_json::to_value(events).unwrap(),
            Outcome::Rejected(r) => serde_json::to_value(r).unwrap(),
            Outcome::OptedOut => continue,
        };
        collect_strings(&json, &mut values);
    }
    values
}

/// Up to five of `values` that hold one of `identifiers`. Pseudonyms and event
/// ids (32 hex digits) are checked whole; other text also inside, by looking up
/// each of its substrings of an identifier's length (a GP book has tens of
/// thousands of identifiers to look for).
pub fn leaks<'a>(identifiers: &HashSet<String>, values: &'a HashSet<String>) -> Vec<&'a String> {
    let lengths: BTreeSet<usize> = identifiers.iter().map(String::len).collect();
    let ids: HashSet<&[u8]> = identifiers.iter().map(|id| id.as_bytes()).collect();
    values
        .iter()
        .filter(|v| {
            let bytes = v.as_bytes();
            if v.len() == 32 && bytes.iter().all(u8::is_ascii_hexdigit) {
                return ids.contains(bytes);
            }
            lengths
                .iter()
                .any(|&n| bytes.windows(n).any(|w| ids.contains(w)))
        })
        .take(5)
        .collect()
}

impl Sim {
    /// Four weeks of a 20,000-patient ICB without bad records, after
    /// `configure` adjusts the run (say, its FHIR share or bad-record rate);
    /// `label` seeds the test key.
    pub fn run_with(label: &str, configure: impl FnOnce(&mut SimConfig)) -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SimConfig::new(dir.path().join("out"));
        cfg.population = 20_000;
        cfg.weeks = 4;
        cfg.run_in_weeks = 4;
        cfg.bad_record_rate = 0.0;
        configure(&mut cfg);
        pathflow_simulate::run(&cfg, &|_| {}).unwrap();
        let out = cfg.out.clone();
        Sim {
            pseudonymiser: Pseudonymiser::for_tests(label),
            opt_out: OptOutList::load(&out.join("reference/national_data_opt_out.csv")).unwrap(),
            deprivation: DeprivationLookup::load(&out.join("reference/postcode_deprivation.csv"))
                .unwrap(),
            answer_key: std::fs::read_to_string(out.join("bad_records.csv")).unwrap_or_default(),
            out,
            _dir: dir,
        }
    }

    /// The files under `dir` (relative to the output), as relative paths, sorted.
    pub fn files_under(&self, dir: &str) -> Vec<String> {
        fn walk(root: &std::path::Path, at: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(at).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(root, &path, out);
                } else {
                    let rel = path.strip_prefix(root).unwrap();
                    out.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.out, &self.out.join(dir), &mut out);
        out.sort();
        out
    }
}

/// The broker of the Kafka tests (`PATHFLOW_TEST_BROKERS`), or `None` to skip
/// them; on CI (`CI` set) a missing broker is a failure, not a skip.
pub fn test_brokers() -> Option<String> {
    match std::env::var("PATHFLOW_TEST_BROKERS") {
        Ok(b) if !b.trim().is_empty() => Some(b),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "PATHFLOW_TEST_BROKERS is not set, and on CI the Kafka tests must run: use scripts/test"
            )
        }
        _ => None,
    }
}

/// A name no earlier run used: for topic prefixes and consumer groups.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}{nanos}")
}

/// One consumed message: topic, key and payload.
pub type Message = (String, Vec<u8>, Vec<u8>);

/// Reads every message on `topics` from the start until `want` have arrived
/// (or a minute passes), then listens two seconds more for any extra.
pub async fn consume_topics(brokers: &str, topics: &[String], want: usize) -> Vec<Message> {
    consume_within(brokers, topics, want, std::time::Duration::from_secs(60)).await
}

/// [`consume_topics`], waiting up to `patience` for the `want` messages.
pub async fn consume_within(
    brokers: &str,
    topics: &[String],
    want: usize,
    patience: std::time::Duration,
) -> Vec<Message> {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Message as _;
    use std::time::{Duration, Instant};

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("pathflow-test-"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&refs).unwrap();
    let take = |m: &rdkafka::message::BorrowedMessage<'_>| {
        (
            m.topic().to_string(),
            m.key().unwrap_or_default().to_vec(),
            m.payload().unwrap_or_default().to_vec(),
        )
    };
    let deadline = Instant::now() + patience;
    let mut got = Vec::new();
    while got.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(next) = tokio::time::timeout(left, consumer.recv()).await else {
            break;
        };
        if let Ok(m) = next {
            got.push(take(&m));
        }
    }
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await {
        got.push(take(&m));
    }
    got
}
