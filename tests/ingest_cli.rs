//! `pathflow ingest --config` as a data engineer runs it, against a real
//! broker: a first run reports what it read, accepted, rejected and dropped;
//! a second run skips the file by its checkpoint; rejected raw lines wait in
//! local quarantine; a missing key stops it with a message saying what to do.

use std::process::Command;

fn brokers() -> Option<String> {
    match std::env::var("PATHFLOW_TEST_BROKERS") {
        Ok(b) if !b.trim().is_empty() => Some(b),
        _ if std::env::var_os("CI").is_some() => {
            panic!("PATHFLOW_TEST_BROKERS is not set; on CI use scripts/test")
        }
        _ => None,
    }
}

fn pathflow(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pathflow"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("pathflow runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn ingest_reads_once_checkpoints_and_quarantines() {
    let Some(brokers) = brokers() else {
        println!("skipped: set PATHFLOW_TEST_BROKERS or run scripts/test");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, text) = pathflow(
        &[
            "simulate",
            "--out",
            data.to_str().unwrap(),
            "--population",
            "10000",
            "--weeks",
            "2",
            "--run-in-weeks",
            "2",
            "--bad-record-rate",
            "0.02",
        ],
        &[],
    );
    assert!(ok, "{text}");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let config = dir.path().join("ingest.toml");
    let state = dir.path().join("state");
    std::fs::write(
        &config,
        format!(
            r#"state_dir = "{state}"
[kafka]
brokers = "{brokers}"
topic_prefix = "cli{nanos}"
partitions = 1
replication = 1
[pseudonymisation]
key = {{ env = "PATHFLOW_TEST_KEY" }}
key_id = "test-key"
[reference]
opt_out = "{data}/reference/national_data_opt_out.csv"
postcode_deprivation = "{data}/reference/postcode_deprivation.csv"
[[connector]]
name = "pas:r9a:referrals"
format = "pas_referrals"
path = "{data}/pas/R9A/referrals.csv"
"#,
            state = state.display(),
            data = data.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    // A made-up test key: 64 hex digits.
    let key = [(
        "PATHFLOW_TEST_KEY",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    )];

    let (ok, text) = pathflow(&["ingest", "--config", config], &[]);
    assert!(!ok);
    assert!(
        text.contains("PATHFLOW_TEST_KEY") && text.contains("not set"),
        "{text}"
    );

    let (ok, text) = pathflow(&["ingest", "--config", config], &key);
    assert!(ok, "{text}");
    assert!(
        text.contains("records read")
            && text.contains("rejected to dead letters")
            && text.contains("opted out"),
        "{text}"
    );

    let quarantined =
        std::fs::read_to_string(state.join("quarantine/pas_r9a_referrals/referrals.csv")).unwrap();
    let reasons = std::fs::read_to_string(
        state.join("quarantine/pas_r9a_referrals/referrals.csv.reasons.csv"),
    )
    .unwrap();
    assert!(
        quarantined.starts_with("ubrn,"),
        "the quarantine file keeps the header"
    );
    assert_eq!(
        quarantined.lines().count(),
        reasons.lines().count(),
        "one reason per quarantined line"
    );
    assert!(reasons.lines().count() > 1);

    let (ok, text) = pathflow(&["ingest", "--config", config], &key);
    assert!(ok, "{text}");
    assert!(
        text.contains("already sent (checkpoint), skipped"),
        "{text}"
    );
}
