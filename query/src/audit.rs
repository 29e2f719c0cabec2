//! The audit log: one JSON line per query, whoever sent it and however it
//! ended: who, when, over which interface, the SQL, rows returned, duration
//! and outcome.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// One query, as audited.
#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    pub at: DateTime<Utc>,
    pub who: &'a str,
    pub role: &'a str,
    pub interface: &'a str,
    pub sql: &'a str,
    pub outcome: &'a str,
    pub rows: usize,
    pub duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where audit lines go.
#[derive(Debug)]
pub struct AuditLog {
    file: Option<Mutex<File>>,
}

impl AuditLog {
    /// Appends to `path`, or writes to standard error when there is none.
    pub fn open(path: Option<&Path>) -> std::io::Result<Self> {
        let file = match path {
            Some(p) => Some(Mutex::new(
                OpenOptions::new().create(true).append(true).open(p)?,
            )),
            None => None,
        };
        Ok(AuditLog { file })
    }

    pub fn write(&self, record: &AuditRecord<'_>) {
        let mut line = serde_json::to_string(record).expect("audit records serialize");
        line.push('\n');
        match &self.file {
            // One write per line, so concurrent queries never interleave.
            Some(f) => {
                let mut f = f.lock().expect("not poisoned");
                if let Err(e) = f.write_all(line.as_bytes()) {
                    eprintln!("serve: cannot write the audit log: {e}; the line was: {line}");
                }
            }
            None => eprint!("audit: {line}"),
        }
    }
}
