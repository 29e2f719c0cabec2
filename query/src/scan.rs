//! Reading one committed version of a table as plain Parquet.
//!
//! `deltalake`'s own provider re-plans each scan through the Delta kernel:
//! it replays the version's file list, evaluates skipping on the files'
//! JSON statistics, and injects the partition column above the Parquet
//! reader by evaluating kernel expressions on every batch. For the tables
//! pathflow writes that is all work a dashboard pays for on every query
//! and none of it changes between queries of one version.
//!
//! [`VersionFiles`] does it once, when the reloader loads a version: the
//! list of live files with their size, partition value and row count. A
//! scan then prunes that list by the query's partition filters (`week`,
//! `anchor_week`, `event_date`: exact, so DataFusion does not filter them
//! again) and hands the rest to DataFusion's own Parquet scan, with the
//! partition value as a constant column, the runtime's footer cache, and
//! row-group pruning from the filters DataFusion pushes down. Row counts
//! from the Delta log make `count(*)` exact without reading a file.
//!
//! It reads the tables pathflow writes, and only those: one partition
//! column, no deletion vectors, no column mapping, files under the table
//! root. [`VersionFiles::try_new`] says why when a table is anything else,
//! and the caller keeps `deltalake`'s provider for it.

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::datatypes::{FieldRef, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, ScalarValue, Statistics, project_schema};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::listing::helpers::expr_applicable_for_cols;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use deltalake::DeltaTable;
use pathflow_transform::commit::num_records;

/// A provider over the live files of one version of one table.
#[derive(Debug)]
pub struct VersionFiles {
    /// The table's columns, in the order and types `deltalake`'s provider
    /// gives them, so swapping providers changes no query's answer.
    schema: SchemaRef,
    /// `schema` without the partition column: what the files hold.
    file_schema: SchemaRef,
    partition: FieldRef,
    /// For each column of `schema`, its index in the scan's schema
    /// (`file_schema` then the partition column).
    scan_index: Vec<usize>,
    store: ObjectStoreUrl,
    /// The live files, built once per version: path relative to the table
    /// root, size, partition value, and `numRecords` as exact statistics.
    files: Vec<PartitionedFile>,
    /// Each file's partition value, in `files` order: what partition
    /// filters are evaluated on.
    partition_values: RecordBatch,
    /// Rows in the version; `None` if a file's statistics lack it.
    rows: Option<usize>,
}

impl VersionFiles {
    /// The live files of `table`'s loaded version, read under `schema` (the
    /// schema of `deltalake`'s provider for the same version). The table's
    /// object store is registered in `runtime` under its own URL. `Err`
    /// says why this table needs `deltalake`'s provider instead.
    pub fn try_new(
        table: &DeltaTable,
        schema: SchemaRef,
        runtime: &RuntimeEnv,
    ) -> Result<Self, String> {
        let state = table.snapshot().map_err(|e| e.to_string())?;
        let protocol = state.protocol();
        let features: Vec<String> = protocol
            .reader_features()
            .into_iter()
            .flatten()
            .map(|f| format!("{f:?}"))
            .collect();
        if !features.is_empty() {
            return Err(format!("reader features {features:?}"));
        }
        let partition_columns: Vec<String> = state.metadata().partition_columns().to_vec();
        let [partition_name] = partition_columns.as_slice() else {
            return Err(format!("partition columns {partition_columns:?}"));
        };
        let (partition_at, partition) = schema
            .column_with_name(partition_name)
            .map(|(i, f)| (i, Arc::new(f.clone())))
            .ok_or_else(|| format!("no column {partition_name} in the schema"))?;
        let file_fields: Vec<FieldRef> = schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != partition_at)
            .map(|(_, f)| Arc::clone(f))
            .collect();
        let file_schema = Arc::new(Schema::new(file_fields));
        let last = file_schema.fields().len();
        let scan_index = (0..schema.fields().len())
            .map(|i| match i.cmp(&partition_at) {
                std::cmp::Ordering::Less => i,
                std::cmp::Ordering::Equal => last,
                std::cmp::Ordering::Greater => i - 1,
            })
            .collect();

        let unknown = Statistics::new_unknown(&file_schema);
        let mut files = Vec::new();
        let mut values = Vec::new();
        let mut rows = Some(0usize);
        for file in state.log_data().iter() {
            let path = file.path();
            if path.contains("://") || path.starts_with('/') {
                return Err(format!("file {path} is outside the table root"));
            }
            let value = file
                .partition_values_map()
                .get(partition_name.as_str())
                .cloned()
                .flatten();
            let value = match value {
                Some(v) => ScalarValue::try_from_string(v, partition.data_type()),
                None => ScalarValue::try_from(partition.data_type()),
            }
            .map_err(|e| format!("partition value of {path}: {e}"))?;
            let size = u64::try_from(file.size()).unwrap_or(0);
            let file_rows = file
                .stats()
                .as_deref()
                .and_then(num_records)
                .and_then(|n| usize::try_from(n).ok());
            rows = rows.zip(file_rows).map(|(t, r)| t + r);
            let mut stats = unknown.clone();
            stats.num_rows = rows_precision(file_rows);
            stats.total_byte_size = Precision::Inexact(usize::try_from(size).unwrap_or(0));
            files.push(
                PartitionedFile::new(path.into_owned(), size)
                    .with_partition_values(vec![value.clone()])
                    .with_statistics(Arc::new(stats)),
            );
            values.push(value);
        }
        let values = ScalarValue::iter_to_array(values).map_err(|e| e.to_string())?;
        let partition_values = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Arc::clone(&partition)])),
            vec![values],
        )
        .map_err(|e| e.to_string())?;

        // The store is scoped to the table root and keyed by the table's
        // location, so tables of two locations never share one.
        let log_store = table.log_store();
        let store = log_store.object_store_url();
        if runtime.object_store(&store).is_err() {
            runtime.register_object_store(store.as_ref(), log_store.object_store(None));
        }
        Ok(VersionFiles {
            schema,
            file_schema,
            partition,
            scan_index,
            store,
            files,
            partition_values,
            rows,
        })
    }

    /// How many files the version has.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Rows in the version, from the files' statistics in the log; `None`
    /// if any file lacks them.
    pub fn rows(&self) -> Option<u64> {
        self.rows.map(|r| r as u64)
    }

    fn is_partition_filter(&self, filter: &Expr) -> bool {
        expr_applicable_for_cols(&[self.partition.name().as_str()], filter)
    }

    /// The files whose partition value satisfies every partition filter.
    fn pruned(&self, state: &dyn Session, filters: &[Expr]) -> DfResult<Vec<&PartitionedFile>> {
        let partition_filters: Vec<Expr> = filters
            .iter()
            .filter(|f| self.is_partition_filter(f))
            .map(|f| unqualified(f.clone()))
            .collect::<DfResult<_>>()?;
        let Some(predicate) = conjunction(partition_filters) else {
            return Ok(self.files.iter().collect());
        };
        let batch = &self.partition_values;
        let df_schema = DFSchema::try_from(batch.schema())?;
        let predicate = state.create_physical_expr(predicate, &df_schema)?;
        let keep = predicate.evaluate(batch)?.into_array(batch.num_rows())?;
        let keep = keep
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| DataFusionError::Internal("a partition filter is boolean".into()))?;
        Ok(self
            .files
            .iter()
            .enumerate()
            .filter(|(i, _)| keep.is_valid(*i) && keep.value(*i))
            .map(|(_, f)| f)
            .collect())
    }
}

#[async_trait]
impl TableProvider for VersionFiles {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if self.is_partition_filter(f) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Inexact
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let files = self.pruned(state, filters)?;
        if files.is_empty() {
            let projected = project_schema(&self.schema, projection)?;
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        let total_rows = files.iter().try_fold(0usize, |total, f| {
            f.statistics
                .as_ref()
                .and_then(|s| s.num_rows.get_value().copied())
                .map(|r| total + r)
        });
        let partitioned: Vec<PartitionedFile> = files.into_iter().cloned().collect();
        let mut table_stats = Statistics::new_unknown(&self.schema);
        table_stats.num_rows = rows_precision(total_rows);
        // The scan's own column order: the files' columns, then the partition.
        table_stats.column_statistics = {
            let mut columns = Statistics::new_unknown(&self.file_schema).column_statistics;
            columns.push(Default::default());
            columns
        };

        let scan_columns: Vec<usize> = match projection {
            Some(p) => p.iter().map(|&i| self.scan_index[i]).collect(),
            None => self.scan_index.clone(),
        };
        let source = ParquetSource::new(
            TableSchema::builder(Arc::clone(&self.file_schema))
                .with_table_partition_cols(vec![Arc::clone(&self.partition)])
                .build(),
        );
        let groups =
            FileGroup::new(partitioned).split_files(state.config().target_partitions().max(1));
        let config = FileScanConfigBuilder::new(self.store.clone(), Arc::new(source))
            .with_file_groups(groups)
            .with_statistics(table_stats)
            .with_projection_indices(Some(scan_columns))?
            .with_limit(limit)
            .build();
        ParquetFormat::default()
            .with_options(state.table_options().parquet.clone())
            .create_physical_plan(state, config)
            .await
    }
}

fn rows_precision(rows: Option<usize>) -> Precision<usize> {
    rows.map_or(Precision::Absent, Precision::Exact)
}

/// `expr` with its columns unqualified: the pruning batch has one column
/// and no table name, and a query may write `waits_weekly.week`.
fn unqualified(expr: Expr) -> DfResult<Expr> {
    expr.transform(|e| match e {
        Expr::Column(c) => Ok(Transformed::yes(Expr::Column(Column::new_unqualified(
            c.name,
        )))),
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}
