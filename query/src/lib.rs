//! pathflow query: one DataFusion session over every table, served over HTTP
//! and the PostgreSQL wire protocol, with scoped tokens, limits, disclosure
//! control and scheduled extracts.
//!
//! The implementation arrives with the query issue; the crate exists now so
//! the workspace layout and the dependency set (datafusion, axum,
//! datafusion-postgres, arrow-flight) are fixed and built by CI from the start.

/// Tables every role may read (gold): what commissioners see.
pub const GOLD_TABLES: [&str; 4] = ["demand", "capacity", "waits", "followups"];
