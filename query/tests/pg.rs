//! The PostgreSQL wire protocol as a client meets it, over tables of a
//! simulated ICB: `psql` (Debian's postgresql-client) with a token as the
//! password, a clinical pair's scope, refusals, the session chatter clients
//! send, and the extended protocol (Parse/Bind/Describe/Execute, spoken
//! here by a small client built on pgwire's message types: the installed
//! psql may predate `\bind`, and no Postgres client crate is in the tree).
//!
//! psql must be installed (`apt-get install postgresql-client`); set
//! `PATHFLOW_ALLOW_NO_PSQL` to skip the psql tests where it cannot be.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pathflow_query::config::TokenConfig;
use pathflow_query::pg::serve_pg;
use pathflow_query::testing::{self, engine, files_under, rows, token};
use pathflow_query::{Engine, Interface, Principal, Role, ServeConfig};
use pgwire::messages::data::DataRow;
use pgwire::messages::extendedquery::{Bind, Describe, Execute, Parse, Sync};
use pgwire::messages::simplequery::Query;
use pgwire::messages::startup::{Password, PasswordMessageFamily, Startup};
use pgwire::messages::{
    DecodeContext, PgWireBackendMessage, PgWireFrontendMessage, ProtocolVersion,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ANALYST: &str = "test-analyst-token";
const PAIR: &str = "test-clinical-pair-token";
const COMMISSIONER: &str = "test-commissioner-token";

/// One set of tables for every test here (they only read).
fn shared_tables() -> &'static Path {
    static TABLES: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    testing::tables_once(&TABLES, 3_000, 8)
}

/// An engine with `tokens` and an audit log, served on a free port until
/// dropped.
struct Server {
    port: u16,
    engine: Arc<Engine>,
    audit: PathBuf,
    dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn server(tokens: Vec<TokenConfig>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let audit_path = audit.clone();
    let (engine, _) = engine(shared_tables(), tokens, move |cfg: &mut ServeConfig| {
        cfg.audit.path = Some(audit_path);
    })
    .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_pg(Arc::clone(&engine), listener, stopped));
    Server {
        port,
        engine,
        audit,
        dir,
        _stop: stop,
    }
}

impl Server {
    fn who(&self, secret: &str) -> Principal {
        self.engine
            .authenticate(secret, Interface::Internal)
            .unwrap()
    }

    async fn rows(&self, who: &Principal, sql: &str) -> Vec<String> {
        let out = self
            .engine
            .run(who, sql, Interface::Internal)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows(&out)
    }

    /// The audit lines the Postgres interface wrote.
    fn audited(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["interface"] == "postgres")
            .collect()
    }
}

/// Whether psql can be run; without it the test fails unless
/// `PATHFLOW_ALLOW_NO_PSQL` is set.
fn psql_available() -> bool {
    let found = std::process::Command::new("psql")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var_os("PATHFLOW_ALLOW_NO_PSQL").is_some() {
            eprintln!(
                "\n\n*** SKIPPED: psql is not installed (apt-get install postgresql-client); \
                 PATHFLOW_ALLOW_NO_PSQL is set ***\n\n"
            );
            return false;
        }
        panic!(
            "psql is not installed: apt-get install postgresql-client, or set \
             PATHFLOW_ALLOW_NO_PSQL to skip the psql tests"
        );
    }
    true
}

/// `psql -X -w -q -At -F'|' <args>` against the server, `password` in
/// `PGPASSWORD`.
async fn psql(port: u16, password: &str, args: &[&str]) -> Output {
    let conninfo =
        format!("host=127.0.0.1 port={port} user=analyst dbname=pathflow sslmode=disable");
    let run = tokio::process::Command::new("psql")
        .arg(conninfo)
        .args(["-X", "-w", "-q", "-At", "-F|"])
        .args(args)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("psql finished within two minutes")
        .expect("psql runs")
}

fn stdout_rows(out: &Output) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_connects_with_a_token_and_its_rows_match_the_engine() {
    if !psql_available() {
        return;
    }
    let s = server(vec![token("analyst", ANALYST, Role::Analyst, &[], &[])]).await;
    let sql = "SELECT practice, treatment_function, count(*) AS referrals FROM referrals \
               GROUP BY practice, treatment_function";
    let out = psql(s.port, ANALYST, &["-c", sql]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let want = s.rows(&s.who(ANALYST), sql).await;
    assert!(want.len() > 10, "{want:?}");
    assert_eq!(stdout_rows(&out), want);

    let audited = s.audited();
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0]["who"], "analyst");
    assert_eq!(audited[0]["sql"], sql);
    assert_eq!(audited[0]["outcome"], "ok");
    assert_eq!(audited[0]["rows"], want.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_empty_password_is_refused_with_28p01() {
    let s = server(vec![token("analyst", ANALYST, Role::Analyst, &[], &[])]).await;
    if psql_available() {
        let out = psql(s.port, "not-a-token", &["-c", "SELECT 1"]).await;
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("use a pathflow token as the password"),
            "{}",
            stderr(&out)
        );
        assert!(out.stdout.is_empty());
    }
    for password in ["", "test-analyst-tokeN"] {
        let (mut wire, answer) = Wire::connect(s.port, password).await;
        let error = answer
            .iter()
            .find_map(error_fields)
            .unwrap_or_else(|| panic!("{answer:?}"));
        assert_eq!(error.get(&b'S').map(String::as_str), Some("FATAL"));
        assert_eq!(error.get(&b'C').map(String::as_str), Some("28P01"));
        // The server hangs up: nothing more runs on this connection.
        wire.send(&[query("SELECT 1")]).await;
        while let Some(message) = wire.recv().await {
            assert!(
                !matches!(message, PgWireBackendMessage::DataRow(_)),
                "{message:?}"
            );
        }
    }
    let refused = s
        .engine
        .metrics()
        .unauthorized
        .with_label_values(&["postgres"])
        .get();
    assert_eq!(refused, if psql_available() { 3 } else { 2 });
    assert!(s.audited().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clinical_pair_sees_only_its_scope_over_psql() {
    if !psql_available() {
        return;
    }
    let s = server(vec![token("analyst", ANALYST, Role::Analyst, &[], &[])]).await;
    let top = s
        .rows(
            &s.who(ANALYST),
            "SELECT practice, treatment_function FROM referrals \
             WHERE practice IS NOT NULL AND treatment_function IS NOT NULL \
             GROUP BY 1, 2 ORDER BY count(*) DESC, 1, 2 LIMIT 1",
        )
        .await;
    let (practice, tf) = top[0].split_once('|').unwrap();
    let s = server(vec![
        token("analyst", ANALYST, Role::Analyst, &[], &[]),
        token("pair", PAIR, Role::ClinicalPair, &[practice], &[tf]),
    ])
    .await;

    let out = psql(
        s.port,
        PAIR,
        &[
            "-c",
            "SELECT DISTINCT practice, treatment_function FROM referrals",
            "-c",
            "SELECT DISTINCT practice, treatment_function FROM (\
             SELECT practice, treatment_function FROM appointments UNION ALL \
             SELECT practice, treatment_function FROM followups UNION ALL \
             SELECT practice, treatment_function FROM waits_weekly) u",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let pair = format!("{practice}|{tf}");
    assert_eq!(stdout_rows(&out), [pair.clone(), pair]);

    let count = "SELECT count(*) FROM referrals";
    let out = psql(s.port, PAIR, &["-c", count]).await;
    let want = s
        .rows(
            &s.who(ANALYST),
            &format!("{count} WHERE practice = '{practice}' AND treatment_function = '{tf}'"),
        )
        .await;
    assert_eq!(stdout_rows(&out), want);
    assert_ne!(want, ["0"]);
    let audited = s.audited();
    assert!(audited.iter().all(|a| a["who"] == "pair"), "{audited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_dml_and_copy_are_refused_and_the_connection_keeps_working() {
    if !psql_available() {
        return;
    }
    let s = server(vec![token("analyst", ANALYST, Role::Analyst, &[], &[])]).await;
    let before = files_under(shared_tables());
    let copy_target = s.dir.path().join("copied.csv");
    let copy = format!("COPY (SELECT 1) TO '{}'", copy_target.display());
    let out = psql(
        s.port,
        ANALYST,
        &[
            "-c",
            "\\set VERBOSITY verbose",
            "-c",
            "DROP TABLE referrals",
            "-c",
            "CREATE TABLE x AS SELECT 1",
            "-c",
            "INSERT INTO referrals VALUES (1)",
            "-c",
            &copy,
            "-c",
            "SELECT 1; DROP TABLE referrals",
            "-c",
            "SELECT 41 + 1",
        ],
    )
    .await;
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    for refused in [
        "ERROR:  0A000: DROP is refused",
        "ERROR:  0A000: CREATE is refused",
        "ERROR:  25006: INSERT is refused",
        "ERROR:  0A000: COPY is refused",
        "ERROR:  0A000: 2 statements were sent",
    ] {
        assert!(err.contains(refused), "{refused} in {err}");
    }
    assert_eq!(stdout_rows(&out), ["42"]);
    assert_eq!(files_under(shared_tables()), before);
    assert!(!copy_target.exists());

    let outcomes: Vec<String> = s
        .audited()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        outcomes,
        ["refused", "refused", "refused", "refused", "refused", "ok"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_show_and_transactions_are_answered_without_running() {
    if !psql_available() {
        return;
    }
    let s = server(vec![token("analyst", ANALYST, Role::Analyst, &[], &[])]).await;
    let out = psql(
        s.port,
        ANALYST,
        &[
            "-c",
            "SET application_name = 'pathflow-test'",
            "-c",
            "SHOW application_name",
            "-c",
            "SET statement_timeout = 0",
            "-c",
            "SET datafusion.execution.batch_size = 1",
            "-c",
            "BEGIN",
            "-c",
            "SELECT 1",
            "-c",
            "COMMIT",
            "-c",
            "ROLLBACK",
            "-c",
            "SHOW transaction_read_only",
            "-c",
            "DISCARD ALL",
            "-c",
            "SHOW no_such_setting",
            "-c",
            "SELECT 2",
        ],
    )
    .await;
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(stdout_rows(&out), ["1", "2", "on", "pathflow-test"]);
    assert!(
        err.contains("unrecognized configuration parameter \"no_such_setting\""),
        "{err}"
    );
    assert_eq!(err.matches("ERROR").count(), 1, "{err}");
    // Only the two queries ran (and were audited).
    let sql: Vec<String> = s
        .audited()
        .iter()
        .map(|a| a["sql"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sql, ["SELECT 1", "SELECT 2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_describe_commands_list_only_the_tables_a_token_reads() {
    if !psql_available() {
        return;
    }
    let s = server(vec![
        token("analyst", ANALYST, Role::Analyst, &[], &[]),
        token("commissioner", COMMISSIONER, Role::Commissioner, &[], &[]),
        token("pair", PAIR, Role::ClinicalPair, &["Y00001"], &["110"]),
    ])
    .await;
    let listed = |out: &Output| -> Vec<String> {
        let mut names: Vec<String> = stdout_rows(out)
            .iter()
            .map(|r| r.split('|').nth(1).unwrap_or_default().to_string())
            .collect();
        names.sort();
        names
    };
    // \dt: the analyst's nine tables, the commissioner's four gold ones.
    let out = psql(s.port, ANALYST, &["-c", "\\dt"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let all = listed(&out);
    assert_eq!(all.len(), 9, "{all:?}");
    assert!(all.contains(&"events".to_string()), "{all:?}");
    let out = psql(s.port, COMMISSIONER, &["-c", "\\dt"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        listed(&out),
        [
            "capacity_weekly",
            "demand_weekly",
            "followups_weekly",
            "waits_weekly"
        ]
    );
    // A clinical pair: its tables are views (filtered to its scope), so \\d
    // rather than \\dt; the same names information_schema gives it.
    let out = psql(s.port, PAIR, &["-c", "\\d"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let mut shown = s
        .rows(
            &s.who(PAIR),
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
        )
        .await;
    shown.sort();
    assert!(!shown.is_empty());
    assert_eq!(listed(&out), shown);
    // \d TABLE: its columns.
    let out = psql(s.port, ANALYST, &["-c", "\\d waits_weekly"]).await;
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let rows = stdout_rows(&out);
    assert!(
        rows.iter().any(|r| r.starts_with("waiting_list|")),
        "{rows:?}"
    );
    // Nothing else changes: other schemas are still unknown.
    let out = psql(s.port, ANALYST, &["-c", "SELECT * FROM pg_toast.x"]).await;
    assert!(stderr(&out).contains("no schema"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extended_protocol_describes_binds_and_executes() {
    let s = server(vec![token("analyst", ANALYST, Role::Analyst, &[], &[])]).await;
    let analyst = s.who(ANALYST);
    let practice = s
        .rows(
            &analyst,
            "SELECT practice FROM referrals WHERE practice IS NOT NULL \
             GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1",
        )
        .await
        .remove(0);
    let count = s
        .rows(
            &analyst,
            &format!("SELECT count(*) FROM referrals WHERE practice = '{practice}'"),
        )
        .await
        .remove(0);

    let (mut wire, answer) = Wire::connect(s.port, ANALYST).await;
    assert!(
        matches!(answer.last(), Some(PgWireBackendMessage::ReadyForQuery(_))),
        "{answer:?}"
    );

    // Parse, Describe, Sync; then Bind and Execute twice (text, then a
    // binary result), as pgx (Grafana) and JDBC do with a named statement.
    let sql = "SELECT count(*) AS n FROM referrals WHERE practice = $1";
    let described = wire
        .exchange(&[
            PgWireFrontendMessage::Parse(Parse::new(Some("s1".into()), sql.into(), vec![])),
            PgWireFrontendMessage::Describe(Describe::new(b'S', Some("s1".into()))),
            sync(),
        ])
        .await;
    let parameters = described.iter().find_map(|m| match m {
        PgWireBackendMessage::ParameterDescription(p) => Some(p.types.clone()),
        _ => None,
    });
    assert_eq!(parameters, Some(vec![25]), "text: {described:?}");
    let columns = described.iter().find_map(|m| match m {
        PgWireBackendMessage::RowDescription(r) => Some(
            r.fields
                .iter()
                .map(|f| (f.name.clone(), f.type_id))
                .collect::<Vec<_>>(),
        ),
        _ => None,
    });
    assert_eq!(
        columns,
        Some(vec![("n".to_string(), 20)]),
        "int8: {described:?}"
    );

    let run = |result_format: i16| {
        vec![
            PgWireFrontendMessage::Bind(Bind::new(
                None,
                Some("s1".into()),
                vec![],
                vec![Some(Bytes::from(practice.clone()))],
                vec![result_format],
            )),
            PgWireFrontendMessage::Execute(Execute::new(None, 0)),
            sync(),
        ]
    };
    let text = wire.exchange(&run(0)).await;
    assert_eq!(
        data_rows(&text),
        [vec![Some(count.clone().into_bytes())]],
        "{text:?}"
    );
    let binary = wire.exchange(&run(1)).await;
    let expected = count.parse::<i64>().unwrap().to_be_bytes().to_vec();
    assert_eq!(data_rows(&binary), [vec![Some(expected)]], "{binary:?}");

    // A parameter typed by its cast, sent as text by a client that says
    // nothing of its type.
    let cast = wire
        .exchange(&[
            PgWireFrontendMessage::Parse(Parse::new(
                None,
                "SELECT $1::int + 1 AS m".into(),
                vec![],
            )),
            PgWireFrontendMessage::Describe(Describe::new(b'S', None)),
            PgWireFrontendMessage::Bind(Bind::new(
                None,
                None,
                vec![],
                vec![Some(Bytes::from_static(b"5"))],
                vec![],
            )),
            PgWireFrontendMessage::Execute(Execute::new(None, 0)),
            sync(),
        ])
        .await;
    assert!(
        cast.iter().any(|m| matches!(m,
            PgWireBackendMessage::ParameterDescription(p) if p.types == [23])),
        "int4: {cast:?}"
    );
    assert_eq!(data_rows(&cast), [vec![Some(b"6".to_vec())]], "{cast:?}");

    // A NULL whose type nothing says is refused rather than letting the
    // later parameters shift into its place; result formats that do not
    // match the columns are refused rather than guessed.
    let untyped = wire
        .exchange(&[
            PgWireFrontendMessage::Parse(Parse::new(
                None,
                "SELECT $1 AS a, $2::int AS b".into(),
                vec![],
            )),
            PgWireFrontendMessage::Bind(Bind::new(
                None,
                None,
                vec![],
                vec![None, Some(Bytes::from_static(b"7"))],
                vec![],
            )),
            PgWireFrontendMessage::Execute(Execute::new(None, 0)),
            sync(),
        ])
        .await;
    let error = untyped.iter().find_map(error_fields).expect("an error");
    assert_eq!(
        error.get(&b'C').map(String::as_str),
        Some("42P18"),
        "{untyped:?}"
    );
    let formats = wire
        .exchange(&[
            PgWireFrontendMessage::Bind(Bind::new(
                None,
                Some("s1".into()),
                vec![],
                vec![Some(Bytes::from(practice.clone()))],
                vec![0, 1],
            )),
            PgWireFrontendMessage::Execute(Execute::new(None, 0)),
            sync(),
        ])
        .await;
    let error = formats.iter().find_map(error_fields).expect("an error");
    assert_eq!(
        error.get(&b'C').map(String::as_str),
        Some("08P01"),
        "{formats:?}"
    );

    // DDL is refused at Parse; the rest of the batch is skipped up to Sync
    // and the connection goes on.
    let refused = wire
        .exchange(&[
            PgWireFrontendMessage::Parse(Parse::new(None, "DROP TABLE referrals".into(), vec![])),
            PgWireFrontendMessage::Bind(Bind::new(None, None, vec![], vec![], vec![])),
            PgWireFrontendMessage::Execute(Execute::new(None, 0)),
            sync(),
        ])
        .await;
    let error = refused.iter().find_map(error_fields).expect("an error");
    assert_eq!(error.get(&b'C').map(String::as_str), Some("0A000"));
    assert!(error[&b'M'].contains("DROP is refused"), "{error:?}");
    assert!(data_rows(&refused).is_empty());

    // A syntax error says where it is.
    let syntax = wire
        .exchange(&[
            PgWireFrontendMessage::Parse(Parse::new(
                None,
                "SELECT * FORM referrals".into(),
                vec![],
            )),
            sync(),
        ])
        .await;
    let error = syntax.iter().find_map(error_fields).expect("an error");
    assert_eq!(error.get(&b'C').map(String::as_str), Some("42601"));
    assert_eq!(error.get(&b'P').map(String::as_str), Some("10"));

    // Session chatter over the extended protocol: answered, not run.
    let set = wire
        .exchange(&[
            PgWireFrontendMessage::Parse(Parse::new(None, "BEGIN".into(), vec![])),
            PgWireFrontendMessage::Bind(Bind::new(None, None, vec![], vec![], vec![])),
            PgWireFrontendMessage::Execute(Execute::new(None, 0)),
            PgWireFrontendMessage::Parse(Parse::new(None, "SHOW search_path".into(), vec![])),
            PgWireFrontendMessage::Bind(Bind::new(None, None, vec![], vec![], vec![])),
            PgWireFrontendMessage::Execute(Execute::new(None, 0)),
            sync(),
        ])
        .await;
    assert_eq!(data_rows(&set), [vec![Some(b"public".to_vec())]], "{set:?}");
    assert!(
        matches!(set.last(), Some(PgWireBackendMessage::ReadyForQuery(r))
            if r.status == pgwire::messages::response::TransactionStatus::Transaction),
        "{set:?}"
    );

    // Simple-protocol empty queries.
    for empty in ["", "-- only a comment"] {
        let answer = wire.exchange(&[query(empty)]).await;
        assert!(
            matches!(answer[0], PgWireBackendMessage::EmptyQueryResponse(_)),
            "{empty:?}: {answer:?}"
        );
    }

    // Every query that ran or was refused is in the audit log; the chatter
    // is not.
    let audited: Vec<(String, String)> = s
        .audited()
        .iter()
        .map(|a| {
            (
                a["sql"].as_str().unwrap().to_string(),
                a["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        (sql, "ok"),
        (sql, "ok"),
        ("SELECT $1::int + 1 AS m", "ok"),
        ("DROP TABLE referrals", "refused"),
        ("SELECT * FORM referrals", "sql_error"),
    ]
    .map(|(q, o)| (q.to_string(), o.to_string()));
    assert_eq!(audited, expected);
}

fn sync() -> PgWireFrontendMessage {
    PgWireFrontendMessage::Sync(Sync::new())
}

fn query(sql: &str) -> PgWireFrontendMessage {
    PgWireFrontendMessage::Query(Query::new(sql.into()))
}

/// An ErrorResponse's fields by their one-byte code.
fn error_fields(message: &PgWireBackendMessage) -> Option<std::collections::HashMap<u8, String>> {
    match message {
        PgWireBackendMessage::ErrorResponse(e) => Some(e.fields.iter().cloned().collect()),
        _ => None,
    }
}

/// Every DataRow's cells (`None` for NULL).
fn data_rows(messages: &[PgWireBackendMessage]) -> Vec<Vec<Option<Vec<u8>>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            PgWireBackendMessage::DataRow(row) => Some(cells(row)),
            _ => None,
        })
        .collect()
}

fn cells(row: &DataRow) -> Vec<Option<Vec<u8>>> {
    let mut data = &row.data[..];
    (0..row.field_count)
        .map(|_| {
            let (len, rest) = data.split_at(4);
            let len = i32::from_be_bytes(len.try_into().unwrap());
            data = rest;
            (len >= 0).then(|| {
                let (cell, rest) = data.split_at(len as usize);
                data = rest;
                cell.to_vec()
            })
        })
        .collect()
}

/// A bare protocol client: enough to speak the extended protocol.
struct Wire {
    stream: TcpStream,
    buf: BytesMut,
}

impl Wire {
    /// Connects as user `analyst` with `password`; returns what the server
    /// answered, up to ReadyForQuery or the connection's end.
    async fn connect(port: u16, password: &str) -> (Wire, Vec<PgWireBackendMessage>) {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut wire = Wire {
            stream,
            buf: BytesMut::new(),
        };
        let mut startup = Startup::new();
        startup.parameters.insert("user".into(), "analyst".into());
        startup
            .parameters
            .insert("database".into(), "pathflow".into());
        wire.send(&[PgWireFrontendMessage::Startup(startup)]).await;
        let asked = wire.recv().await;
        assert!(
            matches!(asked, Some(PgWireBackendMessage::Authentication(_))),
            "{asked:?}"
        );
        wire.send(&[PgWireFrontendMessage::PasswordMessageFamily(
            PasswordMessageFamily::Password(Password::new(password.into())),
        )])
        .await;
        let answer = wire.until_ready().await;
        (wire, answer)
    }

    async fn send(&mut self, messages: &[PgWireFrontendMessage]) {
        let mut out = BytesMut::new();
        for m in messages {
            m.encode(&mut out).unwrap();
        }
        // The server may already have closed the connection.
        let _ = self.stream.write_all(&out).await;
    }

    async fn recv(&mut self) -> Option<PgWireBackendMessage> {
        let ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
        loop {
            if let Some(m) = PgWireBackendMessage::decode(&mut self.buf, &ctx).unwrap() {
                return Some(m);
            }
            let read =
                tokio::time::timeout(Duration::from_secs(60), self.stream.read_buf(&mut self.buf))
                    .await
                    .expect("the server answers within a minute");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn until_ready(&mut self) -> Vec<PgWireBackendMessage> {
        let mut messages = Vec::new();
        while let Some(m) = self.recv().await {
            let ready = matches!(m, PgWireBackendMessage::ReadyForQuery(_));
            messages.push(m);
            if ready {
                break;
            }
        }
        messages
    }

    async fn exchange(&mut self, messages: &[PgWireFrontendMessage]) -> Vec<PgWireBackendMessage> {
        self.send(messages).await;
        self.until_ready().await
    }
}
