//! pathflow transform: Kafka → event-sourced Delta tables, exactly once.
//!
//! Bronze `events` (one row per event, partitioned by event date; its Arrow
//! schema is `pathflow_schemas::bronze::events_schema`), the state tables
//! folded from events (`referrals`, `appointments`, `followups`, `advice`) and
//! the weekly gold tables (`demand`, `capacity`, `waits`, `followups`). Kafka
//! offsets are committed atomically with the table data they produced.
//!
//! Built so far: bronze, exactly once, from a consumer group; the rules and
//! the fold that the state and gold tables will be made from.
//!
//! - [`bronze`]: Kafka messages → Arrow batches of the bronze `events` table;
//!   messages that are not events come back as typed rejections.
//! - [`commit`]: the exactly-once protocol (`COMMIT_PROTOCOL.md`): the
//!   [`commit::BronzeWriter`] commits data files and per-partition Kafka
//!   offsets (`txn` actions) in one Delta transaction and resumes from them.
//! - [`rules`]: the domain rules (RTT waits and percentiles, GPAD bands, DNA
//!   rate, new:follow-up, overdue follow-ups, A&G), one tested function each.
//! - [`fold`]: entity state (referrals, appointments, slots, follow-ups, A&G)
//!   folded from events, independent of delivery order and duplicates.
//! - [`state_tables`]: Arrow schemas and batches of the state tables.
//! - [`run`]: `pathflow transform`: the consumer group that commits the
//!   bronze table on a size-or-latency trigger, and its metrics.

pub mod bronze;
pub mod commit;
pub mod fold;
pub mod rules;
pub mod run;
pub mod state_tables;

/// The bronze table's name.
pub const BRONZE_TABLE: &str = pathflow_schemas::bronze::EVENTS_TABLE;
