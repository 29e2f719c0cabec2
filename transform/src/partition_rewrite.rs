//! A state partition rewritten from its previous file.
//!
//! A step rewrites every state partition one of its events touched, and a
//! partition holds a week's entities: a few thousand rows for a few touched
//! ones. Built from the store, each row is a read of one entity's state,
//! and those reads get slower as the store grows with history (more of it
//! falls outside the page cache). So when the deriver itself wrote the
//! partition's only file (in the same "as of" week, for the tables whose
//! rows hold "as of" values), the rows of the entities the step did not
//! touch are taken from that file, and only the touched (and newly placed)
//! entities are read from the store. The rows come out as a build from the
//! store would write them, in the same order
//! (`partial_rewrites_take_untouched_rows_from_their_files_and_equal_a_rebuild`
//! in `tests/derive.rs`, and every incremental-against-rebuild test).

use std::collections::{HashMap, HashSet};

use arrow::array::{Array, StringArray};
use arrow::compute::interleave_record_batch;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use deltalake::{ObjectStore, Path as StorePath};
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use pathflow_schemas::{PseudoId, Week};

/// The file a deriver last wrote for one state partition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Written {
    /// Its path in the table, as the log names it.
    pub(crate) path: String,
    /// The week its "as of" values were computed for.
    pub(crate) week: Option<Week>,
}

/// A reader over the batches of one Parquet file in `store`.
pub(crate) async fn read_parquet(
    store: &dyn ObjectStore,
    path: &str,
) -> Result<ParquetRecordBatchReader, String> {
    let location = StorePath::parse(path).map_err(|e| e.to_string())?;
    let bytes: Bytes = store
        .get(&location)
        .await
        .map_err(|e| e.to_string())?
        .bytes()
        .await
        .map_err(|e| e.to_string())?;
    ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| e.to_string())?
        .with_batch_size(8192)
        .build()
        .map_err(|e| e.to_string())
}

/// The partition's rows for `ids` (its members, in order): the rows of
/// `previous` (the partition's last file, every column but the partition
/// column, first column the entity id) for ids not in `changed`, and
/// `build`'s rows for the others, built for them in order; and how many
/// rows came from `previous`.
///
/// `None` when `previous` cannot be used (its first column is not the ids,
/// or `build` returned another number of rows than asked for): the caller
/// builds the whole partition instead.
pub(crate) fn merge(
    ids: &[PseudoId],
    previous: &RecordBatch,
    changed: &HashSet<PseudoId>,
    build: impl FnOnce(&[PseudoId]) -> Result<RecordBatch, ArrowError>,
) -> Result<Option<(RecordBatch, usize)>, ArrowError> {
    let Some(old_ids) = previous
        .columns()
        .first()
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
    else {
        return Ok(None);
    };
    let row_of: HashMap<&str, usize> = (0..old_ids.len())
        .filter(|&i| old_ids.is_valid(i))
        .map(|i| (old_ids.value(i), i))
        .collect();
    let fresh = |id: &PseudoId| changed.contains(id) || !row_of.contains_key(id.as_str());
    let wanted: Vec<PseudoId> = ids.iter().filter(|id| fresh(id)).cloned().collect();
    let built = build(&wanted)?;
    if built.num_rows() != wanted.len() || built.schema().fields() != previous.schema().fields() {
        return Ok(None);
    }
    let mut next = 0;
    let indices: Vec<(usize, usize)> = ids
        .iter()
        .map(|id| {
            if fresh(id) {
                next += 1;
                (1, next - 1)
            } else {
                (0, row_of[id.as_str()])
            }
        })
        .collect();
    let merged = interleave_record_batch(&[previous, &built], &indices)?;
    Ok(Some((merged, ids.len() - wanted.len())))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn id(c: char) -> PseudoId {
        PseudoId::parse(&c.to_string().repeat(32)).unwrap()
    }

    fn batch(rows: &[(char, i64)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("value", DataType::Int64, true),
        ]));
        let ids: Vec<String> = rows.iter().map(|(c, _)| c.to_string().repeat(32)).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap()
    }

    #[test]
    fn untouched_rows_come_from_the_file_and_the_rest_from_the_build() {
        // a and c were in the file; b left the partition; c changed; d is new.
        let previous = batch(&[('a', 1), ('b', 2), ('c', 3)]);
        let ids = [id('a'), id('c'), id('d')];
        let changed = HashSet::from([id('c')]);
        let mut asked = Vec::new();
        let merged = merge(&ids, &previous, &changed, |wanted| {
            asked = wanted.to_vec();
            Ok(batch(&[('c', 30), ('d', 40)]))
        })
        .unwrap()
        .unwrap();
        assert_eq!(asked, vec![id('c'), id('d')]);
        assert_eq!(merged, (batch(&[('a', 1), ('c', 30), ('d', 40)]), 1));
    }

    #[test]
    fn a_build_short_of_rows_falls_back_to_building_the_whole_partition() {
        let previous = batch(&[('a', 1)]);
        let ids = [id('a'), id('b')];
        let merged = merge(&ids, &previous, &HashSet::new(), |_| Ok(batch(&[]))).unwrap();
        assert_eq!(merged, None);
    }
}
