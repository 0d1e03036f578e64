//! How a build's rows reach the fact table, in order: re-resolved facts merged, chunks of
//! new rows streamed into new files (or merged, where their keys are already stored), then the
//! deletes; each commit waits for the dimensions it names (the hand-over), and the last records
//! what the build consumed.

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use datafusion::prelude::DataFrame;
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use tracing::info;

use super::super::{
    TableReport, append, col, count_op, df_err, insert_from_source, merge_rows, op_is, record_only,
    register, update_from_source,
};
use super::chunks::overlaps;
use super::columns::{FactColumns, key_match};
use super::handover::HandOver;
use super::lookups::dimensions_built_once;
use super::{Build, Commits, Writes};
use crate::error::Result;
use crate::lake::Lake;
use crate::lake::layout;
use crate::stages::Status;

impl Build<'_> {
    /// Writes everything a build found to write; the last commit carries `txns`.
    pub(super) async fn write(
        &self,
        mut target: DeltaTable,
        mut w: Writes<'_>,
        txns: Vec<Transaction>,
        report: &mut TableReport,
    ) -> Result<()> {
        // Re-resolved facts first, then the new rows: a key in both ends with its newest row
        // (the new rows' merge lets a newer sequence win), resolved against today's
        // dimensions.
        let apart: Vec<usize> = (0..w.chunks.len())
            .filter(|i| !w.together.contains(i))
            .collect();
        let writes = usize::from(!w.reresolve.queries.is_empty())
            + usize::from(!w.together.is_empty())
            + apart.len()
            + usize::from(!w.deletes.is_empty());
        if writes == 0 {
            return Ok(());
        }
        let mut commits = Commits {
            pending: Some(txns),
            left: writes,
        };
        if !w.reresolve.queries.is_empty() {
            let txns = commits.next();
            target = self
                .reresolved(
                    target,
                    std::mem::take(&mut w.reresolve),
                    &w.indexed,
                    txns,
                    report,
                )
                .await?;
        }
        if !w.together.is_empty() {
            let files: Vec<String> = (w.together.iter())
                .flat_map(|&i| w.chunks[i].clone())
                .collect();
            let _ = self.ctx.deregister_table("changes");
            register(&self.ctx, "changes", &w.changes.table, Some(&files)).await?;
            report.rows_in += w.together.iter().map(|&i| w.shapes[i].rows).sum::<u64>();
            let df = dimensions_built_once(&self.ctx)
                .sql(&w.queries.unique)
                .await
                .map_err(df_err(self.name, "resolving dimension keys"))?;
            target = self.append(target, df, commits.next(), report).await?;
        }
        for &i in &apart {
            let txns = commits.next();
            target = self.chunk(target, &w, i, txns, report).await?;
        }
        if !w.deletes.is_empty() {
            let txns = commits.next();
            self.hand_over
                .confirm(self.lake, self.built, self.name)
                .await?;
            let (keys, seq) = (&self.columns.keys, &self.columns.seq);
            let (table, removed) = super::super::deletes::apply(
                &self.ctx, target, self.name, w.deletes, keys, seq, txns,
            )
            .await?;
            target = table;
            report.deleted += removed;
        }
        report.version = target.version();
        report.status = Status::Ok;
        info!(
            rows_in = report.rows_in,
            inserted = report.inserted,
            re_resolved = report.updated,
            deleted = report.deleted,
            chunks = w.chunks.len(),
            version = report.version,
            "Built the fact."
        );
        Ok(())
    }

    /// Writes chunk `i` of new rows: streamed into new files when none of its keys is
    /// stored, else merged (a newer sequence value wins).
    async fn chunk(
        &self,
        target: DeltaTable,
        w: &Writes<'_>,
        i: usize,
        txns: Vec<Transaction>,
        report: &mut TableReport,
    ) -> Result<DeltaTable> {
        let (name, columns) = (self.name, &self.columns);
        let _ = self.ctx.deregister_table("changes");
        register(&self.ctx, "changes", &w.changes.table, Some(&w.chunks[i])).await?;
        let shape = &w.shapes[i];
        report.rows_in += shape.rows;
        let sql = match shape.unique {
            true => &w.queries.unique,
            false => &w.queries.latest,
        };
        let df = (self.ctx.sql(sql).await).map_err(df_err(name, "resolving dimension keys"))?;
        let streamed = match (&shape.range, target.version()) {
            (_, None) | (None, _) => true,
            (Some(range), Some(_)) => {
                !overlaps(&self.ctx, &target, name, &columns.keys, range).await?
            }
        };
        if streamed {
            return self.append(target, df, txns, report).await;
        }
        let rows = df
            .collect()
            .await
            .map_err(df_err(name, "resolving dimension keys"))?;
        report.inserted += count_op(&rows, "N", |_, _| true);
        for (l, (_, unknown)) in columns.lookups.iter().zip(unknown_slots(report, columns)) {
            *unknown += count_op(&rows, "N", |b, i| is_unknown(b, i, &l.sk));
        }
        self.hand_over.confirm(self.lake, self.built, name).await?;
        if rows.iter().all(|b| b.num_rows() == 0) {
            // Every row of the chunk was a delete: nothing to merge.
            if txns.is_empty() {
                return Ok(target);
            }
            return record_only(target, name, txns).await;
        }
        let output = columns.output();
        let newer = op_is("N").and(col("s", &columns.seq).gt_eq(col("t", &columns.seq)));
        merge_rows(
            &self.ctx,
            target,
            name,
            rows,
            key_match(columns),
            txns,
            |m| {
                m.when_matched_update(|u| update_from_source(u, newer, &output))?
                    .when_not_matched_insert(|i| insert_from_source(i, op_is("N"), &output))
            },
        )
        .await
    }

    /// [`append_plan`] for this build.
    async fn append(
        &self,
        target: DeltaTable,
        df: DataFrame,
        txns: Vec<Transaction>,
        report: &mut TableReport,
    ) -> Result<DeltaTable> {
        let commit = (txns, &self.hand_over, (self.lake, self.built));
        let output = self.columns.output();
        append_plan(
            target,
            self.name,
            df,
            &output,
            commit,
            &self.columns,
            report,
        )
        .await
    }
}

/// Where a writer closes a fact file. Each writer (one per partition of the query) builds the
/// file it writes in memory, so this bounds that part of the write's memory whatever the size
/// of the stream; a few dozen MB is still a large file for readers.
pub(super) const FACT_FILE_BYTES: u64 = 32 << 20;

/// Appends the rows of the query `df` in one commit carrying `txns`, streaming, and adds
/// them (and the unknown members they point to) to the report. A missing table is first
/// created empty with the stored schema (every column nullable, plain strings); a crash
/// between the two leaves an empty table with no consumed version, which the next run fills
/// through the ordinary path.
///
/// Each partition of the query has its own writer (see `lake::writers`); a partition reads a
/// contiguous run of silver's files, so each writer's files keep silver's key order.
async fn append_plan(
    target: DeltaTable,
    name: &str,
    df: DataFrame,
    output: &[String],
    (txns, hand_over, (lake, built)): (Vec<Transaction>, &HandOver, (&Lake, &super::super::Built)),
    columns: &FactColumns,
    report: &mut TableReport,
) -> Result<DeltaTable> {
    let df = crate::lake::storable_df(df, Some(output))
        .map_err(df_err(name, "shaping the fact's rows"))?;
    let target = match target.version() {
        Some(_) => target,
        None => {
            let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
            append(target, name, schema, Vec::new(), Vec::new()).await?
        }
    };
    let streams = df
        .execute_stream_partitioned()
        .await
        .map_err(df_err(name, "resolving dimension keys"))?;
    let sks: Vec<String> = columns.lookups.iter().map(|l| l.sk.clone()).collect();
    // Rows pointing to each lookup's unknown member, counted as they are written.
    let unknown = move |batch: &arrow::array::RecordBatch| -> Vec<u64> {
        sks.iter()
            .map(|sk| {
                batch
                    .column_by_name(sk)
                    .and_then(|c| c.as_primitive_opt::<Int64Type>())
                    .map_or(0, |c| c.iter().filter(|v| *v == Some(-1)).count() as u64)
            })
            .collect()
    };
    let written = crate::lake::writers::write_streams(
        &target,
        &layout::gold_table(name),
        &layout::gold_table(name),
        streams,
        std::num::NonZeroU64::new(FACT_FILE_BYTES),
        unknown,
    )
    .await?;
    report.inserted += written.rows;
    for ((_, unknown), counted) in unknown_slots(report, columns).zip(written.counted) {
        *unknown += counted;
    }
    // The rows are written; they are committed once the dimensions they name are.
    hand_over.confirm(lake, built, name).await?;
    crate::lake::writers::commit_append(target, &layout::gold_table(name), written.adds, txns).await
}

fn is_unknown(batch: &arrow::array::RecordBatch, row: usize, sk: &str) -> bool {
    batch
        .column_by_name(sk)
        .and_then(|c| {
            c.as_primitive_opt::<Int64Type>()
                .map(|c| c.is_valid(row) && c.value(row) == -1)
        })
        .unwrap_or(false)
}

/// The report's per-lookup unknown counters, created on first use.
fn unknown_slots<'a>(
    report: &'a mut TableReport,
    columns: &FactColumns,
) -> std::slice::IterMut<'a, (String, u64)> {
    if report.unknown.len() != columns.lookups.len() {
        report.unknown = columns.lookups.iter().map(|l| (l.sk.clone(), 0)).collect();
    }
    report.unknown.iter_mut()
}
