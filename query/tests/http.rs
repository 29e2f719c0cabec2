//! The HTTP API as a client sees it: a real server on a loopback port over
//! the tables of a small simulated ICB, spoken to over HTTP. Each format's
//! result is decoded and compared with the others; errors are checked for
//! their status, their JSON and the words that say what to do.
//!
//! The tables and the server are built once per run of this binary (on a
//! thread of their own, so they outlive any one test), under
//! `CARGO_TARGET_TMPDIR`.

use std::sync::{Arc, OnceLock};

use arrow::array::{Array, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use pathflow_query::Role;
use pathflow_query::http::serve_http;
use pathflow_query::testing::{engine, simulated_events, token, write_tables};
use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use serde_json::Value;

const ANALYST: &str = "test-analyst-token";
const COMMISSIONER: &str = "test-commissioner-token";
const CLINICAL_PAIR: &str = "test-clinical-pair-token";

/// The running server.
struct Server {
    base: String,
    /// The treatment function the clinical pair's token is scoped to.
    treatment_function: String,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("query-http");
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).unwrap();
                let events = simulated_events(&dir, 3000, 8, 7);
                let location = dir.join("tables");
                write_tables(&location, &events).await;
                let treatment_function = some_treatment_function(&location).await;
                let tokens = vec![
                    token("analyst", ANALYST, Role::Analyst, &[], &[]),
                    token("commissioner", COMMISSIONER, Role::Commissioner, &[], &[]),
                    token(
                        "gp",
                        CLINICAL_PAIR,
                        Role::ClinicalPair,
                        &[],
                        &[&treatment_function],
                    ),
                ];
                let (engine, _reloader) = engine(&location, tokens, |_| {}).await;
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let base = format!("http://{}", listener.local_addr().unwrap());
                tx.send(Server {
                    base,
                    treatment_function,
                })
                .unwrap();
                serve_http(engine, listener, std::future::pending())
                    .await
                    .unwrap();
            });
        });
        rx.recv()
            .expect("the test server started (see its panic above)")
    })
}

/// The treatment function with the fewest referrals, read as the server
/// itself, so a scope to it leaves most rows out.
async fn some_treatment_function(location: &std::path::Path) -> String {
    let (engine, reloader) = engine(location, vec![], |_| {}).await;
    let out = engine
        .run(
            &pathflow_query::Principal::internal(),
            "SELECT treatment_function FROM referrals WHERE treatment_function IS NOT NULL \
             GROUP BY treatment_function ORDER BY count(*), treatment_function LIMIT 1",
            pathflow_query::Interface::Internal,
        )
        .await
        .unwrap();
    reloader.abort();
    pathflow_query::testing::rows(&out).remove(0)
}

fn client() -> Client {
    Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .unwrap()
}

fn url(path: &str) -> String {
    format!("{}{path}", server().base)
}

fn sql(token: &str, accept: Option<&str>, query: &str) -> Response {
    let mut request = client()
        .post(url("/v1/sql"))
        .bearer_auth(token)
        .header("content-type", "text/plain")
        .body(query.to_string());
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    request.send().unwrap()
}

fn get(token: Option<&str>, path: &str) -> Response {
    let mut request = client().get(url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().unwrap()
}

/// The body as JSON, checking the status first.
fn json(response: Response, status: StatusCode) -> Value {
    let got = response.status();
    let text = response.text().unwrap();
    assert_eq!(got, status, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn content_type(response: &Response) -> String {
    response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string()
}

/// A body's error message and kind.
fn error(body: &Value) -> (&str, &str) {
    let e = &body["error"];
    (
        e["message"].as_str().unwrap_or_else(|| panic!("{body}")),
        e["kind"].as_str().unwrap_or_else(|| panic!("{body}")),
    )
}

fn one_batch(schema: SchemaRef, batches: &[RecordBatch]) -> RecordBatch {
    concat_batches(&schema, batches).unwrap()
}

/// Dates, booleans, integers, a float and text, with nulls among them.
const MIXED: &str = "SELECT pathway_id, practice, treatment_function, priority, received_date, \
     clock_stop_date, waiting, wait_days, wait_weeks, wait_days / 7.0 AS wait_weeks_exact \
     FROM referrals ORDER BY pathway_id LIMIT 400";

#[test]
fn every_format_carries_the_same_rows() {
    // JSON, the default.
    let response = sql(ANALYST, None, MIXED);
    assert_eq!(content_type(&response), "application/json");
    let rows_header = response.headers()["pathflow-row-count"]
        .to_str()
        .unwrap()
        .to_string();
    let tables_header = response.headers()["pathflow-table-versions"]
        .to_str()
        .unwrap()
        .to_string();
    let body = json(response, StatusCode::OK);
    let rows = body["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 400);
    assert_eq!(body["row_count"], 400);
    assert_eq!(rows_header, "400");
    let version = body["tables"]["referrals"].as_u64().unwrap();
    assert_eq!(tables_header, format!("referrals={version}"));
    let columns: Vec<(&str, &str)> = body["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["type"].as_str().unwrap()))
        .collect();
    assert_eq!(columns[4], ("received_date", "Date32"));
    assert_eq!(columns[6], ("waiting", "Boolean"));
    // Typed values: numbers as numbers, dates as ISO strings, nulls as null.
    let first = &rows[0];
    assert!(
        first["wait_days"].is_number() || first["wait_days"].is_null(),
        "{first}"
    );
    assert!(first["waiting"].is_boolean(), "{first}");
    let received = first["received_date"].as_str().unwrap();
    assert!(
        chrono::NaiveDate::parse_from_str(received, "%Y-%m-%d").is_ok(),
        "{received}"
    );
    assert!(
        rows.iter().any(|r| r["clock_stop_date"].is_null()),
        "the sample has open pathways"
    );
    assert!(rows.iter().any(|r| r["clock_stop_date"].is_string()));

    // Arrow IPC.
    let response = sql(ANALYST, Some("application/vnd.apache.arrow.stream"), MIXED);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        content_type(&response),
        "application/vnd.apache.arrow.stream"
    );
    let bytes = response.bytes().unwrap();
    let reader = arrow::ipc::reader::StreamReader::try_new(&bytes[..], None).unwrap();
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    let arrow_result = one_batch(Arc::clone(&schema), &batches);
    assert_eq!(arrow_result.num_rows(), 400);
    assert_same_rows(rows, &arrow_result);

    // Parquet, under both its names.
    for accept in ["application/vnd.apache.parquet", "application/x-parquet"] {
        let response = sql(ANALYST, Some(accept), MIXED);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(content_type(&response), "application/vnd.apache.parquet");
        let bytes = response.bytes().unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        let parquet_result = one_batch(Arc::clone(&schema), &batches);
        assert_eq!(parquet_result, arrow_result);
    }

    // CSV, with a header row.
    let response = sql(ANALYST, Some("text/csv"), MIXED);
    assert_eq!(response.status(), StatusCode::OK);
    assert!(content_type(&response).starts_with("text/csv"));
    let text = response.text().unwrap();
    let header = text.lines().next().unwrap();
    let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
    assert_eq!(header, names.join(","));
    let reader = arrow::csv::ReaderBuilder::new(Arc::clone(&schema))
        .with_header(true)
        .build(text.as_bytes())
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    assert_eq!(one_batch(Arc::clone(&schema), &batches), arrow_result);
}

/// Each JSON row holds the same values as the Arrow row: text and dates as
/// Arrow displays them, numbers equal, nulls where Arrow has nulls.
fn assert_same_rows(json_rows: &[Value], batch: &RecordBatch) {
    let options = FormatOptions::default();
    let schema = batch.schema();
    for (c, column) in batch.columns().iter().enumerate() {
        let name = schema.field(c).name();
        let formatter = ArrayFormatter::try_new(column.as_ref(), &options).unwrap();
        for (r, row) in json_rows.iter().enumerate() {
            let value = &row[name.as_str()];
            let arrow_text = formatter.value(r).to_string();
            match value {
                Value::Null => assert!(column.is_null(r), "{name} row {r}: {arrow_text}"),
                Value::String(s) => assert_eq!(s, &arrow_text, "{name} row {r}"),
                Value::Bool(b) => assert_eq!(b.to_string(), arrow_text, "{name} row {r}"),
                Value::Number(n) => {
                    let expected: f64 = arrow_text.parse().unwrap();
                    assert_eq!(n.as_f64().unwrap(), expected, "{name} row {r}");
                }
                other => panic!("{name} row {r}: unexpected {other}"),
            }
        }
    }
}

#[test]
fn a_json_body_is_read_as_the_query() {
    let response = client()
        .post(url("/v1/sql"))
        .bearer_auth(ANALYST)
        .header("content-type", "application/json")
        .body(r#"{"sql": "SELECT 1 AS one, 'a' AS letter, NULL AS nothing"}"#)
        .send()
        .unwrap();
    let body = json(response, StatusCode::OK);
    assert_eq!(
        body["rows"],
        serde_json::json!([{"one": 1, "letter": "a", "nothing": null}])
    );
    assert_eq!(body["tables"], serde_json::json!({}));

    let response = client()
        .post(url("/v1/sql"))
        .bearer_auth(ANALYST)
        .header("content-type", "application/json")
        .body(r#"{"query": "SELECT 1"}"#)
        .send()
        .unwrap();
    let body = json(response, StatusCode::BAD_REQUEST);
    let (message, kind) = error(&body);
    assert_eq!(kind, "bad_request");
    assert!(message.contains(r#"{"sql": "SELECT ...""#), "{message}");
}

#[test]
fn an_unsupported_accept_is_406_with_the_supported_types() {
    let response = sql(ANALYST, Some("text/html"), "SELECT 1");
    let body = json(response, StatusCode::NOT_ACCEPTABLE);
    let (message, kind) = error(&body);
    assert_eq!(kind, "not_acceptable");
    assert!(message.contains("text/html"), "{message}");
    let supported: Vec<&str> = body["error"]["supported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for media in [
        "application/json",
        "text/csv",
        "application/vnd.apache.arrow.stream",
        "application/vnd.apache.parquet",
    ] {
        assert!(supported.contains(&media), "{supported:?}");
    }
    // A wildcard gets JSON.
    let response = sql(ANALYST, Some("*/*"), "SELECT 1");
    assert_eq!(content_type(&response), "application/json");
}

#[test]
fn a_request_without_a_valid_token_is_401_and_says_how_to_send_one() {
    let cases = [
        client().post(url("/v1/sql")).body("SELECT 1"),
        client()
            .post(url("/v1/sql"))
            .bearer_auth("test-wrong-token")
            .body("SELECT 1"),
        client()
            .post(url("/v1/sql"))
            .header("authorization", "Basic dXNlcjpwYXNz")
            .body("SELECT 1"),
        client().get(url("/v1/tables")),
        client()
            .get(url("/v1/tables/referrals"))
            .bearer_auth("test-wrong-token"),
    ];
    for request in cases {
        let response = request.send().unwrap();
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        let body = json(response, StatusCode::UNAUTHORIZED);
        let (message, kind) = error(&body);
        assert_eq!(kind, "unauthorized");
        assert!(
            message.contains("Authorization: Bearer <token>"),
            "{message}"
        );
        assert!(!message.contains("test-wrong-token"), "{message}");
    }
}

#[test]
fn a_commissioner_is_refused_state_tables_and_lists_only_gold() {
    let response = sql(COMMISSIONER, None, "SELECT count(*) FROM referrals");
    let body = json(response, StatusCode::FORBIDDEN);
    let (message, kind) = error(&body);
    assert_eq!(kind, "refused");
    assert_eq!(body["error"]["refusal"], "forbidden");
    assert!(message.contains("gold tables only"), "{message}");

    let body = json(
        get(Some(COMMISSIONER), "/v1/tables/referrals"),
        StatusCode::FORBIDDEN,
    );
    let (message, _) = error(&body);
    assert!(
        message.contains("`referrals` is not one of them"),
        "{message}"
    );

    let body = json(get(Some(COMMISSIONER), "/v1/tables"), StatusCode::OK);
    let listed = body["tables"].as_array().unwrap();
    let names: Vec<&str> = listed.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "demand_weekly",
            "capacity_weekly",
            "waits_weekly",
            "followups_weekly"
        ]
    );
    for table in listed {
        assert_eq!(table["layer"], "gold", "{table}");
        assert!(table["version"].is_u64(), "{table}");
        assert!(table["rows"].as_u64().unwrap() > 0, "{table}");
        assert!(table["committed_at"].is_string(), "{table}");
    }

    // The gold tables themselves are readable, schema included.
    let body = json(
        get(Some(COMMISSIONER), "/v1/tables/demand_weekly"),
        StatusCode::OK,
    );
    assert_eq!(body["name"], "demand_weekly");
    let columns = body["columns"].as_array().unwrap();
    assert!(!columns.is_empty());
    for c in columns {
        assert!(c["name"].is_string() && c["type"].is_string() && c["nullable"].is_boolean());
    }
    let body = json(
        sql(
            COMMISSIONER,
            None,
            "SELECT count(*) AS n FROM demand_weekly",
        ),
        StatusCode::OK,
    );
    assert!(body["rows"][0]["n"].as_u64().unwrap() > 0);
}

#[test]
fn an_analyst_lists_every_table_with_its_schema() {
    let body = json(get(Some(ANALYST), "/v1/tables"), StatusCode::OK);
    let listed = body["tables"].as_array().unwrap();
    let layers: Vec<&str> = listed
        .iter()
        .map(|t| t["layer"].as_str().unwrap())
        .collect();
    for layer in ["bronze", "state", "gold"] {
        assert!(layers.contains(&layer), "{layers:?}");
    }
    let body = json(get(Some(ANALYST), "/v1/tables/referrals"), StatusCode::OK);
    let columns = body["columns"].as_array().unwrap();
    let pathway = columns.iter().find(|c| c["name"] == "pathway_id").unwrap();
    assert_eq!(pathway["nullable"], false);
    let received = columns
        .iter()
        .find(|c| c["name"] == "received_date")
        .unwrap();
    assert_eq!(received["type"], "Date32");

    let body = json(
        get(Some(ANALYST), "/v1/tables/no_such_table"),
        StatusCode::NOT_FOUND,
    );
    let (message, kind) = error(&body);
    assert_eq!(kind, "not_found");
    assert!(message.contains("GET /v1/tables"), "{message}");
}

#[test]
fn a_clinical_pair_sees_its_scope_and_no_table_totals() {
    let scope = &server().treatment_function;
    let everyone = json(
        sql(
            ANALYST,
            None,
            "SELECT count(DISTINCT treatment_function) AS n FROM referrals",
        ),
        StatusCode::OK,
    );
    assert!(everyone["rows"][0]["n"].as_u64().unwrap() > 1, "{everyone}");
    let body = json(
        sql(
            CLINICAL_PAIR,
            None,
            "SELECT DISTINCT treatment_function FROM referrals",
        ),
        StatusCode::OK,
    );
    assert_eq!(
        body["rows"],
        serde_json::json!([{ "treatment_function": scope }])
    );
    let body = json(get(Some(CLINICAL_PAIR), "/v1/tables"), StatusCode::OK);
    let listed = body["tables"].as_array().unwrap();
    assert!(listed.iter().any(|t| t["name"] == "referrals"), "{body}");
    for table in listed {
        assert!(table.get("rows").is_none(), "{table}");
    }
}

#[test]
fn sql_errors_say_where_and_refusals_say_why() {
    let body = json(
        sql(ANALYST, None, "SELECT *\nFORM referrals"),
        StatusCode::BAD_REQUEST,
    );
    let (message, kind) = error(&body);
    assert_eq!(kind, "sql_error");
    assert!(message.contains("FORM"), "{message}");
    let position = &body["error"]["position"];
    assert_eq!(position["line"], 2, "{body}");
    assert!(position["column"].as_u64().unwrap() >= 1, "{body}");

    let body = json(
        sql(ANALYST, None, "DROP TABLE referrals"),
        StatusCode::BAD_REQUEST,
    );
    let (message, kind) = error(&body);
    assert_eq!(kind, "refused");
    assert_eq!(body["error"]["refusal"], "ddl");
    assert!(message.contains("read-only"), "{message}");
}

#[test]
fn a_body_over_the_limit_is_413() {
    let huge = format!(
        "SELECT 1 -- {}",
        "x".repeat(pathflow_query::http::MAX_SQL_BYTES)
    );
    let body = json(sql(ANALYST, None, &huge), StatusCode::PAYLOAD_TOO_LARGE);
    let (message, kind) = error(&body);
    assert_eq!(kind, "too_large");
    assert!(message.contains("1024 KiB"), "{message}");
}

#[test]
fn health_readiness_and_metrics_need_no_token() {
    assert_eq!(get(None, "/healthz").status(), StatusCode::OK);
    let body = json(get(None, "/readyz"), StatusCode::OK);
    assert_eq!(body["ready"], true);
    assert!(body["tables"]["referrals"].is_u64(), "{body}");

    json(sql(ANALYST, None, "SELECT 1"), StatusCode::OK);
    let response = get(None, "/metrics");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(content_type(&response).starts_with("text/plain"));
    let text = response.text().unwrap();
    let ok_query = text.lines().any(|l| {
        l.starts_with("pathflow_query_duration_seconds_count{")
            && l.contains(r#"interface="http""#)
            && l.contains(r#"outcome="ok""#)
    });
    assert!(ok_query, "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with(r#"pathflow_query_table_version{table="referrals"}"#)),
        "{text}"
    );
}

#[test]
fn an_unknown_path_is_404_and_a_wrong_method_405_in_json() {
    let body = json(get(None, "/v2/sql"), StatusCode::NOT_FOUND);
    assert!(error(&body).0.contains("POST /v1/sql"));
    let body = json(
        get(Some(ANALYST), "/v1/sql"),
        StatusCode::METHOD_NOT_ALLOWED,
    );
    assert_eq!(error(&body).1, "method_not_allowed");
}
