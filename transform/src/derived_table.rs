//! A derived table as its deriver last read or wrote it: the version, the
//! bronze version the table reflects, and its active files by partition.
//!
//! The deriver rewrites a few partitions per step. With deltalake's own
//! commit, each step also merges the commit into the snapshot's list of every
//! active file, looks the derive `txn` up in the snapshot and filters every
//! active file for the partitions to remove: all three grow with the
//! table's history (a file per week the table covers). Kept here, by
//! partition, the step's cost is the partitions it rewrites; the commit is
//! written with [`append_direct`], and deltalake's path (and its fresh
//! snapshot) is taken only for a checkpoint's commit or after another
//! deriver committed.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use deltalake::kernel::{Action, Add, Remove, Version};
use deltalake::{DeltaTable, DeltaTableError};

use crate::commit::{Direct, append_direct, checkpoint_interval};
use crate::derive::DERIVE_APP_ID;

/// One derived table's writer-side view (see the module doc).
pub(crate) struct DerivedTable {
    /// The table as last loaded; behind `version` by the commits made
    /// directly since.
    table: DeltaTable,
    /// The partition column.
    column: &'static str,
    /// The newest version this deriver knows: loaded, or its own last commit.
    version: Version,
    /// The bronze version the table reflects at `version` (its derive `txn`).
    reflected: Option<Version>,
    /// The active files at `version`, by the partition column's value.
    files: BTreeMap<Option<String>, Vec<Remove>>,
}

/// The partitions a rewrite replaces.
pub(crate) enum Scope<'a> {
    /// Every partition the table has.
    Whole,
    /// These partitions' values.
    Partitions(&'a BTreeSet<String>),
}

impl DerivedTable {
    /// The view of `table` at its loaded version.
    pub(crate) async fn new(
        table: DeltaTable,
        column: &'static str,
    ) -> Result<Self, DeltaTableError> {
        let mut view = Self {
            table,
            column,
            version: 0,
            reflected: None,
            files: BTreeMap::new(),
        };
        view.index().await?;
        Ok(view)
    }

    /// The table as last loaded (its schema and writer properties).
    pub(crate) fn table(&self) -> &DeltaTable {
        &self.table
    }

    /// The bronze version the table reflects, as of the newest version known.
    pub(crate) fn reflected(&self) -> Option<Version> {
        self.reflected
    }

    /// Re-reads the table at its newest version (after another deriver committed).
    pub(crate) async fn reload(&mut self) -> Result<(), DeltaTableError> {
        self.table.update_state().await?;
        self.index().await
    }

    /// Takes version, `txn` and files from the loaded snapshot.
    async fn index(&mut self) -> Result<(), DeltaTableError> {
        let snapshot = self.table.snapshot()?;
        let log_store = self.table.log_store();
        self.version = snapshot.version();
        self.reflected = snapshot
            .transaction_version(log_store.as_ref(), DERIVE_APP_ID)
            .await?
            .and_then(|v| u64::try_from(v).ok());
        self.files.clear();
        for f in snapshot.log_data().iter() {
            let value = f.partition_values_map().get(self.column).cloned().flatten();
            self.files
                .entry(value)
                .or_default()
                .push(f.remove_action(true));
        }
        Ok(())
    }

    /// The paths (as the log names them) of the active files of one partition.
    pub(crate) fn paths_of(&self, partition: &str) -> Vec<&str> {
        self.files
            .get(&Some(partition.to_string()))
            .map(|files| files.iter().map(|r| r.path.as_str()).collect())
            .unwrap_or_default()
    }

    /// The remove actions of every active file in `scope`.
    pub(crate) fn removes(&self, scope: &Scope<'_>) -> Vec<Action> {
        let now = Utc::now().timestamp_millis();
        let in_scope = |value: &Option<String>| match scope {
            Scope::Whole => true,
            Scope::Partitions(names) => value.as_ref().is_some_and(|v| names.contains(v)),
        };
        self.files
            .iter()
            .filter(|(value, _)| in_scope(value))
            .flat_map(|(_, files)| files.iter())
            .map(|r| {
                Action::Remove(Remove {
                    deletion_timestamp: Some(now),
                    ..r.clone()
                })
            })
            .collect()
    }

    /// Commits `adds` in place of `scope`'s files with the derive `txn`
    /// of `reflects`, as the next version. `Ok(false)` when another deriver
    /// committed first: the view is reloaded, and the caller decides again.
    pub(crate) async fn commit(
        &mut self,
        scope: Scope<'_>,
        adds: Vec<Add>,
        operation: deltalake::protocol::DeltaOperation,
        txn: deltalake::kernel::Transaction,
    ) -> Result<bool, DeltaTableError> {
        let mut actions: Vec<Action> = adds.iter().cloned().map(Action::Add).collect();
        actions.extend(self.removes(&scope));
        let next = self.version + 1;
        let interval = checkpoint_interval(self.table.snapshot()?);
        let reflects = u64::try_from(txn.version).ok();
        match append_direct(
            self.table.log_store().as_ref(),
            interval,
            next,
            actions.clone(),
            operation.clone(),
            vec![txn.clone()],
        )
        .await?
        {
            Direct::Written => {
                self.applied(next, &scope, adds, reflects);
                Ok(true)
            }
            Direct::Taken => {
                self.reload().await?;
                Ok(false)
            }
            Direct::ThroughDeltalake => {
                // Catch the loaded snapshot up with our own commits, then
                // let deltalake commit (and checkpoint) from it.
                if self.table.version() != Some(self.version) {
                    self.table.update_incremental(Some(self.version)).await?;
                }
                let snapshot = self.table.snapshot()?;
                let result = deltalake::kernel::transaction::CommitBuilder::from(
                    crate::commit::commit_properties(snapshot, vec![txn]),
                )
                .with_actions(actions)
                .build(Some(snapshot), self.table.log_store(), operation)
                .await;
                match result {
                    Ok(done) => {
                        self.table.state = Some(done.snapshot());
                        self.index().await?;
                        Ok(true)
                    }
                    Err(DeltaTableError::Transaction {
                        source: deltalake::kernel::transaction::TransactionError::CommitConflict(_),
                    }) => {
                        self.reload().await?;
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Moves the view to `version` after its own commit of `adds` over `scope`.
    fn applied(
        &mut self,
        version: Version,
        scope: &Scope<'_>,
        adds: Vec<Add>,
        reflects: Option<Version>,
    ) {
        match scope {
            Scope::Whole => self.files.clear(),
            Scope::Partitions(names) => {
                for name in names.iter() {
                    self.files.remove(&Some(name.clone()));
                }
            }
        }
        for add in adds {
            let value = add.partition_values.get(self.column).cloned().flatten();
            self.files.entry(value).or_default().push(remove_of(add));
        }
        self.version = version;
        self.reflected = reflects;
    }
}

/// The remove action of a file this deriver added (its deletion time is set
/// when it is removed).
fn remove_of(add: Add) -> Remove {
    Remove {
        path: add.path,
        data_change: true,
        deletion_timestamp: None,
        extended_file_metadata: Some(true),
        partition_values: Some(add.partition_values),
        size: Some(add.size),
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
    }
}
