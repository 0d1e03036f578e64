//! The commit of a file: its cleaned rows less the versions silver already holds, shaped for
//! the table (a dimension's in key order, empty `drop_if_empty` columns left out) and
//! appended together with the record of the file, by one writer or, for a big file, two.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::compute::and;
use arrow::datatypes::SchemaRef;
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;

use super::clean::Cleaned;
use super::dedup::without_loaded;
use super::quarantine::Pending;
use super::report::Counts;
use super::rows::{Rows, with_lineage};
use super::session;
use crate::config::TableSpec;
use crate::error::{Error, Result, delta_err};
use crate::lake::layout::{
    self,
    silver_columns::{INGESTED_AT, RESCUED, SOURCE_FILE},
};

/// Records a file without rows in an empty commit, so it is not read again.
pub(super) async fn record_empty(
    delta: DeltaTable,
    table: &TableSpec,
    txn: Transaction,
) -> Result<DeltaTable> {
    let Some(schema) = super::clean::table_schema(&delta) else {
        return Ok(delta);
    };
    delta
        .write(vec![RecordBatch::new_empty(schema)])
        .with_save_mode(SaveMode::Append)
        .with_commit_properties(
            CommitProperties::default()
                .with_application_transaction(txn)
                .with_max_retries(0),
        )
        .await
        .map_err(delta_err(layout::silver_table(&table.silver_name())))
}

/// Appends a file's cleaned rows that silver does not hold yet, recording the file in the
/// same commit (`txn`), once its dropped rows are `quarantined`. Returns the table after the
/// commit and the file's counts.
pub(super) async fn append(
    delta: DeltaTable,
    existing: Option<SchemaRef>,
    table: &TableSpec,
    path: &str,
    (cleaned, quarantined): (Cleaned, Pending),
    txn: Transaction,
) -> Result<(DeltaTable, Counts)> {
    let Cleaned {
        mut counts,
        schema,
        firsts,
        kept_rows,
        ..
    } = cleaned;
    let ctx = session();
    let unique = match &existing {
        Some(stored) if kept_rows > 0 && stored.field_with_name(&table.cdc_column).is_ok() => {
            without_loaded(&ctx, firsts, schema.clone(), &delta, table)
                .await
                .map_err(df_err(
                    table,
                    path,
                    "removing versions silver already holds",
                ))?
        }
        _ => firsts,
    };
    let unique = by_key(unique, table).map_err(|e| Error::arrow(path, e))?;
    counts.rows_out = unique.count() as u64;
    counts.rows_duplicate = kept_rows - counts.rows_out;

    let mut drop_if_empty = table.silver.drop_if_empty.clone();
    drop_if_empty.push(RESCUED.to_string());
    let (schema, unique) =
        finalize(schema, unique, &drop_if_empty).map_err(|e| Error::arrow(path, e))?;
    let rows = if unique.batches.is_empty() {
        Rows::all(vec![RecordBatch::new_empty(schema.clone())])
    } else {
        unique
    };
    let two_writers = existing
        .filter(|stored| counts.rows_out >= TWO_WRITERS_ROWS && same_columns(&schema, stored))
        .is_some();
    let written = if two_writers {
        write_halves(&ctx, delta, table, path, rows, (txn, quarantined)).await?
    } else {
        // delta-rs's write commits as it ends: the quarantine is waited for first.
        quarantined.settle().await?;
        write_one(&ctx, delta, table, path, rows, txn).await?
    };
    Ok((written, counts))
}

/// A big file that brings no new column: its two halves go to two writers, one commit (one
/// writer encodes on one core, and would leave the other idle).
async fn write_halves(
    ctx: &datafusion::prelude::SessionContext,
    delta: DeltaTable,
    table: &TableSpec,
    path: &str,
    rows: Rows,
    (txn, quarantined): (Transaction, Pending),
) -> Result<DeltaTable> {
    let rows =
        with_lineage(ctx, halves(rows), path).map_err(df_err(table, path, "adding lineage"))?;
    let streams =
        rows.execute_stream_partitioned()
            .await
            .map_err(df_err(table, path, "writing the rows"))?;
    let name = layout::silver_table(&table.silver_name());
    let written =
        crate::lake::writers::write_streams(&delta, &name, path, streams, None, |_| Vec::new())
            .await?;
    quarantined.settle().await?;
    crate::lake::writers::commit_append(delta, &name, written.adds, vec![txn]).await
}

/// The rows through delta-rs's write, which also merges a schema change into the table.
async fn write_one(
    ctx: &datafusion::prelude::SessionContext,
    delta: DeltaTable,
    table: &TableSpec,
    path: &str,
    rows: Rows,
    txn: Transaction,
) -> Result<DeltaTable> {
    let rows =
        with_lineage(ctx, vec![rows], path).map_err(df_err(table, path, "adding lineage"))?;
    let properties = crate::lake::parquet_properties(rows.schema().as_arrow()).build();
    let props = CommitProperties::default()
        .with_application_transaction(txn)
        .with_max_retries(0);
    delta
        .write(Vec::new())
        .with_input_plan(rows.into_unoptimized_plan())
        .with_session_state(Arc::new(ctx.state()))
        .with_writer_properties(properties)
        .with_save_mode(SaveMode::Append)
        .with_schema_mode(SchemaMode::Merge)
        .with_configuration(crate::lake::CREATED_WITH)
        .with_commit_properties(props)
        .await
        .map_err(delta_err(layout::silver_table(&table.silver_name())))
}

fn df_err<'a>(
    table: &'a TableSpec,
    path: &'a str,
    context: &'static str,
) -> impl Fn(datafusion::error::DataFusionError) -> Error + 'a {
    move |e| Error::DataFusion {
        table: table.name.clone(),
        file: path.to_string(),
        context: context.to_string(),
        source: e,
    }
}

/// Rows per file from which silver writes a file's rows with two writers (each half at least
/// a default row group), below which one file is better for readers.
const TWO_WRITERS_ROWS: u64 = 128 * 1024;

/// Whether the rows' columns are the table's (lineage aside), with the same types: no schema
/// change for the commit to make.
fn same_columns(rows: &SchemaRef, stored: &SchemaRef) -> bool {
    rows.fields()
        .iter()
        .filter(|f| ![SOURCE_FILE, INGESTED_AT].contains(&f.name().as_str()))
        .all(|f| {
            stored
                .field_with_name(f.name())
                .is_ok_and(|s| s.data_type() == f.data_type())
        })
}

/// The rows in two partitions of about the same number of rows, in order (the first half,
/// then the second), so that each writer's file keeps the rows' key order.
fn halves(rows: Rows) -> Vec<Rows> {
    let total: usize = rows.batches.iter().map(|b| b.num_rows()).sum();
    let mut room = total / 2;
    let (mut first, mut second) = (Rows::default(), Rows::default());
    for (batch, keep) in rows.batches.into_iter().zip(rows.keep) {
        let rows = batch.num_rows();
        if room >= rows {
            room -= rows;
            first.push(batch, keep);
        } else if room > 0 {
            let part = |at, len| keep.as_ref().map(|k| k.slice(at, len));
            first.push(batch.slice(0, room), part(0, room));
            second.push(batch.slice(room, rows - room), part(room, rows - room));
            room = 0;
        } else {
            second.push(batch, keep);
        }
    }
    vec![first, second]
}

/// Whether the table's gold is a dimension (which reads silver by key range).
pub(super) fn feeds_dimension(table: &TableSpec) -> bool {
    table
        .gold
        .as_ref()
        .is_some_and(|g| g.kind == crate::config::GoldKind::Dimension)
}

/// For a table that feeds a gold dimension, the rows of a file in key order (one batch;
/// batches already in order are left alone). Bronze arrives in watermark order, so otherwise
/// every silver file spans every key, and gold, which reads a dimension's history one key
/// range at a time, would decode all of silver for each range; in key order, page statistics
/// skip the rest. Facts are read by file, not by key range, and are left as they come.
fn by_key(rows: Rows, table: &TableSpec) -> std::result::Result<Rows, arrow::error::ArrowError> {
    if !feeds_dimension(table) {
        return Ok(rows);
    }
    sorted_by_key(rows.filtered()?, table).map(Rows::all)
}

fn sorted_by_key(
    batches: Vec<RecordBatch>,
    table: &TableSpec,
) -> std::result::Result<Vec<RecordBatch>, arrow::error::ArrowError> {
    let Some(first) = batches.first() else {
        return Ok(batches);
    };
    let schema = first.schema();
    let Ok(key_columns) = table
        .keys
        .iter()
        .map(|k| schema.index_of(k))
        .collect::<std::result::Result<Vec<_>, _>>()
    else {
        return Ok(batches);
    };
    // Only the key columns are concatenated; the rows are gathered once, from the batches.
    let keys = key_columns
        .iter()
        .map(|&i| {
            let parts: Vec<&dyn Array> = batches.iter().map(|b| b.column(i).as_ref()).collect();
            arrow::compute::concat(&parts)
        })
        .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
    let order = match keys.as_slice() {
        [one] => arrow::compute::sort_to_indices(one, None, None)?,
        many => arrow::compute::lexsort_to_indices(
            &many
                .iter()
                .map(|k| arrow::compute::SortColumn {
                    values: k.clone(),
                    options: None,
                })
                .collect::<Vec<_>>(),
            None,
        )?,
    };
    if order
        .values()
        .iter()
        .enumerate()
        .all(|(i, &o)| i == o as usize)
    {
        return Ok(batches);
    }
    if batches.len() == 1 {
        // Column by column, each let go once gathered: the file's rows and their key-ordered
        // copy are never both whole in memory.
        let Some((schema, columns, _)) = batches.into_iter().next().map(|b| b.into_parts()) else {
            return Ok(Vec::new());
        };
        let sorted = columns
            .into_iter()
            .map(|column| arrow::compute::take(column.as_ref(), &order, None))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        return Ok(vec![RecordBatch::try_new(schema, sorted)?]);
    }
    let mut starts = Vec::with_capacity(batches.len());
    let mut total = 0;
    for b in &batches {
        starts.push(total);
        total += b.num_rows();
    }
    let at: Vec<(usize, usize)> = order
        .values()
        .iter()
        .map(|&o| {
            let o = o as usize;
            let batch = starts.partition_point(|&s| s <= o) - 1;
            (batch, o - starts[batch])
        })
        .collect();
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    Ok(vec![arrow::compute::interleave_record_batch(&refs, &at)?])
}

/// Makes every column nullable (so later files with NULLs always fit) and drops the
/// `drop_if_empty` columns that are NULL in every row of this file.
fn finalize(
    schema: SchemaRef,
    rows: Rows,
    drop_if_empty: &[String],
) -> std::result::Result<(SchemaRef, Rows), arrow::error::ArrowError> {
    let schema = rows.batches.first().map(|b| b.schema()).unwrap_or(schema);
    // Column `i` is NULL in every kept row.
    let empty = |i: usize| -> std::result::Result<bool, arrow::error::ArrowError> {
        for (b, keep) in rows.batches.iter().zip(&rows.keep) {
            let column = b.column(i);
            let some = match keep {
                _ if column.null_count() == column.len() => false,
                Some(keep) => and(&arrow::compute::is_not_null(column)?, keep)?.true_count() > 0,
                None => true,
            };
            if some {
                return Ok(false);
            }
        }
        Ok(true)
    };
    let mut columns = Vec::new();
    for i in 0..schema.fields().len() {
        if !(drop_if_empty.contains(schema.field(i).name()) && empty(i)?) {
            columns.push(i);
        }
    }
    let projected = Arc::new(schema.project(&columns)?);
    let batches = (rows.batches.iter())
        .map(|b| b.project(&columns))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let (schema, batches) = crate::lake::storable(batches, projected)?;
    let keep = rows.keep;
    Ok((schema, Rows { batches, keep }))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{batch, spec};
    use super::*;
    use arrow::array::{AsArray, Int32Array, Int64Array};
    use arrow::array::{BooleanArray, StringArray};

    #[test]
    pub(super) fn a_dimension_files_rows_come_in_key_order_and_a_facts_as_they_were() {
        let rows = |ids: Vec<i32>, names: Vec<&str>| {
            batch(vec![
                ("user_id", Arc::new(Int32Array::from(ids)) as ArrayRef),
                ("user_name", Arc::new(StringArray::from(names)) as ArrayRef),
            ])
        };
        let by_key = |batches: Vec<RecordBatch>, table: &TableSpec| {
            by_key(Rows::all(batches), table).and_then(Rows::filtered)
        };
        let batches = vec![rows(vec![3, 1], vec!["c", "a"]), rows(vec![2], vec!["b"])];
        let sorted = by_key(batches.clone(), &spec("DimUser")).unwrap();
        assert_eq!(sorted.len(), 1);
        assert_eq!(
            sorted[0],
            rows(vec![1, 2, 3], vec!["a", "b", "c"]),
            "whole rows move with their key"
        );
        let one = by_key(
            vec![rows(vec![3, 1, 2], vec!["c", "a", "b"])],
            &spec("DimUser"),
        );
        assert_eq!(
            one.unwrap(),
            vec![rows(vec![1, 2, 3], vec!["a", "b", "c"])],
            "a file read as one batch"
        );
        let in_order = vec![rows(vec![1, 2], vec!["a", "b"]), rows(vec![2], vec!["b"])];
        assert_eq!(
            by_key(in_order.clone(), &spec("DimUser")).unwrap(),
            in_order
        );
        let streams = vec![batch(vec![(
            "stream_id",
            Arc::new(Int64Array::from(vec![9, 4])) as ArrayRef,
        )])];
        assert_eq!(
            by_key(streams.clone(), &spec("FactStream")).unwrap(),
            streams
        );
    }

    #[test]
    pub(super) fn empty_drop_if_empty_columns_go_and_everything_becomes_nullable() {
        let b = batch(vec![
            ("id", Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef),
            (
                RESCUED,
                Arc::new(StringArray::from(vec![None::<&str>, None])),
            ),
            (
                "kept",
                Arc::new(StringArray::from(vec![None::<&str>, None])),
            ),
        ]);
        let (schema, out) =
            finalize(b.schema(), Rows::all(vec![b]), &[RESCUED.to_string()]).unwrap();
        let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "kept"]);
        assert!(schema.fields().iter().all(|f| f.is_nullable()));
        assert_eq!(out.batches[0].num_columns(), 2);
    }

    /// A column is empty when every row that stays is NULL: a value in a row that goes (a
    /// duplicate) does not keep it, and the rows that stay are still marked.
    #[test]
    pub(super) fn only_the_rows_kept_decide_whether_a_column_is_empty() {
        let b = batch(vec![
            ("id", Arc::new(Int32Array::from(vec![1, 2, 3])) as ArrayRef),
            (
                RESCUED,
                Arc::new(StringArray::from(vec![None, Some("{}"), None])),
            ),
            (
                "note",
                Arc::new(StringArray::from(vec![Some("x"), None, None])),
            ),
        ]);
        let rows = Rows {
            batches: vec![b.clone()],
            keep: vec![Some(BooleanArray::from(vec![true, false, true]))],
        };
        let drop = [RESCUED.to_string(), "note".to_string()];
        let (schema, out) = finalize(b.schema(), rows, &drop).unwrap();
        let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "note"]);
        assert_eq!(out.count(), 2);
        let kept = out.filtered().unwrap();
        let ids = kept[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int32Type>();
        assert_eq!(ids.values().to_vec(), [1, 3]);
    }

    #[test]
    pub(super) fn halves_split_the_rows_in_order_into_two_equal_parts() {
        let ids = |r: std::ops::Range<i64>| -> RecordBatch {
            batch(vec![(
                "id",
                Arc::new(Int64Array::from_iter_values(r)) as ArrayRef,
            )])
        };
        // 3 + 4 + 6 rows: the middle falls inside the third batch.
        let parts = halves(Rows::all(vec![ids(0..3), ids(3..7), ids(7..13)]));
        let values = |part: &Rows| -> Vec<i64> {
            part.clone()
                .slices(2)
                .map(|b| b.unwrap())
                .inspect(|b| assert!(b.num_rows() <= 2))
                .flat_map(|b| {
                    b.column(0)
                        .as_primitive::<arrow::datatypes::Int64Type>()
                        .values()
                        .to_vec()
                })
                .collect()
        };
        assert_eq!(parts.len(), 2);
        assert_eq!(values(&parts[0]), (0..6).collect::<Vec<_>>());
        assert_eq!(values(&parts[1]), (6..13).collect::<Vec<_>>());
        // The rows to keep are split with them: the split falls on a row that goes.
        let keep = |k: Vec<bool>| Some(BooleanArray::from(k));
        let rows = Rows {
            batches: vec![ids(0..3), ids(3..10)],
            keep: vec![
                None,
                keep(vec![true, true, false, true, false, false, true]),
            ],
        };
        let parts = halves(rows);
        assert_eq!(values(&parts[0]), [0, 1, 2, 3, 4]);
        assert_eq!(values(&parts[1]), [6, 9]);
        assert_eq!(parts[0].count() + parts[1].count(), 7);
    }
}
