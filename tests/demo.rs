//! `pathflow demo` as a newcomer runs it: one command, no broker (librdkafka's
//! in-process mock cluster), a small ICB. Once it says it is serving, the
//! tokens it printed answer over HTTP and psql, every gold table has rows,
//! the clinical-pair token sees only its own practice, and Ctrl-C stops it
//! with exit status 0, leaving the tables on disk.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

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

#[test]
fn demo_serves_http_and_psql_and_stops_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let (http_port, pg_port, metrics_port) = (free_port(), free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_pathflow"))
        .arg("demo")
        .arg("--dir")
        .arg(&demo_dir)
        .args(["--http", &format!("127.0.0.1:{http_port}")])
        .args(["--pg", &format!("127.0.0.1:{pg_port}")])
        .args(["--metrics", &format!("127.0.0.1:{metrics_port}")])
        .args(["--population", "2000", "--weeks", "4"])
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
