//! pathflow transform: Kafka → event-sourced Delta tables, exactly once.
//!
//! Bronze `events` (one row per event, partitioned by event date; its Arrow
//! schema is `pathflow_schemas::bronze::events_schema`), the state tables
//! folded from events (`referrals`, `appointments`, `followups`, `advice`) and
//! the weekly gold tables (`demand`, `capacity`, `waits`, `followups`). Kafka
//! offsets are committed atomically with the table data they produced.
//!
//! The implementation arrives with the transform issue; the crate exists now
//! so the workspace layout and the dependency set (deltalake, datafusion,
//! arrow, parquet) are fixed and built by CI from the start.

/// The bronze table's name.
pub const BRONZE_TABLE: &str = pathflow_schemas::bronze::EVENTS_TABLE;
