//! How gold writes: commits that record what they consumed, merges of computed rows with
//! their `__op`, appends, and the schema and projection helpers they share.

use datafusion::prelude::SessionContext;
use std::sync::Arc;

use deltalake::DeltaTable;
use deltalake::kernel::Transaction;

use super::{delta_err, df_err};
use crate::error::{Error, Result};
use crate::lake::layout;

/// The commit properties of a gold commit: the versions it consumed, no blind retries (a
/// conflicting commit is recomputed from the new state instead).
pub(super) fn commit_properties(
    txns: Vec<Transaction>,
) -> deltalake::kernel::transaction::CommitProperties {
    deltalake::kernel::transaction::CommitProperties::default()
        .with_application_transactions(txns)
        .with_max_retries(0)
}

/// [`crate::lake::storable`], with gold's error.
pub(super) fn storable(
    batches: Vec<arrow::array::RecordBatch>,
    schema: arrow::datatypes::SchemaRef,
) -> Result<(arrow::datatypes::SchemaRef, Vec<arrow::array::RecordBatch>)> {
    crate::lake::storable(batches, schema).map_err(|e| Error::arrow("preparing gold rows", e))
}

/// Counts the rows whose `__op` is `op` and for which `also(batch, row)` holds.
pub(super) fn count_op(
    batches: &[arrow::array::RecordBatch],
    op: &str,
    also: impl Fn(&arrow::array::RecordBatch, usize) -> bool,
) -> u64 {
    use arrow::array::AsArray;
    let mut n = 0;
    for b in batches {
        let Some(ops) = b.column_by_name("__op") else {
            continue;
        };
        let ops: Vec<Option<&str>> = match ops.data_type() {
            arrow::datatypes::DataType::Utf8View => ops.as_string_view().iter().collect(),
            arrow::datatypes::DataType::Utf8 => ops.as_string::<i32>().iter().collect(),
            _ => continue,
        };
        n += ops
            .iter()
            .enumerate()
            .filter(|(i, o)| **o == Some(op) && also(b, *i))
            .count() as u64;
    }
    n
}

/// The table's schema as stored.
pub(super) fn schema_of(table: &DeltaTable, name: &str) -> Result<arrow::datatypes::SchemaRef> {
    Ok(table
        .snapshot()
        .map_err(delta_err(layout::gold_table(name)))?
        .snapshot()
        .arrow_schema())
}

/// The `output` columns of computed rows, in that order (dropping `__op` and the like).
pub(super) fn project(
    rows: &[arrow::array::RecordBatch],
    schema: &arrow::datatypes::SchemaRef,
    output: &[String],
    name: &str,
) -> Result<(arrow::datatypes::SchemaRef, Vec<arrow::array::RecordBatch>)> {
    let keep: Vec<usize> = output
        .iter()
        .filter_map(|c| schema.index_of(c).ok())
        .collect();
    let projected = Arc::new(schema.project(&keep).map_err(|e| Error::arrow(name, e))?);
    let batches = rows
        .iter()
        .map(|b| b.project(&keep))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::arrow(name, e))?;
    Ok((projected, batches))
}

/// A column of the merge's source (`s`) or target (`t`).
pub(super) fn col(relation: &str, name: &str) -> datafusion::prelude::Expr {
    datafusion::prelude::Expr::Column(datafusion::common::Column::new(Some(relation), name))
}

/// The merge-source rows whose `__op` is `op`.
pub(super) fn op_is(op: &str) -> datafusion::prelude::Expr {
    col("s", "__op").eq(datafusion::prelude::lit(op.to_string()))
}

/// An update clause that sets `columns` from the source where `predicate` holds.
pub(super) fn update_from_source(
    update: deltalake::operations::merge::UpdateBuilder,
    predicate: datafusion::prelude::Expr,
    columns: &[String],
) -> deltalake::operations::merge::UpdateBuilder {
    columns.iter().fold(update.predicate(predicate), |u, c| {
        u.update(c.as_str(), col("s", c))
    })
}

/// An insert clause that takes `columns` from the source where `predicate` holds.
pub(super) fn insert_from_source(
    insert: deltalake::operations::merge::InsertBuilder,
    predicate: datafusion::prelude::Expr,
    columns: &[String],
) -> deltalake::operations::merge::InsertBuilder {
    columns.iter().fold(insert.predicate(predicate), |i, c| {
        i.set(c.as_str(), col("s", c))
    })
}

/// Merges computed rows (the source `s`, with `__op`) into the target `t` on `on`, with the
/// clauses `clauses` adds, in one commit carrying `txns`.
pub(super) async fn merge_rows(
    ctx: &SessionContext,
    target: DeltaTable,
    name: &str,
    rows: Vec<arrow::array::RecordBatch>,
    on: datafusion::prelude::Expr,
    txns: Vec<Transaction>,
    clauses: impl FnOnce(
        deltalake::operations::merge::MergeBuilder,
    ) -> deltalake::DeltaResult<deltalake::operations::merge::MergeBuilder>,
) -> Result<DeltaTable> {
    let properties = crate::lake::parquet_properties(schema_of(&target, name)?.as_ref()).build();
    let source = ctx
        .read_batches(rows)
        .map_err(df_err(name, "staging the changes"))?;
    let builder = target
        .merge(source, on)
        .with_writer_properties(properties)
        .with_source_alias("s")
        .with_target_alias("t")
        .with_merge_schema(true);
    let (table, _metrics) = clauses(builder)
        .map_err(delta_err(layout::gold_table(name)))?
        .with_commit_properties(commit_properties(txns))
        .await
        .map_err(delta_err(layout::gold_table(name)))?;
    Ok(table)
}

/// A commit of no rows that records `txns`: progress when nothing differs.
pub(super) async fn record_only(
    target: DeltaTable,
    name: &str,
    txns: Vec<Transaction>,
) -> Result<DeltaTable> {
    let schema = schema_of(&target, name)?;
    append(target, name, schema, Vec::new(), txns).await
}

/// Appends rows in one commit carrying `txns`: the first build of a table (which creates
/// it), or, with no rows, a commit that only records progress.
pub(super) async fn append(
    target: DeltaTable,
    name: &str,
    schema: arrow::datatypes::SchemaRef,
    batches: Vec<arrow::array::RecordBatch>,
    txns: Vec<Transaction>,
) -> Result<DeltaTable> {
    let (schema, mut batches) = storable(batches, schema)?;
    let properties = crate::lake::parquet_properties(&schema).build();
    if batches.is_empty() {
        batches.push(arrow::array::RecordBatch::new_empty(schema));
    }
    target
        .write(batches)
        .with_writer_properties(properties)
        .with_save_mode(deltalake::protocol::SaveMode::Append)
        .with_configuration(crate::lake::CREATED_WITH)
        .with_commit_properties(commit_properties(txns))
        .await
        .map_err(delta_err(layout::gold_table(name)))
}
