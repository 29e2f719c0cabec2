//! The HTTP push connector as a client sees it: requests over TCP to a
//! connector built from a real configuration, answers checked for their
//! status and the words that say what to fix, and the pushed events read back
//! from a real Kafka-protocol broker (tansu in CI). No answer may repeat
//! anything of the request body.
//!
//! Needs `PATHFLOW_TEST_BROKERS` (`scripts/test` starts tansu and sets it),
//! except the start-up check of the token.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pathflow_ingest::config::IngestConfig;
use pathflow_ingest::file_connector::Ingest;
use pathflow_ingest::http_connector;
use pathflow_ingest::kafka::ensure_topics;
use pathflow_ingest::sources::Outcome;
use pathflow_ingest::sources::fhir::read_bundle;
use pathflow_schemas::{Event, KeyId};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{Sim, collect_strings, consume_topics, test_brokers, unique};

const TOKEN: &str = "test-token-0123456789abcdef";
const KEY_ID: &str = "http-test";
/// A valid NHS number put into request bodies: no answer or message may hold it.
const NHS: &str = "9434765919";

/// A configured connector and what it was built from.
struct Connector {
    _dir: tempfile::TempDir,
    state_dir: PathBuf,
    ingest: Arc<Ingest>,
}

/// A connector for `brokers` with its own topics and key, the reference files
/// under `reference` (or empty ones), and the token read from a file (or
/// from the environment variable `token_env`).
fn connector(
    brokers: &str,
    reference: Option<&Path>,
    max_body_bytes: usize,
    token_env: Option<&str>,
) -> Connector {
    try_connector(brokers, reference, max_body_bytes, token_env).unwrap()
}

/// The connector of [`connector`], or why `Ingest::build` refused it.
fn try_connector(
    brokers: &str,
    reference: Option<&Path>,
    max_body_bytes: usize,
    token_env: Option<&str>,
) -> Result<Connector, pathflow_ingest::file_connector::IngestError> {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(path("key"), format!("{}\n", "ab12".repeat(16))).unwrap();
    std::fs::write(path("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(path("opt_out.csv"), "nhs_number\n").unwrap();
    std::fs::write(path("deprivation.csv"), "postcode,imd_decile\n").unwrap();
    let (opt_out, deprivation) = match reference {
        Some(r) => (
            r.join("national_data_opt_out.csv").display().to_string(),
            r.join("postcode_deprivation.csv").display().to_string(),
        ),
        None => (path("opt_out.csv"), path("deprivation.csv")),
    };
    let text = format!(
        r#"
state_dir = '{state}'
[kafka]
brokers = '{brokers}'
topic_prefix = '{prefix}'
partitions = 2
replication = 1
[pseudonymisation]
key = {{ file = '{key}' }}
key_id = '{KEY_ID}'
[reference]
opt_out = '{opt_out}'
postcode_deprivation = '{deprivation}'
[http]
listen = '127.0.0.1:0'
source = 'push:test'
token = {token}
max_body_bytes = {max_body_bytes}
"#,
        state = path("state"),
        prefix = unique("push"),
        key = path("key"),
        token = match token_env {
            None => format!("{{ file = '{}' }}", path("token")),
            Some(var) => format!("{{ env = '{var}' }}"),
        },
    );
    let cfg = IngestConfig::parse(&text, Path::new("ingest.toml")).unwrap();
    Ok(Connector {
        state_dir: dir.path().join("state"),
        ingest: Arc::new(Ingest::build(cfg)?),
        _dir: dir,
    })
}

/// Creates the topics and serves the push endpoints on a free port.
async fn start(c: &Connector) -> SocketAddr {
    ensure_topics(&c.ingest.config().kafka).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(http_connector::serve(listener, c.ingest.clone()));
    addr
}

/// What came back.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// How the body is sent.
#[derive(Clone, Copy)]
enum Body<'a> {
    /// With a `Content-Length`.
    Sized(&'a [u8]),
    /// `Transfer-Encoding: chunked`, in 1 KiB chunks, so no length is declared.
    Chunked(&'a [u8]),
}

/// One HTTP/1.1 request on its own connection.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Body<'_>,
) -> Answer {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        match body {
            Body::Sized(b) => head.push_str(&format!("Content-Length: {}\r\n", b.len())),
            Body::Chunked(_) => head.push_str("Transfer-Encoding: chunked\r\n"),
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        // The connector may answer (401, 413) without reading the body and
        // close: a write that fails then is expected.
        let _ = match body {
            Body::Sized(b) => stream.write_all(b).await,
            Body::Chunked(b) => {
                let mut wire = Vec::new();
                for chunk in b.chunks(1024) {
                    wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    wire.extend_from_slice(chunk);
                    wire.extend_from_slice(b"\r\n");
                }
                wire.extend_from_slice(b"0\r\n\r\n");
                stream.write_all(&wire).await
            }
        };
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        // Read until the connector closes (a reset after its answer is fine).
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
        }
        raw
    };
    let raw = tokio::time::timeout(Duration::from_secs(120), exchange)
        .await
        .expect("the connector answers within two minutes");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(body.len());
    Answer {
        status,
        headers,
        body: body.get(..length).unwrap_or(body).to_string(),
    }
}

/// A push with the right token.
async fn push(addr: SocketAddr, content_type: &str, body: &[u8]) -> Answer {
    let auth = format!("Bearer {TOKEN}");
    request(
        addr,
        "POST",
        "/v1/push",
        &[("Authorization", &auth), ("Content-Type", content_type)],
        Body::Sized(body),
    )
    .await
}

/// The sample events, stamped with the connector's key id, as NDJSON lines.
fn sample_events() -> Vec<Event> {
    pathflow_schemas::sample::one_of_each()
        .into_iter()
        .map(|mut e| {
            e.envelope.key_id = Some(KeyId::parse(KEY_ID).unwrap());
            e
        })
        .collect()
}

/// The count `/metrics` shows of push requests answered with `status`.
fn http_requests(ingest: &Ingest, status: u16) -> Option<u64> {
    let prefix = format!("pathflow_ingest_http_requests_total{{status=\"{status}\"}} ");
    ingest
        .metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn ndjson_events_are_accepted_and_reach_their_topics() {
    let Some(brokers) = test_brokers() else {
        println!("skipped: set PATHFLOW_TEST_BROKERS or run scripts/test");
        return;
    };
    let c = connector(&brokers, None, 1 << 20, None);
    let addr = start(&c).await;

    let events = sample_events();
    let mut lines: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    lines.push(String::new());
    // Line 21: an NHS number where a pseudonym belongs.
    let mut raw = serde_json::to_value(&events[0]).unwrap();
    raw["data"]["pathway_id"] = NHS.into();
    raw["event_id"] = "0".repeat(32).into();
    lines.push(raw.to_string());
    // Line 22: pseudonyms under another key.
    let mut other_key = serde_json::to_value(&events[1]).unwrap();
    other_key["key_id"] = "k2019old".into();
    other_key["event_id"] = "1".repeat(32).into();
    lines.push(other_key.to_string());
    let body = lines.join("\r\n") + "\r\n";

    let answer = push(addr, "application/x-ndjson", body.as_bytes()).await;
    assert_eq!(answer.status, 202, "{answer:?}");
    let json = answer.json();
    let n = events.len() as u64;
    for (key, want) in [
        ("accepted", n),
        ("rejected", 2),
        ("opted_out", 0),
        ("events", n),
    ] {
        assert_eq!(json[key], want, "{key} in {json}");
    }
    let request = json["request"].as_str().unwrap().to_string();
    assert!(
        request.starts_with("push-") && request.ends_with(".ndjson"),
        "{request}"
    );
    let errors: Vec<(u64, &str, &str)> = json["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["line"].as_u64().unwrap(),
                e["field"].as_str().unwrap(),
                e["problem"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        [
            (
                n + 2,
                "data.pathway_id",
                "is not a 32-character lowercase hex id"
            ),
            (n + 3, "key_id", "is not this connector's key id"),
        ]
    );
    assert!(!answer.body.contains(NHS) && !answer.body.contains("k2019old"));

    // On the topics: every event once, as sent; the two dead letters naming the request.
    let kafka = &c.ingest.config().kafka;
    let messages = consume_topics(&brokers, &kafka.topics(), events.len() + 2).await;
    assert_eq!(messages.len(), events.len() + 2);
    let mut seen = HashSet::new();
    let mut dead_letter_lines = Vec::new();
    let mut values = HashSet::new();
    for (topic, key, payload) in &messages {
        values.insert(String::from_utf8_lossy(key).into_owned());
        let json: Value = serde_json::from_slice(payload).unwrap();
        collect_strings(&json, &mut values);
        if *topic == kafka.dead_letter_topic() {
            assert_eq!(json["file"], request.as_str());
            assert_eq!(json["source"], "push:test");
            dead_letter_lines.push(json["line"].as_u64().unwrap());
            continue;
        }
        let event: Event = serde_json::from_slice(payload).unwrap();
        assert_eq!(*topic, kafka.topic(event.family()));
        assert!(events.contains(&event), "not what was sent: {event:?}");
        assert!(seen.insert(event.envelope.event_id.clone()));
    }
    assert_eq!(seen.len(), events.len());
    dead_letter_lines.sort_unstable();
    assert_eq!(dead_letter_lines, [n + 2, n + 3]);
    assert!(
        !values.iter().any(|v| v.contains(NHS)),
        "the NHS number reached a topic"
    );

    // The raw rejected lines stay in the connector's quarantine, under the request's name.
    let quarantined =
        std::fs::read_to_string(c.state_dir.join("quarantine/push_test").join(&request)).unwrap();
    assert_eq!(quarantined.lines().count(), 2, "{quarantined}");
    assert!(quarantined.contains(NHS));

    assert_eq!(http_requests(&c.ingest, 202), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_simulated_fhir_bundle_is_accepted() {
    let Some(brokers) = test_brokers() else {
        println!("skipped: set PATHFLOW_TEST_BROKERS or run scripts/test");
        return;
    };
    let sim = Sim::run("http-push", 0.01);
    let c = connector(&brokers, Some(&sim.out.join("reference")), 16 << 20, None);
    let addr = start(&c).await;

    let mut bundles: Vec<PathBuf> = std::fs::read_dir(sim.out.join("gp/fhir"))
        .unwrap()
        .flat_map(|practice| std::fs::read_dir(practice.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .collect();
    bundles.sort();
    let file = bundles.first().expect("the simulation writes FHIR bundles");
    let bytes = std::fs::read(file).unwrap();

    // What the FHIR reader makes of it (the counts do not depend on the key).
    let expected = read_bundle(&bytes, "bundle.json", &sim.cx("push:test"));
    let count = |f: fn(&Outcome) -> bool| expected.iter().filter(|(_, o)| f(o)).count() as u64;
    let accepted = count(|o| matches!(o, Outcome::Events(_)));
    let rejected = count(|o| matches!(o, Outcome::Rejected(_)));
    let opted_out = count(|o| matches!(o, Outcome::OptedOut));
    assert!(accepted > 0, "the bundle has no usable entry");

    let answer = push(addr, "application/fhir+json; charset=utf-8", &bytes).await;
    assert_eq!(answer.status, 202, "{answer:?}");
    let json = answer.json();
    assert_eq!(json["accepted"], accepted, "{json}");
    assert_eq!(json["rejected"], rejected, "{json}");
    assert_eq!(json["opted_out"], opted_out, "{json}");
    assert!(json["request"].as_str().unwrap().ends_with(".json"));
    for e in json["errors"].as_array().unwrap() {
        assert!(
            e["entry"].as_u64().is_some() && e["field"].is_string(),
            "{e}"
        );
    }

    let events = json["events"].as_u64().unwrap() as usize;
    let kafka = &c.ingest.config().kafka;
    let messages = consume_topics(&brokers, &kafka.topics(), events + rejected as usize).await;
    assert_eq!(messages.len(), events + rejected as usize);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_answered_saying_what_to_fix() {
    let Some(brokers) = test_brokers() else {
        println!("skipped: set PATHFLOW_TEST_BROKERS or run scripts/test");
        return;
    };
    let c = connector(&brokers, None, 2048, None);
    let addr = start(&c).await;

    let bearer = format!("Bearer {TOKEN}");
    let secret_line = format!("{{\"nhs_number\": \"{NHS}\", \"name\": \"Jane Smith\"}}\n");
    let big = secret_line.repeat(100);
    let not_json = format!("nhs_number={NHS}&name=Jane+Smith");
    let ndjson_not_json = format!("nhs_number,name\n{NHS},Jane Smith\n");
    let fhir = "application/fhir+json";
    let ndjson = "application/x-ndjson";
    // (what, method, path, headers, body, status, words the answer must have)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        Body<'a>,
        u16,
        Vec<&'a str>,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "no Authorization header",
            "POST",
            "/v1/push",
            vec![("Content-Type", ndjson)],
            Body::Sized(secret_line.as_bytes()),
            401,
            vec!["no Authorization header", "Bearer <token>"],
        ),
        (
            "a wrong token",
            "POST",
            "/v1/push",
            vec![
                ("Authorization", "Bearer not-the-token-at-all"),
                ("Content-Type", ndjson),
            ],
            Body::Sized(secret_line.as_bytes()),
            401,
            vec!["token is wrong", "Bearer <token>"],
        ),
        (
            "the Basic scheme",
            "POST",
            "/v1/push",
            vec![
                ("Authorization", "Basic dXNlcjpwYXNz"),
                ("Content-Type", ndjson),
            ],
            Body::Sized(secret_line.as_bytes()),
            401,
            vec!["does not use the Bearer scheme", "Bearer <token>"],
        ),
        (
            "a body over the limit",
            "POST",
            "/v1/push",
            vec![("Authorization", &bearer), ("Content-Type", ndjson)],
            Body::Sized(big.as_bytes()),
            413,
            vec!["2048 bytes", "split"],
        ),
        (
            "a chunked body over the limit",
            "POST",
            "/v1/push",
            vec![("Authorization", &bearer), ("Content-Type", fhir)],
            Body::Chunked(big.as_bytes()),
            413,
            vec!["2048 bytes", "split"],
        ),
        (
            "an empty body",
            "POST",
            "/v1/push",
            vec![("Authorization", &bearer), ("Content-Type", fhir)],
            Body::Sized(b""),
            400,
            vec!["empty", "Bundle"],
        ),
        (
            "a body that is not JSON",
            "POST",
            "/v1/push",
            vec![
                ("Authorization", &bearer),
                ("Content-Type", "application/json"),
            ],
            Body::Sized(not_json.as_bytes()),
            400,
            vec!["not valid JSON", "FHIR R4 Bundle"],
        ),
        (
            "NDJSON that is CSV",
            "POST",
            "/v1/push",
            vec![("Authorization", &bearer), ("Content-Type", ndjson)],
            Body::Sized(ndjson_not_json.as_bytes()),
            400,
            vec!["no line", "one JSON object per line"],
        ),
        (
            "a CSV content type",
            "POST",
            "/v1/push",
            vec![("Authorization", &bearer), ("Content-Type", "text/csv")],
            Body::Sized(ndjson_not_json.as_bytes()),
            415,
            vec![
                "Content-Type",
                "application/fhir+json",
                "application/x-ndjson",
            ],
        ),
        (
            "GET on the push path",
            "GET",
            "/v1/push",
            vec![("Authorization", &bearer)],
            Body::Sized(b""),
            405,
            vec!["only takes POST"],
        ),
        (
            "another path",
            "POST",
            "/v2/push",
            vec![("Authorization", &bearer), ("Content-Type", ndjson)],
            Body::Sized(secret_line.as_bytes()),
            404,
            vec!["no such endpoint", "/v1/push"],
        ),
    ];
    for (what, method, path, headers, body, status, words) in &cases {
        let answer = request(addr, method, path, headers, *body).await;
        assert_eq!(answer.status, *status, "{what}: {answer:?}");
        let json = answer.json();
        assert!(
            json["error"].is_string() && json["hint"].is_string(),
            "{what}: {json}"
        );
        for word in words {
            assert!(
                answer.body.contains(word),
                "{what}: no {word:?} in {}",
                answer.body
            );
        }
        for secret in [NHS, "Jane", TOKEN, "not-the-token", "dXNlcjpwYXNz"] {
            assert!(
                !answer.body.contains(secret),
                "{what}: the answer repeats the request: {}",
                answer.body
            );
        }
        if *status == 401 {
            assert!(
                answer
                    .header("WWW-Authenticate")
                    .is_some_and(|v| v.starts_with("Bearer")),
                "{what}: {answer:?}"
            );
        }
        if *status == 405 {
            assert_eq!(answer.header("Allow"), Some("POST"), "{what}");
        }
    }
    let health = request(addr, "GET", "/healthz", &[], Body::Sized(b"")).await;
    assert_eq!(health.status, 200, "{health:?}");

    // Every answer but the health check's is counted, by status.
    for (status, n) in [(401, 3), (413, 2), (400, 3), (415, 1), (405, 1), (404, 1)] {
        assert_eq!(http_requests(&c.ingest, status), Some(n), "status {status}");
    }
    assert_eq!(http_requests(&c.ingest, 200), None);
}

#[tokio::test]
async fn a_missing_token_stops_the_connector_before_it_answers() {
    // No broker is needed: the connector never gets as far as producing.
    // `Ingest::build` refuses, before anything listens or touches Kafka.
    let Err(e) = try_connector(
        "127.0.0.1:9",
        None,
        1024,
        Some("PATHFLOW_TEST_PUSH_TOKEN_NEVER_SET"),
    ) else {
        panic!("a connector started without its token");
    };
    let message = e.to_string();
    assert!(
        message.contains("PATHFLOW_TEST_PUSH_TOKEN_NEVER_SET") && message.contains("is not set"),
        "{message}"
    );
}
