//! The `pathflow` command as a user meets it: a small simulate run, and bad
//! arguments answered with a message that says what to do.

use std::process::Command;

fn pathflow(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pathflow"))
        .args(args)
        .output()
        .expect("pathflow runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn simulate_writes_files_and_reports_progress() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("icb");
    let out_arg = out.to_str().unwrap();
    let (ok, text) = pathflow(&[
        "simulate",
        "--out",
        out_arg,
        "--population",
        "8000",
        "--weeks",
        "2",
        "--run-in-weeks",
        "2",
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("simulating 8000 patients") && text.contains("done:"),
        "{text}"
    );
    for file in [
        "gp/appointments.csv",
        "ers/advice_and_guidance.csv",
        "reference/national_data_opt_out.csv",
        "manifest.json",
        "bad_records.csv",
    ] {
        assert!(out.join(file).exists(), "{file} missing; output: {text}");
    }
}

#[test]
fn bad_arguments_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    let out = out.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["simulate", "--out", out, "--start", "2025-04-08"],
            "must be a Monday",
        ),
        (
            &["simulate", "--out", out, "--capacity", "999=0.8"],
            "not a known treatment function code",
        ),
        (
            &["simulate", "--out", out, "--capacity", "110"],
            "TFC=FACTOR",
        ),
        (
            &["simulate", "--out", out, "--population", "10"],
            "at least 2000",
        ),
    ];
    for (args, expected) in cases {
        let (ok, text) = pathflow(args);
        assert!(!ok, "{args:?} should fail");
        assert!(
            text.contains(expected),
            "{args:?}: expected {expected:?} in {text}"
        );
    }
}

#[test]
fn schemas_command_writes_every_event_schema() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = pathflow(&["schemas", "--out", dir.path().to_str().unwrap()]);
    assert!(ok, "{text}");
    let written = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(
        written,
        pathflow_schemas::EventType::ALL.len() + 1,
        "{text}"
    );
}
