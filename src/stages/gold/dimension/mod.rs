//! Dimensions: SCD type 2 (history, as DLT's auto CDC keeps it) or type 1 (overwrite), with
//! surrogate keys and an unknown member.
//!
//! Each run recomputes the versions of every key that has new silver rows from that key's whole
//! silver history (the change log), then writes only the difference to the gold rows of those
//! keys. So the result is the same whatever order or batches the changes arrived in: a late
//! change lands where its sequence value puts it, and one that repeats its predecessor's
//! tracked values makes no version, exactly as applying all changes one by one in sequence order.
//! When every change comes after all the dimension consumed, the keys' stored versions stand
//! for their silver history ([`in_order`]): the same versions, without reading it again.
//!
//! Surrogate keys are `max ever assigned + row_number() over (keys, valid_from)`; the maximum
//! is kept in the table's log (`txn` app id `tunelake.gold.sk`) in the same commit, so a key
//! whose version a late change made obsolete is never handed out again. A version keeps its
//! surrogate key as long as its (business key, valid_from) exists.

mod columns;
mod diff;
mod history;
mod in_order;
mod keyset;
mod ranges;
#[cfg(test)]
mod testing;
mod write;

use columns::DimColumns;
pub(super) use columns::is_lineage;
use ranges::KeyRange;
use write::{op_counts, with_copied};

use std::collections::HashSet;

use arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use tracing::{debug, info};

use super::outrigger::Outrigger;
use super::rewrite::Rewrite;
use super::{SilverChanges, TableReport, df_err, recorded, register, schema_of};
use crate::config::TableSpec;
use crate::error::Result;
use crate::lake::Lake;
use crate::lake::layout;
use crate::stages::Status;

/// Brings one dimension up to date with its silver table, computing versions in ranges of
/// about `chunk_keys` changed keys (`settings.dimension_chunk_keys`), and writing an existing
/// table in one copy-on-write commit that rewrites only the files holding a changed version.
///
/// Per range of changed keys: the keys' whole silver history, their versions
/// (`history::versions`, where SCD2 is decided), the difference from what is stored
/// (`diff::changes`), and the write of that difference.
pub(super) async fn build(
    lake: &Lake,
    table: &TableSpec,
    all: &[TableSpec],
    chunk_keys: usize,
    built: &super::Built,
    report: &mut TableReport,
) -> Result<()> {
    let Some(super::Start {
        gold,
        name,
        silver: silver_name,
        target,
        app_id,
        consumed,
        changes,
    }) = super::start(lake, table, report).await?
    else {
        return Ok(());
    };
    let max_sk = recorded(&target, layout::app_id::SURROGATE_KEY, name)
        .await?
        .unwrap_or(0);
    if changes.files.is_empty() {
        return Ok(());
    }
    let ctx = super::session();
    register(&ctx, "silver_all", &changes.table, None).await?;
    register(&ctx, "changes_all", &changes.table, Some(&changes.files)).await?;
    let silver_schema = schema_of(&changes.table, &silver_name)?;
    let columns = DimColumns::new(table, gold, &silver_schema)?;
    if let Some(condition) = gold.apply_as_truncates.as_deref().filter(|_| !columns.scd2) {
        super::deletes::truncate(&ctx, &columns.seq, condition, name).await?;
    }
    // Key ranges are disjoint, so each range can diff against the table as it was at the
    // start: no range writes a key of another.
    let stored: Option<HashSet<String>> = match target.version() {
        Some(_) => {
            register(&ctx, "gold_all", &target, None).await?;
            let schema = schema_of(&target, name)?;
            Some(schema.fields().iter().map(|f| f.name().clone()).collect())
        }
        None => None,
    };
    report.rows_in = ctx
        .table("changes_all")
        .await
        .map_err(df_err(name, "reading silver changes"))?
        .count()
        .await
        .map_err(df_err(name, "reading silver changes"))? as u64;
    let mut outriggers = Vec::with_capacity(gold.lookups.len());
    for l in &gold.lookups {
        outriggers.push(Outrigger::open(lake, l, all, name).await?);
    }
    let in_order = match &stored {
        Some(stored) if consumed.is_some() => {
            in_order::applies(&ctx, &columns, stored, &changes, name).await?
        }
        _ => false,
    };
    // Only the in-order read filters by a range's keys, and only by a single key column's.
    let sets = in_order && columns.keys.len() == 1;
    let ranges = ranges::key_ranges(&ctx, &columns.keys[0], (chunk_keys, sets), name).await?;
    debug!(
        in_order,
        rows_in = report.rows_in,
        ranges = ranges.len(),
        "Split the changed keys."
    );
    let b = Build {
        built,
        name,
        ctx,
        columns,
        outriggers,
        stored,
        whole: consumed.is_none(),
        in_order,
        consumed: [Transaction::new(&app_id, changes.version as i64)],
    };
    let target = b.ranges(target, &changes, &ranges, max_sk, report).await?;
    report.version = target.version();
    report.status = Status::Ok;
    info!(
        rows_in = report.rows_in,
        inserted = report.inserted,
        updated = report.updated,
        deleted = report.deleted,
        closed = report.closed,
        chunks = ranges.len(),
        version = report.version,
        "Built the dimension."
    );
    Ok(())
}

/// What one build of a dimension works with.
struct Build<'a> {
    built: &'a super::Built,
    name: &'a str,
    ctx: SessionContext,
    columns: DimColumns,
    outriggers: Vec<Outrigger>,
    /// The stored table's columns; `None` before its first commit.
    stored: Option<HashSet<String>>,
    /// Whether every silver row is a change (nothing consumed yet).
    whole: bool,
    /// Whether every change comes after what was consumed, so the stored versions stand for
    /// the silver history (see `in_order`).
    in_order: bool,
    /// The record of the silver version consumed, for the build's last commit.
    consumed: [Transaction; 1],
}

impl Build<'_> {
    /// Computes and writes the changes of every key range. An existing table changes in one
    /// copy-on-write commit (see `rewrite`), staged for the facts waiting to resolve
    /// against it; a first build, or versions that bring a column the table lacks, commit
    /// range by range.
    async fn ranges(
        &self,
        mut target: DeltaTable,
        changes: &SilverChanges,
        ranges: &[KeyRange],
        max_sk: i64,
        report: &mut TableReport,
    ) -> Result<DeltaTable> {
        let output = self.columns.output();
        let mut rewrite = match &self.stored {
            Some(stored) if output.iter().all(|c| stored.contains(c)) => {
                Some(Rewrite::new(&target, self.name, &self.columns.sk)?)
            }
            _ => None,
        };
        let mut staged = match (&rewrite, target.version()) {
            (Some(_), Some(base)) if self.built.announces(self.name) => Some(super::Staged {
                base,
                consumed: changes.version as i64,
                rows: Vec::new(),
                replaced: Default::default(),
                taken: Default::default(),
            }),
            _ => None,
        };
        let mut sk_base = max_sk;
        for (i, range) in ranges.iter().enumerate() {
            let rows = self.range(i, range, sk_base).await?;
            let [inserted, updated, deleted, closed] = op_counts(&rows, self.name)?;
            report.inserted += inserted;
            report.updated += updated;
            report.deleted += deleted;
            report.closed += closed;
            sk_base += inserted as i64;
            match rewrite.as_mut() {
                Some(rewrite) => {
                    let carried = self.built.carried(self.name);
                    let staged = staged.as_mut().map(|s| (s, carried));
                    write::stage(rewrite, staged, &self.columns, &rows, self.name).await?;
                }
                None => {
                    let last = i + 1 == ranges.len();
                    let txns = self.txns(sk_base, last);
                    let counts = (inserted, updated + deleted);
                    target = write::commit_range(
                        &self.ctx,
                        target,
                        &self.columns,
                        rows,
                        counts,
                        (txns, last),
                        self.name,
                    )
                    .await?;
                }
            }
        }
        let Some(rewrite) = rewrite else {
            return Ok(target);
        };
        let txns = self.txns(sk_base, true);
        if rewrite.is_empty() {
            // Nothing differs (identical or excluded-column changes): progress only.
            return super::record_only(target, self.name, txns).await;
        }
        debug!("Wrote the new versions; rewriting the files they replace.");
        if let Some(staged) = staged {
            self.built.stage(self.name, staged);
        }
        rewrite.commit(&self.ctx, target, txns).await
    }

    /// The highest surrogate key goes with every commit, the consumed silver version only
    /// with the `last`: a run stopped between ranges is redone, and finds the ranges
    /// already written unchanged.
    fn txns(&self, sk_base: i64, last: bool) -> Vec<Transaction> {
        let mut txns = vec![Transaction::new(layout::app_id::SURROGATE_KEY, sk_base)];
        if last {
            txns.extend(self.consumed.iter().cloned());
        }
        txns
    }

    /// The changes of range `i` (rows with `__op`, see `diff`), with the copied columns.
    async fn range(&self, i: usize, range: &KeyRange, sk_base: i64) -> Result<Vec<RecordBatch>> {
        let name = self.name;
        ranges::focus(
            &self.ctx,
            &self.columns.keys[0],
            range,
            self.stored.is_some(),
            name,
        )
        .await?;
        let stored_versions = match self.in_order {
            true => {
                let keys = range.keys.as_ref();
                in_order::read_versions(&self.ctx, &self.columns, keys, name).await?
            }
            false => None,
        };
        let new_versions = match stored_versions {
            Some(versions) => versions,
            None => history::read_versions(&self.ctx, &self.columns, self.whole, name).await?,
        };
        debug!(
            range = i,
            versions = new_versions.num_rows(),
            "Read the history of a key range."
        );
        let rows = diff::changes(
            &self.ctx,
            &self.columns,
            new_versions,
            // In order, `gold` now holds the stored rows of the range's changed keys.
            (self.stored.as_ref(), self.in_order),
            sk_base,
            name,
        )
        .await?;
        debug!(range = i, "Compared the versions with the table.");
        Ok(vec![with_copied(&rows, &self.outriggers, name)?])
    }
}
