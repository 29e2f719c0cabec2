//! What can go wrong with a query, said so the person who sent it knows
//! what to change, with the HTTP status and Postgres SQLSTATE each maps to.

use std::time::Duration;

use datafusion::error::DataFusionError;

/// Why a statement was refused before it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    Ddl,
    Dml,
    Copy,
    Statement,
    MultipleStatements,
    FileAccess,
    /// A table the role may not read.
    Forbidden,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Ddl => "ddl",
            Refusal::Dml => "dml",
            Refusal::Copy => "copy",
            Refusal::Statement => "statement",
            Refusal::MultipleStatements => "multiple_statements",
            Refusal::FileAccess => "file_access",
            Refusal::Forbidden => "forbidden",
        }
    }
}

/// A query that did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{message}")]
    Refused { refusal: Refusal, message: String },
    /// The SQL does not parse or plan; `position` is (line, column), 1-based.
    #[error("{message}")]
    Sql {
        message: String,
        position: Option<(u64, u64)>,
    },
    /// It planned but failed while running (a bad cast, say).
    #[error("the query failed while running: {0}")]
    Execution(String),
    #[error(
        "the query was cancelled after {} s (limits.query_timeout_ms): narrow it with WHERE, \
         or aggregate",
        .0.as_secs_f64()
    )]
    Timeout(Duration),
    #[error(
        "the result is larger than the limit of {limit} (limits.{key}): add LIMIT, a WHERE \
         clause or an aggregate"
    )]
    TooLarge { key: &'static str, limit: String },
    #[error(
        "the query needed more memory than its limit of {0} MiB (limits.query_memory_mb): \
         narrow it with WHERE, or aggregate before joining ({1})"
    )]
    Memory(usize, String),
    #[error(
        "the server is running its maximum of {0} queries (limits.max_concurrent_queries); \
         try again shortly"
    )]
    Busy(usize),
    /// The client went away before the result was complete.
    #[error("the query was cancelled by the client")]
    Cancelled,
    #[error("internal error: {0}")]
    Internal(String),
}

impl QueryError {
    pub fn refused(refusal: Refusal, message: impl Into<String>) -> Self {
        QueryError::Refused {
            refusal,
            message: message.into(),
        }
    }

    pub fn sql(message: impl Into<String>, position: Option<(u64, u64)>) -> Self {
        QueryError::Sql {
            message: message.into(),
            position,
        }
    }

    /// A DataFusion error from parsing or planning.
    pub fn from_datafusion(e: DataFusionError) -> Self {
        let e = e.find_root().to_string();
        let position = position_in(&e);
        QueryError::Sql {
            message: tidy(&e),
            position,
        }
    }

    /// A DataFusion error from execution.
    pub fn from_execution(e: DataFusionError, memory_mb: usize) -> Self {
        match e.find_root() {
            DataFusionError::ResourcesExhausted(m) => QueryError::Memory(memory_mb, m.clone()),
            root => QueryError::Execution(tidy(&root.to_string())),
        }
    }

    /// The outcome label for metrics and the audit log.
    pub fn outcome(&self) -> &'static str {
        match self {
            QueryError::Refused { .. } => "refused",
            QueryError::Sql { .. } => "sql_error",
            QueryError::Execution(_) => "execution_error",
            QueryError::Timeout(_) => "timeout",
            QueryError::TooLarge { .. } => "too_large",
            QueryError::Memory(..) => "memory",
            QueryError::Busy(_) => "busy",
            QueryError::Cancelled => "cancelled",
            QueryError::Internal(_) => "internal",
        }
    }

    /// The HTTP status this error is answered with.
    pub fn http_status(&self) -> u16 {
        match self {
            QueryError::Refused {
                refusal: Refusal::Forbidden,
                ..
            } => 403,
            QueryError::Refused { .. } | QueryError::Sql { .. } => 400,
            QueryError::Execution(_) => 422,
            QueryError::Timeout(_) => 408,
            QueryError::TooLarge { .. } => 413,
            QueryError::Memory(..) => 422,
            QueryError::Busy(_) => 503,
            QueryError::Cancelled => 400,
            QueryError::Internal(_) => 500,
        }
    }

    /// The Postgres SQLSTATE for the same error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            QueryError::Refused { refusal, .. } => match refusal {
                Refusal::Forbidden | Refusal::FileAccess => "42501",
                Refusal::Dml => "25006",
                _ => "0A000",
            },
            QueryError::Sql { message, .. } if message.contains("not found") => "42P01",
            QueryError::Sql { .. } => "42601",
            QueryError::Execution(_) => "22000",
            QueryError::Timeout(_) => "57014",
            QueryError::TooLarge { .. } => "54000",
            QueryError::Memory(..) => "53200",
            QueryError::Busy(_) => "53300",
            QueryError::Cancelled => "57014",
            QueryError::Internal(_) => "XX000",
        }
    }

    /// The refusal, if this is one.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            QueryError::Refused { refusal, .. } => Some(*refusal),
            _ => None,
        }
    }
}

/// DataFusion prefixes messages with the error's kind ("Error during
/// planning: ..."); the kind is ours to say, so it is dropped.
fn tidy(message: &str) -> String {
    // sqlparser's errors arrive as `ParserError("...")` (Debug formatting).
    let message = match message
        .strip_prefix("ParserError(\"")
        .or_else(|| message.strip_prefix("sql parser error: ParserError(\""))
        .and_then(|m| m.strip_suffix("\")"))
    {
        Some(inner) => inner,
        None => message,
    };
    for prefix in [
        "Error during planning: ",
        "SQL error: ",
        "Schema error: ",
        "Execution error: ",
        "This feature is not implemented: ",
        "Arrow error: ",
    ] {
        if let Some(rest) = message.strip_prefix(prefix) {
            return rest.to_string();
        }
    }
    message.to_string()
}

/// sqlparser writes "... at Line: 1, Column: 10".
fn position_in(message: &str) -> Option<(u64, u64)> {
    let at = message.rfind("Line: ")?;
    let rest = &message[at + "Line: ".len()..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.trim().parse().ok()?, column.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_read_from_sqlparser_messages() {
        assert_eq!(
            position_in(
                "sql parser error: Expected: end of statement, found: FORM at Line: 1, Column: 10"
            ),
            Some((1, 10))
        );
        assert_eq!(position_in("no position here"), None);
        assert_eq!(
            tidy("ParserError(\"Expected: end of statement, found: FORM\")"),
            "Expected: end of statement, found: FORM"
        );
    }
}
