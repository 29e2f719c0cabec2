//! The whole ingest, as `pathflow ingest` runs it, over a whole simulated ICB
//! and against a real Kafka-protocol broker (tansu in CI):
//!
//! - every valid record's events arrive exactly once, every bad record is a
//!   dead letter naming its file, line and field, and the metrics say
//!   read = accepted + rejected + opted out;
//! - no identifier of the input is on any topic, in the metrics or in the log
//!   lines, and no event names an opted-out patient;
//! - ingesting the same files again (fresh checkpoints) adds no event id;
//! - a watched directory picks up a file dropped into it;
//! - the broker stopped mid-ingest and started again: every event arrives,
//!   none twice.
//!
//! Needs `PATHFLOW_TEST_BROKERS` (`scripts/test` starts tansu and sets it);
//! the restart test starts a tansu of its own and needs the `tansu` binary.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pathflow_ingest::config::IngestConfig;
use pathflow_ingest::file_connector::{FileReport, Ingest};
use pathflow_ingest::kafka::KafkaConfig;
use pathflow_ingest::metrics::MetricsConfig;
use pathflow_ingest::pseudonymise::{KeySource, Pseudonymiser};
use pathflow_schemas::{Event, KeyId, NhsNumber};
use pathflow_simulate::SimConfig;

mod common;
use common::{collect_strings, consume_within as consume, leaks, test_brokers as brokers, unique};

/// A made-up test key (64 hex digits), set in the environment of this test process.
const KEY_VAR: &str = "PATHFLOW_PIPELINE_TEST_KEY";
const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn simulate(out: &Path, population: u32, weeks: u32, bad_record_rate: f64) {
    let mut cfg = SimConfig::new(out.to_path_buf());
    cfg.population = population;
    cfg.weeks = weeks;
    cfg.run_in_weeks = weeks;
    cfg.bad_record_rate = bad_record_rate;
    pathflow_simulate::run(&cfg, &|_| {}).unwrap();
}

/// Every CSV connector of a simulated ICB: (source name, format, file under `out`).
fn csv_connectors(out: &Path) -> Vec<(String, &'static str, String)> {
    let mut all = vec![
        (
            "gp:appointments".to_string(),
            "gp_appointments",
            "gp/appointments.csv".to_string(),
        ),
        (
            "ers:advice".to_string(),
            "advice_and_guidance",
            "ers/advice_and_guidance.csv".to_string(),
        ),
    ];
    let mut providers: Vec<String> = std::fs::read_dir(out.join("pas"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    providers.sort();
    for p in providers {
        let lower = p.to_ascii_lowercase();
        for (feed, format) in [
            ("referrals", "pas_referrals"),
            ("outpatient_appointments", "pas_outpatient_appointments"),
            ("clinic_slots", "pas_clinic_slots"),
            ("followups", "pas_followups"),
        ] {
            all.push((
                format!("pas:{lower}:{feed}"),
                format,
                format!("pas/{p}/{feed}.csv"),
            ));
        }
    }
    all
}

/// A config for `connectors` (source, format, path, watch) under `state`.
fn config(
    brokers: &str,
    prefix: &str,
    out: &Path,
    state: &Path,
    connectors: &[(String, &str, PathBuf, bool)],
) -> IngestConfig {
    let mut text = format!(
        r#"state_dir = "{state}"
[kafka]
brokers = "{brokers}"
topic_prefix = "{prefix}"
partitions = 2
replication = 1
max_queued_messages = 20000
[pseudonymisation]
key = {{ env = "{KEY_VAR}" }}
key_id = "pipeline-test"
[reference]
opt_out = "{out}/reference/national_data_opt_out.csv"
postcode_deprivation = "{out}/reference/postcode_deprivation.csv"
"#,
        state = state.display(),
        out = out.display()
    );
    for (name, format, path, watch) in connectors {
        text.push_str(&format!(
            "[[connector]]\nname = \"{name}\"\nformat = \"{format}\"\npath = \"{}\"\nwatch = {watch}\npoll_seconds = 1\n",
            path.display()
        ));
    }
    IngestConfig::parse(&text, Path::new("pipeline.toml")).unwrap()
}

/// The pseudonymiser the connectors of these tests run with (the key of [`set_key`]).
fn pseudonymiser() -> Pseudonymiser {
    Pseudonymiser::load(
        &KeySource::Env(KEY_VAR.into()),
        KeyId::parse("pipeline-test").unwrap(),
    )
    .unwrap()
}

fn set_key() {
    // SAFETY: set before any thread of this test reads the environment; every
    // test of this file sets the same value.
    unsafe { std::env::set_var(KEY_VAR, KEY) };
}

/// The identifiers of every CSV source file: NHS numbers, UBRNs, hospital
/// numbers, postcodes and (20th-century, so never an event date) dates of birth.
fn csv_identifiers(out: &Path, files: &[String]) -> HashSet<String> {
    let mut ids = HashSet::new();
    for file in files {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .from_path(out.join(file))
            .unwrap();
        let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
        for record in reader.records().filter_map(Result::ok) {
            for (name, v) in header.iter().zip(record.iter()) {
                let wanted = match name.as_str() {
                    "nhs_number" | "ubrn" | "hospital_number" | "postcode" => v.len() >= 6,
                    "date_of_birth" => v.starts_with("19"),
                    _ => false,
                };
                if wanted {
                    ids.insert(v.to_string());
                }
            }
        }
    }
    ids
}

/// The NHS numbers, (20th-century) dates of birth and postcodes of the FHIR Bundles' Patients.
fn fhir_identifiers(dir: &Path) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let bundle: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            for e in bundle["entry"].as_array().unwrap() {
                let r = &e["resource"];
                if r["resourceType"] != "Patient" {
                    continue;
                }
                for v in [
                    &r["identifier"][0]["value"],
                    &r["birthDate"],
                    &r["address"][0]["postalCode"],
                ] {
                    if let Some(v) = v.as_str().filter(|v| !v.starts_with("20")) {
                        ids.insert(v.to_string());
                    }
                }
            }
        }
    }
    ids
}

fn free_address() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A plain HTTP/1.1 GET: status line, headers and body as text.
fn http_get(at: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(at).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

fn data_lines(path: &Path) -> u64 {
    std::fs::read_to_string(path).unwrap().lines().count() as u64 - 1
}

#[tokio::test(flavor = "multi_thread")]
async fn a_whole_icb_arrives_once_with_dead_letters_and_no_identifier() {
    let Some(brokers) = brokers() else {
        println!("skipped: set PATHFLOW_TEST_BROKERS or run scripts/test");
        return;
    };
    set_key();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    simulate(&out, 20_000, 4, 0.01);
    let csv = csv_connectors(&out);
    let mut connectors: Vec<_> = csv
        .iter()
        .map(|(name, format, file)| (name.clone(), *format, out.join(file), false))
        .collect();
    connectors.push(("gp:fhir".into(), "fhir_bundle", out.join("gp/fhir"), false));
    let prefix = unique("pipe");
    let cfg = config(
        &brokers,
        &prefix,
        &out,
        &dir.path().join("state"),
        &connectors,
    );
    let kafka: KafkaConfig = cfg.kafka.clone();
    let ingest = Ingest::build(cfg.clone()).unwrap();
    let reports = ingest.run_once().await.unwrap();
    let log: Vec<String> = reports.iter().map(FileReport::to_string).collect();

    // Every record of every file is accounted for, file by file.
    let file_of: HashMap<String, String> = csv
        .iter()
        .map(|(name, _, file)| (name.clone(), file.clone()))
        .collect();
    let (mut events, mut rejected, mut opted_out) = (0, 0, 0);
    let mut bundles = 0;
    for r in &reports {
        let c = r.counts.expect("a first run sends every file");
        if r.source == "gp:fhir" {
            // One outcome per Appointment and per free Slot; the FHIR reader's own
            // tests count them. The generator breaks no FHIR record.
            assert!(c.accepted > 0 && c.rejected == 0, "{r}");
            bundles += 1;
        } else {
            let lines = data_lines(&out.join(&file_of[&r.source]));
            assert_eq!(c.accepted + c.rejected + c.opted_out, lines, "{r}");
        }
        events += c.events;
        rejected += c.rejected;
        opted_out += c.opted_out;
    }
    assert!(
        events > 10_000 && rejected > 50 && opted_out > 50,
        "{log:?}"
    );
    assert!(bundles > 0, "the simulated ICB has FHIR practices: {log:?}");

    // The metrics agree: read = accepted + rejected + opted out, per source.
    let metrics = ingest.metrics().render();
    let metric = |name: &str, source: &str| -> u64 {
        let prefix = format!("{name}{{source=\"{source}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.parse().unwrap())
    };
    for source in csv.iter().map(|c| c.0.as_str()).chain(["gp:fhir"]) {
        let rejected: u64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("pathflow_ingest_records_rejected_total{")
                    && l.contains(&format!("source=\"{source}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(
            metric("pathflow_ingest_records_read_total", source),
            metric("pathflow_ingest_records_accepted_total", source)
                + rejected
                + metric("pathflow_ingest_records_opted_out_total", source),
            "{source}"
        );
    }

    // On the topics: each event once, on its family's topic, keyed by its entity;
    // each dead letter where the generator's answer key says a bad record is.
    let topics = kafka.topics();
    let messages = consume(
        &brokers,
        &topics,
        (events + rejected) as usize,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(messages.len() as u64, events + rejected);
    let mut ids = HashSet::new();
    let mut patients = HashSet::new();
    let mut dead: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for (topic, key, payload) in &messages {
        if *topic == kafka.dead_letter_topic() {
            let d: serde_json::Value = serde_json::from_slice(payload).unwrap();
            for field in ["source", "file", "line", "field", "problem", "rule"] {
                assert!(!d[field].is_null(), "dead letter without {field}: {d}");
            }
            let file = &file_of[d["source"].as_str().unwrap()];
            dead.entry(file.clone())
                .or_default()
                .insert(d["line"].as_u64().unwrap());
            continue;
        }
        let event: Event = serde_json::from_slice(payload).unwrap();
        assert_eq!(*topic, kafka.topic(event.family()));
        assert_eq!(key.as_slice(), event.payload.key().as_str().as_bytes());
        assert!(ids.insert(event.envelope.event_id.clone()), "event twice");
        if let Some(p) = event.payload.patient() {
            patients.insert(p.id.clone());
        }
    }
    let key = std::fs::read_to_string(out.join("bad_records.csv")).unwrap();
    let mut expected: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for l in key.lines().skip(1) {
        let f: Vec<&str> = l.split(',').collect();
        // A duplicated row is a valid record (sent once); opted-out patients'
        // broken rows are dropped, not quarantined.
        if f[2] != "duplicated_row" && file_of.values().any(|v| v == f[0]) {
            expected
                .entry(f[0].to_string())
                .or_default()
                .insert(f[1].parse().unwrap());
        }
    }
    for (file, lines) in &dead {
        let want = &expected[file];
        assert!(
            lines.is_subset(want),
            "{file}: dead letters not in the answer key: {:?}",
            lines.difference(want).take(5).collect::<Vec<_>>()
        );
        assert!(
            lines.len() * 10 >= want.len() * 9,
            "{file}: {} dead letters for {} bad records",
            lines.len(),
            want.len()
        );
    }

    // Opt-out: no event names an opted-out patient.
    let pseudonymiser = pseudonymiser();
    let opt_out_text =
        std::fs::read_to_string(out.join("reference/national_data_opt_out.csv")).unwrap();
    let opted: Vec<_> = opt_out_text
        .lines()
        .skip(1)
        .filter_map(|l| NhsNumber::parse(l.trim()).ok())
        .map(|n| pseudonymiser.patient(&n))
        .collect();
    assert!(opted.len() > 100);
    assert!(
        !opted.iter().any(|p| patients.contains(p)),
        "an opted-out patient's event reached a topic"
    );

    // Privacy: no identifier on any topic (dead letters included), in the
    // metrics or in the log lines.
    let files: Vec<String> = csv.iter().map(|(_, _, f)| f.clone()).collect();
    let mut identifiers = csv_identifiers(&out, &files);
    let fhir_patients = fhir_identifiers(&out.join("gp/fhir"));
    assert!(!fhir_patients.is_empty());
    identifiers.extend(fhir_patients);
    assert!(identifiers.len() > 10_000);
    let mut values: HashSet<String> = HashSet::new();
    for (_, key, payload) in &messages {
        values.insert(String::from_utf8_lossy(key).into_owned());
        collect_strings(&serde_json::from_slice(payload).unwrap(), &mut values);
    }
    values.extend(metrics.lines().map(String::from));
    values.extend(log.iter().cloned());
    let leaked = leaks(&identifiers, &values);
    assert!(leaked.is_empty(), "identifiers leaked, e.g. {leaked:?}");

    // The same files again, with fresh checkpoints: no new event id.
    let mut again_cfg = cfg.clone();
    again_cfg.state_dir = dir.path().join("state-again");
    let again = Ingest::build(again_cfg).unwrap();
    again.run_once().await.unwrap();
    let messages = consume(
        &brokers,
        &topics,
        2 * (events + rejected) as usize,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(messages.len() as u64, 2 * (events + rejected));
    let new: Vec<_> = messages
        .iter()
        .filter(|(t, ..)| *t != kafka.dead_letter_topic())
        .map(|(_, _, p)| {
            serde_json::from_slice::<Event>(p)
                .unwrap()
                .envelope
                .event_id
        })
        .filter(|id| !ids.contains(id))
        .take(3)
        .collect();
    assert!(new.is_empty(), "re-ingesting made new event ids: {new:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watched_directory_sends_files_dropped_into_it() {
    let Some(brokers) = brokers() else {
        println!("skipped: set PATHFLOW_TEST_BROKERS or run scripts/test");
        return;
    };
    set_key();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    simulate(&out, 5_000, 2, 0.0);
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let prefix = unique("watch");
    let cfg = config(
        &brokers,
        &prefix,
        &out,
        &dir.path().join("state"),
        &[(
            "ers:advice".into(),
            "advice_and_guidance",
            inbox.clone(),
            true,
        )],
    );
    let topics = cfg.kafka.topics();
    let mut cfg = cfg;
    let metrics_at = free_address();
    cfg.metrics = Some(MetricsConfig { listen: metrics_at });
    let ingest = Arc::new(Ingest::build(cfg).unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = reports.clone();
    let task = tokio::spawn(ingest.clone().run(
        async {
            let _ = stopped.await;
        },
        move |r: &FileReport| seen.lock().unwrap().push(r.to_string()),
    ));

    // A file being copied in is invisible under its temporary name; renamed, it is sent.
    let source = out.join("ers/advice_and_guidance.csv");
    std::fs::copy(&source, inbox.join("ag-week1.csv.part")).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(reports.lock().unwrap().is_empty(), "a .part file was read");
    std::fs::rename(inbox.join("ag-week1.csv.part"), inbox.join("ag-week1.csv")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while reports.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = reports.lock().unwrap().clone();
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].contains("ag-week1.csv") && log[0].contains("records read"));
    // Unchanged, it is not sent again on later looks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(reports.lock().unwrap().len(), 1);

    // What Prometheus would scrape, over HTTP.
    let lines = data_lines(&out.join("ers/advice_and_guidance.csv"));
    let scraped = http_get(metrics_at, "/metrics");
    assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
    for want in [
        format!("pathflow_ingest_records_read_total{{source=\"ers:advice\"}} {lines}"),
        "pathflow_ingest_files_total{outcome=\"sent\",source=\"ers:advice\"} 1".to_string(),
        "pathflow_ingest_produce_latency_seconds_count".to_string(),
        "pathflow_ingest_in_flight_messages 0".to_string(),
    ] {
        assert!(scraped.contains(&want), "no {want} in\n{scraped}");
    }
    let _ = stop.send(());
    task.await.unwrap().unwrap();

    let messages = consume(&brokers, &topics, 1, Duration::from_secs(30)).await;
    assert!(
        messages.len() as u64 >= lines,
        "{} messages for {lines} records",
        messages.len()
    );
}

/// A tansu broker of the test's own, persisting to SQLite so it can be
/// stopped and started again with its data.
struct Broker {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

fn tansu_bin() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([home.join(".cargo/bin")]);
    candidates.map(|d| d.join("tansu")).find(|p| p.is_file())
}

impl Broker {
    fn start(bin: PathBuf, dir: PathBuf) -> Broker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut b = Broker {
            bin,
            dir,
            port,
            child: None,
        };
        b.resume();
        b
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn resume(&mut self) {
        let url = format!("tcp://{}", self.address());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .unwrap();
        let child = Command::new(&self.bin)
            .current_dir(&self.dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "sqlite://tansu.db",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(self.address()).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_outage_mid_ingest_loses_nothing_and_duplicates_nothing() {
    if brokers().is_none() {
        println!("skipped: set PATHFLOW_TEST_BROKERS or run scripts/test");
        return;
    }
    let Some(bin) = tansu_bin() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "tansu is not installed; .ci/run installs it"
        );
        println!("skipped: tansu is not installed");
        return;
    };
    set_key();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    simulate(&out, 60_000, 8, 0.0);
    let broker_dir = dir.path().join("broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let mut broker = Broker::start(bin, broker_dir);
    let cfg = config(
        &broker.address(),
        "outage",
        &out,
        &dir.path().join("state"),
        &[(
            "gp:appointments".into(),
            "gp_appointments",
            out.join("gp/appointments.csv"),
            false,
        )],
    );
    let dead_letters = cfg.kafka.dead_letter_topic();
    let topics: Vec<String> = cfg
        .kafka
        .topics()
        .into_iter()
        .filter(|t| *t != dead_letters)
        .collect();
    let ingest = Arc::new(Ingest::build(cfg).unwrap());
    let running = ingest.clone();
    let task = tokio::spawn(async move { running.run_once().await });

    // Stop the broker once the first acknowledgements are in, with more to send.
    let delivered = |text: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with("pathflow_ingest_events_produced_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered(&ingest.metrics().render()) == 0 {
        assert!(Instant::now() < deadline, "nothing was delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.stop();
    let at_stop = delivered(&ingest.metrics().render());
    assert!(
        !task.is_finished(),
        "the ingest finished before the broker stopped"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !task.is_finished(),
        "the ingest gave up while the broker was down"
    );
    broker.resume();
    let reports = tokio::time::timeout(Duration::from_secs(300), task)
        .await
        .expect("the ingest finishes once the broker is back")
        .unwrap()
        .unwrap();
    let counts = reports[0].counts.unwrap();
    assert!(
        at_stop < counts.events,
        "stopped after {at_stop} of {}",
        counts.events
    );

    let messages = consume(
        &broker.address(),
        &topics,
        counts.events as usize,
        Duration::from_secs(120),
    )
    .await;
    let mut ids = HashSet::new();
    for (_, _, payload) in &messages {
        let event: Event = serde_json::from_slice(payload).unwrap();
        assert!(
            ids.insert(event.envelope.event_id.clone()),
            "event {} arrived twice",
            event.envelope.event_id
        );
    }
    assert_eq!(ids.len() as u64, counts.events, "every event arrived");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_mid_file_resumes_after_its_last_checkpoint() {
    let Some(brokers) = brokers() else {
        println!("skipped: set PATHFLOW_TEST_BROKERS or run scripts/test");
        return;
    };
    set_key();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    simulate(&out, 60_000, 8, 0.0);
    let book = out.join("gp/appointments.csv");
    let mut cfg = config(
        &brokers,
        &unique("resume"),
        &out,
        &dir.path().join("state"),
        &[(
            "gp:appointments".into(),
            "gp_appointments",
            book.clone(),
            false,
        )],
    );
    cfg.checkpoint_every_records = 1_000;
    let dead_letters = cfg.kafka.dead_letter_topic();
    let topics: Vec<String> = cfg
        .kafka
        .topics()
        .into_iter()
        .filter(|t| *t != dead_letters)
        .collect();
    let checkpoint_file = dir.path().join("state/checkpoints/gp_appointments.json");
    let checkpoint = || -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(&checkpoint_file).ok()?;
        let all: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some(all[book.display().to_string()].clone())
    };

    // A first run, stopped as a crash would stop it, a few checkpoints in.
    let first = Arc::new(Ingest::build(cfg.clone()).unwrap());
    let running = first.clone();
    let task = tokio::spawn(async move { running.run_once().await });
    let deadline = Instant::now() + Duration::from_secs(120);
    while checkpoint()
        .and_then(|c| c["records"].as_u64())
        .is_none_or(|n| n < 5_000)
    {
        assert!(Instant::now() < deadline, "no checkpoint was written");
        assert!(
            !task.is_finished(),
            "the file was sent before it could be stopped"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    task.abort();
    let _ = task.await;
    drop(first);
    let resumed_at = checkpoint().unwrap()["records"]
        .as_u64()
        .expect("the file is still in progress");

    // The restart resumes after the checkpoint and finishes the file.
    let second = Ingest::build(cfg).unwrap();
    let reports = second.run_once().await.unwrap();
    let counts = reports[0].counts.unwrap();
    assert_eq!(counts.resumed, resumed_at, "{}", reports[0]);
    assert_eq!(
        counts.accepted + counts.rejected + counts.opted_out,
        data_lines(&book)
    );
    assert!(
        reports[0]
            .to_string()
            .contains("already acknowledged before a restart")
    );
    assert!(checkpoint().unwrap().is_string(), "the file is marked sent");

    // What should be on the topics: the events of every record, read the same way.
    let pseudonymiser = pseudonymiser();
    let opt_out = pathflow_ingest::reference::OptOutList::load(
        &out.join("reference/national_data_opt_out.csv"),
    )
    .unwrap();
    let deprivation = pathflow_ingest::reference::DeprivationLookup::load(
        &out.join("reference/postcode_deprivation.csv"),
    )
    .unwrap();
    let cx = pathflow_ingest::sources::Context {
        pseudonymiser: &pseudonymiser,
        opt_out: &opt_out,
        deprivation: &deprivation,
        source: pathflow_schemas::SourceName::parse("gp:appointments").unwrap(),
        recorded_at: chrono::Utc::now(),
    };
    let outcomes = pathflow_ingest::sources::read_csv::<
        pathflow_ingest::sources::gp_appointments::GpAppointments,
        _,
    >(std::fs::File::open(&book).unwrap(), "appointments.csv", &cx);
    let ids_of = |outcomes: &[(
        pathflow_ingest::record::Location,
        pathflow_ingest::sources::Outcome,
    )]| {
        let mut ids = HashSet::new();
        for (_, o) in outcomes {
            if let pathflow_ingest::sources::Outcome::Events(events) = o {
                ids.extend(events.iter().map(|e| e.envelope.event_id.clone()));
            }
        }
        ids
    };
    let all = ids_of(&outcomes);
    let before = ids_of(&outcomes[..resumed_at as usize]);

    let messages = consume(&brokers, &topics, all.len(), Duration::from_secs(120)).await;
    let mut seen: HashMap<_, usize> = HashMap::new();
    for (_, _, payload) in &messages {
        let event: Event = serde_json::from_slice(payload).unwrap();
        *seen.entry(event.envelope.event_id).or_default() += 1;
    }
    let missing = all.iter().filter(|id| !seen.contains_key(*id)).count();
    assert_eq!(missing, 0, "events skipped by the restart");
    let resent = before.iter().filter(|id| seen[*id] > 1).count();
    assert_eq!(
        resent, 0,
        "acknowledged events sent again after the restart"
    );
}
