//! `pathflow serve` as an operator runs it: the binary, a config file with
//! tokens kept (as hashes) in a separate tokens file, over tables of a
//! simulated ICB. psql (Debian's postgresql-client) and an HTTP client ask
//! the same questions and must get the same rows; a commit made while the
//! server runs shows up within two seconds.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pathflow_query::auth::TokenHash;

const ANALYST: &str = "test-analyst-token-placeholder";
const PAIR: &str = "test-clinical-pair-token-placeholder";

mod common;

use common::{Killed, free_port, psql};

fn http(port: u16, token: &str, sql: &str, accept: &str) -> (u16, String) {
    common::http_sql(port, token, sql, accept)
}

/// CSV body without its header row.
fn csv_rows(body: &str) -> Vec<String> {
    body.lines().skip(1).map(str::to_string).collect()
}

fn start(config: &Path, http_port: u16) -> Killed {
    let child = Command::new(env!("CARGO_BIN_EXE_pathflow"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let server = Killed(child);
    let started = Instant::now();
    loop {
        if let Ok(r) = reqwest::blocking::get(format!("http://127.0.0.1:{http_port}/readyz"))
            && r.status().is_success()
        {
            return server;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "serve did not become ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn psql_and_http_give_the_same_rows_and_commits_show_up() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let events = pathflow_query::testing::simulated_events(dir.path(), 2_000, 6, 11);
    let location = dir.path().join("tables");
    let (first, second) = events.split_at(events.len() * 3 / 4);
    runtime.block_on(pathflow_query::testing::write_tables(&location, first));

    let tf: String = first
        .iter()
        .find_map(|e| e.envelope.treatment_function.map(|t| t.code().to_string()))
        .unwrap();
    let (http_port, pg_port) = (free_port(), free_port());
    std::fs::write(
        dir.path().join("tokens.toml"),
        format!(
            "[[tokens]]\nname = \"analyst\"\nhash = \"{}\"\nrole = \"analyst\"\n\n\
             [[tokens]]\nname = \"pair\"\nhash = \"{}\"\nrole = \"clinical_pair\"\n\
             treatment_functions = [\"{tf}\"]\n",
            TokenHash::of(ANALYST),
            TokenHash::of(PAIR)
        ),
    )
    .unwrap();
    let config = dir.path().join("serve.toml");
    let mut f = std::fs::File::create(&config).unwrap();
    write!(
        f,
        "tokens_file = \"tokens.toml\"\n[tables]\nlocation = \"{}\"\nreload_interval_ms = 200\n\
         [http]\nlisten = \"127.0.0.1:{http_port}\"\n[postgres]\nlisten = \"127.0.0.1:{pg_port}\"\n\
         [audit]\npath = \"{}\"\n",
        location.display(),
        dir.path().join("audit.jsonl").display()
    )
    .unwrap();
    drop(f);
    let _server = start(&config, http_port);

    for (token, sql) in [
        (
            ANALYST,
            "SELECT treatment_function, priority, count(*) AS n FROM referrals \
             GROUP BY 1, 2 ORDER BY 1, 2",
        ),
        (
            ANALYST,
            "SELECT week, sum(referrals_received) AS received FROM demand_weekly \
             GROUP BY week ORDER BY week",
        ),
        (
            PAIR,
            "SELECT practice, treatment_function, count(*) FROM events GROUP BY 1, 2 ORDER BY 1, 2",
        ),
    ] {
        let (status, body) = http(http_port, token, sql, "text/csv");
        assert_eq!(status, 200, "{body}");
        let over_http = csv_rows(&body);
        assert!(!over_http.is_empty(), "{sql}");
        assert_eq!(psql(pg_port, token, sql).unwrap(), over_http, "{sql}");
    }
    // The pair's scope holds over psql too.
    let seen = psql(
        pg_port,
        PAIR,
        "SELECT DISTINCT treatment_function FROM referrals",
    )
    .unwrap();
    assert_eq!(seen, [tf]);
    // A wrong token is refused on both.
    assert_eq!(
        http(http_port, "wrong-token", "SELECT 1", "text/csv").0,
        401
    );
    let refused = psql(pg_port, "wrong-token", "SELECT 1").unwrap_err();
    assert!(refused.contains("token"), "{refused}");
    // DDL is refused on both, with the reason.
    let (status, body) = http(
        http_port,
        ANALYST,
        "DROP TABLE referrals",
        "application/json",
    );
    assert_eq!(status, 400, "{body}");
    let refused = psql(pg_port, ANALYST, "DROP TABLE referrals").unwrap_err();
    assert!(refused.contains("read-only"), "{refused}");

    // A commit while the server runs: visible to both within 2 s.
    let count = "SELECT count(*) FROM events";
    runtime.block_on(pathflow_query::testing::write_tables(&location, second));
    let committed = Instant::now();
    let want = events.len().to_string();
    loop {
        let (_, body) = http(http_port, ANALYST, count, "text/csv");
        if csv_rows(&body) == [want.clone()] {
            break;
        }
        assert!(
            committed.elapsed() < Duration::from_secs(2),
            "not visible: {body}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(psql(pg_port, ANALYST, count).unwrap(), [want]);

    // Every query was audited with who asked.
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(audit.lines().count() >= 10, "{audit}");
    assert!(audit.contains("\"who\":\"pair\"") && audit.contains("\"interface\":\"postgres\""));
}
