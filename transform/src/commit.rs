//! The exactly-once commit protocol (see `COMMIT_PROTOCOL.md` next to this
//! crate): every commit of the bronze table carries, in the same Delta
//! transaction as its data files, one `txn` action per Kafka partition whose
//! `version` is the last offset the commit includes. The table, not Kafka, is
//! the record of what was consumed.
//!
//! [`BronzeWriter`] owns the bronze table: it creates it, reads the committed
//! offsets back at start-up, and commits batches from [`crate::bronze`]
//! together with their offsets, refusing any commit that would write an
//! offset a second time.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use arrow::array::{Array, Int32Array, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::kernel::transaction::{
    CommitBuilder, CommitConflictError, CommitData, CommitProperties, TransactionError,
};
use deltalake::kernel::{Action, Add, StructType, Transaction, Version};
use deltalake::logstore::CommitOrBytes;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, ensure_table_uri};
use pathflow_schemas::bronze::{EVENTS_TABLE, PARTITION_COLUMN, events_schema};

/// A Kafka partition: topic and partition number.
pub type TopicPartition = (String, i32);

/// Last offset included, per Kafka partition.
pub type Offsets = BTreeMap<TopicPartition, i64>;

/// The prefix of every `txn` application id pathflow writes.
pub const APP_ID_PREFIX: &str = "pathflow-transform";

/// How many times a commit is re-attempted when a concurrent commit conflicts
/// with it without touching its partitions (e.g. a table property change).
const CONFLICT_RETRIES: usize = 3;

/// The commit properties of every pathflow commit on a table at `state`:
/// the `txn` actions, and the log clean-up only on the commit that writes
/// a checkpoint.
///
/// `deltalake` otherwise cleans up after every commit, and that lists and
/// stats every file of `_delta_log`: with a commit every few seconds, a
/// month's retention is tens of thousands of files, listed on every commit
/// of every table. The Delta protocol cleans up when a checkpoint is
/// written, which is what this does (the commit expected to be the
/// checkpoint's; if a concurrent writer takes that version, the next
/// checkpoint cleans up instead).
pub(crate) fn commit_properties(
    state: &deltalake::table::state::DeltaTableState,
    txns: Vec<Transaction>,
) -> CommitProperties {
    use deltalake::table::config::TablePropertiesExt;
    let config = state.table_config();
    let next = state.version() + 1;
    let checkpoint = (next + 1).is_multiple_of(config.checkpoint_interval().get());
    CommitProperties::default()
        .with_application_transactions(txns)
        .with_cleanup_expired_logs(Some(checkpoint && config.enable_expired_log_cleanup()))
}

/// What [`append_direct`] did with a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direct {
    /// The commit is the table's version `version`.
    Written,
    /// Another writer holds that version: re-read the table and decide again.
    Taken,
    /// Not written: the version is due a checkpoint (or the log store cannot
    /// put-if-absent). Commit through deltalake, which writes the checkpoint.
    ThroughDeltalake,
}

/// Writes `actions`, `txns` and a `commitInfo` for `operation` as version
/// `version` of a table in one put-if-absent of `_delta_log/<version>.json`,
/// when the writer's view of the table is at `version - 1`.
///
/// This is the commit deltalake's `CommitBuilder` makes on an uncontended
/// table, minus what follows it: the post-commit update of the in-memory
/// snapshot, which merges the commit into the list of every active file
/// (tens of microseconds per file, so it grows with the table's history),
/// and the log listing that finds the latest version. A writer that knows
/// its version and tracks what it needs itself (offsets, files by
/// partition) needs neither. Put-if-absent is what makes it safe: if any
/// other writer committed since, `version` exists and the answer is
/// [`Direct::Taken`]; nothing is written. Versions that are due a checkpoint
/// go through deltalake ([`Direct::ThroughDeltalake`]), so the log is
/// checkpointed and cleaned up as before.
pub(crate) async fn append_direct(
    log_store: &dyn deltalake::logstore::LogStore,
    checkpoint_interval: u64,
    version: Version,
    actions: Vec<Action>,
    operation: DeltaOperation,
    txns: Vec<Transaction>,
) -> Result<Direct, DeltaTableError> {
    // Stores that commit by copy-if-absent of a temporary file (not by a
    // conditional put) keep deltalake's own path.
    if (version + 1).is_multiple_of(checkpoint_interval) || log_store.name() != "DefaultLogStore" {
        return Ok(Direct::ThroughDeltalake);
    }
    let data = CommitData::new(actions, operation, HashMap::new(), txns);
    let bytes = data.get_bytes()?;
    match log_store
        .write_commit_entry(
            version,
            CommitOrBytes::LogBytes(bytes),
            uuid::Uuid::new_v4(),
        )
        .await
    {
        Ok(()) => Ok(Direct::Written),
        Err(TransactionError::VersionAlreadyExists(_)) => Ok(Direct::Taken),
        Err(e) => Err(e.into()),
    }
}

/// The checkpoint interval of a table (`delta.checkpointInterval`, 100 by default).
pub(crate) fn checkpoint_interval(state: &deltalake::table::state::DeltaTableState) -> u64 {
    use deltalake::table::config::TablePropertiesExt;
    state.table_config().checkpoint_interval().get()
}

/// Opens the Delta table at `location`, creating it with `schema`,
/// partitioned by `partition_column`, when there is none. Safe against
/// another instance creating it at the same moment.
pub(crate) async fn open_or_create(
    location: &str,
    storage_options: &HashMap<String, String>,
    schema: &arrow::datatypes::Schema,
    partition_column: &str,
    name: &str,
    comment: &str,
) -> Result<DeltaTable, DeltaTableError> {
    let url = ensure_table_uri(location)?;
    let mut table = DeltaTableBuilder::from_url(url)?
        .with_storage_options(storage_options.clone())
        .build()?;
    match table.load().await {
        Ok(()) => Ok(table),
        Err(DeltaTableError::NotATable(_)) => {
            let columns = StructType::try_from_arrow(schema)?;
            let created = table
                .create()
                .with_columns(columns.fields().cloned())
                .with_partition_columns([partition_column])
                .with_table_name(name)
                .with_comment(comment)
                .with_save_mode(SaveMode::Ignore)
                .await;
            match created {
                Ok(t) => Ok(t),
                // Another instance may have created it between our load and
                // our create; if there is still no table, the create's error says why.
                Err(create_error) => match table.load().await {
                    Ok(()) => Ok(table),
                    Err(_) => Err(create_error),
                },
            }
        }
        Err(e) => Err(e),
    }
}

/// `numRecords` of a data file's statistics (the JSON an add action carries
/// in the Delta log); `None` when the statistics are absent or lack it.
pub fn num_records(stats: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(stats)
        .ok()?
        .get("numRecords")?
        .as_u64()
}

/// The `txn` application id of one partition for one consumer group:
/// `pathflow-transform:<group>:<topic>:<partition>`.
pub fn app_id(group: &str, topic: &str, partition: i32) -> String {
    format!("{APP_ID_PREFIX}:{group}:{topic}:{partition}")
}

/// Where the bronze table lives and who writes it.
#[derive(Debug, Clone)]
pub struct BronzeConfig {
    /// The table's location: a local directory (created if missing), a
    /// `file:///` URL, or an object-store URL such as `s3://bucket/events`
    /// (needs deltalake's matching storage feature and its handlers registered).
    pub location: String,
    /// The Kafka consumer group; part of every `txn` application id, so two
    /// groups feeding one table keep separate offsets.
    pub group: String,
    /// Object-store options (credentials, endpoint, region), passed to deltalake.
    pub storage_options: HashMap<String, String>,
}

impl BronzeConfig {
    /// A config for `location` and `group` with no storage options.
    pub fn new(location: impl Into<String>, group: impl Into<String>) -> Self {
        Self {
            location: location.into(),
            group: group.into(),
            storage_options: HashMap::new(),
        }
    }
}

/// Where consumption of a partition resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeAt {
    /// Nothing committed yet: read the partition from its beginning.
    Beginning,
    /// Read from this offset (the committed one plus one).
    Offset(i64),
}

/// What a successful commit wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// The table version the commit created.
    pub version: Version,
    /// Rows added.
    pub rows: usize,
    /// Parquet files added.
    pub files: usize,
    /// The offsets now committed for the partitions of this commit.
    pub offsets: Offsets,
}

/// A partition another writer committed since this writer last read the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The committed offset this writer's batch followed on from.
    pub expected: Option<i64>,
    /// The committed offset the table holds now.
    pub found: Option<i64>,
    /// The last offset this writer tried to commit.
    pub attempted: i64,
}

impl fmt::Display for MovedPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |o: Option<i64>| o.map_or_else(|| "none".to_string(), |o| o.to_string());
        write!(
            f,
            "{} partition {}: expected committed offset {}, found {} (tried to commit up to {})",
            self.topic,
            self.partition,
            show(self.expected),
            show(self.found),
            self.attempted
        )
    }
}

/// Why a commit did not happen. In every case the table is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// deltalake or the object store failed.
    #[error("bronze table at {location}: {source}")]
    Delta {
        /// The table's location.
        location: String,
        /// What deltalake reported.
        #[source]
        source: DeltaTableError,
    },
    /// The batch ends at or before what the table already holds for a partition:
    /// committing it would write those events twice.
    #[error(
        "{topic} partition {partition}: offset {attempted} is already committed (the table holds up to {committed}); \
         seek the partition to {} and rebuild the batch", committed + 1
    )]
    AlreadyCommitted {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The offset the table holds.
        committed: i64,
        /// The last offset of the refused batch.
        attempted: i64,
    },
    /// Another writer (e.g. the previous owner of a partition, before a
    /// rebalance) committed some of these partitions first.
    #[error(
        "another writer committed to the same partitions first, nothing was written; \
         seek each to its committed offset + 1 (see committed_offsets) and rebuild the batch: {}",
        moved.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Conflict {
        /// The partitions that moved under this writer.
        moved: Vec<MovedPartition>,
    },
    /// A row's Kafka coordinates are not within the offsets being committed.
    #[error(
        "row {row} of batch {batch} comes from {topic} partition {partition} offset {offset}, \
         which is not after the committed offset and at most the offset being committed for that partition ({allowed})"
    )]
    RowOutsideOffsets {
        /// Index of the batch.
        batch: usize,
        /// Index of the row in the batch.
        row: usize,
        /// The row's topic.
        topic: String,
        /// The row's partition.
        partition: i32,
        /// The row's offset.
        offset: i64,
        /// The range that was allowed, in words.
        allowed: String,
    },
    /// A batch is not of the bronze schema.
    #[error("batch {batch} is not a bronze events batch: {problem}")]
    NotBronze {
        /// Index of the batch.
        batch: usize,
        /// What differs.
        problem: String,
    },
    /// Files were staged against an older table version than the writer now holds.
    #[error(
        "files were staged against table version {staged} but the writer is at version {current}; stage the batch again"
    )]
    StaleStage {
        /// The version the files were staged against.
        staged: Version,
        /// The writer's version now.
        current: Version,
    },
    /// The existing table at the location is not partitioned as bronze must be.
    #[error(
        "the table at {location} is partitioned by {found:?}, not by [{PARTITION_COLUMN:?}]; \
         point the bronze location at an empty directory or the bronze table"
    )]
    WrongPartitioning {
        /// The table's location.
        location: String,
        /// Its partition columns.
        found: Vec<String>,
    },
}

/// Data files written but not yet committed: invisible to every reader until
/// [`BronzeWriter::commit_staged`] commits them, orphans if it never does.
#[derive(Debug)]
pub struct Staged {
    adds: Vec<Add>,
    offsets: Offsets,
    rows: usize,
    base_version: Version,
}

impl Staged {
    /// Paths (relative to the table root) of the parquet files written.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.adds.iter().map(|a| a.path.as_str())
    }

    /// Rows in the staged files.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The offsets the commit will record.
    pub fn offsets(&self) -> &Offsets {
        &self.offsets
    }
}

/// The writer of the bronze `events` table.
///
/// It keeps, for every partition it has looked at, the offset committed in
/// the table version it holds; that cache is what a new batch is checked
/// against, and deltalake's conflict check covers any commit made after it.
pub struct BronzeWriter {
    /// The table as last loaded; behind `version` by the commits this
    /// writer made directly since (see [`append_direct`]).
    table: DeltaTable,
    /// The newest version this writer knows: the one loaded or its own last commit.
    version: Version,
    location: String,
    group: String,
    committed: BTreeMap<TopicPartition, Option<i64>>,
}

impl BronzeWriter {
    /// Opens the bronze table at `config.location`, creating it (partitioned
    /// by `event_date`) if there is none.
    pub async fn open(config: &BronzeConfig) -> Result<Self, CommitError> {
        let location = config.location.clone();
        let delta = |source| CommitError::Delta {
            location: location.clone(),
            source,
        };
        let table = open_or_create(
            &config.location,
            &config.storage_options,
            &events_schema(),
            PARTITION_COLUMN,
            EVENTS_TABLE,
            "pathflow bronze: one row per Kafka message that is an event",
        )
        .await
        .map_err(delta)?;
        let found = table
            .snapshot()
            .map_err(delta)?
            .metadata()
            .partition_columns()
            .to_vec();
        if found != [PARTITION_COLUMN] {
            return Err(CommitError::WrongPartitioning { location, found });
        }
        Ok(Self {
            version: table.version().unwrap_or_default(),
            table,
            location,
            group: config.group.clone(),
            committed: BTreeMap::new(),
        })
    }

    fn delta_err(&self, source: DeltaTableError) -> CommitError {
        CommitError::Delta {
            location: self.location.clone(),
            source,
        }
    }

    /// The table version this writer holds: the one it last read, or its own last commit.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Re-reads the table at its newest version.
    async fn reload(&mut self) -> Result<(), CommitError> {
        self.table
            .update_state()
            .await
            .map_err(|e| self.delta_err(e))?;
        self.version = self.table.version().unwrap_or_default();
        Ok(())
    }

    /// Brings the loaded table up to this writer's own commits, for the
    /// reads and commits that go through deltalake.
    async fn sync(&mut self) -> Result<(), CommitError> {
        if self.table.version() != Some(self.version) {
            self.table
                .update_incremental(Some(self.version))
                .await
                .map_err(|e| self.delta_err(e))?;
        }
        Ok(())
    }

    /// The consumer group whose offsets this writer commits.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Reads the committed offsets of `partitions` from the table's `txn`
    /// state (re-reading the table first) and returns where each resumes.
    /// Call at start-up and on every partition assignment.
    pub async fn track(
        &mut self,
        partitions: impl IntoIterator<Item = TopicPartition>,
    ) -> Result<BTreeMap<TopicPartition, ResumeAt>, CommitError> {
        self.reload().await?;
        let wanted: Vec<TopicPartition> = partitions.into_iter().collect();
        // The table moved (maybe): every cached offset is re-read with it.
        let all: Vec<TopicPartition> = self
            .committed
            .keys()
            .cloned()
            .chain(wanted.iter().cloned())
            .collect();
        self.refresh(all).await?;
        Ok(wanted
            .into_iter()
            .map(|tp| {
                let at = match self.committed.get(&tp).copied().flatten() {
                    Some(o) => ResumeAt::Offset(o + 1),
                    None => ResumeAt::Beginning,
                };
                (tp, at)
            })
            .collect())
    }

    /// Looks up the txn versions of `partitions` in the table version held.
    async fn refresh(
        &mut self,
        partitions: impl IntoIterator<Item = TopicPartition>,
    ) -> Result<(), CommitError> {
        let partitions: Vec<TopicPartition> = partitions.into_iter().collect();
        if partitions.is_empty() {
            // Nothing to look up, so no reason to bring the loaded table up
            // to date: after direct commits that is a replay of every new
            // commit into the list of every active file, a cost that grows
            // with history (every `stage` asks about its unknown partitions,
            // usually none).
            return Ok(());
        }
        self.sync().await?;
        let log_store = self.table.log_store();
        for (topic, partition) in partitions {
            let id = app_id(&self.group, &topic, partition);
            let version = self
                .table
                .snapshot()
                .map_err(|e| self.delta_err(e))?
                .transaction_version(log_store.as_ref(), id)
                .await
                .map_err(|e| self.delta_err(e))?;
            self.committed.insert((topic, partition), version);
        }
        Ok(())
    }

    /// The committed offset (last offset included) of every tracked partition
    /// that has one, as of the table version this writer holds.
    pub fn committed_offsets(&self) -> Offsets {
        self.committed
            .iter()
            .filter_map(|(tp, o)| o.map(|o| (tp.clone(), o)))
            .collect()
    }

    /// Writes `batches` and commits them with `offsets` in one Delta transaction.
    ///
    /// `offsets` names, for every partition the batches were read from (and any
    /// partition whose messages were all rejected), the last offset consumed.
    /// Every row's Kafka coordinates must lie after the partition's committed
    /// offset and at or before the offset given here.
    pub async fn commit(
        &mut self,
        batches: Vec<RecordBatch>,
        offsets: &Offsets,
    ) -> Result<CommitInfo, CommitError> {
        let staged = self.stage(batches, offsets).await?;
        self.commit_staged(staged).await
    }

    /// Checks the batches against the committed offsets and writes their
    /// parquet files, without committing: the first half of [`commit`](Self::commit).
    pub async fn stage(
        &mut self,
        batches: Vec<RecordBatch>,
        offsets: &Offsets,
    ) -> Result<Staged, CommitError> {
        let unknown: Vec<TopicPartition> = offsets
            .keys()
            .filter(|tp| !self.committed.contains_key(*tp))
            .cloned()
            .collect();
        self.refresh(unknown).await?;
        for ((topic, partition), &attempted) in offsets {
            if let Some(Some(committed)) = self.committed.get(&(topic.clone(), *partition))
                && attempted <= *committed
            {
                return Err(CommitError::AlreadyCommitted {
                    topic: topic.clone(),
                    partition: *partition,
                    committed: *committed,
                    attempted,
                });
            }
        }
        let schema = events_schema();
        let mut rows = 0;
        for (i, batch) in batches.iter().enumerate() {
            if batch.schema().fields() != schema.fields() {
                return Err(CommitError::NotBronze {
                    batch: i,
                    problem: "its columns differ from pathflow_schemas::bronze::events_schema()"
                        .to_string(),
                });
            }
            check_rows(i, batch, offsets, &self.committed)?;
            rows += batch.num_rows();
        }

        let mut writer =
            RecordBatchWriter::for_table(&self.table).map_err(|e| self.delta_err(e))?;
        for batch in batches.into_iter().filter(|b| b.num_rows() > 0) {
            writer.write(batch).await.map_err(|e| self.delta_err(e))?;
        }
        let adds = writer.flush().await.map_err(|e| self.delta_err(e))?;
        Ok(Staged {
            adds,
            offsets: offsets.clone(),
            rows,
            base_version: self.version(),
        })
    }

    /// Commits staged files and their offsets in one Delta transaction: the
    /// second half of [`commit`](Self::commit).
    pub async fn commit_staged(&mut self, staged: Staged) -> Result<CommitInfo, CommitError> {
        if staged.base_version != self.version() {
            return Err(CommitError::StaleStage {
                staged: staged.base_version,
                current: self.version(),
            });
        }
        let expected: BTreeMap<TopicPartition, Option<i64>> = staged
            .offsets
            .keys()
            .map(|tp| (tp.clone(), self.committed.get(tp).copied().flatten()))
            .collect();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let txns: Vec<Transaction> = staged
            .offsets
            .iter()
            .map(|((topic, partition), &offset)| {
                Transaction::new_with_last_update(
                    app_id(&self.group, topic, *partition),
                    offset,
                    Some(now_ms),
                )
            })
            .collect();
        let actions: Vec<Action> = staged.adds.iter().cloned().map(Action::Add).collect();
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: Some(vec![PARTITION_COLUMN.to_string()]),
            predicate: None,
        };

        let mut attempts = 0;
        // After a conflict the retry goes through deltalake, whose conflict
        // check reads the winning commits.
        let mut direct = true;
        loop {
            let before = self.version();
            if direct {
                let interval =
                    checkpoint_interval(self.table.snapshot().map_err(|e| self.delta_err(e))?);
                let written = append_direct(
                    self.table.log_store().as_ref(),
                    interval,
                    before + 1,
                    actions.clone(),
                    operation.clone(),
                    txns.clone(),
                )
                .await
                .map_err(|e| self.delta_err(e))?;
                match written {
                    Direct::Written => {
                        // Nobody committed in between (the version was free):
                        // the cache moves by exactly our offsets.
                        self.version = before + 1;
                        for (tp, &o) in &staged.offsets {
                            self.committed.insert(tp.clone(), Some(o));
                        }
                        return Ok(CommitInfo {
                            version: self.version,
                            rows: staged.rows,
                            files: staged.adds.len(),
                            offsets: staged.offsets,
                        });
                    }
                    Direct::Taken => {
                        self.after_conflict(&staged.offsets, &expected).await?;
                        attempts += 1;
                        if attempts > CONFLICT_RETRIES {
                            return Err(
                                self.delta_err(DeltaTableError::VersionAlreadyExists(before + 1))
                            );
                        }
                        direct = false;
                        continue;
                    }
                    Direct::ThroughDeltalake => self.sync().await?,
                }
            }
            let state = self.table.snapshot().map_err(|e| self.delta_err(e))?;
            let result = CommitBuilder::from(commit_properties(state, txns.clone()))
                .with_actions(actions.clone())
                .build(Some(state), self.table.log_store(), operation.clone())
                .await;
            match result {
                Ok(done) => {
                    let version = done.version();
                    self.table.state = Some(done.snapshot());
                    self.version = version;
                    if version == before + 1 {
                        // Nobody committed in between: the cache moves by exactly our offsets.
                        for (tp, &o) in &staged.offsets {
                            self.committed.insert(tp.clone(), Some(o));
                        }
                    } else {
                        // Other commits were folded in (ones that did not touch our
                        // partitions): re-read every tracked partition at the new version.
                        let all: Vec<TopicPartition> = self.committed.keys().cloned().collect();
                        self.refresh(all).await?;
                    }
                    return Ok(CommitInfo {
                        version,
                        rows: staged.rows,
                        files: staged.adds.len(),
                        offsets: staged.offsets,
                    });
                }
                Err(DeltaTableError::Transaction {
                    source: TransactionError::CommitConflict(conflict),
                }) => {
                    self.after_conflict(&staged.offsets, &expected).await?;
                    attempts += 1;
                    if attempts > CONFLICT_RETRIES
                        || matches!(conflict, CommitConflictError::ConcurrentTransaction)
                    {
                        return Err(self.delta_err(DeltaTableError::Transaction {
                            source: TransactionError::CommitConflict(conflict),
                        }));
                    }
                    // Our partitions are untouched: the same files commit safely on
                    // top of the new version.
                    direct = false;
                }
                Err(e) => return Err(self.delta_err(e)),
            }
        }
    }

    /// After another writer's commit won: re-reads the table and every
    /// tracked partition's offset, and fails with [`CommitError::Conflict`]
    /// if any of the partitions being committed moved from what the batch
    /// was checked against (`expected`).
    async fn after_conflict(
        &mut self,
        offsets: &Offsets,
        expected: &BTreeMap<TopicPartition, Option<i64>>,
    ) -> Result<(), CommitError> {
        self.reload().await?;
        let all: Vec<TopicPartition> = self.committed.keys().cloned().collect();
        self.refresh(all).await?;
        let moved: Vec<MovedPartition> = offsets
            .iter()
            .filter_map(|(tp, &attempted)| {
                let found = self.committed.get(tp).copied().flatten();
                let expected = expected.get(tp).copied().flatten();
                (found != expected).then(|| MovedPartition {
                    topic: tp.0.clone(),
                    partition: tp.1,
                    expected,
                    found,
                    attempted,
                })
            })
            .collect();
        if moved.is_empty() {
            Ok(())
        } else {
            Err(CommitError::Conflict { moved })
        }
    }
}

/// Checks every row's Kafka coordinates against the offsets being committed.
fn check_rows(
    index: usize,
    batch: &RecordBatch,
    offsets: &Offsets,
    committed: &BTreeMap<TopicPartition, Option<i64>>,
) -> Result<(), CommitError> {
    let not_bronze = |problem: &str| CommitError::NotBronze {
        batch: index,
        problem: problem.to_string(),
    };
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| not_bronze(&format!("no {name} column")))
    };
    let topics = column("kafka_topic")?
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| not_bronze("kafka_topic is not Utf8"))?;
    let partitions = column("kafka_partition")?
        .as_any()
        .downcast_ref::<Int32Array>()
        .ok_or_else(|| not_bronze("kafka_partition is not Int32"))?;
    let row_offsets = column("kafka_offset")?
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or_else(|| not_bronze("kafka_offset is not Int64"))?;
    if topics.null_count() + partitions.null_count() + row_offsets.null_count() > 0 {
        return Err(not_bronze("a Kafka coordinate column holds nulls"));
    }
    // Batches are runs from few partitions: remember the last lookup.
    let mut last: Option<(&str, i32, Option<i64>, Option<i64>)> = None;
    for row in 0..batch.num_rows() {
        let (topic, partition, offset) = (
            topics.value(row),
            partitions.value(row),
            row_offsets.value(row),
        );
        let (upto, after) = match last {
            Some((t, p, u, a)) if t == topic && p == partition => (u, a),
            _ => {
                let tp = (topic.to_string(), partition);
                let u = offsets.get(&tp).copied();
                let a = committed.get(&tp).copied().flatten();
                last = Some((topic, partition, u, a));
                (u, a)
            }
        };
        let inside = upto.is_some_and(|u| offset <= u) && after.is_none_or(|a| offset > a);
        if !inside {
            let allowed = match (after, upto) {
                (_, None) => "the partition is not in the offsets being committed".to_string(),
                (Some(a), Some(u)) => format!("{} to {u}", a + 1),
                (None, Some(u)) => format!("up to {u}"),
            };
            return Err(CommitError::RowOutsideOffsets {
                batch: index,
                row,
                topic: topic.to_string(),
                partition,
                offset,
                allowed,
            });
        }
    }
    Ok(())
}
