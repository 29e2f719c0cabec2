//! The HTTP API: `POST /v1/sql` (the result as JSON, CSV, Arrow IPC or
//! Parquet, chosen by `Accept`), `GET /v1/tables` and `/v1/tables/{name}`
//! (what a token may read), and the unauthenticated `/healthz`, `/readyz`
//! and `/metrics` for the orchestrator and Prometheus.
//!
//! Every query goes through [`Engine::run`], so refusals, scopes, limits,
//! the audit log and the metrics are the engine's, exactly as for the
//! Postgres interface; this module only authenticates the request, picks the
//! format and writes the result. Every error is one JSON shape,
//! `{"error": {"message", "kind", ...}}`, with the status the
//! [`QueryError`] maps to.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use axum::Router;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::catalog::{
    Layer, PRACTICE_COLUMN, Snapshot, TREATMENT_FUNCTION_COLUMN, known_tables, role_reads,
};
use crate::engine::{Engine, Interface, QueryOutput};
use crate::error::{QueryError, Refusal};

/// The largest SQL text (or JSON body) `POST /v1/sql` accepts.
pub const MAX_SQL_BYTES: usize = 1024 * 1024;

/// Each table the query read and its version (`name=version`, comma
/// separated), on every result whatever its format.
pub const TABLES_HEADER: &str = "pathflow-table-versions";
/// The number of rows in the result, on every result whatever its format.
pub const ROW_COUNT_HEADER: &str = "pathflow-row-count";

const HOW_TO_AUTHENTICATE: &str =
    "send the token pathflow's operator gave you as `Authorization: Bearer <token>`";

/// The HTTP API over `engine`.
pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/v1/sql", post(run_sql))
        .route("/v1/tables", get(list_tables))
        .route("/v1/tables/{name}", get(describe_table))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_SQL_BYTES))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(engine)
}

/// Serves [`router`] on `listener` until `shutdown` completes, then lets
/// requests in progress finish.
pub async fn serve_http(
    engine: Arc<Engine>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(engine))
        .with_graceful_shutdown(shutdown)
        .await
}

// ==== errors =================================================================

/// An answer that is not a result: its status and the JSON error body.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    /// Further members of the `error` object (`position`, `supported`, ...).
    detail: serde_json::Map<String, Value>,
    /// `WWW-Authenticate`, for a 401.
    challenge: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            detail: serde_json::Map::new(),
            challenge: None,
        }
    }

    fn with(mut self, key: &str, value: Value) -> Self {
        self.detail.insert(key.to_string(), value);
        self
    }

    fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut out = ApiError::new(status, e.outcome(), e.to_string());
        if let QueryError::Sql {
            position: Some((line, column)),
            ..
        } = &e
        {
            out = out.with("position", json!({"line": line, "column": column}));
        }
        if let Some(refusal) = e.refusal() {
            out = out.with("refusal", json!(refusal.as_str()));
        }
        out
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::Map::new();
        error.insert("message".into(), Value::String(self.message));
        error.insert("kind".into(), Value::String(self.kind.into()));
        error.extend(self.detail);
        let mut response = (self.status, axum::Json(json!({ "error": error }))).into_response();
        if let Some(challenge) = self.challenge {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint: the API is POST /v1/sql, GET /v1/tables, GET /v1/tables/{name}, \
         GET /healthz, GET /readyz and GET /metrics",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "wrong method: send queries with POST /v1/sql; the other endpoints take GET",
    )
}

// ==== authentication =========================================================

/// The principal of the request's bearer token; a request without a valid
/// one is answered 401 before anything else is looked at.
struct Authenticated(Principal);

impl FromRequestParts<Arc<Engine>> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        engine: &Arc<Engine>,
    ) -> Result<Self, Self::Rejection> {
        let unauthorized = |message: String, challenge| {
            let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
            e.challenge = Some(challenge);
            e
        };
        let Some(header) = parts.headers.get(AUTHORIZATION) else {
            engine.count_unauthorized(Interface::Http);
            return Err(unauthorized(
                format!("this endpoint needs a token: {HOW_TO_AUTHENTICATE}"),
                r#"Bearer realm="pathflow""#,
            ));
        };
        let secret = header
            .to_str()
            .ok()
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, secret)| secret.trim())
            .filter(|secret| !secret.is_empty());
        let Some(secret) = secret else {
            engine.count_unauthorized(Interface::Http);
            return Err(unauthorized(
                format!("the Authorization header is not a bearer token: {HOW_TO_AUTHENTICATE}"),
                r#"Bearer realm="pathflow", error="invalid_request""#,
            ));
        };
        match engine.authenticate(secret, Interface::Http) {
            Some(principal) => Ok(Authenticated(principal)),
            None => Err(unauthorized(
                format!(
                    "the token was not recognised (mistyped, revoked or for another server): \
                     {HOW_TO_AUTHENTICATE}"
                ),
                r#"Bearer realm="pathflow", error="invalid_token""#,
            )),
        }
    }
}

// ==== POST /v1/sql ===========================================================

/// A result format a client may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
    ArrowStream,
    Parquet,
}

impl Format {
    /// In order of preference when a client accepts several equally.
    const ALL: [Format; 4] = [
        Format::Json,
        Format::Csv,
        Format::ArrowStream,
        Format::Parquet,
    ];

    /// The media types that select this format; the first is the one answered.
    fn media_types(self) -> &'static [&'static str] {
        match self {
            Format::Json => &["application/json"],
            Format::Csv => &["text/csv"],
            Format::ArrowStream => &["application/vnd.apache.arrow.stream"],
            Format::Parquet => &["application/vnd.apache.parquet", "application/x-parquet"],
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8; header=present",
            Format::ArrowStream => "application/vnd.apache.arrow.stream",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Json => "JSON",
            Format::Csv => "CSV",
            Format::ArrowStream => "Arrow IPC",
            Format::Parquet => "Parquet",
        }
    }

    fn supported() -> Vec<&'static str> {
        Format::ALL
            .iter()
            .flat_map(|f| f.media_types().iter().copied())
            .collect()
    }
}

/// The format an `Accept` header asks for. Each format takes the quality of
/// the most specific range that matches it (`q=0` rules it out); the
/// highest quality wins, then the range listed first, then [`Format::ALL`]
/// order. No header, or an empty one, means JSON.
fn negotiate(accept: Option<&HeaderValue>) -> Result<Format, ApiError> {
    let not_acceptable = |what: &str| {
        ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            format!(
                "cannot answer with {what}: set Accept to one of the supported types (or leave \
                 it out for JSON)"
            ),
        )
        .with("supported", json!(Format::supported()))
    };
    let Some(accept) = accept else {
        return Ok(Format::Json);
    };
    let text = accept
        .to_str()
        .map_err(|_| not_acceptable("an Accept header that is not ASCII"))?;
    if text.trim().is_empty() {
        return Ok(Format::Json);
    }
    // (media type, quality), in the order listed.
    let ranges: Vec<(String, f32)> = text
        .split(',')
        .filter_map(|range| {
            let mut parts = range.split(';');
            let media = parts.next()?.trim().to_ascii_lowercase();
            if media.is_empty() {
                return None;
            }
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            Some((media, q))
        })
        .collect();
    let mut best: Option<(f32, usize, Format)> = None;
    for format in Format::ALL {
        // (specificity, quality, position) of the most specific match.
        let mut matched: Option<(u8, f32, usize)> = None;
        for (position, (media, q)) in ranges.iter().enumerate() {
            let specificity = if format.media_types().contains(&media.as_str()) {
                2
            } else if media
                .strip_suffix("/*")
                .is_some_and(|t| format.media_types()[0].starts_with(&format!("{t}/")))
            {
                1
            } else if media == "*/*" {
                0
            } else {
                continue;
            };
            if matched.is_none_or(|(s, _, _)| specificity > s) {
                matched = Some((specificity, *q, position));
            }
        }
        if let Some((_, q, position)) = matched
            && q > 0.0
            && best.is_none_or(|(bq, bp, _)| q > bq || (q == bq && position < bp))
        {
            best = Some((q, position, format));
        }
    }
    best.map(|(_, _, format)| format)
        .ok_or_else(|| not_acceptable(&format!("`{text}`")))
}

/// A JSON request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
}

/// The SQL in a request body: the whole body, or `{"sql": "..."}` when it
/// is sent as `application/json`.
fn sql_of(headers: &HeaderMap, body: &[u8]) -> Result<String, ApiError> {
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        let request: SqlRequest = serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "a JSON body must be {{\"sql\": \"SELECT ...\"}} ({e}); or send the SQL \
                     itself as the body, as text/plain"
                ),
            )
        })?;
        return Ok(request.sql);
    }
    String::from_utf8(body.to_vec()).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "the body is not UTF-8 text (invalid byte at offset {}): send the SQL as UTF-8",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Runs the body's SQL and answers with the result in the format `Accept`
/// asks for.
async fn run_sql(
    State(engine): State<Arc<Engine>>,
    Authenticated(who): Authenticated,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let format = negotiate(headers.get(ACCEPT))?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the request body is larger than {} KiB: send one query, not data; put \
                     values in a table or filter with WHERE",
                    MAX_SQL_BYTES / 1024
                ),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
        }
    })?;
    let sql = sql_of(&headers, &body)?;
    let out = engine.run(&who, &sql, Interface::Http).await?;
    let rows = out.rows;
    let tables = out
        .tables
        .iter()
        .map(|(name, version)| format!("{name}={version}"))
        .collect::<Vec<_>>()
        .join(",");
    // Writing a large result is CPU work: off the runtime's threads.
    let encoded = tokio::task::spawn_blocking(move || encode(format, &out))
        .await
        .map_err(|e| ApiError::internal(format!("writing the result failed: {e}")))??;
    let mut response = (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        )],
        encoded,
    )
        .into_response();
    let h = response.headers_mut();
    h.insert(
        HeaderName::from_static(ROW_COUNT_HEADER),
        HeaderValue::from(rows),
    );
    if let Ok(value) = HeaderValue::from_str(&tables) {
        h.insert(HeaderName::from_static(TABLES_HEADER), value);
    }
    Ok(response)
}

/// One column of a result or a table.
#[derive(Debug, Serialize)]
struct Column {
    name: String,
    /// The Arrow type, as Arrow writes it (`Int64`, `Utf8`, `Date32`, ...).
    #[serde(rename = "type")]
    data_type: String,
    nullable: bool,
}

fn columns(schema: &SchemaRef) -> Vec<Column> {
    schema
        .fields()
        .iter()
        .map(|f| Column {
            name: f.name().clone(),
            data_type: f.data_type().to_string(),
            nullable: f.is_nullable(),
        })
        .collect()
}

fn encode(format: Format, out: &QueryOutput) -> Result<Vec<u8>, ApiError> {
    let failed = |e: &dyn std::fmt::Display| {
        ApiError::internal(format!(
            "the result could not be written as {}: {e}; ask for another format with Accept \
             (Arrow IPC carries every type)",
            format.name()
        ))
    };
    match format {
        Format::Json => json_result(out).map_err(|e| failed(&e)),
        Format::Csv => csv_result(&out.batches).map_err(|e| failed(&e)),
        Format::ArrowStream => arrow_result(&out.schema, &out.batches).map_err(|e| failed(&e)),
        Format::Parquet => parquet_result(&out.schema, &out.batches).map_err(|e| failed(&e)),
    }
}

/// `{"columns": [..], "rows": [{column: value}, ..], "row_count": n,
/// "tables": {name: version}}`. Rows are written by Arrow's JSON writer:
/// numbers as numbers, dates and times as ISO 8601 strings, nulls (and
/// non-finite floats) as `null`.
fn json_result(out: &QueryOutput) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let to_arrow = |e: serde_json::Error| arrow::error::ArrowError::JsonError(e.to_string());
    let mut body = Vec::with_capacity(out.batches.iter().map(|b| b.num_rows() * 64).sum());
    body.extend_from_slice(b"{\"columns\":");
    serde_json::to_writer(&mut body, &columns(&out.schema)).map_err(to_arrow)?;
    body.extend_from_slice(b",\"rows\":");
    let mut writer = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::JsonArray>(&mut body);
    for batch in &out.batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    drop(writer);
    body.extend_from_slice(b",\"row_count\":");
    serde_json::to_writer(&mut body, &out.rows).map_err(to_arrow)?;
    body.extend_from_slice(b",\"tables\":");
    serde_json::to_writer(&mut body, &out.tables).map_err(to_arrow)?;
    body.push(b'}');
    Ok(body)
}

fn csv_result(batches: &[RecordBatch]) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let mut body = Vec::new();
    let mut writer = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(&mut body);
    for batch in batches {
        writer.write(batch)?;
    }
    drop(writer);
    Ok(body)
}

fn arrow_result(
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    writer.into_inner()
}

fn parquet_result(
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(Vec::new(), Arc::clone(schema), Some(props))?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.into_inner()
}

// ==== GET /v1/tables =========================================================

/// A table as `/v1/tables` lists it.
#[derive(Debug, Serialize)]
struct TableInfo {
    name: &'static str,
    layer: Layer,
    version: u64,
    /// Rows in the version, from the Delta log's statistics; left out when
    /// they lack it, and for a clinical pair, whose scope covers only some.
    #[serde(skip_serializing_if = "Option::is_none")]
    rows: Option<u64>,
    /// When the version was committed (RFC 3339, UTC).
    committed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    columns: Option<Vec<Column>>,
}

impl TableInfo {
    fn of(snapshot: &Snapshot, who: &Principal) -> Self {
        TableInfo {
            name: snapshot.name,
            layer: snapshot.layer,
            version: snapshot.version,
            rows: snapshot.rows.filter(|_| who.scope.is_none()),
            committed_at: snapshot.committed_at.as_ref().map(rfc3339),
            columns: None,
        }
    }
}

fn rfc3339(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Why `who`'s role may not read `table`: the words a query naming it gets.
fn role_refusal(who: &Principal, table: &str) -> String {
    let references = [datafusion::common::TableReference::bare(table)];
    match crate::guard::check_tables(who, &references, &[]) {
        Err(e) => e.to_string(),
        Ok(()) => format!("the {} role may not read `{table}`", who.role.as_str()),
    }
}

/// Why `who` may not read `snapshot`, if it may not. The same rule as the
/// SQL catalog ([`crate::catalog::PrincipalCatalog`]): the role's layers,
/// and for a scoped principal only tables that have the scope's columns.
fn hidden_from(who: &Principal, snapshot: &Snapshot) -> Option<String> {
    if !role_reads(who.role, snapshot.layer) {
        return Some(role_refusal(who, snapshot.name));
    }
    (!crate::catalog::visible(who, snapshot)).then(|| {
        format!(
            "`{}` has no `{PRACTICE_COLUMN}` and `{TREATMENT_FUNCTION_COLUMN}` columns to limit \
             it to a clinical pair's scope, so it is not shared with clinical pairs",
            snapshot.name
        )
    })
}

/// The tables the token may read, in listing order.
async fn list_tables(
    State(engine): State<Arc<Engine>>,
    Authenticated(who): Authenticated,
) -> axum::Json<Value> {
    let tables: Vec<TableInfo> = engine
        .tables()
        .all()
        .iter()
        .filter(|s| hidden_from(&who, s).is_none())
        .map(|s| TableInfo::of(s, &who))
        .collect();
    axum::Json(json!({ "tables": tables }))
}

/// One table the token may read, with its columns.
async fn describe_table(
    State(engine): State<Arc<Engine>>,
    Authenticated(who): Authenticated,
    Path(name): Path<String>,
) -> Result<axum::Json<TableInfo>, ApiError> {
    let Some((_, layer)) = known_tables().into_iter().find(|(n, _)| *n == name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("there is no table `{name}`: GET /v1/tables lists the tables you may read"),
        ));
    };
    let forbidden =
        |message: String| ApiError::from(QueryError::refused(Refusal::Forbidden, message));
    // The role decides before the table's state does, so a table the role
    // may not read is 403 whether or not it is loaded.
    if !role_reads(who.role, layer) {
        return Err(forbidden(role_refusal(&who, &name)));
    }
    let Some(snapshot) = engine.tables().get(&name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "`{name}` has not been loaded yet: the transform has not written it; /readyz \
                 lists the tables still missing"
            ),
        ));
    };
    if let Some(message) = hidden_from(&who, &snapshot) {
        return Err(forbidden(message));
    }
    let mut info = TableInfo::of(&snapshot, &who);
    info.columns = Some(columns(&snapshot.schema()));
    Ok(axum::Json(info))
}

// ==== health, readiness, metrics =============================================

/// The process is up.
async fn healthz() -> axum::Json<Value> {
    axum::Json(json!({ "status": "ok" }))
}

/// Ready once every table the transform writes has been loaded.
async fn readyz(State(engine): State<Arc<Engine>>) -> (StatusCode, axum::Json<Value>) {
    let tables = engine.tables();
    if tables.complete() {
        let versions: BTreeMap<&str, u64> =
            tables.all().iter().map(|s| (s.name, s.version)).collect();
        return (
            StatusCode::OK,
            axum::Json(json!({ "ready": true, "tables": versions })),
        );
    }
    let missing: Vec<&str> = known_tables()
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| tables.get(name).is_none())
        .collect();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({
            "ready": false,
            "missing": missing,
            "message": "waiting for the transform to write these tables under tables.location",
        })),
    )
}

/// Prometheus text, with each table's version brought up to date first.
async fn metrics(State(engine): State<Arc<Engine>>) -> Response {
    let metrics = engine.metrics();
    for snapshot in engine.tables().all() {
        metrics
            .table_version
            .with_label_values(&[snapshot.name])
            .set(i64::try_from(snapshot.version).unwrap_or(i64::MAX));
    }
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static(prometheus::TEXT_FORMAT),
        )],
        metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(accept: &str) -> Result<Format, StatusCode> {
        negotiate(Some(&HeaderValue::from_str(accept).unwrap())).map_err(|e| e.status)
    }

    #[test]
    fn accept_picks_the_best_supported_format() {
        assert_eq!(negotiate(None).unwrap(), Format::Json);
        assert_eq!(pick("").unwrap(), Format::Json);
        assert_eq!(pick("*/*").unwrap(), Format::Json);
        assert_eq!(pick("text/*").unwrap(), Format::Csv);
        assert_eq!(pick("text/csv").unwrap(), Format::Csv);
        assert_eq!(pick("application/x-parquet").unwrap(), Format::Parquet);
        assert_eq!(
            pick("application/vnd.apache.arrow.stream").unwrap(),
            Format::ArrowStream
        );
        assert_eq!(
            pick("text/html, application/vnd.apache.parquet;q=0.9, */*;q=0.1").unwrap(),
            Format::Parquet
        );
        assert_eq!(pick("text/csv, application/json").unwrap(), Format::Csv);
        assert_eq!(pick("application/json;q=0, */*").unwrap(), Format::Csv);
        assert_eq!(pick("text/html").unwrap_err(), StatusCode::NOT_ACCEPTABLE);
        assert_eq!(
            pick("text/csv;q=0").unwrap_err(),
            StatusCode::NOT_ACCEPTABLE
        );
    }
}
