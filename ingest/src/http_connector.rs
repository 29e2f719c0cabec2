//! The HTTP push connector, for source systems that send records rather than
//! drop files: `POST /v1/push` takes one FHIR R4 Bundle or a body of NDJSON
//! events and hands it to [`Ingest::ingest`], the same path the file
//! connector's files take (read → quarantine rejects → produce → wait for the
//! broker's acknowledgements → metrics). `GET /healthz` answers 200.
//!
//! Every answer is JSON saying what happened and what to fix; none repeats
//! anything from the request body (rejections come from the readers, which
//! never quote values). A request is accepted (202) only once the broker has
//! acknowledged all its events and dead letters, so a client that gets
//! anything else can send the same body again: event ids are deterministic,
//! so records already delivered are not counted twice downstream.
//!
//! # Answers
//!
//! | status | when | body |
//! |---|---|---|
//! | 202 | the body was read and every message acknowledged | `request`, `accepted`, `rejected`, `opted_out`, `events`, `duplicates`, `errors` (`entry` or `line`, `field`, `problem`, `rule`; the first 1000, with `errors_not_shown` beyond) |
//! | 400 | the body is empty, or the reader could use none of it (not JSON, not a Bundle, no line an event) | `error`, `hint` (and `request` once it was read: like a bad file, it is on the dead-letter topic and in quarantine) |
//! | 401 | no `Authorization`, not the Bearer scheme, or the wrong token (`WWW-Authenticate: Bearer`) | `error` saying which, `hint` |
//! | 404 / 405 | another path / another method (`Allow: POST`) | `error`, `hint` |
//! | 413 | the body is over `max_body_bytes` (by its `Content-Length`, or once that much is read) | `error` with the limit, `hint` to split it |
//! | 415 | another `Content-Type` | `error`, `hint` listing the accepted ones |
//! | 503 | Kafka refused (`Retry-After: 30`) | `request`, `error`, `hint` to retry |
//! | 500 | the quarantine could not be written | `request`, `error`, `hint` to retry |
//!
//! Every answer but `/healthz`'s bumps `pathflow_ingest_http_requests_total{status}`.
//!
//! Clients authenticate with `Authorization: Bearer <token>`. The token is
//! read once at start-up ([`HttpConfig::load_token`]) and kept only as its
//! SHA-256 digest, compared in constant time; it is never logged or echoed.
//! The listener speaks plain HTTP: put TLS in front of it (an ingress or
//! reverse proxy), or the token can be read on the wire.

use std::env::VarError;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use pathflow_schemas::SourceName;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::config::Format;
use crate::file_connector::{Batch, Ingest, IngestError};
use crate::metrics::Metrics;
use crate::pseudonymise::KeySource;
use crate::sources::Outcome;
use crate::sources::ndjson::LINE_FIELD;

/// The HTTP push connector's configuration (`[http]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on, e.g. `0.0.0.0:8443`.
    pub listen: SocketAddr,
    /// Source name on the events of pushed records, e.g. `push:gp`.
    pub source: SourceName,
    /// The bearer token clients must send: `{ file = "…" }` or `{ env = "…" }`.
    pub token: KeySource,
    /// Largest request body accepted, in bytes; larger ones get 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

fn default_max_body() -> usize {
    16 * 1024 * 1024
}

/// Shorter tokens can be guessed; 16 characters is the least `openssl rand -hex 8` gives.
const MIN_TOKEN_CHARS: usize = 16;

/// The push path.
pub const PUSH_PATH: &str = "/v1/push";

/// Content types of a FHIR Bundle, then of NDJSON events.
const FHIR_TYPES: &[&str] = &["application/fhir+json", "application/json"];
const NDJSON_TYPES: &[&str] = &["application/x-ndjson", "application/ndjson"];

/// Rejections listed in one answer; the rest are counted (all are on the dead-letter topic).
const MAX_ERRORS_SHOWN: usize = 1000;

/// The bearer token, held only as its SHA-256 digest. `Debug` shows nothing of it.
#[derive(Clone)]
pub struct BearerToken([u8; 32]);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl BearerToken {
    /// A token from its text (trailing whitespace is not part of it).
    pub fn new(text: &[u8]) -> Self {
        BearerToken(Sha256::digest(text.trim_ascii_end()).into())
    }

    /// Whether `presented` is the token. Comparing digests, every byte of
    /// them, leaks neither the token's length nor how much of it matched.
    fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest
            .iter()
            .zip(self.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Why the push token could not be loaded. Messages say where it was looked
/// for and what to do, and never contain the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file is missing or unreadable.
    #[error(
        "the push token file {} (`[http] token`) cannot be read ({error}); create it with a random token, e.g. `openssl rand -hex 32 > {}`, readable only by the connector",
        path.display(),
        path.display()
    )]
    FileUnreadable {
        /// The file named in the config.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        error: std::io::Error,
    },
    /// The environment variable is not set.
    #[error(
        "environment variable {var} (the push connector's bearer token, `[http] token`) is not set; set it to a random token, e.g. `{var}=$(openssl rand -hex 32)`"
    )]
    EnvNotSet {
        /// The variable named in the config.
        var: String,
    },
    /// The environment variable holds bytes that are not UTF-8.
    #[error(
        "environment variable {var} (`[http] token`) is not valid UTF-8; set it to a random token, e.g. `{var}=$(openssl rand -hex 32)`"
    )]
    EnvNotUnicode {
        /// The variable named in the config.
        var: String,
    },
    /// The token is empty, or too short to resist guessing.
    #[error(
        "the push token in {origin} (`[http] token`) is {len} characters; it must be at least {MIN_TOKEN_CHARS}, e.g. the output of `openssl rand -hex 32`"
    )]
    TooShort {
        /// Where the token was read from.
        origin: KeySource,
        /// Its length once trailing whitespace is removed.
        len: usize,
    },
    /// The token has characters a client cannot send in an `Authorization` header.
    #[error(
        "the push token in {origin} (`[http] token`) has spaces or characters other than visible ASCII, which clients cannot send in an Authorization header; use e.g. the output of `openssl rand -hex 32`"
    )]
    NotSendable {
        /// Where the token was read from.
        origin: KeySource,
    },
}

impl HttpConfig {
    /// Reads the bearer token from [`HttpConfig::token`] (trailing whitespace,
    /// such as the newline `echo` writes, is not part of it). Call it before
    /// listening, so a missing token stops start-up.
    pub fn load_token(&self) -> Result<BearerToken, TokenError> {
        let text = match &self.token {
            KeySource::File(path) => {
                std::fs::read(path).map_err(|error| TokenError::FileUnreadable {
                    path: path.clone(),
                    error,
                })?
            }
            KeySource::Env(var) => match std::env::var(var) {
                Ok(value) => value.into_bytes(),
                Err(VarError::NotPresent) => {
                    return Err(TokenError::EnvNotSet { var: var.clone() });
                }
                Err(VarError::NotUnicode(_)) => {
                    return Err(TokenError::EnvNotUnicode { var: var.clone() });
                }
            },
        };
        let token = text.trim_ascii_end();
        if !token.iter().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotSendable {
                origin: self.token.clone(),
            });
        }
        if token.len() < MIN_TOKEN_CHARS {
            return Err(TokenError::TooShort {
                origin: self.token.clone(),
                len: token.len(),
            });
        }
        Ok(BearerToken::new(token))
    }
}

/// Serves the push endpoints on `listener` until the task is dropped. Reads
/// the token first: without `[http]` or a usable token it returns at once
/// with an error of kind `InvalidInput` saying what to fix.
pub async fn serve(listener: tokio::net::TcpListener, ingest: Arc<Ingest>) -> std::io::Result<()> {
    let invalid = |message: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, message);
    let http = ingest.config().http.clone().ok_or_else(|| {
        invalid("the HTTP push connector needs an [http] table in the configuration".into())
    })?;
    let token = http.load_token().map_err(|e| invalid(e.to_string()))?;
    serve_with_token(listener, ingest, token).await
}

/// Serves the push endpoints with a token already loaded (see [`HttpConfig::load_token`]).
pub async fn serve_with_token(
    listener: tokio::net::TcpListener,
    ingest: Arc<Ingest>,
    token: BearerToken,
) -> std::io::Result<()> {
    let Some(http) = ingest.config().http.clone() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the HTTP push connector needs an [http] table in the configuration",
        ));
    };
    axum::serve(listener, router(ingest, &http, token)).await
}

/// The push endpoints as a router, for serving or for tests.
pub fn router(ingest: Arc<Ingest>, http: &HttpConfig, token: BearerToken) -> Router {
    let metrics = ingest.metrics().clone();
    let push = Arc::new(Push {
        ingest,
        source: http.source.clone(),
        token,
        max_body: http.max_body_bytes,
    });
    Router::new()
        .route(PUSH_PATH, post(push_handler).fallback(method_not_allowed))
        .fallback(not_found)
        .with_state(push)
        // Every answer but the health check's is counted, 404s and 405s included.
        .layer(axum::middleware::from_fn_with_state(metrics, count))
        .route(
            "/healthz",
            get(|| async { answer(StatusCode::OK, json!({"status": "ok"})) }),
        )
}

struct Push {
    ingest: Arc<Ingest>,
    source: SourceName,
    token: BearerToken,
    max_body: usize,
}

async fn count(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    metrics.http_request(response.status().as_u16());
    response
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// A request refused before any record is read: the status, what is wrong
/// and how to fix it.
struct Refusal {
    status: StatusCode,
    error: String,
    hint: String,
    /// The `WWW-Authenticate` challenge of a 401 (RFC 6750).
    challenge: Option<&'static str>,
}

impl Refusal {
    fn new(status: StatusCode, error: impl Into<String>, hint: impl Into<String>) -> Self {
        Refusal {
            status,
            error: error.into(),
            hint: hint.into(),
            challenge: None,
        }
    }

    fn unauthorised(error: &str, challenge: &'static str) -> Self {
        Refusal {
            challenge: Some(challenge),
            ..Refusal::new(
                StatusCode::UNAUTHORIZED,
                error,
                "send the token configured for this connector as `Authorization: Bearer <token>`",
            )
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = answer(self.status, json!({"error": self.error, "hint": self.hint}));
        if let Some(challenge) = self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

async fn not_found() -> Refusal {
    Refusal::new(
        StatusCode::NOT_FOUND,
        "there is no such endpoint",
        format!(
            "POST a FHIR R4 Bundle or NDJSON events to {PUSH_PATH}; GET /healthz checks the connector is up"
        ),
    )
}

async fn method_not_allowed() -> Response {
    let mut response = Refusal::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{PUSH_PATH} only takes POST"),
        format!("POST the FHIR R4 Bundle or NDJSON events to {PUSH_PATH}"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

impl Push {
    /// Checks the `Authorization` header; the refusal says which part is wrong.
    fn authorise(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        const CHALLENGE: &str = "Bearer realm=\"pathflow\"";
        const INVALID: &str = "Bearer realm=\"pathflow\", error=\"invalid_token\"";
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(Refusal::unauthorised(
                "the request has no Authorization header",
                CHALLENGE,
            ));
        };
        let value = value.as_bytes();
        let (scheme, token) = match value.iter().position(|&b| b == b' ') {
            Some(i) => (&value[..i], value[i + 1..].trim_ascii()),
            None => (value, &b""[..]),
        };
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return Err(Refusal::unauthorised(
                "the Authorization header does not use the Bearer scheme",
                CHALLENGE,
            ));
        }
        if token.is_empty() {
            return Err(Refusal::unauthorised(
                "the Authorization header has no token after Bearer",
                INVALID,
            ));
        }
        if !self.token.matches(token) {
            return Err(Refusal::unauthorised("the bearer token is wrong", INVALID));
        }
        Ok(())
    }

    /// The format and request-name extension of the body's content type.
    fn format(headers: &HeaderMap) -> Result<(Format, &'static str), Refusal> {
        let media = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        match media.as_deref() {
            Some(m) if FHIR_TYPES.contains(&m) => Ok((Format::FhirBundle, "json")),
            Some(m) if NDJSON_TYPES.contains(&m) => Ok((Format::NdjsonEvents, "ndjson")),
            other => Err(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                if other.is_none() {
                    "the request has no Content-Type"
                } else {
                    "the request's Content-Type is not one this endpoint takes"
                },
                format!(
                    "send a FHIR R4 Bundle as {} or {}, or pathflow events one per line as {} or {}",
                    FHIR_TYPES[0], FHIR_TYPES[1], NDJSON_TYPES[0], NDJSON_TYPES[1]
                ),
            )),
        }
    }

    fn too_large(&self) -> Refusal {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is larger than this connector's limit of {} bytes",
                self.max_body
            ),
            "split the bundle (or the NDJSON) into several requests, each under the limit",
        )
    }

    /// The body, read up to the limit and no further.
    async fn body(&self, headers: &HeaderMap, body: Body) -> Result<axum::body::Bytes, Refusal> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // Refused on its declared length before a byte of it is read.
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return Err(self.too_large());
        }
        match http_body_util::Limited::new(body, self.max_body)
            .collect()
            .await
        {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(self.too_large()),
            Err(_) => Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "the body could not be read to its end",
                "send the request again; check that the client sends the whole body it declares",
            )),
        }
    }

    /// Everything a request is checked for before its body is read as records.
    async fn admit(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(Format, &'static str, axum::body::Bytes), Refusal> {
        // Authentication first: nothing about the body is looked at for a stranger.
        self.authorise(headers)?;
        let (format, extension) = Push::format(headers)?;
        let bytes = self.body(headers, body).await?;
        if bytes.trim_ascii().is_empty() {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "the body is empty",
                match format {
                    Format::NdjsonEvents => "send pathflow events, one JSON object per line",
                    _ => "send one FHIR R4 Bundle (resourceType \"Bundle\") as JSON",
                },
            ));
        }
        Ok((format, extension, bytes))
    }
}

/// `push-20261201T193000Z-000001.json`: unique within the process, naming the
/// quarantine file and the dead letters' `file`.
fn request_name(extension: &str) -> String {
    static SEQUENCE: AtomicU64 = AtomicU64::new(1);
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let at = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    format!("push-{at}-{n:06}.{extension}")
}

async fn push_handler(State(push): State<Arc<Push>>, headers: HeaderMap, body: Body) -> Response {
    let (format, extension, bytes) = match push.admit(&headers, body).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.into_response(),
    };
    let name = request_name(extension);
    match push
        .ingest
        .ingest(&push.source, format, &name, &bytes)
        .await
    {
        Ok(batch) => accepted(&name, format, &batch),
        Err(IngestError::Produce(_)) => {
            let mut response = answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({
                    "request": name,
                    "error": "Kafka did not acknowledge the batch, so it was not accepted",
                    "hint": "send the same request again later; records already delivered carry the same event ids and are not counted twice",
                }),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
            response
        }
        // The quarantine could not be written: the raw rejects would be lost.
        Err(_) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({
                "request": name,
                "error": "the connector could not keep the rejected records in its quarantine, so the batch was not accepted",
                "hint": "send the same request again later; the connector's operator should check its state_dir",
            }),
        ),
    }
}

/// The 202 answer, or a 400 when the reader could use nothing of the body.
fn accepted(name: &str, format: Format, batch: &Batch) -> Response {
    let rejections: Vec<_> = batch
        .outcomes
        .iter()
        .filter_map(|(loc, o)| match o {
            Outcome::Rejected(r) => Some((loc.line, &r.error)),
            _ => None,
        })
        .collect();
    let whole = match format {
        Format::FhirBundle => {
            batch.outcomes.len() == 1
                && rejections
                    .first()
                    .is_some_and(|(_, e)| e.field == "(bundle)")
        }
        _ => {
            !rejections.is_empty()
                && rejections.len() == batch.outcomes.len()
                && rejections.iter().all(|(_, e)| e.field == LINE_FIELD)
        }
    };
    if let (true, Some((line, first))) = (whole, rejections.first()) {
        let (error, hint) = match format {
            Format::FhirBundle => (
                format!(
                    "the body as a whole is not a usable FHIR Bundle: it {}",
                    first.problem
                ),
                format!("send {}", first.rule),
            ),
            _ => (
                "no line of the body is a pathflow event".to_string(),
                format!(
                    "send one JSON object per line (not pretty-printed JSON, not an array); line {line} {}",
                    first.problem
                ),
            ),
        };
        return answer(
            StatusCode::BAD_REQUEST,
            json!({"request": name, "error": error, "hint": hint}),
        );
    }
    let unit = if format == Format::FhirBundle {
        "entry"
    } else {
        "line"
    };
    let errors: Vec<Value> = rejections
        .iter()
        .take(MAX_ERRORS_SHOWN)
        .map(|(at, e)| json!({unit: at, "field": e.field, "problem": e.problem, "rule": e.rule}))
        .collect();
    let c = &batch.counts;
    let mut body = json!({
        "request": name,
        "accepted": c.accepted,
        "rejected": c.rejected,
        "opted_out": c.opted_out,
        "events": c.events,
        "duplicates": c.duplicates,
        "errors": errors,
    });
    if rejections.len() > MAX_ERRORS_SHOWN {
        body["errors_not_shown"] = json!(rejections.len() - MAX_ERRORS_SHOWN);
    }
    answer(StatusCode::ACCEPTED, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(token: KeySource) -> HttpConfig {
        HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            source: SourceName::parse("push:test").unwrap(),
            token,
            max_body_bytes: 1024,
        }
    }

    #[test]
    fn tokens_load_trimmed_and_compare_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        let token = config(KeySource::File(path)).load_token().unwrap();
        assert!(token.matches(b"0123456789abcdef0123"));
        assert!(!token.matches(b"0123456789abcdef012"));
        assert!(!token.matches(b""));
        assert_eq!(format!("{token:?}"), "BearerToken(..)");
    }

    #[test]
    fn missing_or_weak_tokens_stop_start_up_saying_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "secret\n").unwrap();
        let spaced = dir.path().join("spaced");
        std::fs::write(&spaced, "correct horse battery staple").unwrap();
        let cases = [
            (KeySource::File(dir.path().join("none")), "cannot be read"),
            (KeySource::File(short), "at least 16"),
            (KeySource::File(spaced), "visible ASCII"),
            (
                KeySource::Env("PATHFLOW_TEST_TOKEN_NEVER_SET".into()),
                "is not set",
            ),
        ];
        for (source, expected) in cases {
            let e = config(source).load_token().unwrap_err().to_string();
            assert!(e.contains(expected) && e.contains("[http] token"), "{e}");
            assert!(!e.contains("secret") && !e.contains("horse"), "{e}");
        }
    }

    #[test]
    fn request_names_are_unique() {
        let a = request_name("json");
        let b = request_name("json");
        assert_ne!(a, b);
        assert!(a.starts_with("push-") && a.ends_with(".json"), "{a}");
    }
}
