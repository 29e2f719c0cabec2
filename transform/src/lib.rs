//! pathflow transform: Kafka → event-sourced Delta tables, exactly once.
//!
//! Bronze `events` (one row per event, partitioned by event date; its Arrow
//! schema is `pathflow_schemas::bronze::events_schema`), the state tables
//! folded from events (`referrals`, `appointments`, `followups`, `advice`) and
//! the weekly gold tables (`demand_weekly`, `capacity_weekly`, `waits_weekly`,
//! `followups_weekly`: DESIGN.md's gold `followups` would clash with the state
//! table of that name in one SQL namespace, so all four carry the grain).
//! Kafka offsets are committed atomically with the bronze data they produced;
//! the derived tables follow bronze, each commit naming the bronze version.
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
//! - [`gold`]: the weekly gold tables, kept incrementally from the fold.
//! - [`derive`]: the [`derive::Deriver`] that follows the bronze table and
//!   commits the state and gold tables, only the partitions that changed,
//!   each commit saying which bronze version it reflects.
//!   Each derived table's version, `txn` and files by partition are kept in
//!   `derived_table`, so a step's commit costs the partitions it rewrites;
//!   a partition's untouched rows come from the file the deriver last
//!   wrote for it (`partition_rewrite`), not from the store.
//! - [`first_fold`]: the deriver's first step and `--rebuild`: bronze's
//!   events spread over bucket files by entity, each bucket folded in
//!   memory and written to the store once.
//! - [`spill`]: the deriver's per-entity state (fold, gold summaries,
//!   partition index) in a scratch redb file behind a bounded cache, so its
//!   memory does not grow with the number of entities.
//! - [`run`]: `pathflow transform`: the consumer group that commits the
//!   bronze table on a size-or-latency trigger, the deriver beside it,
//!   `--rebuild`, and the metrics.
//! - [`testing`]: helpers for the workspace's tests and benchmarks.

pub mod bronze;
pub mod commit;
pub mod derive;
mod derived_table;
pub mod first_fold;
pub mod fold;
pub mod gold;
mod partition_rewrite;
pub mod rules;
pub mod run;
pub mod spill;
pub mod state_tables;
pub mod testing;

#[cfg(test)]
mod gold_sql_tests;

/// The bronze table's name.
pub const BRONZE_TABLE: &str = pathflow_schemas::bronze::EVENTS_TABLE;
