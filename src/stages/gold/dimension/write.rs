//! The write of a range's changes (rows with `__op`, see `diff`): staged into the single
//! copy-on-write commit of an existing table (and handed to the facts), or committed range
//! by range on a first build; with the counts, replaced surrogate keys and copied columns
//! they need.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray};
use arrow::datatypes::{Schema, SchemaRef};
use datafusion::prelude::SessionContext;

use super::super::outrigger::Outrigger;
use super::super::rewrite::Rewrite;
use super::super::{
    Staged, append, col, df_err, insert_from_source, merge_rows, op_is, project, schema_of,
    update_from_source,
};
use super::columns::{DimColumns, unknown_member};
use crate::error::{Error, Result};
use crate::lake::layout::gold_columns;
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;

/// Adds a range's changes to the copy-on-write `rewrite`: inserted and updated versions are
/// written now, an updated or deleted one's stored row goes when the rewrite commits, and a
/// version whose end alone moves is ended where it is stored. With `staged`, what the facts'
/// lookups read of the new versions (keys, surrogate key, period, the `carried` columns) is
/// kept for the hand-over.
pub(super) async fn stage(
    rewrite: &mut Rewrite,
    mut staged: Option<(&mut Staged, &[String])>,
    columns: &DimColumns,
    rows: &[RecordBatch],
    name: &str,
) -> Result<()> {
    let arrow_err = |e| Error::arrow(name, e);
    for batch in rows {
        let op = op_column(batch, name)?;
        let in_place = match batch.column_by_name("__period_only") {
            Some(p) if rewrite.ends_in_place() => p.as_boolean_opt().cloned(),
            _ => None,
        }
        .unwrap_or_else(|| BooleanArray::from(vec![false; batch.num_rows()]));
        let new = arrow::compute::kernels::cmp::neq(op, &StringArray::new_scalar("D"))
            .map_err(arrow_err)?;
        let written = arrow::compute::and_not(&new, &in_place).map_err(arrow_err)?;
        rewrite
            .write(&arrow::compute::filter_record_batch(batch, &written).map_err(arrow_err)?)
            .await?;
        rewrite.end(batch, &in_place)?;
        rewrite.replace(replaced_keys(
            batch,
            op,
            &columns.sk,
            Some(&in_place),
            name,
        )?);
        if let Some((staged, carried)) = staged.as_mut() {
            let mut read: Vec<&str> = columns.keys.iter().map(String::as_str).collect();
            read.push(&columns.sk);
            if columns.scd2 {
                read.extend(gold_columns::PERIOD);
            }
            read.extend(carried.iter().map(String::as_str));
            let read: Vec<usize> = (read.iter())
                .filter_map(|c| batch.schema().index_of(c).ok())
                .collect();
            let lookups_read = batch.project(&read).map_err(arrow_err)?;
            staged
                .rows
                .push(arrow::compute::filter_record_batch(&lookups_read, &new).map_err(arrow_err)?);
            staged
                .replaced
                .extend(replaced_keys(batch, op, &columns.sk, None, name)?);
        }
    }
    Ok(())
}

/// Commits a range's changes on their own: the first build's (with the unknown member, which
/// creates the table), new versions appended, or a merge when stored rows change.
/// `(inserted, changed)`: the range's inserted and updated-or-deleted versions; `last`: the
/// build's last range, whose commit records progress even when nothing differs.
pub(super) async fn commit_range(
    ctx: &SessionContext,
    target: DeltaTable,
    columns: &DimColumns,
    rows: Vec<RecordBatch>,
    (inserted, changed): (u64, u64),
    (txns, last): (Vec<Transaction>, bool),
    name: &str,
) -> Result<DeltaTable> {
    let output = columns.output();
    let Some(schema) = rows.first().map(RecordBatch::schema) else {
        return Ok(target);
    };
    if target.version().is_none() {
        let (schema, mut batches) = project(&rows, &schema, &output, name)?;
        batches.insert(0, unknown_member(&schema, columns)?);
        return append(target, name, schema, batches, txns).await;
    }
    if changed == 0 {
        // Nothing differs in this range (identical or excluded-column changes).
        if inserted == 0 && !last {
            return Ok(target);
        }
        // New versions only (or progress only): no row of the table changes.
        let (_, batches) = project(&rows, &schema, &output, name)?;
        let stored = schema_of(&target, name)?;
        return append(target, name, stored, batches, txns).await;
    }
    let sk = &columns.sk;
    merge_rows(
        ctx,
        target,
        name,
        rows,
        col("t", sk).eq(col("s", sk)),
        txns,
        |m| {
            m.when_matched_delete(|d| d.predicate(op_is("D")))?
                .when_matched_update(|u| update_from_source(u, op_is("U"), &output))?
                .when_not_matched_insert(|i| insert_from_source(i, op_is("I"), &output))
        },
    )
    .await
}

/// The rows of a query, with their schema (also when there are none).
pub(super) async fn collected(
    ctx: &SessionContext,
    sql: &str,
    (name, context): (&str, &str),
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let df = ctx.sql(sql).await.map_err(df_err(name, context))?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let rows = df.collect().await.map_err(df_err(name, context))?;
    Ok((schema, rows))
}

/// A column of computed versions (see [`diff_sql`]).
pub(super) fn computed<'a>(
    batch: &'a RecordBatch,
    column: &str,
    name: &str,
) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(column)
        .ok_or_else(|| Error::UnknownColumn {
            table: name.to_string(),
            column: column.to_string(),
            available: "(computed versions)".to_string(),
        })
}

/// How many computed versions insert, update, delete, and update a current version with an
/// end (`__closed`): one pass over the rows.
pub(super) fn op_counts(rows: &[RecordBatch], name: &str) -> Result<[u64; 4]> {
    let mut counts = [0u64; 4];
    for batch in rows {
        let op = op_column(batch, name)?;
        let closed = batch
            .column_by_name("__closed")
            .and_then(|c| c.as_boolean_opt());
        for (i, op) in op.iter().enumerate() {
            match op {
                Some("I") => counts[0] += 1,
                Some("U") => {
                    counts[1] += 1;
                    if closed.is_some_and(|c| c.is_valid(i) && c.value(i)) {
                        counts[3] += 1;
                    }
                }
                Some("D") => counts[2] += 1,
                _ => {}
            }
        }
    }
    Ok(counts)
}

/// The `__op` column of computed versions.
fn op_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray> {
    computed(batch, "__op", name)?
        .as_string_opt::<i32>()
        .ok_or_else(|| Error::Gold {
            table: name.to_string(),
            message: "the computed __op column is not text".to_string(),
        })
}

/// The surrogate keys of the updated and deleted versions of a batch (but those `except`
/// picks): their stored rows go.
fn replaced_keys(
    batch: &RecordBatch,
    op: &StringArray,
    sk: &str,
    except: Option<&BooleanArray>,
    name: &str,
) -> Result<Vec<i64>> {
    let sks = super::super::rewrite::surrogate_keys(computed(batch, sk, name)?, name)?;
    let excepted = |i: usize| except.is_some_and(|e| e.is_valid(i) && e.value(i));
    Ok((0..batch.num_rows())
        .filter(|&i| op.is_valid(i) && matches!(op.value(i), "U" | "D") && sks.is_valid(i))
        .filter(|&i| !excepted(i))
        .map(|i| sks.value(i))
        .collect())
}

/// `batch` (rows with `__op`) with the columns copied from other dimensions: an inserted
/// version takes the current member's values, any other keeps those it has.
pub(super) fn with_copied(
    batch: &RecordBatch,
    outriggers: &[Outrigger],
    name: &str,
) -> Result<RecordBatch> {
    if outriggers.is_empty() {
        return Ok(batch.clone());
    }
    let op = op_column(batch, name)?;
    let inserted = arrow::compute::kernels::cmp::eq(op, &StringArray::new_scalar("I"))
        .map_err(|e| Error::arrow(name, e))?;
    let mut fields: Vec<arrow::datatypes::FieldRef> =
        batch.schema().fields().iter().cloned().collect();
    let mut columns = batch.columns().to_vec();
    for outrigger in outriggers {
        for (column, new) in outrigger.values(batch, name)? {
            let value = match batch.column_by_name(&column) {
                Some(stored) => {
                    let stored = arrow::compute::cast(stored, new.data_type())
                        .map_err(|e| Error::arrow(name, e))?;
                    arrow::compute::kernels::zip::zip(&inserted, &new, &stored)
                        .map_err(|e| Error::arrow(name, e))?
                }
                None => new,
            };
            let field = Arc::new(arrow::datatypes::Field::new(
                &column,
                value.data_type().clone(),
                true,
            ));
            match fields.iter().position(|f| *f.name() == column) {
                Some(i) => {
                    fields[i] = field;
                    columns[i] = value;
                }
                None => {
                    fields.push(field);
                    columns.push(value);
                }
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| Error::arrow(name, e))
}
