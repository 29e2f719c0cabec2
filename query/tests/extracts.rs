//! Scheduled extracts as a commissioner meets them: files on time, once per
//! slot, matching the SQL after disclosure control, with a manifest whose
//! checksum holds; failures counted and logged without stopping the others;
//! an XLSX another program reads as numbers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Timelike, Utc};
use pathflow_query::disclosure;
use pathflow_query::extract::{self, ExtractConfig, Format, Manifest, Slot};
use pathflow_query::schedule::{ExtractMetrics, Log, Outcome, Scheduler};
use pathflow_query::testing::{self, engine, token};
use pathflow_query::{Engine, Role};
use sha2::{Digest, Sha256};

fn shared_tables() -> &'static Path {
    static TABLES: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    testing::tables_once(&TABLES, 8_000, 4)
}

/// Referrals and A&G requests by provider and specialty: many small counts.
const SQL: &str = "SELECT provider, treatment_function, \
     CAST(sum(referrals_received) AS BIGINT) AS referrals, \
     CAST(sum(advice_requests) AS BIGINT) AS advice \
     FROM demand_weekly WHERE provider IS NOT NULL \
     GROUP BY provider, treatment_function ORDER BY provider, treatment_function";

fn extract(name: &str, schedule: &str, format: Format, destination: &Path) -> ExtractConfig {
    ExtractConfig {
        name: name.into(),
        schedule: schedule.into(),
        time_zone: "Europe/London".into(),
        sql: SQL.into(),
        format,
        destination: destination.to_str().unwrap().into(),
        state_dir: None,
        disclosure: true,
        count_columns: vec!["referrals".into(), "advice".into()],
        rate_columns: vec![],
        total_columns: vec![],
        total_rows: None,
    }
}

/// A log that keeps its lines.
fn capture() -> (Log, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&lines);
    let log: Log = Arc::new(move |l: &str| {
        eprintln!("{l}");
        keep.lock().unwrap().push(l.to_string());
    });
    (log, lines)
}

const COMMISSIONER: &str = "test-commissioner-token";

/// The rows the same SQL gives over HTTP (`POST /v1/sql`, Arrow IPC, a
/// commissioner's token: the role extracts query as), after disclosure
/// control.
async fn expected(engine: &Arc<Engine>, cfg: &ExtractConfig) -> RecordBatch {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(pathflow_query::http::serve_http(
        Arc::clone(engine),
        listener,
        std::future::pending(),
    ));
    let sql = cfg.sql.clone();
    let body = tokio::task::spawn_blocking(move || {
        let response = reqwest::blocking::Client::new()
            .post(format!("http://{addr}/v1/sql"))
            .bearer_auth(COMMISSIONER)
            .header("accept", "application/vnd.apache.arrow.stream")
            .body(sql)
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        response.bytes().unwrap()
    })
    .await
    .unwrap();
    server.abort();
    let reader = arrow::ipc::reader::StreamReader::try_new(&body[..], None).unwrap();
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    disclosure::apply(&cfg.spec(), &schema, &batches).unwrap().0
}

fn rows_of(batches: Vec<RecordBatch>) -> Vec<String> {
    let schema = batches[0].schema();
    testing::rows(&pathflow_query::QueryOutput {
        schema,
        rows: batches.iter().map(|b| b.num_rows()).sum(),
        batches,
        tables: Default::default(),
    })
}

fn manifests(dir: &Path) -> Vec<(PathBuf, Manifest)> {
    let mut out: Vec<(PathBuf, Manifest)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".manifest.json"))
        .map(|p| {
            let m = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            (p, m)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn checked_file(dir: &Path, manifest: &Manifest) -> Vec<u8> {
    let bytes = std::fs::read(dir.join(&manifest.file)).unwrap();
    let sum: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(sum, manifest.sha256, "{}: checksum", manifest.file);
    bytes
}

/// The data sheet as `|`-joined rows (sorted), after checking with
/// openpyxl that every cell of `numeric` columns is a number.
fn xlsx_rows(path: &Path, numeric: &[&str]) -> (Vec<String>, String) {
    let script = r#"
import sys, openpyxl
book = openpyxl.load_workbook(sys.argv[1])
data, notes = book["data"], book["notes"]
rows = list(data.iter_rows(values_only=True))
header = rows[0]
numeric = sys.argv[2].split(",")
for r in rows[1:]:
    for name, v in zip(header, r):
        if name in numeric and v is not None and not isinstance(v, (int, float)):
            sys.exit(f"{name}: {v!r} is {type(v).__name__}, not a number")
def show(v):
    if v is None: return ""
    if isinstance(v, float) and v.is_integer(): return str(int(v))
    return str(v)
for r in rows[1:]:
    print("|".join(show(v) for v in r))
print("NOTES", " ".join(str(c.value) for c in notes["A"] if c.value))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .arg(numeric.join(","))
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "openpyxl could not read {} ({stderr}); install it with `python3 -m pip install openpyxl`",
        path.display()
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut rows = Vec::new();
    let mut notes = String::new();
    for line in text.lines() {
        match line.strip_prefix("NOTES ") {
            Some(n) => notes = n.to_string(),
            None => rows.push(line.to_string()),
        }
    }
    rows.sort();
    (rows, notes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extract_on_a_schedule_delivers_csv_parquet_and_xlsx_matching_the_sql() {
    let tokens = vec![token("icb", COMMISSIONER, Role::Commissioner, &[], &[])];
    let (e, reloader) = engine(shared_tables(), tokens, |_| {}).await;
    let out = tempfile::tempdir().unwrap();
    // Every two seconds: a seconds-resolution cron, so the test is quick.
    let every = "*/2 * * * * *";
    let extracts: Vec<ExtractConfig> = [Format::Csv, Format::Parquet, Format::Xlsx]
        .into_iter()
        .map(|f| {
            let name = format!("demand-{}", f.extension());
            let dir = out.path().join(f.extension());
            extract(&name, every, f, &dir)
        })
        .collect();
    let metrics = ExtractMetrics::register(e.metrics().registry()).unwrap();
    let (log, _lines) = capture();
    let scheduler = Arc::new(Scheduler::new(
        Arc::clone(&e),
        extracts.clone(),
        metrics,
        log,
    ));
    let started = Utc::now();
    let task = Arc::clone(&scheduler).spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while extracts
        .iter()
        .any(|x| manifests(Path::new(&x.destination)).is_empty())
    {
        assert!(std::time::Instant::now() < deadline, "no files within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    task.abort();
    reloader.abort();

    let want = expected(&e, &extracts[0]).await;
    // The result has small counts: disclosure control had work to do.
    let shown = rows_of(vec![want.clone()]);
    assert!(shown.iter().any(|r| r.ends_with('|')), "{shown:?}");
    let want = rows_of(vec![want]);
    for x in &extracts {
        let dir = Path::new(&x.destination);
        let (_, m) = manifests(dir).remove(0);
        // On a slot of the schedule, after the scheduler started.
        let slot: DateTime<Utc> = m.scheduled_slot.parse().unwrap();
        assert_eq!(slot.second() % 2, 0, "{slot}");
        assert!(slot > started - chrono::Duration::seconds(1), "{slot}");
        assert_eq!(m.trigger, "schedule");
        assert_eq!(m.sql, SQL);
        assert_eq!(m.extract, x.name);
        assert!(m.tables.contains_key("demand_weekly"), "{:?}", m.tables);
        assert!(m.disclosure.applied);
        assert!(m.disclosure.redacted_small > 0);
        assert!(
            m.disclosure
                .rules
                .iter()
                .any(|r| r.contains("nearest multiple of 5")),
            "{:?}",
            m.disclosure.rules
        );
        assert_eq!(m.rows, want.len());
        let bytes = checked_file(dir, &m);
        let got = match x.format {
            Format::Csv => {
                let schema = arrow::csv::infer_schema_from_files(
                    &[dir.join(&m.file).to_string_lossy().into_owned()],
                    b',',
                    None,
                    true,
                )
                .unwrap();
                let reader = arrow::csv::ReaderBuilder::new(Arc::new(schema))
                    .with_header(true)
                    .build(std::io::Cursor::new(bytes))
                    .unwrap();
                rows_of(reader.map(|b| b.unwrap()).collect())
            }
            Format::Parquet => {
                let reader =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                        bytes::Bytes::from(bytes),
                    )
                    .unwrap()
                    .build()
                    .unwrap();
                rows_of(reader.map(|b| b.unwrap()).collect())
            }
            Format::Xlsx => {
                let (rows, notes) = xlsx_rows(&dir.join(&m.file), &["referrals", "advice"]);
                assert!(notes.contains("redacted"), "{notes}");
                assert!(notes.contains("rounded"), "{notes}");
                rows
            }
        };
        assert_eq!(got, want, "{}", m.file);
        // Nothing partial is left beside the files.
        for (path, _) in testing::files_under(dir) {
            assert!(!path.to_string_lossy().contains(".partial"), "{path:?}");
        }
    }
    let text = e.metrics().render();
    assert!(
        text.contains("pathflow_extract_runs_total{extract=\"demand-xlsx\",outcome=\"ok\"}"),
        "{text}"
    );
    assert!(
        text.contains("pathflow_extract_last_success_timestamp_seconds{extract=\"demand-csv\"}")
    );
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

const NONE: [DateTime<Utc>; 0] = [];

fn delivered(outcomes: &[(String, Outcome)]) -> Vec<DateTime<Utc>> {
    outcomes
        .iter()
        .filter_map(|(_, o)| match o {
            Outcome::Delivered { slot, .. } => Some(*slot),
            _ => None,
        })
        .collect()
}

/// A scheduler as a new process would make one: its own metrics registry.
fn scheduler(e: &Arc<Engine>, x: &ExtractConfig) -> Scheduler {
    let registry = prometheus::Registry::new();
    let metrics = ExtractMetrics::register(&registry).unwrap();
    let (log, _) = capture();
    Scheduler::new(Arc::clone(e), vec![x.clone()], metrics, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_at_a_slot_runs_it_once_and_downtime_catches_up_once() {
    let (e, reloader) = engine(shared_tables(), vec![], |_| {}).await;
    let out = tempfile::tempdir().unwrap();
    let x = extract("weekly", "0 * * * * *", Format::Csv, out.path());
    let dir = out.path();

    // First start: nothing due until the next slot.
    let first = scheduler(&e, &x);
    assert_eq!(first.tick(at("2026-03-02T10:00:30Z")).await, vec![]);
    let got = first.tick(at("2026-03-02T10:01:00Z")).await;
    assert_eq!(delivered(&got), [at("2026-03-02T10:01:00Z")]);

    // A restart at the moment of the next slot: the old process and the new
    // one both reach 10:02:00; the slot's file is made once.
    let second = scheduler(&e, &x);
    let t = at("2026-03-02T10:02:00Z");
    let (a, b) = tokio::join!(first.tick(t), second.tick(t));
    let both: Vec<_> = a.into_iter().chain(b).collect();
    assert_eq!(delivered(&both), [t], "{both:?}");
    // And a third process started in the same second does not run it again.
    let third = scheduler(&e, &x);
    assert_eq!(
        delivered(&third.tick(at("2026-03-02T10:02:00Z")).await),
        NONE
    );
    assert_eq!(
        delivered(&third.tick(at("2026-03-02T10:02:40Z")).await),
        NONE
    );

    // Down from 10:02:40 to 10:05:10: 10:03, 10:04 and 10:05 were missed;
    // the latest is made once on start-up, and not again.
    let after = scheduler(&e, &x);
    let got = after.tick(at("2026-03-02T10:05:10Z")).await;
    assert_eq!(delivered(&got), [at("2026-03-02T10:05:00Z")]);
    assert_eq!(
        delivered(&after.tick(at("2026-03-02T10:05:20Z")).await),
        NONE
    );
    assert_eq!(
        delivered(&after.tick(at("2026-03-02T10:06:00Z")).await),
        [at("2026-03-02T10:06:00Z")]
    );
    reloader.abort();

    let slots: Vec<String> = manifests(dir)
        .into_iter()
        .map(|(_, m)| {
            checked_file(dir, &m);
            m.scheduled_slot
        })
        .collect();
    assert_eq!(
        slots,
        [
            "2026-03-02T10:01:00Z",
            "2026-03-02T10:02:00Z",
            "2026-03-02T10:05:00Z",
            "2026-03-02T10:06:00Z"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_extract_is_counted_and_logged_and_does_not_stop_the_others() {
    let (e, reloader) = engine(shared_tables(), vec![], |_| {}).await;
    let out = tempfile::tempdir().unwrap();
    let every = "0 * * * * *";
    let good = extract("good", every, Format::Parquet, &out.path().join("good"));
    let mut bad_sql = extract("bad-sql", every, Format::Csv, &out.path().join("bad"));
    bad_sql.sql = "SELECT no_such_column FROM demand_weekly".into();
    // A destination under a plain file cannot be created, even as root.
    std::fs::write(out.path().join("blocker"), b"a file").unwrap();
    let mut unwritable = extract(
        "unwritable",
        every,
        Format::Xlsx,
        &out.path().join("blocker").join("out"),
    );
    unwritable.state_dir = Some(out.path().join("state"));
    let metrics = ExtractMetrics::register(e.metrics().registry()).unwrap();
    let (log, lines) = capture();
    let s = Scheduler::new(
        Arc::clone(&e),
        vec![bad_sql, unwritable, good.clone()],
        metrics,
        log,
    );
    s.tick(at("2026-03-02T10:00:30Z")).await;
    let got = s.tick(at("2026-03-02T10:01:00Z")).await;
    reloader.abort();
    assert_eq!(delivered(&got), [at("2026-03-02T10:01:00Z")], "{got:?}");
    let stage = |name: &str| {
        got.iter()
            .find_map(|(n, o)| match o {
                Outcome::Failed { stage, .. } if n == name => Some(*stage),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{name} did not fail: {got:?}"))
    };
    assert_eq!(stage("bad-sql"), "query");
    assert_eq!(stage("unwritable"), "deliver");
    assert_eq!(manifests(&out.path().join("good")).len(), 1);

    let text = e.metrics().render();
    for want in [
        "pathflow_extract_failures_total{extract=\"bad-sql\",stage=\"query\"} 1",
        "pathflow_extract_failures_total{extract=\"unwritable\",stage=\"deliver\"} 1",
        "pathflow_extract_runs_total{extract=\"good\",outcome=\"ok\"} 1",
    ] {
        assert!(text.contains(want), "{want} not in\n{text}");
    }
    assert!(!text.contains("pathflow_extract_last_success_timestamp_seconds{extract=\"bad-sql\"}"));
    let lines = lines.lock().unwrap().join("\n");
    assert!(
        lines.contains("extract bad-sql: slot 2026-03-02T10:01:00+00:00: failed (query)")
            && lines.contains("no_such_column"),
        "{lines}"
    );
    assert!(
        lines.contains("extract unwritable: slot 2026-03-02T10:01:00+00:00: failed (deliver)")
            && lines.contains("blocker"),
        "{lines}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_xlsx_opens_in_openpyxl_with_numbers_and_a_notes_sheet() {
    let tokens = vec![token("icb", COMMISSIONER, Role::Commissioner, &[], &[])];
    let (e, reloader) = engine(shared_tables(), tokens, |_| {}).await;
    let out = tempfile::tempdir().unwrap();
    let mut x = extract("by-hand", "0 7 * * MON", Format::Xlsx, out.path());
    // A percentage from the rounded counts, as a float cell.
    x.sql = format!(
        "SELECT *, referrals + advice AS asked, CAST(NULL AS DOUBLE) AS referral_pct FROM ({})",
        SQL.replace(" ORDER BY provider, treatment_function", "")
    );
    x.count_columns.push("asked".into());
    x.rate_columns = vec![disclosure::RateColumn {
        column: "referral_pct".into(),
        numerator: "referrals".into(),
        denominator: "asked".into(),
        scale: 100.0,
    }];
    let d = extract::run(&e, &x, Slot::Manual(Utc::now()))
        .await
        .unwrap();
    let want = rows_of(vec![expected(&e, &x).await]);
    reloader.abort();
    assert_eq!(d.manifest.trigger, "manual");
    checked_file(out.path(), &d.manifest);
    let (rows, notes) = xlsx_rows(
        &out.path().join(&d.file),
        &["referrals", "advice", "asked", "referral_pct"],
    );
    assert!(notes.contains("referrals / asked"), "{notes}");
    // Floats print differently in Python and Arrow: compare the counts.
    let counts = |rows: &[String]| -> Vec<String> {
        rows.iter()
            .map(|r| r.split('|').take(5).collect::<Vec<_>>().join("|"))
            .collect()
    };
    assert_eq!(counts(&rows), counts(&want));
    assert!(
        rows.iter()
            .any(|r| r.split('|').nth(4).is_some_and(|p| !p.is_empty()))
    );
}
