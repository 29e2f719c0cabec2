//! The derived tables, folded from the bronze table: the state tables
//! (`referrals`, `appointments`, `followups`, `advice`) and the weekly gold
//! tables ([`GoldTable`]).
//!
//! [`Deriver`] follows the bronze table's versions rather than Kafka, so any
//! number of bronze writers (one consumer group) feed one derivation, and a
//! derivation can always be redone from bronze alone (`--rebuild`). Every
//! entity's state ([`Fold`]), its gold summary and its partition live in a
//! scratch [`Store`] on local disk with the entities in use in memory; the
//! weekly aggregates ([`Gold`]'s rows) are in memory. The first step (and
//! `--rebuild`) folds the whole bronze table bucket by bucket
//! ([`crate::first_fold`]); each later step reads only the files the new
//! bronze versions added and rewrites only the partitions whose rows
//! changed:
//!
//! - state tables are partitioned by `anchor_week`, the Monday of the week of
//!   the entity's anchor date (a referral's received date, an appointment's
//!   start, a follow-up's due date, an A&G request's date; 1970-01-05 while
//!   that date is not known, e.g. only a late outcome has arrived);
//! - gold tables are partitioned by `week`.
//!
//! Every derived commit carries a `txn` action `pathflow-derive` whose
//! version is the bronze version the table reflects: a restart compares it
//! with bronze and rewrites a table whole if it lags (a crash between two
//! tables' commits), and two derivers never write the same version twice.
//!
//! `referrals` and `followups` hold values "as of" the end of the newest
//! week with events (waits so far, overdue days); when that week moves on,
//! both are rewritten whole, once per week of event time.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Date32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use chrono::{NaiveDate, Utc};
use deltalake::kernel::{Transaction, Version};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError, ObjectStore};
use pathflow_schemas::{Event, PseudoId, Week};

use crate::bronze::{UnreadableRow, events_of};
use crate::commit::open_or_create;
use crate::derived_table::{DerivedTable, Scope};
use crate::first_fold::{self, FirstFold};
use crate::fold::{Fold, Touched};
use crate::gold::{self, Gold, GoldTable};
use crate::partition_rewrite::{self, Written};
use crate::rules;
use crate::spill::{SpillError, Spilled, Store};
use crate::state_tables;

/// The `txn` application id of every derived table's commits.
pub const DERIVE_APP_ID: &str = "pathflow-derive";

/// Entities absorbed at a time when the first step lists every entity.
const ABSORB_SLICE: usize = 20_000;

/// Entities the fold keeps in memory while it reads bronze before it writes
/// them to the store: some 20 MB of states.
const IN_MEMORY_ENTITIES: usize = 25_000;

/// The partition column of the state tables.
pub const STATE_PARTITION: &str = "anchor_week";

/// The partition column of the gold tables.
pub const GOLD_PARTITION: &str = "week";

/// The partition of an entity whose anchor date is not known yet: a Monday
/// no real event has, so such rows are easy to find and never mixed with data.
pub fn unknown_anchor() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 5).expect("a valid date")
}

/// One derived table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Derived {
    /// `referrals`, one row per pathway.
    Referrals,
    /// `appointments`, one row per appointment.
    Appointments,
    /// `followups`, one row per follow-up.
    Followups,
    /// `advice`, one row per A&G request.
    Advice,
    /// A weekly gold table.
    Gold(GoldTable),
}

impl Derived {
    /// Every derived table: the state tables, then the gold tables.
    pub fn all() -> Vec<Derived> {
        let state = [
            Derived::Referrals,
            Derived::Appointments,
            Derived::Followups,
            Derived::Advice,
        ];
        state
            .into_iter()
            .chain(GoldTable::ALL.iter().copied().map(Derived::Gold))
            .collect()
    }

    /// The table's name (and directory under the tables location).
    pub fn name(self) -> &'static str {
        match self {
            Derived::Referrals => state_tables::REFERRALS_TABLE,
            Derived::Appointments => state_tables::APPOINTMENTS_TABLE,
            Derived::Followups => state_tables::FOLLOWUPS_TABLE,
            Derived::Advice => state_tables::ADVICE_TABLE,
            Derived::Gold(g) => g.name(),
        }
    }

    /// The column the table is partitioned by.
    pub fn partition_column(self) -> &'static str {
        match self {
            Derived::Gold(_) => GOLD_PARTITION,
            _ => STATE_PARTITION,
        }
    }

    /// The table's schema, partition column included.
    pub fn schema(self) -> SchemaRef {
        let state = match self {
            Derived::Referrals => state_tables::referrals_schema(),
            Derived::Appointments => state_tables::appointments_schema(),
            Derived::Followups => state_tables::followups_schema(),
            Derived::Advice => state_tables::advice_schema(),
            Derived::Gold(g) => return gold::schema(g),
        };
        with_anchor_column(&state)
    }

    /// Whether the rows hold "as of" values, which change when the newest
    /// week of events moves on.
    fn has_as_of(self) -> bool {
        matches!(self, Derived::Referrals | Derived::Followups)
    }
}

fn with_anchor_column(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(STATE_PARTITION, DataType::Date32, false));
    Arc::new(Schema::new(fields))
}

/// Why deriving failed.
#[derive(Debug, thiserror::Error)]
pub enum DeriveError {
    /// A Delta operation on one table failed.
    #[error("table {table} at {location}: {source}")]
    Delta {
        /// The table.
        table: String,
        /// Its location.
        location: String,
        /// What deltalake said.
        source: DeltaTableError,
    },
    /// A bronze file could not be read.
    #[error("bronze file {path}: {reason}")]
    BronzeFile {
        /// The file, relative to the bronze table.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The scratch store of the per-entity state failed.
    #[error("{0}; the deriver starts again from the bronze table")]
    Spill(#[from] SpillError),
    /// A bronze row did not read back as an event.
    #[error("bronze file {path}: {source}")]
    BronzeRow {
        /// The file, relative to the bronze table.
        path: String,
        /// The row and the reason.
        source: UnreadableRow,
    },
    /// A derived batch could not be built.
    #[error("building {table}: {source}")]
    Batch {
        /// The table.
        table: &'static str,
        /// Arrow's error.
        source: ArrowError,
    },
}

/// What one [`Deriver::catch_up`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeriveReport {
    /// The bronze version the derived tables now reflect (`None`: no bronze yet).
    pub bronze_version: Option<Version>,
    /// Events folded in.
    pub events: usize,
    /// Rows written, per table committed (a table committed with its `txn`
    /// only has 0).
    pub rows: BTreeMap<&'static str, usize>,
    /// Tables committed.
    pub commits: usize,
    /// Partitions rewritten, per table committed.
    pub partitions: BTreeMap<&'static str, usize>,
    /// Seconds spent.
    pub seconds: f64,
    /// Of which: reading the new bronze files and folding their events into
    /// the entities' state and the gold aggregates.
    pub fold_seconds: f64,
    /// Of which: writing and committing each table (the rest is the step's
    /// bookkeeping), per table committed.
    pub table_seconds: BTreeMap<&'static str, f64>,
    /// Of the rows written, those taken from their partition's previous
    /// file rather than built from the store, per state table.
    pub reused: BTreeMap<&'static str, usize>,
}

/// Which entities sit in which partition of one state table: each id's
/// partition and each partition's ids in the store, the partitions' sizes
/// (one entry per week) in memory.
#[derive(Debug)]
struct Anchors {
    of: Spilled<PseudoId, NaiveDate>,
    members: Spilled<(NaiveDate, Option<PseudoId>), ()>,
    sizes: BTreeMap<NaiveDate, usize>,
}

impl Anchors {
    /// Every state table's, kept in `store`.
    fn on(store: &Arc<Store>) -> BTreeMap<Derived, Anchors> {
        let tables = [
            (Derived::Referrals, "anchor_referrals", "members_referrals"),
            (
                Derived::Appointments,
                "anchor_appointments",
                "members_appointments",
            ),
            (Derived::Followups, "anchor_followups", "members_followups"),
            (Derived::Advice, "anchor_advice", "members_advice"),
        ];
        tables
            .into_iter()
            .map(|(d, of, members)| {
                let anchors = Anchors {
                    of: Spilled::on(store, of),
                    members: Spilled::on(store, members),
                    sizes: BTreeMap::new(),
                };
                (d, anchors)
            })
            .collect()
    }

    /// Places `id` in `anchor`'s partition; returns the partitions whose rows changed.
    fn place(&mut self, id: &PseudoId, anchor: NaiveDate) -> [Option<NaiveDate>; 2] {
        let old = self.of.get(id).map(|d| *d);
        if old == Some(anchor) {
            return [Some(anchor), None];
        }
        self.of.insert(id.clone(), anchor);
        if let Some(old) = old {
            self.members.delete(&(old, Some(id.clone())));
            if let Some(n) = self.sizes.get_mut(&old) {
                *n -= 1;
                if *n == 0 {
                    self.sizes.remove(&old);
                }
            }
        }
        self.members.insert((anchor, Some(id.clone())), ());
        *self.sizes.entry(anchor).or_default() += 1;
        [Some(anchor), old]
    }

    /// The ids in `partition`'s rows, in order.
    fn ids(&self, partition: NaiveDate) -> Vec<PseudoId> {
        let Some(next) = partition.succ_opt() else {
            return Vec::new();
        };
        self.members
            .keys_between(&(partition, None), &(next, None))
            .into_iter()
            .filter_map(|(_, id)| id)
            .collect()
    }

    fn flush(&mut self) -> Result<(), SpillError> {
        self.of.flush()?;
        self.members.flush()
    }
}

fn monday(date: NaiveDate) -> NaiveDate {
    Week::of(date).monday()
}

fn date32(d: NaiveDate) -> i32 {
    (d - NaiveDate::default()).num_days() as i32
}

/// Pending rewrites, per table: some partitions, or the whole table.
#[derive(Debug, Default)]
struct Dirty {
    partitions: BTreeMap<Derived, BTreeSet<NaiveDate>>,
    whole: BTreeSet<Derived>,
    /// The entities whose rows changed, per state table (not kept by the
    /// first step, which writes every table whole): a partial rewrite reads
    /// only these from the store (see [`partition_rewrite`]).
    ids: BTreeMap<Derived, HashSet<PseudoId>>,
}

impl Dirty {
    fn mark(&mut self, table: Derived, partitions: impl IntoIterator<Item = NaiveDate>) {
        self.partitions.entry(table).or_default().extend(partitions);
    }

    fn is_empty(&self) -> bool {
        self.whole.is_empty() && self.partitions.values().all(BTreeSet::is_empty)
    }
}

/// What one table's rewrite wrote.
struct Rewritten {
    rows: usize,
    /// Of which taken from their partition's previous file.
    reused: usize,
}

/// Folds the bronze table into the derived tables, step by step.
pub struct Deriver {
    location: String,
    storage_options: HashMap<String, String>,
    /// Where the store of per-entity state is made.
    scratch: PathBuf,
    store: Arc<Store>,
    bronze: DeltaTable,
    tables: BTreeMap<Derived, DerivedTable>,
    fold: Fold,
    gold: Gold,
    /// The newest event date folded in (UK date of the earlier of occurred and recorded).
    as_of: Option<NaiveDate>,
    /// The newest `occurred_at` folded in, in seconds since the epoch.
    newest: Option<i64>,
    /// The bronze version folded in; `None` before the first step.
    folded: Option<Version>,
    /// The week whose end the state tables' "as of" values are computed on.
    as_of_week: Option<Week>,
    anchors: BTreeMap<Derived, Anchors>,
    dirty: Dirty,
    /// The file this deriver last wrote for each state partition.
    written: BTreeMap<Derived, BTreeMap<NaiveDate, Written>>,
}

impl Deriver {
    /// Opens the derived tables under `location` (creating those missing)
    /// over the bronze table there, with the per-entity state in the
    /// system's temporary directory. Nothing is read until [`catch_up`](Self::catch_up).
    pub async fn open(
        location: &str,
        storage_options: &HashMap<String, String>,
    ) -> Result<Self, DeriveError> {
        Self::open_with_scratch(location, storage_options, &std::env::temp_dir()).await
    }

    /// [`open`](Self::open), with the store of per-entity state made in `scratch`
    /// (a local directory; the store's file is unlinked once open, see [`Store`]).
    pub async fn open_with_scratch(
        location: &str,
        storage_options: &HashMap<String, String>,
        scratch: &Path,
    ) -> Result<Self, DeriveError> {
        let store = Store::create(scratch)?;
        let root = location.trim_end_matches('/').to_string();
        let at = |name: &str| format!("{root}/{name}");
        let bronze = open_or_create(
            &at(crate::BRONZE_TABLE),
            storage_options,
            &pathflow_schemas::bronze::events_schema(),
            pathflow_schemas::bronze::PARTITION_COLUMN,
            crate::BRONZE_TABLE,
            "pathflow bronze: one row per Kafka message that is an event",
        )
        .await
        .map_err(|source| DeriveError::Delta {
            table: crate::BRONZE_TABLE.to_string(),
            location: at(crate::BRONZE_TABLE),
            source,
        })?;
        let mut tables = BTreeMap::new();
        for d in Derived::all() {
            let table = open_or_create(
                &at(d.name()),
                storage_options,
                &d.schema(),
                d.partition_column(),
                d.name(),
                "pathflow derived table, folded from bronze `events`",
            )
            .await
            .map_err(|source| DeriveError::Delta {
                table: d.name().to_string(),
                location: at(d.name()),
                source,
            })?;
            let table = DerivedTable::new(table, d.partition_column())
                .await
                .map_err(|source| DeriveError::Delta {
                    table: d.name().to_string(),
                    location: at(d.name()),
                    source,
                })?;
            tables.insert(d, table);
        }
        Ok(Self {
            location: root,
            storage_options: storage_options.clone(),
            scratch: scratch.to_path_buf(),
            fold: Fold::on(&store),
            gold: Gold::on(&store),
            anchors: Anchors::on(&store),
            store,
            bronze,
            tables,
            as_of: None,
            newest: None,
            folded: None,
            as_of_week: None,
            dirty: Dirty::default(),
            written: BTreeMap::new(),
        })
    }

    /// The tables' root location.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The storage options the tables are opened with.
    pub fn storage_options(&self) -> &HashMap<String, String> {
        &self.storage_options
    }

    /// The bronze version folded in so far.
    pub fn folded_version(&self) -> Option<Version> {
        self.folded
    }

    /// The newest `occurred_at` folded in, in seconds since the epoch (freshness).
    pub fn newest_event_seconds(&self) -> Option<i64> {
        self.newest
    }

    /// The entity states folded so far.
    pub fn fold(&self) -> &Fold {
        &self.fold
    }

    fn delta_err(&self, table: &str, source: DeltaTableError) -> DeriveError {
        DeriveError::Delta {
            table: table.to_string(),
            location: format!("{}/{table}", self.location),
            source,
        }
    }

    /// Folds every bronze version not folded yet and commits the derived
    /// rows they change. The first call folds the whole bronze table and
    /// rewrites any derived table that does not reflect its latest version.
    pub async fn catch_up(&mut self) -> Result<DeriveReport, DeriveError> {
        self.step(false).await
    }

    /// Recomputes every derived table from the whole bronze table and
    /// rewrites each of them, whatever version they reflect.
    pub async fn rebuild(&mut self) -> Result<DeriveReport, DeriveError> {
        self.store = Store::create(&self.scratch)?;
        self.fold = Fold::on(&self.store);
        self.gold = Gold::on(&self.store);
        self.anchors = Anchors::on(&self.store);
        self.as_of = None;
        self.newest = None;
        self.folded = None;
        self.as_of_week = None;
        self.dirty = Dirty::default();
        self.written.clear();
        self.step(true).await
    }

    async fn step(&mut self, force: bool) -> Result<DeriveReport, DeriveError> {
        let started = Instant::now();
        let bronze_name = crate::BRONZE_TABLE;
        let store = self.bronze.log_store().object_store(None);
        // The files of the versions after the one folded.
        let mut new_files = Vec::new();
        let latest = match self.folded {
            // Only the first step lists bronze's files. After it the new
            // versions are read one by one from the one folded on, and
            // their files come from the commits themselves: loading the
            // snapshot would replay every active file, and listing the log
            // every entry the log keeps, costs that grow with history.
            Some(done) => {
                let mut v = done;
                while let Some(files) = self.added_files(store.as_ref(), v + 1).await? {
                    new_files.extend(files);
                    v += 1;
                }
                if v == done {
                    // Nothing after `done`, or the entries after it were
                    // cleaned up (only the listing can tell).
                    let listed = self
                        .bronze
                        .log_store()
                        .get_latest_version(done)
                        .await
                        .map_err(|e| self.delta_err(bronze_name, e))?;
                    if listed > done {
                        return Err(DeriveError::BronzeFile {
                            path: format!("_delta_log/{:020}.json", done + 1),
                            reason: "the log entry is missing (was the table vacuumed or \
                                     rewritten?); run `pathflow transform --rebuild`"
                                .to_string(),
                        });
                    }
                }
                Some(v)
            }
            None => {
                self.bronze
                    .update_state()
                    .await
                    .map_err(|e| self.delta_err(bronze_name, e))?;
                self.bronze.version()
            }
        };
        let mut report = DeriveReport {
            bronze_version: latest,
            ..DeriveReport::default()
        };
        let Some(latest) = latest else {
            return Ok(report);
        };
        let first = self.folded.is_none();
        let advanced = self.folded != Some(latest);
        // Bronze's row count, for the first fold's number of buckets.
        let mut rows = 0u64;
        let files: Vec<String> = match self.folded {
            None => {
                let snapshot = self
                    .bronze
                    .snapshot()
                    .map_err(|e| self.delta_err(bronze_name, e))?;
                snapshot
                    .log_data()
                    .iter()
                    .map(|f| {
                        rows += rows_of(f.stats().as_deref(), f.size());
                        f.path().into_owned()
                    })
                    .collect()
            }
            Some(_) => new_files,
        };
        let mut touched: Vec<Touched> = Vec::new();
        if first {
            // Every entity is new: bucket the events by entity and fold
            // each bucket whole (see `first_fold`); the entities are listed
            // once below rather than once per event.
            let mut buckets = FirstFold::create(&self.scratch, first_fold::buckets_for(rows))?;
            for path in &files {
                let events = read_events(store.as_ref(), path).await?;
                report.events += events.len();
                for e in &events {
                    self.see(e);
                    buckets.push(e)?;
                }
            }
            buckets.fold_into(&mut self.fold)?;
        } else {
            for path in &files {
                let events = read_events(store.as_ref(), path).await?;
                report.events += events.len();
                for e in &events {
                    self.see(e);
                    touched.extend(self.fold.apply(e));
                    if self.fold.in_memory_len() >= IN_MEMORY_ENTITIES {
                        self.fold.flush()?;
                    }
                }
            }
        }
        self.folded = Some(latest);
        if first {
            // Every entity, a slice at a time from the store: the gold
            // update's working set is one slice's, not the whole history's
            // (the tables come out the same).
            self.fold.flush()?;
            let mut after: Option<Touched> = None;
            loop {
                let slice = self.fold.entities_after(after.as_ref(), ABSORB_SLICE);
                let Some(last) = slice.last().cloned() else {
                    break;
                };
                self.absorb(slice, false);
                self.flush()?;
                after = Some(last);
            }
        } else {
            self.absorb(touched, true);
        }
        // The writes read every row from the store; and a read that failed
        // there must not reach a table.
        self.flush()?;
        if let Some(failure) = self.store.failure() {
            return Err(failure.into());
        }

        // Which tables must be written, and how much of each.
        for d in Derived::all() {
            let reflected = self.reflected_version(d);
            if force || (first && reflected != Some(latest)) {
                self.dirty.whole.insert(d);
            } else if reflected.is_some_and(|r| r >= latest) {
                // Already written (by us before a restart, or by another deriver).
                self.dirty.partitions.remove(&d);
                self.dirty.whole.remove(&d);
            }
        }
        report.fold_seconds = started.elapsed().as_secs_f64();
        if advanced || !self.dirty.is_empty() {
            self.write(latest, force, &mut report).await?;
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Writes the per-entity state in memory to the store.
    fn flush(&mut self) -> Result<(), SpillError> {
        self.fold.flush()?;
        self.gold.flush()?;
        for anchors in self.anchors.values_mut() {
            anchors.flush()?;
        }
        Ok(())
    }

    /// Moves `as_of` to the event's date when it is newer. The earlier of
    /// occurred and recorded is used, so a mis-keyed future date cannot pull
    /// the week forward past what the source has recorded.
    fn see(&mut self, event: &Event) {
        let at = event.envelope.occurred_at.min(event.envelope.recorded_at);
        let occurred = event.envelope.occurred_at.timestamp();
        if self.newest.is_none_or(|n| occurred > n) {
            self.newest = Some(occurred);
        }
        let date = rules::uk_date(at);
        if self.as_of.is_none_or(|a| date > a) {
            self.as_of = Some(date);
        }
    }

    /// Records what the touched entities change: their state partitions
    /// (and, with `keep_ids`, the entities) and the gold weeks (including
    /// weeks the newest week of events adds).
    fn absorb(&mut self, mut unique: Vec<Touched>, keep_ids: bool) {
        unique.sort();
        unique.dedup();
        for t in &unique {
            let (table, id, anchor) = match t {
                Touched::Referral(id) => (
                    Derived::Referrals,
                    id,
                    self.fold.referral(id).and_then(|s| s.received_date()),
                ),
                Touched::Appointment(id) => (
                    Derived::Appointments,
                    id,
                    self.fold
                        .appointment(id)
                        .and_then(|s| s.start())
                        .map(rules::uk_date),
                ),
                Touched::Followup(id) => (
                    Derived::Followups,
                    id,
                    self.fold.followup(id).and_then(|s| s.due_date()),
                ),
                Touched::Advice(id) => (
                    Derived::Advice,
                    id,
                    self.fold
                        .advice(id)
                        .and_then(|s| s.requested_at())
                        .map(rules::uk_date),
                ),
                Touched::Slot(_) => continue,
            };
            let anchor = anchor.map(monday).unwrap_or_else(unknown_anchor);
            let Some(anchors) = self.anchors.get_mut(&table) else {
                unreachable!("every state table has its anchors")
            };
            let changed = anchors.place(id, anchor);
            self.dirty.mark(table, changed.into_iter().flatten());
            if keep_ids {
                self.dirty.ids.entry(table).or_default().insert(id.clone());
            }
        }
        let mut changed = self.gold.update(&self.fold, &unique);
        if let Some(as_of) = self.as_of {
            changed.merge(self.gold.set_as_of(as_of));
            let week = Week::of(as_of);
            if self.as_of_week != Some(week) {
                // The "as of" values of every open entity move with the week.
                for d in Derived::all().into_iter().filter(|d| d.has_as_of()) {
                    self.dirty.whole.insert(d);
                }
                self.as_of_week = Some(week);
            }
        }
        for g in GoldTable::ALL.iter().copied() {
            self.dirty.mark(
                Derived::Gold(g),
                changed.weeks(g).iter().map(|w| w.monday()),
            );
        }
    }
}

impl Deriver {
    /// The bronze version a derived table's newest commit (as this deriver
    /// knows it) says it reflects.
    fn reflected_version(&self, d: Derived) -> Option<Version> {
        self.tables[&d].reflected()
    }

    /// The data files bronze version `v` added (compactions, which add files
    /// with `dataChange: false`, bring no new events and are skipped);
    /// `None` when the log has no entry `v`.
    async fn added_files(
        &self,
        store: &dyn ObjectStore,
        v: Version,
    ) -> Result<Option<Vec<String>>, DeriveError> {
        let entry = deltalake::logstore::read_commit_entry(store, v)
            .await
            .map_err(|e| self.delta_err(crate::BRONZE_TABLE, e))?;
        let Some(entry) = entry else {
            return Ok(None);
        };
        let mut files = Vec::new();
        for line in entry.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let action: serde_json::Value =
                serde_json::from_slice(line).map_err(|e| DeriveError::BronzeFile {
                    path: format!("_delta_log/{v:020}.json"),
                    reason: e.to_string(),
                })?;
            if let Some(add) = action.get("add")
                && add.get("dataChange").and_then(|d| d.as_bool()) != Some(false)
                && let Some(path) = add.get("path").and_then(|p| p.as_str())
            {
                files.push(path_decoded(path));
            }
        }
        Ok(Some(files))
    }

    /// Writes every pending rewrite, one Delta commit per table, each with
    /// the `txn` of `version`.
    async fn write(
        &mut self,
        version: Version,
        force: bool,
        report: &mut DeriveReport,
    ) -> Result<(), DeriveError> {
        let dirty = std::mem::take(&mut self.dirty);
        // Every table gets a commit, if only of its `txn`: a table the new
        // events did not change still reflects the new bronze version, and a
        // restart must be able to tell.
        for d in Derived::all() {
            let whole = dirty.whole.contains(&d);
            let partitions: BTreeSet<NaiveDate> = if whole {
                self.partitions_of(d)
            } else {
                dirty.partitions.get(&d).cloned().unwrap_or_default()
            };
            let scope = if whole { None } else { Some(&partitions) };
            // A partial rewrite knows which rows changed; a whole one (the
            // "as of" week moved, a rebuild, the first step) builds them all.
            let changed = if whole || force {
                None
            } else {
                dirty.ids.get(&d)
            };
            let started = Instant::now();
            if let Some(done) = self
                .replace(d, scope, &partitions, changed, version, force)
                .await?
            {
                *report.rows.entry(d.name()).or_default() += done.rows;
                if done.reused > 0 {
                    *report.reused.entry(d.name()).or_default() += done.reused;
                }
                *report.partitions.entry(d.name()).or_default() += partitions.len();
                *report.table_seconds.entry(d.name()).or_default() +=
                    started.elapsed().as_secs_f64();
                report.commits += 1;
            }
        }
        Ok(())
    }

    /// Every partition the table has rows in, in memory.
    fn partitions_of(&self, d: Derived) -> BTreeSet<NaiveDate> {
        match d {
            Derived::Gold(g) => self.gold.weeks(g).iter().map(|w| w.monday()).collect(),
            _ => self
                .anchors
                .get(&d)
                .map(|a| a.sizes.keys().copied().collect())
                .unwrap_or_default(),
        }
    }

    /// The complete rows of one partition of one table (`None`: it has no
    /// rows). (Arrow's error, not [`DeriveError`], whose Delta variant is
    /// too large for a sync `Result`.) [`replace`](Self::replace) asks for
    /// one partition at a time, so a whole-table rewrite never holds the
    /// whole table as Arrow.
    ///
    /// With `previous`, the partition's last file (see [`Self::previous_rows`])
    /// and the entities whose rows changed, only those are read from the
    /// store; the other rows are the file's (how many is the second value).
    fn batch(
        &self,
        d: Derived,
        partition: NaiveDate,
        previous: Option<(&RecordBatch, &HashSet<PseudoId>)>,
    ) -> Result<Option<(RecordBatch, usize)>, ArrowError> {
        if let Derived::Gold(g) = d {
            let batch = self.gold.batch(g, &BTreeSet::from([Week::of(partition)]))?;
            return Ok(Some((batch, 0)));
        }
        let Some(anchors) = self.anchors.get(&d) else {
            return Ok(None);
        };
        let ids = anchors.ids(partition);
        if ids.is_empty() {
            return Ok(None);
        }
        if let Some((previous, changed)) = previous
            && let Some(merged) = partition_rewrite::merge(&ids, previous, changed, |wanted| {
                self.state_rows(d, partition, wanted)
            })?
        {
            return Ok(Some(merged));
        }
        Ok(Some((self.state_rows(d, partition, &ids)?, 0)))
    }

    /// The rows of `ids` (members of `partition` of state table `d`), from the store.
    fn state_rows(
        &self,
        d: Derived,
        partition: NaiveDate,
        ids: &[PseudoId],
    ) -> Result<RecordBatch, ArrowError> {
        let as_of = rules::week_end(self.as_of_week.unwrap_or(Week::of(unknown_anchor())));
        let f = &self.fold;
        let batch = match d {
            Derived::Referrals => {
                let s = f.referrals_of(ids);
                state_tables::referrals_batch(s.iter().map(|c| c.as_ref()), as_of)
            }
            Derived::Appointments => {
                let s = f.appointments_of(ids);
                state_tables::appointments_batch(s.iter().map(|c| c.as_ref()))
            }
            Derived::Followups => {
                let s = f.followups_of(ids);
                state_tables::followups_batch(s.iter().map(|c| c.as_ref()), as_of)
            }
            Derived::Advice => {
                let s = f.advice_of(ids);
                state_tables::advice_batch(s.iter().map(|c| c.as_ref()))
            }
            Derived::Gold(_) => unreachable!("gold tables have no entity rows"),
        }?;
        with_anchor(d, partition, &batch)
    }

    /// The rows of the file this deriver last wrote for `partition` of state
    /// table `d`, partition column included, when that is still the
    /// partition's only file and its "as of" values (if the table has any)
    /// are this week's; `None`
    /// otherwise, or when it cannot be read (the rows are then built from
    /// the store, as they always can be).
    async fn previous_rows(&self, d: Derived, partition: NaiveDate) -> Option<RecordBatch> {
        let written = self.written.get(&d)?.get(&partition)?;
        if d.has_as_of() && written.week != self.as_of_week {
            return None;
        }
        let table = self.tables.get(&d)?;
        let name = partition.format("%Y-%m-%d").to_string();
        if table.paths_of(&name) != [written.path.as_str()] {
            return None;
        }
        let store = table.table().log_store().object_store(None);
        let reader = partition_rewrite::read_parquet(store.as_ref(), &path_decoded(&written.path))
            .await
            .ok()?;
        let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().ok()?;
        let rows = arrow::compute::concat_batches(&batches.first()?.schema(), &batches).ok()?;
        // The file holds every column but the partition column, in order.
        let schema = d.schema();
        let columns = &schema.fields()[..schema.fields().len() - 1];
        if !rows
            .schema()
            .fields()
            .iter()
            .map(|f| f.name())
            .eq(columns.iter().map(|f| f.name()))
        {
            return None;
        }
        with_anchor(d, partition, &rows).ok()
    }

    /// Replaces the rows of `scope`'s partitions (every partition when
    /// `None`) of one table with the rows of `partitions`, in one commit
    /// carrying the derive `txn`; returns what it wrote. `None` when the
    /// table already reflects `version` (nothing written) unless `force` (a
    /// rebuild).
    ///
    /// Rows are built and written one partition at a time, and the writer
    /// is flushed after each (one file per partition, as one batch would
    /// give): the weekly rewrite of `referrals` and `followups` and a
    /// rebuild hold one partition in memory, not the table, and the Parquet
    /// writer one partition's column encoders. With `changed` (a partial
    /// rewrite's changed entities), a partition's other rows come from its
    /// last file when that can be used ([`Self::previous_rows`]).
    async fn replace(
        &mut self,
        d: Derived,
        scope: Option<&BTreeSet<NaiveDate>>,
        partitions: &BTreeSet<NaiveDate>,
        changed: Option<&HashSet<PseudoId>>,
        version: Version,
        force: bool,
    ) -> Result<Option<Rewritten>, DeriveError> {
        let column = d.partition_column();
        let names: Option<BTreeSet<String>> =
            scope.map(|p| p.iter().map(|d| d.format("%Y-%m-%d").to_string()).collect());
        let predicate = names.as_ref().map(|n| {
            let list: Vec<String> = n.iter().map(|d| format!("'{d}'")).collect();
            format!("{column} IN ({})", list.join(", "))
        });
        // One partition at a time, gold too: the Parquet writer keeps a
        // dictionary encoder per column of every partition it has open.
        let mut attempts = 0;
        loop {
            if !(force && attempts == 0) && self.reflected_version(d).is_some_and(|r| r >= version)
            {
                return Ok(None);
            }
            let table = self.tables.get(&d).expect("every derived table is open");
            let mut writer = RecordBatchWriter::for_table(table.table())
                .map_err(|e| self.delta_err(d.name(), e))?;
            let mut adds = Vec::new();
            let mut files = Vec::new();
            let mut rows = 0;
            let mut reused = 0;
            for &partition in partitions {
                let previous = match changed {
                    Some(changed) => self
                        .previous_rows(d, partition)
                        .await
                        .map(|rows| (rows, changed)),
                    None => None,
                };
                let batch = self
                    .batch(d, partition, previous.as_ref().map(|(r, c)| (r, *c)))
                    .map_err(|source| DeriveError::Batch {
                        table: d.name(),
                        source,
                    })?;
                if let Some((batch, from_file)) = batch.filter(|(b, _)| b.num_rows() > 0) {
                    rows += batch.num_rows();
                    reused += from_file;
                    writer
                        .write(batch)
                        .await
                        .map_err(|e| self.delta_err(d.name(), e))?;
                }
                let added = writer
                    .flush()
                    .await
                    .map_err(|e| self.delta_err(d.name(), e))?;
                files.extend(added.iter().map(|a| (partition, a.path.clone())));
                adds.extend(added);
            }
            let txn = Transaction::new_with_last_update(
                DERIVE_APP_ID,
                i64::try_from(version).unwrap_or(i64::MAX),
                Some(Utc::now().timestamp_millis()),
            );
            let operation = DeltaOperation::Write {
                mode: SaveMode::Overwrite,
                partition_by: Some(vec![column.to_string()]),
                predicate: predicate.clone(),
            };
            let scope = match &names {
                None => Scope::Whole,
                Some(n) => Scope::Partitions(n),
            };
            let table = self
                .tables
                .get_mut(&d)
                .expect("every derived table is open");
            let committed = table.commit(scope, adds, operation, txn).await;
            if !matches!(committed, Ok(true)) {
                // The table may now hold another deriver's files.
                self.written.remove(&d);
            }
            match committed {
                Ok(true) => {
                    self.wrote(d, names.is_none(), partitions, files);
                    return Ok(Some(Rewritten { rows, reused }));
                }
                // Another deriver committed (the view is re-read): either
                // find our version written or try again on top of theirs.
                Ok(false) if attempts < 3 => attempts += 1,
                Ok(false) => {
                    return Err(self.delta_err(
                        d.name(),
                        DeltaTableError::Generic(
                            "other derivers kept committing first; is more than one \
                             `pathflow transform` deriving these tables?"
                                .to_string(),
                        ),
                    ));
                }
                Err(e) => return Err(self.delta_err(d.name(), e)),
            }
        }
    }

    /// Remembers the files a state table's commit wrote for `partitions`
    /// (every partition when `whole`), for the next partial rewrite.
    fn wrote(
        &mut self,
        d: Derived,
        whole: bool,
        partitions: &BTreeSet<NaiveDate>,
        files: Vec<(NaiveDate, String)>,
    ) {
        if matches!(d, Derived::Gold(_)) {
            return;
        }
        let week = self.as_of_week;
        let written = self.written.entry(d).or_default();
        if whole {
            written.clear();
        }
        for p in partitions {
            written.remove(p);
        }
        for (partition, path) in files {
            written.insert(partition, Written { path, week });
        }
    }
}

/// A DataFusion session over every table under `location` (bronze, state
/// and gold), each registered by its name at its newest version: what the
/// tests, the benchmarks and the SQL endpoint read the tables through.
pub async fn sql_session(
    location: &str,
    storage_options: &HashMap<String, String>,
) -> Result<datafusion::prelude::SessionContext, DeriveError> {
    let ctx = datafusion::prelude::SessionContext::new();
    let root = location.trim_end_matches('/');
    let names: Vec<&'static str> = std::iter::once(crate::BRONZE_TABLE)
        .chain(Derived::all().into_iter().map(Derived::name))
        .collect();
    for name in names {
        let at = format!("{root}/{name}");
        let failed = |source| DeriveError::Delta {
            table: name.to_string(),
            location: at.clone(),
            source,
        };
        let url = deltalake::ensure_table_uri(&at).map_err(failed)?;
        let table = deltalake::DeltaTableBuilder::from_url(url)
            .map_err(failed)?
            .with_storage_options(storage_options.clone())
            .load()
            .await
            .map_err(failed)?;
        table
            .update_datafusion_session(&ctx.state())
            .map_err(failed)?;
        let provider = table
            .table_provider()
            .await
            .map_err(|e| failed(DeltaTableError::from(e)))?;
        ctx.register_table(name, provider)
            .map_err(|e| failed(DeltaTableError::from(e)))?;
    }
    Ok(ctx)
}

/// `batch` (a state table's columns but the partition column) with the
/// partition column of `partition` added.
fn with_anchor(
    d: Derived,
    partition: NaiveDate,
    batch: &RecordBatch,
) -> Result<RecordBatch, ArrowError> {
    let anchor: ArrayRef = Arc::new(Date32Array::from(vec![date32(partition); batch.num_rows()]));
    let mut columns = batch.columns().to_vec();
    columns.push(anchor);
    RecordBatch::try_new(d.schema(), columns)
}

/// A path as the Delta log stores it (percent-encoded) → as the store names it.
fn path_decoded(path: &str) -> String {
    let mut out = Vec::with_capacity(path.len());
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&path[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A bronze file's row count: `numRecords` from its statistics, or a guess
/// from its size (some 150 bytes a row) when it has none.
fn rows_of(stats: Option<&str>, size: i64) -> u64 {
    stats
        .and_then(crate::commit::num_records)
        .unwrap_or_else(|| u64::try_from(size).unwrap_or(0) / 150)
}

/// The events of one bronze data file.
async fn read_events(store: &dyn ObjectStore, path: &str) -> Result<Vec<Event>, DeriveError> {
    let failed = |reason: String| DeriveError::BronzeFile {
        path: path.to_string(),
        reason,
    };
    let reader = partition_rewrite::read_parquet(store, path)
        .await
        .map_err(failed)?;
    let mut events = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| failed(e.to_string()))?;
        events.extend(events_of(&batch).map_err(|source| DeriveError::BronzeRow {
            path: path.to_string(),
            source,
        })?);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_files_row_count_comes_from_its_statistics_or_its_size() {
        assert_eq!(
            rows_of(Some(r#"{"numRecords":42,"minValues":{}}"#), 9_000),
            42
        );
        assert_eq!(rows_of(None, 15_000), 100);
        assert_eq!(rows_of(Some("not json"), 1_500), 10);
    }
}
