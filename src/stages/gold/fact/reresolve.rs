//! Re-resolution of stored facts after dimension changes, by groups of the fact's files.
//!
//! The files holding a fact that a change can move are found first (one query over the
//! columns the changes are matched on). Then, a group of those files (about `chunk_rows`
//! facts) at a time, the group's moved facts are computed and its files are copied with their
//! new keys, streaming, in one commit per group. A correction that moves millions of facts so
//! rewrites each file once, holding one group's moved keys; a run that moves none reads only
//! the files the changes' time bound leaves; and each copy keeps its file's rows together,
//! so files keep the key ranges they had (a MERGE by key range rewrote, for every range, the
//! files it overlapped, whose rows it then mixed into wider files). A fact whose key is not one
//! integer column, or that lacks a resolved column, is merged with delta-rs's MERGE instead.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use deltalake::DeltaTable;
use deltalake::kernel::{Action, Transaction};
use futures::StreamExt;
use tracing::debug;

use super::super::rewrite::{commit_rewrite, file_name};
use super::super::{
    TableReport, commit_properties, delta_err, df_err, merge_rows, op_is, project, record_only,
    register, scan, schema_of, update_from_source,
};
use super::chunks::group_files;
use super::columns::{key_match, moved_flag, resolve_sql};
use super::lookups::dimensions_built_once;
use super::write::FACT_FILE_BYTES;
use super::{Build, Reresolve};
use crate::error::{Error, Result};
use crate::lake::layout;

/// The scan column that names each fact row's file.
pub(super) const FILE_COLUMN: &str = "__tunelake_file";
/// The fact table registered with [`FILE_COLUMN`].
pub(super) const FACT_FILES: &str = "fact_files";

/// A fact key's position among the moved facts, probed once per row copied.
type Positions = std::collections::HashMap<i64, usize, foldhash::fast::RandomState>;

impl Build<'_> {
    /// Writes the stored facts whose surrogate keys or carried columns moved; the last commit
    /// carries `txns`.
    pub(super) async fn reresolved(
        &self,
        target: DeltaTable,
        reresolve: Reresolve,
        indexed: &[bool],
        txns: Vec<Transaction>,
        report: &mut TableReport,
    ) -> Result<DeltaTable> {
        let Some(key) = self.rewritable_key(&target)? else {
            return self.merged(target, &reresolve, indexed, txns, report).await;
        };
        let path = layout::gold_table(self.name);
        let holding = self.files_holding(&target, &reresolve).await?;
        let uris: Vec<String> = (target.get_file_uris().map_err(delta_err(&path))?)
            .filter(|uri| holding.contains(file_name(uri)))
            .collect();
        let groups = group_files(&target, uris, self.chunk_rows, &path, &key)?;
        debug!(
            files = holding.len(),
            groups = groups.len(),
            "Found the fact files that the dimension changes can move."
        );
        let (mut target, mut txns) = (target, Some(txns));
        let last = groups.len().saturating_sub(1);
        for (i, group) in groups.iter().enumerate() {
            let part_txns = match i == last {
                true => txns.take().unwrap_or_default(),
                false => Vec::new(),
            };
            let part = (group.as_slice(), key.as_str());
            let (table, moved) =
                (self.reresolved_group(target, &reresolve, indexed, part, part_txns)).await?;
            report.updated += moved;
            target = table;
        }
        match txns.filter(|t| !t.is_empty()) {
            // No file holds a fact to re-resolve: the run's last commit only records progress.
            Some(txns) => {
                self.hand_over
                    .confirm(self.lake, self.built, self.name)
                    .await?;
                record_only(target, self.name, txns).await
            }
            None => Ok(target),
        }
    }

    /// The fact's key when re-resolution can copy files: one integer column that converts to
    /// a 64-bit signed one, and every resolved column stored.
    fn rewritable_key(&self, target: &DeltaTable) -> Result<Option<String>> {
        use DataType::*;
        let [key] = self.columns.keys.as_slice() else {
            return Ok(None);
        };
        let stored = schema_of(target, self.name)?;
        let integer = stored.field_with_name(key).is_ok_and(|f| {
            matches!(
                f.data_type(),
                Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32
            )
        });
        let resolved = (self.columns.resolved().iter()).all(|r| stored.field_with_name(r).is_ok());
        Ok((integer && resolved).then(|| key.clone()))
    }

    /// The names of the fact's files that hold a fact the changes can move.
    async fn files_holding(
        &self,
        target: &DeltaTable,
        reresolve: &Reresolve,
    ) -> Result<HashSet<String>> {
        let name = self.name;
        let context = "finding the facts to re-resolve";
        let provider = scan(&self.ctx, target, name)?
            .with_file_column(FILE_COLUMN)
            .await
            .map_err(df_err(name, context))?;
        let _ = self.ctx.deregister_table(FACT_FILES);
        (self.ctx.register_table(FACT_FILES, provider)).map_err(df_err(name, context))?;
        let batches = (dimensions_built_once(&self.ctx).sql(&reresolve.files.join(" UNION ")))
            .await
            .and_then(|df| df.with_param_values(reresolve.params.clone()))
            .map_err(df_err(name, context))?
            .collect()
            .await
            .map_err(df_err(name, context))?;
        let _ = self.ctx.deregister_table(FACT_FILES);
        let mut files = HashSet::new();
        for batch in batches {
            let paths = arrow::compute::cast(batch.column(0), &DataType::Utf8)
                .map_err(|e| Error::arrow(name, e))?;
            let paths = paths.as_string::<i32>();
            files.extend(paths.iter().flatten().map(|p| file_name(p).to_string()));
        }
        Ok(files)
    }

    /// Re-resolves the facts of the files `group` (URIs), rewriting those files when one
    /// moved; returns the table and how many facts moved.
    async fn reresolved_group(
        &self,
        target: DeltaTable,
        reresolve: &Reresolve,
        indexed: &[bool],
        (group, key): (&[String], &str),
        txns: Vec<Transaction>,
    ) -> Result<(DeltaTable, u64)> {
        let name = self.name;
        let _ = self.ctx.deregister_table("fact");
        register(&self.ctx, "fact", &target, Some(group)).await?;
        let (moved, changed) = self.moved(reresolve, indexed).await?;
        let count = moved.num_rows() as u64;
        if count > 0 || !txns.is_empty() {
            self.hand_over.confirm(self.lake, self.built, name).await?;
        }
        if count == 0 {
            return match txns.is_empty() {
                true => Ok((target, 0)),
                false => Ok((record_only(target, name, txns).await?, 0)),
            };
        }
        let mut actions = copy_with(&self.ctx, &target, name, group, &moved, key).await?;
        let names: HashSet<&str> = group.iter().map(|uri| file_name(uri)).collect();
        let snapshot = target
            .snapshot()
            .map_err(delta_err(layout::gold_table(name)))?;
        actions.extend(
            (snapshot.log_data().iter())
                .filter(|f| names.contains(file_name(&f.path())))
                .map(|f| Action::Remove(f.remove_action(true))),
        );
        debug!(
            files = group.len(),
            moved = count,
            ?changed,
            "Re-resolved a group of fact files."
        );
        let changed = (
            layout::CHANGED_COLUMNS.to_string(),
            serde_json::json!(changed),
        );
        let properties = commit_properties(txns).with_metadata([changed]);
        let mut target = target;
        commit_rewrite(&mut target, name, actions, properties).await?;
        Ok((target, count))
    }

    /// The facts of the registered `fact` that moved (their key and resolved columns), and
    /// the resolved columns that moved in one of them.
    async fn moved(
        &self,
        reresolve: &Reresolve,
        indexed: &[bool],
    ) -> Result<(RecordBatch, Vec<String>)> {
        let (name, columns) = (self.name, &self.columns);
        let sql = format!(
            "WITH src_r AS (SELECT * FROM ({}) AS a) {}",
            reresolve.queries.join(" UNION "),
            resolve_sql(columns, "src_r", "R", true, indexed)
        );
        let context = "re-resolving dimension keys";
        let df = (dimensions_built_once(&self.ctx).sql(&sql).await)
            .and_then(|df| df.with_param_values(reresolve.params.clone()))
            .map_err(df_err(name, context))?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let rows = df.collect().await.map_err(df_err(name, context))?;
        let resolved = columns.resolved();
        // Which resolved columns some row moved in (a correction of users moves user_sk alone).
        let changed: Vec<String> = (resolved.iter())
            .filter(|c| {
                rows.iter().any(|b| {
                    b.column_by_name(&moved_flag(c))
                        .and_then(|f| f.as_boolean_opt().map(|f| f.true_count() > 0))
                        .unwrap_or(true)
                })
            })
            .cloned()
            .collect();
        let written: Vec<String> = columns.keys.iter().chain(&resolved).cloned().collect();
        let (schema, rows) = project(&rows, &schema, &written, name)?;
        let moved = arrow::compute::concat_batches(&schema, &rows);
        Ok((moved.map_err(|e| Error::arrow(name, e))?, changed))
    }

    /// Merges every moved fact at once with delta-rs's MERGE (a key re-resolution cannot copy
    /// files by).
    async fn merged(
        &self,
        target: DeltaTable,
        reresolve: &Reresolve,
        indexed: &[bool],
        txns: Vec<Transaction>,
        report: &mut TableReport,
    ) -> Result<DeltaTable> {
        let name = self.name;
        let (moved, _) = self.moved(reresolve, indexed).await?;
        let updated = moved.num_rows() as u64;
        report.updated += updated;
        if updated > 0 || !txns.is_empty() {
            self.hand_over.confirm(self.lake, self.built, name).await?;
        }
        if updated == 0 {
            return match txns.is_empty() {
                true => Ok(target),
                false => record_only(target, name, txns).await,
            };
        }
        let op = arrow::array::StringArray::from(vec!["R"; moved.num_rows()]);
        let mut fields = moved.schema().fields().to_vec();
        fields.push(Arc::new(arrow::datatypes::Field::new(
            "__op",
            DataType::Utf8,
            false,
        )));
        let mut columns = moved.columns().to_vec();
        columns.push(Arc::new(op));
        let rows = RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)
            .map_err(|e| Error::arrow(name, e))?;
        let resolved = self.columns.resolved();
        merge_rows(
            &self.ctx,
            target,
            name,
            vec![rows],
            key_match(&self.columns),
            txns,
            |m| m.when_matched_update(|u| update_from_source(u, op_is("R"), &resolved)),
        )
        .await
    }
}

/// Copies the files `group` (URIs) of the fact `name`, giving the facts in `moved` (by `key`)
/// its values of the other columns; returns the added files.
async fn copy_with(
    ctx: &datafusion::prelude::SessionContext,
    target: &DeltaTable,
    name: &str,
    group: &[String],
    moved: &RecordBatch,
    key: &str,
) -> Result<Vec<Action>> {
    let stored = schema_of(target, name)?;
    let arrow_err = |e| Error::arrow(name, e);
    let int64 = |column: &ArrayRef| arrow::compute::cast(column, &DataType::Int64);
    let moved_keys = moved
        .column_by_name(key)
        .map(int64)
        .transpose()
        .map_err(arrow_err)?
        .ok_or_else(|| Error::Gold {
            table: name.to_string(),
            message: format!("re-resolved facts lack the key column {key}"),
        })?;
    let moved_keys = moved_keys.as_primitive::<Int64Type>();
    let mut at = Positions::with_capacity_and_hasher(moved.num_rows(), Default::default());
    for (i, k) in moved_keys.iter().enumerate() {
        if let Some(k) = k {
            at.insert(k, i);
        }
    }
    // The columns the moved facts replace, in the stored types, by stored position.
    let mut replaced: Vec<(usize, ArrayRef)> = Vec::new();
    for (field, column) in moved.schema().fields().iter().zip(moved.columns()) {
        if field.name() == key {
            continue;
        }
        let (c, stored_field) =
            stored
                .column_with_name(field.name())
                .ok_or_else(|| Error::UnknownColumn {
                    table: name.to_string(),
                    column: field.name().clone(),
                    available: "(the stored fact)".to_string(),
                })?;
        let column = arrow::compute::cast(column, stored_field.data_type()).map_err(arrow_err)?;
        replaced.push((c, column));
    }
    let key_at = stored.index_of(key).map_err(arrow_err)?;
    let path = layout::gold_table(name);
    let file_size = std::num::NonZeroU64::new(FACT_FILE_BYTES);
    let mut writer = crate::lake::writers::delta_writer(target, &path, &stored, file_size)?;
    let context = "reading the fact files to re-resolve";
    let provider = scan(ctx, target, name)?
        .with_file_paths(group.iter().cloned())
        .await
        .map_err(df_err(name, context))?;
    let mut stream = (ctx.read_table(provider))
        .map_err(df_err(name, context))?
        .execute_stream()
        .await
        .map_err(df_err(name, context))?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(df_err(name, context))?;
        let batch = crate::lake::writers::fit(&batch, &stored).map_err(arrow_err)?;
        let keys = int64(batch.column(key_at)).map_err(arrow_err)?;
        let keys = keys.as_primitive::<Int64Type>();
        let picks: Vec<(usize, usize)> = (0..batch.num_rows())
            .map(|r| match keys.is_valid(r).then(|| at.get(&keys.value(r))) {
                Some(Some(&m)) => (1, m),
                _ => (0, r),
            })
            .collect();
        let batch = match picks.iter().any(|&(from, _)| from == 1) {
            false => batch,
            true => {
                let mut columns = batch.columns().to_vec();
                for (c, new) in &replaced {
                    columns[*c] =
                        arrow::compute::interleave(&[columns[*c].as_ref(), new.as_ref()], &picks)
                            .map_err(arrow_err)?;
                }
                RecordBatch::try_new(stored.clone(), columns).map_err(arrow_err)?
            }
        };
        writer.write(&batch).await.map_err(delta_err(&path))?;
    }
    let adds = writer.close().await.map_err(delta_err(&path))?;
    Ok(adds.into_iter().map(Action::Add).collect())
}
