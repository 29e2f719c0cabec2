//! Read-only: which statements may run at all.
//!
//! An allow-list, not a deny-list: one statement per request, and that one
//! a query (`SELECT`, `WITH`, `VALUES`, set operations), `EXPLAIN` of one,
//! or `SHOW TABLES` / `SHOW COLUMNS`. Everything else (DDL, DML, `COPY`,
//! `CREATE EXTERNAL TABLE`, `SET`, transactions) is refused before planning,
//! with the reason; the plan is then checked again by DataFusion's own
//! `SQLOptions` (no DDL, no DML, no statements) in case the two disagree.
//! The session has no file-reading table functions and no URL tables, and
//! a table reference that looks like a path is refused by name.

use datafusion::common::TableReference;
use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::dialect::GenericDialect;

use crate::catalog::{PUBLIC_SCHEMA, role_reads};
use crate::error::{QueryError, Refusal};
use crate::{auth::Principal, catalog::known_tables};

/// Whether `sql` names Postgres' catalog (`pg_catalog.…`, as psql's `\d`
/// commands and catalog browsers do), so its session needs one.
pub fn mentions_pg_catalog(sql: &str) -> bool {
    // On every query: a case-insensitive scan, without a lowercased copy.
    sql.as_bytes()
        .windows(b"pg_catalog".len())
        .any(|w| w.eq_ignore_ascii_case(b"pg_catalog"))
}

/// Parses `sql` and returns its one statement if it may run.
pub fn check(sql: &str) -> Result<DfStatement, QueryError> {
    let mut statements = DFParserBuilder::new(sql)
        .with_dialect(&GenericDialect {})
        .build()
        .and_then(|mut p| p.parse_statements())
        .map_err(QueryError::from_datafusion)?;
    if statements.len() > 1 {
        return Err(QueryError::refused(
            Refusal::MultipleStatements,
            format!(
                "{} statements were sent; send one query per request",
                statements.len()
            ),
        ));
    }
    let statement = statements
        .pop_front()
        .ok_or_else(|| QueryError::sql("the request has no SQL in it: send one query", None))?;
    allowed(&statement)?;
    Ok(statement)
}

fn allowed(statement: &DfStatement) -> Result<(), QueryError> {
    match statement {
        DfStatement::Statement(s) => allowed_sql(s),
        DfStatement::Explain(e) => allowed(&e.statement),
        DfStatement::CreateExternalTable(_) => Err(QueryError::refused(
            Refusal::Ddl,
            "CREATE EXTERNAL TABLE is refused: this endpoint is read-only and reads only \
             pathflow's tables, never files",
        )),
        DfStatement::CopyTo(_) => Err(QueryError::refused(
            Refusal::Copy,
            "COPY is refused: this endpoint is read-only and writes no files; fetch the result \
             as CSV or Parquet with the Accept header instead",
        )),
        DfStatement::Reset(_) => Err(QueryError::refused(
            Refusal::Statement,
            "RESET is refused: session settings are fixed by the server",
        )),
    }
}

fn allowed_sql(statement: &SqlStatement) -> Result<(), QueryError> {
    match statement {
        SqlStatement::Query(_) | SqlStatement::ShowTables { .. } => Ok(()),
        SqlStatement::ShowColumns { .. } => Ok(()),
        SqlStatement::Explain { statement, .. } => allowed_sql(statement),
        other => {
            // Classified by keyword so the message says what kind of thing
            // was refused; the decision itself is the allow-list above.
            let text = other.to_string();
            let keyword = text
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            let (refusal, what) = match keyword.as_str() {
                "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "TRUNCATE" | "REPLACE" => {
                    (Refusal::Dml, "changes rows")
                }
                "CREATE" | "DROP" | "ALTER" | "RENAME" => (Refusal::Ddl, "changes tables"),
                "COPY" | "UNLOAD" | "LOAD" | "INSTALL" | "ATTACH" => {
                    (Refusal::Copy, "reads or writes files")
                }
                _ => (Refusal::Statement, "is not a query"),
            };
            Err(QueryError::refused(
                refusal,
                format!(
                    "{keyword} is refused: it {what}, and this endpoint is read-only; only \
                     SELECT (WITH, VALUES, EXPLAIN, SHOW TABLES) queries run"
                ),
            ))
        }
    }
}

/// Checks every table the statement names against what `who` may read, so
/// a refusal says why instead of "table not found".
pub fn check_tables(
    who: &Principal,
    references: &[TableReference],
    extra_schemas: &[&str],
) -> Result<(), QueryError> {
    for reference in references {
        let table = reference.table();
        if looks_like_a_file(table) {
            return Err(QueryError::refused(
                Refusal::FileAccess,
                format!(
                    "`{table}` looks like a file or URL: queries read only pathflow's tables, \
                     never files"
                ),
            ));
        }
        let schema = reference.schema().unwrap_or(PUBLIC_SCHEMA);
        if schema != PUBLIC_SCHEMA {
            if schema == "information_schema" || extra_schemas.contains(&schema) {
                continue;
            }
            return Err(QueryError::sql(
                format!("there is no schema `{schema}`: pathflow's tables are in `public`"),
                None,
            ));
        }
        if let Some((name, layer)) = known_tables().into_iter().find(|(n, _)| *n == table)
            && !role_reads(who.role, layer)
        {
            return Err(QueryError::refused(
                Refusal::Forbidden,
                format!(
                    "the {} role reads the gold tables only ({}); `{name}` is not one of them",
                    who.role.as_str(),
                    gold_names()
                ),
            ));
        }
    }
    Ok(())
}

fn gold_names() -> String {
    known_tables()
        .into_iter()
        .filter(|(_, l)| *l == crate::catalog::Layer::Gold)
        .map(|(n, _)| n)
        .collect::<Vec<_>>()
        .join(", ")
}

fn looks_like_a_file(table: &str) -> bool {
    table.contains('/')
        || table.contains('\\')
        || table.contains("://")
        || [".csv", ".parquet", ".json", ".avro", ".arrow", ".txt"]
            .iter()
            .any(|ext| table.to_ascii_lowercase().ends_with(ext))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(sql: &str) -> Refusal {
        match check(sql) {
            Err(QueryError::Refused { refusal, .. }) => refusal,
            other => panic!("{sql}: expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn only_queries_pass() {
        for sql in [
            "SELECT 1",
            "WITH a AS (SELECT 1 AS x) SELECT * FROM a",
            "SELECT 1 UNION ALL SELECT 2",
            "VALUES (1), (2)",
            "EXPLAIN SELECT 1",
            "SHOW TABLES",
        ] {
            check(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        assert_eq!(refusal("DROP TABLE referrals"), Refusal::Ddl);
        assert_eq!(refusal("CREATE TABLE t AS SELECT 1"), Refusal::Ddl);
        assert_eq!(refusal("CREATE VIEW v AS SELECT 1"), Refusal::Ddl);
        assert_eq!(
            refusal("CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'"),
            Refusal::Ddl
        );
        assert_eq!(refusal("INSERT INTO referrals VALUES (1)"), Refusal::Dml);
        assert_eq!(refusal("DELETE FROM referrals"), Refusal::Dml);
        assert_eq!(refusal("UPDATE referrals SET practice = 'x'"), Refusal::Dml);
        assert_eq!(
            refusal("COPY (SELECT 1) TO '/tmp/x.csv' STORED AS CSV"),
            Refusal::Copy
        );
        assert_eq!(
            refusal("EXPLAIN COPY (SELECT 1) TO '/tmp/x.csv'"),
            Refusal::Copy
        );
        assert_eq!(
            refusal("SET datafusion.execution.batch_size = 1"),
            Refusal::Statement
        );
        assert_eq!(refusal("SELECT 1; SELECT 2"), Refusal::MultipleStatements);
        assert_eq!(
            refusal("SELECT 1; DROP TABLE x"),
            Refusal::MultipleStatements
        );
    }

    #[test]
    fn a_syntax_error_says_where() {
        match check("SELECT * FORM referrals") {
            Err(QueryError::Sql { position, .. }) => assert!(position.is_some()),
            other => panic!("{other:?}"),
        }
    }
}
