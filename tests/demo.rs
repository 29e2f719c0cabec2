//! `pathflow demo` as a newcomer runs it: one command, no broker (librdkafka's
//! in-process mock cluster), a small ICB. Once it says it is serving, the
//! tokens it printed answer over HTTP and psql, every gold table has rows,
//! the clinical-pair token sees only its own practice, and Ctrl-C stops it
//! with exit status 0, leaving the tables on disk.
//!
//! While it serves, a real Prometheus (Debian's) scrapes its one `/metrics`
//! (every stage's metrics): every PromQL expression in the Grafana dashboards
//! and the alert rules evaluates, every domain panel returns a series, and
//! every SQL panel and variable query runs over the Postgres wire.
//!
//! With `--exit-after-cycle` (for CI) it answers one HTTP query and exits 0;
//! `pathflow serve` on the tables it leaves then answers psql.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::{Killed, free_port};

fn http(port: u16, token: &str, sql: &str) -> (u16, String) {
    common::http_sql(port, token, sql, "text/csv")
}

fn psql(port: u16, token: &str, sql: &str) -> Vec<String> {
    common::psql(port, token, sql).unwrap_or_else(|e| panic!("psql: {e}"))
}

/// The value after `export NAME=` in the demo's output.
fn exported(lines: &[String], name: &str) -> String {
    let prefix = format!("export {name}=");
    lines
        .iter()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {name} in:\n{}", lines.join("\n")))
        .to_string()
}

/// `pathflow demo --dir DIR` on two fresh local ports, with `args` after.
fn demo(demo_dir: &Path, args: &[&str]) -> (Command, u16, u16) {
    let (http_port, pg_port) = (free_port(), free_port());
    let mut command = Command::new(env!("CARGO_BIN_EXE_pathflow"));
    command
        .arg("demo")
        .arg("--dir")
        .arg(demo_dir)
        .args(["--http", &format!("127.0.0.1:{http_port}")])
        .args(["--pg", &format!("127.0.0.1:{pg_port}")])
        .args(args);
    (command, http_port, pg_port)
}

#[test]
fn demo_serves_http_and_psql_and_stops_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    // Big enough that every dashboard panel has a number in the last complete
    // week (A&G answers, each priority), small enough to take about a minute.
    let (mut command, http_port, pg_port) =
        demo(&demo_dir, &["--population", "6000", "--weeks", "6"]);
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut demo = Killed(child);

    // Its stdout, line by line, until it says it is serving.
    let (tx, rx) = mpsc::channel();
    let stdout = demo.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(600))
            .unwrap_or_else(|_| panic!("the demo did not get ready:\n{}", lines.join("\n")));
        let done = line.starts_with("Serving until Ctrl-C");
        lines.push(line);
        if done {
            break;
        }
    }
    let text = lines.join("\n");
    assert!(
        text.contains(&format!("http://127.0.0.1:{http_port}/v1/sql"))
            && text.contains(&format!("port={pg_port}"))
            && text.contains("psql")
            && text.contains("FROM waits_weekly"),
        "{text}"
    );
    let analyst = exported(&lines, "ANALYST_TOKEN");
    let pair = exported(&lines, "PAIR_TOKEN");

    // Every gold table has rows, over HTTP.
    for table in [
        "demand_weekly",
        "capacity_weekly",
        "waits_weekly",
        "followups_weekly",
    ] {
        let (status, body) = http(
            http_port,
            &analyst,
            &format!("SELECT count(*) FROM {table}"),
        );
        assert_eq!(status, 200, "{body}");
        let n: u64 = body.lines().nth(1).unwrap().trim().parse().unwrap();
        assert!(n > 0, "{table} is empty");
    }

    // psql answers the same question as HTTP.
    let sql = "SELECT week_id, sum(referrals_received) FROM demand_weekly GROUP BY week_id ORDER BY week_id";
    let by_psql = psql(pg_port, &analyst, sql);
    let (status, body) = http(http_port, &analyst, sql);
    assert_eq!(status, 200, "{body}");
    let by_http: Vec<String> = body.lines().skip(1).map(str::to_string).collect();
    assert!(!by_psql.is_empty());
    assert_eq!(by_psql, by_http);

    // The clinical pair sees one practice and one treatment function.
    let (status, body) = http(
        http_port,
        &pair,
        "SELECT DISTINCT practice, treatment_function FROM referrals",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.lines().count(), 2, "one pair of codes: {body}");

    // The dashboards and alert rules against a real Prometheus and the Postgres wire.
    let (practice, treatment_function) = pair_codes(&lines);
    check_dashboards(
        dir.path(),
        http_port,
        pg_port,
        &analyst,
        &practice,
        &treatment_function,
    );

    // Ctrl-C stops it cleanly; the tables stay for `pathflow serve`.
    let pid = demo.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = demo.0.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    for table in ["events", "waits_weekly", "demand_weekly"] {
        assert!(
            demo_dir
                .join("tables")
                .join(table)
                .join("_delta_log")
                .is_dir(),
            "{table} is not on disk"
        );
    }
    assert!(demo_dir.join("serve.toml").is_file());
}

/// The clinical pair's codes, from the demo's
/// `export PAIR_TOKEN=…   # clinical pair: practice P, treatment function T`.
fn pair_codes(lines: &[String]) -> (String, String) {
    let line = lines
        .iter()
        .find(|l| l.contains("# clinical pair: practice "))
        .expect("the clinical pair line");
    let rest = line.split("# clinical pair: practice ").nth(1).unwrap();
    let (practice, tf) = rest.split_once(", treatment function ").unwrap();
    (practice.trim().to_string(), tf.trim().to_string())
}

// ---- the dashboards and alert rules ----------------------------------------

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// One query in a dashboard or rule file: where it is, and its text.
struct Query {
    place: String,
    text: String,
}

/// Every Prometheus expression and every SQL query in the dashboards, and
/// every rule expression.
fn queries() -> (Vec<Query>, Vec<Query>) {
    let (mut promql, mut sql) = (Vec::new(), Vec::new());
    let dir = deploy().join("grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "three dashboards in {}", dir.display());
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let board: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        walk_panels(&board["panels"], &name, &mut promql, &mut sql);
        for var in board["templating"]["list"].as_array().into_iter().flatten() {
            let q = &var["query"];
            let text = q.as_str().or(q["rawSql"].as_str()).or(q["query"].as_str());
            let place = format!("{name}: variable {}", var["name"]);
            let text = text
                .unwrap_or_else(|| panic!("{place} has no query"))
                .to_string();
            assert_eq!(var["datasource"]["uid"], "pathflow-sql", "{place}");
            sql.push(Query { place, text });
        }
    }
    let rules = std::fs::read_to_string(deploy().join("prometheus/alerts.yml")).unwrap();
    let rules: Value = serde_norway::from_str(&rules).unwrap();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap();
            promql.push(Query {
                place: format!("alerts.yml: {name}"),
                text: rule["expr"].as_str().unwrap().to_string(),
            });
        }
    }
    (promql, sql)
}

fn walk_panels(panels: &Value, board: &str, promql: &mut Vec<Query>, sql: &mut Vec<Query>) {
    for panel in panels.as_array().into_iter().flatten() {
        walk_panels(&panel["panels"], board, promql, sql);
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let place = format!("{board}: panel {title:?} target {}", target["refId"]);
            match target["datasource"]["uid"].as_str() {
                Some("prometheus") => promql.push(Query {
                    place,
                    text: target["expr"].as_str().expect("expr").to_string(),
                }),
                Some("pathflow-sql") => sql.push(Query {
                    place,
                    text: target["rawSql"].as_str().expect("rawSql").to_string(),
                }),
                other => panic!("{place}: unknown data source {other:?}"),
            }
        }
    }
}

/// Grafana's variables, as it would fill them in for one clinical pair.
fn substitute(text: &str, practice: &str, treatment_function: &str) -> String {
    let out = text
        .replace("${practice}", practice)
        .replace("$practice", practice)
        .replace("${treatment_function}", treatment_function)
        .replace("$treatment_function", treatment_function)
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m");
    assert!(!out.contains('$'), "an unknown Grafana variable in {text}");
    out
}

/// Metrics that describe the pipeline rather than the patients: they may
/// have no series yet (no extract has run, nothing was refused).
const PIPELINE_PREFIXES: [&str; 4] = [
    "pathflow_transform_",
    "pathflow_ingest_",
    "pathflow_query_",
    "pathflow_extract_",
];

fn uses_domain_metric(expr: &str) -> bool {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("pathflow_"))
        .any(|w| !PIPELINE_PREFIXES.iter().any(|p| w.starts_with(p)))
}

fn prometheus_get(port: u16, path: &str, query: &[(&str, &str)]) -> Value {
    let response = reqwest::blocking::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .query(query)
        .send()
        .unwrap_or_else(|e| panic!("Prometheus {path}: {e}"));
    response.json().unwrap()
}

fn check_dashboards(
    scratch: &Path,
    http_port: u16,
    pg_port: u16,
    token: &str,
    practice: &str,
    treatment_function: &str,
) {
    let (promql, sql) = queries();

    // Every SQL panel and variable query runs over the Postgres wire.
    for q in &sql {
        let text = substitute(&q.text, practice, treatment_function);
        if let Err(e) = common::psql(pg_port, token, &text) {
            panic!("{}: {e}\n{text}", q.place);
        }
    }

    // The one /metrics carries every stage, and promtool finds nothing wrong.
    let metrics = reqwest::blocking::get(format!("http://127.0.0.1:{http_port}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    for family in [
        "pathflow_ingest_events_produced_total",
        "pathflow_transform_commits_total",
        "pathflow_query_duration_seconds",
        "pathflow_rtt_waiting_list_pathways",
    ] {
        assert!(metrics.contains(family), "/metrics has no {family}");
    }
    if !common::tool_or_skip("prometheus") {
        return;
    }
    let (passed, said) = pathflow_query::testing::promtool_check_metrics(&metrics);
    assert!(passed, "promtool check metrics: {said}");

    // A real Prometheus scraping the demo every second, with deploy/'s rules.
    let dir = scratch.join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: pathflow-serve\n    static_configs:\n      - targets: ['127.0.0.1:{http_port}']\n",
            deploy().join("prometheus/alerts.yml").display()
        ),
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let log_text = || std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();

    // Until it has scraped the demo a few times (rate() needs two samples)
    // and evaluated every rule once.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape the demo:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
        let Ok(response) = reqwest::blocking::Client::new()
            .get(format!("http://127.0.0.1:{port}/api/v1/query"))
            .query(&[("query", "count_over_time(up{job=\"pathflow-serve\"}[1m])")])
            .send()
        else {
            continue;
        };
        let Ok(answer) = response.json::<Value>() else {
            continue;
        };
        let scrapes: u32 = answer["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let rules = prometheus_get(port, "/api/v1/rules", &[]);
        let evaluated = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .all(|r| r["health"] != "unknown");
        if scrapes >= 4 && evaluated {
            break;
        }
    }
    let up = prometheus_get(port, "/api/v1/query", &[("query", "up")]);
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");

    // Every rule evaluates.
    let rules = prometheus_get(port, "/api/v1/rules", &[]);
    let mut n = 0;
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            n += 1;
            assert_eq!(
                rule["health"], "ok",
                "rule {} does not evaluate: {}",
                rule["name"], rule["lastError"]
            );
        }
    }
    assert!(n >= 4, "the alert rules were not loaded:\n{}", log_text());

    // Every expression evaluates; every domain panel returns a series.
    let mut domain = 0;
    for q in &promql {
        let expr = substitute(&q.text, practice, treatment_function);
        let answer = prometheus_get(port, "/api/v1/query", &[("query", &expr)]);
        assert_eq!(
            answer["status"], "success",
            "{}: {expr}\n{}",
            q.place, answer["error"]
        );
        if uses_domain_metric(&expr) && !q.place.starts_with("alerts.yml") {
            domain += 1;
            let result = &answer["data"]["result"];
            let series = match answer["data"]["resultType"].as_str() {
                Some("vector") | Some("matrix") => result.as_array().map_or(0, Vec::len),
                _ => 1, // a scalar
            };
            assert!(
                series > 0,
                "{}: no series for practice {practice}, treatment function {treatment_function}: {expr}",
                q.place
            );
        }
    }
    assert!(domain >= 10, "only {domain} domain panels were found");
}

#[test]
fn demo_exits_after_one_cycle_and_its_tables_serve_again() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let (mut command, _, pg_port) = demo(
        &demo_dir,
        &["--population", "2000", "--weeks", "4", "--exit-after-cycle"],
    );
    let out = command.stderr(Stdio::inherit()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit status {}:\n{stdout}",
        out.status
    );
    // Its own HTTP query: `SELECT count(*) AS rows FROM waits_weekly`, as CSV.
    let answered = stdout
        .split("answered:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no HTTP answer in:\n{stdout}"));
    let mut csv = answered.lines();
    assert_eq!(csv.next(), Some("rows"), "{answered}");
    let rows = csv.next().unwrap_or_default();
    let count: u64 = rows
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {answered}"));
    assert!(count > 0, "waits_weekly is empty");

    // `pathflow serve` on what it left answers psql, with its tokens.
    let lines: Vec<String> = stdout.lines().map(str::to_string).collect();
    let analyst = exported(&lines, "ANALYST_TOKEN");
    let child = Command::new(env!("CARGO_BIN_EXE_pathflow"))
        .args(["serve", "--config"])
        .arg(demo_dir.join("serve.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _serve = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    for table in [
        "demand_weekly",
        "capacity_weekly",
        "waits_weekly",
        "followups_weekly",
    ] {
        let sql = format!("SELECT count(*) FROM {table}");
        let rows = loop {
            match common::psql(pg_port, &analyst, &sql) {
                Ok(rows) => break rows,
                Err(e) if Instant::now() > deadline => panic!("psql {sql}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(300)),
            }
        };
        let n: u64 = rows[0].trim().parse().unwrap();
        assert!(n > 0, "{table} is empty");
    }
}
