//! Copy-on-write changes to a gold table in one commit, streaming, without delta-rs's MERGE:
//! new rows are written as they come, rows to replace or delete are named by surrogate key,
//! and only the files holding one of those keys are rewritten, one batch at a time.
//!
//! Why not MERGE: an SCD2 run closes versions whose keys are spread over every file, so a
//! MERGE rewrites most of the table, and delta-rs's MERGE holds what it rewrites (decision
//! 002, "Gold dimensions"). Here memory is one batch and the writer's open file, plus 8 bytes
//! per replaced key.

use std::collections::{HashMap, HashSet};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::datafile::writer::DeltaWriter;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::{Action, Transaction};
use deltalake::protocol::DeltaOperation;
use futures::StreamExt;
use object_store::ObjectStoreExt;

use super::patch::{self, Ends};
use super::{commit_properties, delta_err, df_err, schema_of};
use crate::error::{Error, Result};
pub(super) use crate::lake::file_name;
use crate::lake::layout;
use crate::lake::layout::gold_columns::{IS_CURRENT, VALID_TO};

/// The scan column that names each row's file.
const FILE_COLUMN: &str = "__tunelake_file";

/// A set of surrogate keys, probed once per stored row (up to three times per row of a
/// dimension in one run: finding the files, copying them, and a fact's hand-over), so with
/// a fast hash instead of std's SipHash (the keys are our own data).
pub(super) type SurrogateKeys = HashSet<i64, foldhash::fast::RandomState>;

/// The largest file ended in place: the copy holds it and its patched copy in memory at
/// once, where a file rewritten row by row holds a batch and the writer's row group.
const PATCHED_BYTES: i64 = 32 * 1024 * 1024;

/// One pending change to a gold table.
pub(super) struct Rewrite {
    name: String,
    sk: String,
    schema: SchemaRef,
    writer: DeltaWriter,
    /// Surrogate keys whose stored row goes (replaced by a written row, or deleted).
    replaced: SurrogateKeys,
    /// Stored SCD2 versions that only get a new end (see `patch`).
    ends: Ends,
    written: usize,
}

impl Rewrite {
    /// Starts a change to `target` (which exists), whose rows are identified by `sk`.
    pub(super) fn new(target: &DeltaTable, name: &str, sk: &str) -> Result<Self> {
        let schema = schema_of(target, name)?;
        let writer =
            crate::lake::writers::delta_writer(target, &layout::gold_table(name), &schema, None)?;
        Ok(Rewrite {
            name: name.to_string(),
            sk: sk.to_string(),
            schema,
            writer,
            replaced: SurrogateKeys::default(),
            ends: Ends::default(),
            written: 0,
        })
    }

    /// Whether the change would alter nothing.
    pub(super) fn is_empty(&self) -> bool {
        self.written == 0 && self.replaced.is_empty() && self.ends.is_empty()
    }

    /// Whether stored rows can be ended in place: the table has SCD2's `valid_to` (a
    /// timestamp) and `is_current`.
    pub(super) fn ends_in_place(&self) -> bool {
        let typed = |name: &str, ok: fn(&DataType) -> bool| {
            self.schema
                .field_with_name(name)
                .is_ok_and(|f| ok(f.data_type()))
        };
        typed(VALID_TO, |t| matches!(t, DataType::Timestamp(_, _)))
            && typed(IS_CURRENT, |t| t == &DataType::Boolean)
    }

    /// Ends the stored rows of the surrogate keys of `batch`'s rows picked by `which`, with
    /// the rows' `valid_to`: their other columns stay as stored. Only for a table that
    /// [`Rewrite::ends_in_place`].
    pub(super) fn end(&mut self, batch: &RecordBatch, which: &BooleanArray) -> Result<()> {
        if which.true_count() == 0 {
            return Ok(());
        }
        let name = &self.name;
        let column = |c: &str| {
            batch.column_by_name(c).ok_or_else(|| Error::UnknownColumn {
                table: name.clone(),
                column: c.to_string(),
                available: "(computed versions)".to_string(),
            })
        };
        let sks = surrogate_keys(column(&self.sk)?, name)?;
        let stored = self
            .schema
            .field_with_name(VALID_TO)
            .map_err(|e| Error::arrow(name, e))?
            .data_type();
        // In the table's own type first, so that the raw values are in its unit.
        let to = arrow::compute::cast(column(VALID_TO)?, stored)
            .and_then(|to| arrow::compute::cast(&to, &DataType::Int64))
            .map_err(|e| Error::arrow(name, e))?;
        let to = to.as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..batch.num_rows() {
            if which.is_valid(i) && which.value(i) && sks.is_valid(i) {
                self.ends
                    .insert(sks.value(i), to.is_valid(i).then(|| to.value(i)));
            }
        }
        Ok(())
    }

    /// Writes new rows (inserted, or replacing a row named with [`Rewrite::replace`]). Columns
    /// are taken by name; a stored column the rows lack is null.
    pub(super) async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let batch = crate::lake::writers::fit(batch, &self.schema)
            .map_err(|e| Error::arrow(&self.name, e))?;
        self.writer
            .write(&batch)
            .await
            .map_err(delta_err(layout::gold_table(&self.name)))?;
        self.written += batch.num_rows();
        Ok(())
    }

    /// Names stored rows that go, by surrogate key.
    pub(super) fn replace(&mut self, sks: impl IntoIterator<Item = i64>) {
        self.replaced.extend(sks);
    }

    /// Rewrites the files holding a replaced key without those rows, and commits the new
    /// files, the removal of the rewritten ones and `txns` together.
    pub(super) async fn commit(
        mut self,
        ctx: &SessionContext,
        target: DeltaTable,
        txns: Vec<Transaction>,
    ) -> Result<DeltaTable> {
        let name = self.name.clone();
        let touched = if self.replaced.is_empty() && self.ends.is_empty() {
            HashMap::new()
        } else if let Some(found) = files_by_ranges(&target, &self.sk, &self.replaced, &self.ends) {
            found
        } else {
            files_holding(ctx, &target, &name, &self.sk, &self.replaced, &self.ends).await?
        };
        let snapshot = target
            .snapshot()
            .map_err(delta_err(layout::gold_table(&name)))?;
        // A file that only has rows to end is copied with two columns re-encoded; one that
        // loses rows is rewritten row by row (ending rows as it goes).
        let mut actions: Vec<Action> = Vec::new();
        let mut rows_go: HashSet<String> = HashSet::new();
        let store = target.log_store().object_store(None);
        for file in snapshot.log_data().iter() {
            let file_name = file_name(&file.path()).to_string();
            match touched.get(&file_name) {
                None => {}
                Some(true) => {
                    rows_go.insert(file_name);
                }
                Some(false) if file.size() <= PATCHED_BYTES => {
                    match patched(&name, &self.sk, &self.ends, &store, &file).await? {
                        Some(add) => actions.push(Action::Add(add)),
                        None => {
                            rows_go.insert(file_name);
                        }
                    }
                }
                Some(false) => {
                    rows_go.insert(file_name);
                }
            }
        }
        let uris: Vec<String> = target
            .get_file_uris()
            .map_err(delta_err(layout::gold_table(&name)))?
            .filter(|uri| rows_go.contains(file_name(uri)))
            .collect();
        tracing::debug!(
            files = touched.len(),
            rewritten = uris.len(),
            "Found the files holding replaced or ended rows."
        );
        if !uris.is_empty() {
            self.copy_kept_rows(ctx, &target, &uris).await?;
        }
        let written = (self.writer.close().await).map_err(delta_err(layout::gold_table(&name)))?;
        // Every stored row kept its values but for the ends: the written files hold only new
        // rows, and the commit says so (see `layout::CHANGED_COLUMNS`).
        let ended_only = uris.is_empty() && self.replaced.is_empty();
        let new_files: Vec<String> = written.iter().map(|a| a.path.clone()).collect();
        actions.extend(written.into_iter().map(Action::Add));
        actions.extend(
            snapshot
                .log_data()
                .iter()
                .filter(|f| touched.contains_key(file_name(&f.path())))
                .map(|f| Action::Remove(f.remove_action(true))),
        );
        let mut properties = commit_properties(txns);
        if ended_only {
            properties = properties.with_metadata([
                (
                    layout::CHANGED_COLUMNS.to_string(),
                    serde_json::json!([VALID_TO, IS_CURRENT]),
                ),
                (layout::NEW_FILES.to_string(), serde_json::json!(new_files)),
            ]);
        }
        let mut target = target;
        commit_rewrite(&mut target, &name, actions, properties).await?;
        Ok(target)
    }
}

/// Commits the `actions` of a copy-on-write change to the gold table `name` (files added and
/// removed) with `properties` (which carry the versions consumed), in one commit.
pub(super) async fn commit_rewrite(
    target: &mut DeltaTable,
    name: &str,
    actions: Vec<Action>,
    properties: deltalake::kernel::transaction::CommitProperties,
) -> Result<()> {
    let snapshot = target
        .snapshot()
        .map_err(delta_err(layout::gold_table(name)))?;
    let commit = CommitBuilder::from(properties)
        .with_actions(actions)
        .build(
            Some(snapshot),
            target.log_store(),
            DeltaOperation::Update { predicate: None },
        )
        .await
        .map_err(delta_err(layout::gold_table(name)))?;
    target
        .update_incremental(Some(commit.version()))
        .await
        .map_err(delta_err(layout::gold_table(name)))
}

/// What [`files_holding`] finds, from the log's statistics alone, when no two files' ranges
/// of `sk` overlap: each key then lies in the range of the one file that can hold it. A
/// dimension's surrogate keys are handed out in ascending order run after run, so its files
/// hold disjoint ranges, and the scan of every stored key goes (decision 002, "Gold
/// dimensions"). `None` when ranges overlap or a file's statistics do not say.
fn files_by_ranges(
    target: &DeltaTable,
    sk: &str,
    replaced: &SurrogateKeys,
    ends: &Ends,
) -> Option<HashMap<String, bool>> {
    let mut ranges = crate::lake::stats::int_ranges(target, sk)?;
    ranges.sort_unstable_by_key(|&(_, lo, _)| lo);
    if ranges.windows(2).any(|w| w[0].2 >= w[1].1) {
        return None;
    }
    let sorted = |mut keys: Vec<i64>| {
        keys.sort_unstable();
        keys
    };
    let replaced = sorted(replaced.iter().copied().collect());
    let ended = sorted(ends.keys().copied().collect());
    let any_in = |keys: &[i64], lo: i64, hi: i64| {
        (keys.get(keys.partition_point(|&k| k < lo))).is_some_and(|&k| k <= hi)
    };
    let mut files = HashMap::new();
    for (path, lo, hi) in ranges {
        let goes = any_in(&replaced, lo, hi);
        if goes || any_in(&ended, lo, hi) {
            files.insert(file_name(&path).to_string(), goes);
        }
    }
    Some(files)
}

/// The names of the files of `target` that hold one of `replaced` or `ends` in column `sk`
/// (reading only that column and the file name), each with whether it holds one of
/// `replaced`.
async fn files_holding(
    ctx: &SessionContext,
    target: &DeltaTable,
    name: &str,
    sk: &str,
    replaced: &SurrogateKeys,
    ends: &Ends,
) -> Result<HashMap<String, bool>> {
    let provider = super::scan(ctx, target, name)?
        .with_file_column(FILE_COLUMN)
        .await
        .map_err(df_err(name, "reading the table's keys"))?;
    let df = ctx
        .read_table(provider)
        .map_err(df_err(name, "reading the table's keys"))?
        .select_columns(&[sk, FILE_COLUMN])
        .map_err(df_err(name, "reading the table's keys"))?;
    let mut stream = df
        .execute_stream()
        .await
        .map_err(df_err(name, "reading the table's keys"))?;
    let mut files = HashMap::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(df_err(name, "reading the table's keys"))?;
        if batch.num_rows() == 0 {
            continue;
        }
        let sks = surrogate_keys(batch.column(0), name)?;
        // The file column is dictionary encoded (one value per file): casting it to text
        // would copy a path per row, so rows are matched to files through the keys.
        let (paths, index): (ArrayRef, Vec<usize>) = match batch.column(1).as_any_dictionary_opt() {
            Some(d) if d.values().is_empty() => continue,
            Some(d) => (d.values().clone(), d.normalized_keys()),
            None => (batch.column(1).clone(), (0..batch.num_rows()).collect()),
        };
        let paths =
            arrow::compute::cast(&paths, &DataType::Utf8).map_err(|e| Error::arrow(name, e))?;
        let paths = paths.as_string::<i32>();
        // Per file: not touched, holds rows to end only, holds rows that go.
        let mut hit = vec![None; paths.len()];
        for (i, &p) in index.iter().enumerate() {
            if !(sks.is_valid(i) && batch.column(1).is_valid(i)) {
                continue;
            }
            let key = sks.value(i);
            if replaced.contains(&key) {
                hit[p] = Some(true);
            } else if ends.contains_key(&key) && hit[p].is_none() {
                hit[p] = Some(false);
            }
        }
        for (p, hit) in hit.into_iter().enumerate() {
            if let Some(go) = hit
                && paths.is_valid(p)
            {
                let held = files
                    .entry(file_name(paths.value(p)).to_string())
                    .or_insert(false);
                *held |= go;
            }
        }
    }
    Ok(files)
}

impl Rewrite {
    /// Writes every row of `uris` whose key is not replaced.
    async fn copy_kept_rows(
        &mut self,
        ctx: &SessionContext,
        target: &DeltaTable,
        uris: &[String],
    ) -> Result<()> {
        let name = self.name.clone();
        let provider = super::scan(ctx, target, &name)?
            .with_file_paths(uris.iter().cloned())
            .await
            .map_err(df_err(&name, "reading the files to rewrite"))?;
        let mut stream = ctx
            .read_table(provider)
            .map_err(df_err(&name, "reading the files to rewrite"))?
            .execute_stream()
            .await
            .map_err(df_err(&name, "reading the files to rewrite"))?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(df_err(&name, "reading the files to rewrite"))?;
            let kept = without_replaced(&batch, &self.sk, &self.replaced, &name)?;
            let kept = self.with_ends(kept)?;
            self.write(&kept).await?;
        }
        Ok(())
    }

    /// `batch` (stored rows) with the rows named in `ends` ended.
    fn with_ends(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let name = &self.name;
        let (false, Some(sks), Some(v), Some(c)) = (
            self.ends.is_empty(),
            batch.column_by_name(&self.sk),
            batch.schema().index_of(VALID_TO).ok(),
            batch.schema().index_of(IS_CURRENT).ok(),
        ) else {
            return Ok(batch);
        };
        let sks = surrogate_keys(sks, name)?;
        let changed = patch::ended_columns(&sks, batch.column(v), batch.column(c), &self.ends)
            .map_err(|e| Error::arrow(name, e))?;
        let Some((to, current)) = changed else {
            return Ok(batch);
        };
        let mut columns = batch.columns().to_vec();
        columns[v] = to;
        columns[c] = current;
        RecordBatch::try_new(batch.schema(), columns).map_err(|e| Error::arrow(name, e))
    }
}

/// Writes a copy of `file` (of the table `name`, whose rows are identified by `sk`) with its
/// rows named in `ends` ended and its other columns as they are encoded, as an add action;
/// `None` when the file's shape does not allow it.
async fn patched(
    name: &str,
    sk: &str,
    ends: &Ends,
    store: &deltalake::logstore::ObjectStoreRef,
    file: &deltalake::kernel::LogicalFileView,
) -> Result<Option<deltalake::kernel::Add>> {
    // Rows a deletion vector hides would come back in a copy of the bytes.
    if file.deletion_vector_descriptor().is_some() {
        return Ok(None);
    }
    let from = file.object_store_path();
    let fail = |e: patch::PatchError| Error::Gold {
        table: name.to_string(),
        message: format!("ending rows of {from}: {e}"),
    };
    let bytes = store
        .get(&from)
        .await
        .map_err(|e| Error::lake(from.as_ref(), e))?
        .bytes()
        .await
        .map_err(|e| Error::lake(from.as_ref(), e))?;
    let Some(patched) = patch::patch(bytes, sk, ends).map_err(fail)? else {
        return Ok(None);
    };
    let path = format!("part-00000-{}-c000.snappy.parquet", uuid::Uuid::new_v4());
    let add = deltalake::kernel::Add {
        path: path.clone(),
        partition_values: file.partition_values_map(),
        size: patched.bytes.len() as i64,
        modification_time: chrono::Utc::now().timestamp_millis(),
        data_change: true,
        stats: patched.stats(file.stats()).map_err(fail)?,
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
        clustering_provider: None,
    };
    store
        .put(
            &object_store::path::Path::from(path.as_str()),
            patched.bytes.into(),
        )
        .await
        .map_err(|e| Error::lake(&path, e))?;
    Ok(Some(add))
}

/// The stored rows of `batch` whose surrogate key (column `sk`) is not in `replaced`.
pub(super) fn without_replaced(
    batch: &RecordBatch,
    sk: &str,
    replaced: &SurrogateKeys,
    name: &str,
) -> Result<RecordBatch> {
    let sks = batch
        .column_by_name(sk)
        .ok_or_else(|| Error::UnknownColumn {
            table: name.to_string(),
            column: sk.to_string(),
            available: batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let sks = surrogate_keys(sks, name)?;
    let keep = BooleanArray::from(arrow::buffer::BooleanBuffer::collect_bool(sks.len(), |i| {
        !(sks.is_valid(i) && replaced.contains(&sks.value(i)))
    }));
    arrow::compute::filter_record_batch(batch, &keep).map_err(|e| Error::arrow(name, e))
}

/// A surrogate-key column as 64-bit integers.
pub(super) fn surrogate_keys(column: &ArrayRef, name: &str) -> Result<Int64Array> {
    crate::lake::int_column(column).ok_or_else(|| Error::Gold {
        table: name.to_string(),
        message: format!(
            "a surrogate key column of type {} is not an integer",
            column.data_type()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn rows(sks: std::ops::RangeInclusive<i64>, label: &str) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("sk", DataType::Int64, true),
            Field::new("label", DataType::Utf8, true),
        ]));
        let labels: Vec<String> = sks.clone().map(|_| label.to_string()).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(sks.collect::<Vec<_>>())),
                Arc::new(StringArray::from(labels)),
            ],
        )
        .unwrap()
    }

    async fn contents(ctx: &SessionContext, table: &DeltaTable) -> Vec<(i64, String)> {
        let provider = table.table_provider().await.unwrap();
        let batches = ctx.read_table(provider).unwrap().collect().await.unwrap();
        let mut out = Vec::new();
        for b in batches {
            let sks = surrogate_keys(b.column(0), "t").unwrap();
            let labels = arrow::compute::cast(b.column(1), &DataType::Utf8).unwrap();
            for i in 0..b.num_rows() {
                out.push((sks.value(i), labels.as_string::<i32>().value(i).to_string()));
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn only_files_holding_a_replaced_key_are_rewritten_in_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let lake = crate::lake::Lake::open(dir.path().to_str().unwrap()).unwrap();
        let mut table = lake.delta_table("gold/t").await.unwrap();
        // Three files: keys 1-10, 11-20, 21-30.
        for (range, label) in [(1..=10, "a"), (11..=20, "b"), (21..=30, "c")] {
            table = table.write(vec![rows(range, label)]).await.unwrap();
        }
        let before: HashSet<String> = table.get_file_uris().unwrap().collect();
        assert_eq!(before.len(), 3);
        let version = table.version();

        let ctx = super::super::session();
        let mut change = Rewrite::new(&table, "t", "sk").unwrap();
        // Key 15 gets a new row, key 25 goes, key 31 is new.
        change.write(&rows(15..=15, "new")).await.unwrap();
        change.write(&rows(31..=31, "added")).await.unwrap();
        change.replace([15, 25]);
        let table = change
            .commit(&ctx, table, vec![Transaction::new("test.app", 7)])
            .await
            .unwrap();

        assert_eq!(table.version(), version.map(|v| v + 1), "one commit");
        let after: HashSet<String> = table.get_file_uris().unwrap().collect();
        let kept: Vec<&String> = before.intersection(&after).collect();
        assert_eq!(kept.len(), 1, "the file of keys 1-10 stays as it was");
        let mut expected: Vec<(i64, String)> = (1..=31)
            .filter(|k| *k != 25)
            .map(|k| {
                let label = match k {
                    15 => "new",
                    31 => "added",
                    1..=10 => "a",
                    11..=20 => "b",
                    _ => "c",
                };
                (k, label.to_string())
            })
            .collect();
        expected.sort();
        assert_eq!(contents(&ctx, &table).await, expected);
        let recorded = table
            .snapshot()
            .unwrap()
            .transaction_version(table.log_store().as_ref(), "test.app")
            .await
            .unwrap();
        assert_eq!(recorded, Some(7));
    }

    /// Versions 1-30 in three files (1-10, 11-20, 21-30), each open or ended at `k` seconds.
    fn versions(sks: std::ops::RangeInclusive<i64>, label: &str) -> RecordBatch {
        use arrow::array::{BooleanArray, TimestampMicrosecondArray};
        let schema = Arc::new(Schema::new(vec![
            Field::new("sk", DataType::Int64, true),
            Field::new("label", DataType::Utf8, true),
            Field::new(
                VALID_TO,
                DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new(IS_CURRENT, DataType::Boolean, true),
        ]));
        let keys: Vec<i64> = sks.collect();
        // Even keys are ended at key seconds, odd ones are current.
        let ends: Vec<Option<i64>> = keys
            .iter()
            .map(|k| (k % 2 == 0).then_some(k * 1_000_000))
            .collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(keys.clone())),
                Arc::new(StringArray::from(
                    keys.iter()
                        .map(|k| format!("{label}{k}"))
                        .collect::<Vec<_>>(),
                )),
                Arc::new(TimestampMicrosecondArray::from(ends.clone()).with_timezone("UTC")),
                Arc::new(BooleanArray::from(
                    ends.iter().map(|e| e.is_none()).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    #[tokio::test]
    async fn files_chosen_by_their_key_ranges_are_those_a_scan_finds() {
        let dir = tempfile::tempdir().unwrap();
        let lake = crate::lake::Lake::open(dir.path().to_str().unwrap()).unwrap();
        let mut table = lake.delta_table("gold/r").await.unwrap();
        for (range, label) in [
            (1..=10, "a"),
            (11..=20, "b"),
            (21..=30, "c"),
            (41..=45, "d"),
        ] {
            table = table.write(vec![rows(range, label)]).await.unwrap();
        }
        let ctx = super::super::session();
        let replaced: SurrogateKeys = [15, 35].into_iter().collect();
        let ends: Ends = [(3, Some(1)), (16, None), (44, Some(2))]
            .into_iter()
            .collect();
        let scanned = files_holding(&ctx, &table, "r", "sk", &replaced, &ends)
            .await
            .unwrap();
        let by_ranges = files_by_ranges(&table, "sk", &replaced, &ends).expect("disjoint");
        assert_eq!(by_ranges, scanned);
        // 1-10 ends a row, 11-20 loses one, 41-45 ends one; nothing of 21-30.
        let mut flags: Vec<bool> = by_ranges.values().copied().collect();
        flags.sort();
        assert_eq!(flags, vec![false, false, true]);

        // A file whose range overlaps another's: only the scan can tell which holds 16.
        table = table.write(vec![rows(16..=16, "e")]).await.unwrap();
        assert_eq!(files_by_ranges(&table, "sk", &replaced, &ends), None);
        let mut change = Rewrite::new(&table, "r", "sk").unwrap();
        change.replace([15]);
        let table = change.commit(&ctx, table, Vec::new()).await.unwrap();
        let sks: Vec<i64> = contents(&ctx, &table).await.iter().map(|r| r.0).collect();
        let mut expected: Vec<i64> = (1..=30).chain([16]).chain(41..=45).collect();
        expected.retain(|k| *k != 15);
        expected.sort();
        assert_eq!(sks, expected);
    }

    #[tokio::test]
    async fn versions_are_ended_in_place_copying_the_other_columns_as_encoded() {
        let dir = tempfile::tempdir().unwrap();
        let lake = crate::lake::Lake::open(dir.path().to_str().unwrap()).unwrap();
        let mut table = lake.delta_table("gold/v").await.unwrap();
        for (range, label) in [(1..=10, "a"), (11..=20, "b"), (21..=30, "c")] {
            table = table.write(vec![versions(range, label)]).await.unwrap();
        }
        let before: HashSet<String> = table.get_file_uris().unwrap().collect();
        let ctx = super::super::session();
        let mut change = Rewrite::new(&table, "v", "sk").unwrap();
        assert!(change.ends_in_place());
        // In the second file, 13 is ended at 99 s and 12 opened again; in the third, 25 is
        // ended at 7 s and 26 goes (a file that loses a row is rewritten row by row).
        let ended = versions(12..=13, "ignored");
        let to = arrow::array::TimestampMicrosecondArray::from(vec![None, Some(99_000_000)])
            .with_timezone("UTC");
        let mut columns = ended.columns().to_vec();
        columns[2] = Arc::new(to);
        let ended = RecordBatch::try_new(ended.schema(), columns).unwrap();
        change
            .end(&ended, &BooleanArray::from(vec![true, true]))
            .unwrap();
        let late = versions(25..=25, "ignored");
        let mut columns = late.columns().to_vec();
        columns[2] = Arc::new(
            arrow::array::TimestampMicrosecondArray::from(vec![Some(7_000_000)])
                .with_timezone("UTC"),
        );
        change
            .end(
                &RecordBatch::try_new(late.schema(), columns).unwrap(),
                &BooleanArray::from(vec![true]),
            )
            .unwrap();
        change.replace([26]);
        let table = change.commit(&ctx, table, Vec::new()).await.unwrap();

        let after: HashSet<String> = table.get_file_uris().unwrap().collect();
        assert_eq!(
            before.intersection(&after).count(),
            1,
            "the first file stays"
        );
        let provider = table.table_provider().await.unwrap();
        let batches = ctx.read_table(provider).unwrap().collect().await.unwrap();
        let mut rows = Vec::new();
        for b in &batches {
            let sks = surrogate_keys(b.column(0), "v").unwrap();
            let labels = arrow::compute::cast(b.column(1), &DataType::Utf8).unwrap();
            let to = arrow::compute::cast(b.column(2), &DataType::Int64).unwrap();
            let to = to.as_primitive::<arrow::datatypes::Int64Type>();
            let current = b.column(3).as_boolean();
            for i in 0..b.num_rows() {
                let end = to.is_valid(i).then(|| to.value(i) / 1_000_000);
                rows.push((
                    sks.value(i),
                    labels.as_string::<i32>().value(i).to_string(),
                    end,
                    current.value(i),
                ));
            }
        }
        rows.sort();
        let expected: Vec<(i64, String, Option<i64>, bool)> = (1..=30)
            .filter(|k| *k != 26)
            .map(|k| {
                let label = ["a", "b", "c"][((k - 1) / 10) as usize];
                let end = match k {
                    12 => None,
                    13 => Some(99),
                    25 => Some(7),
                    k if k % 2 == 0 => Some(k),
                    _ => None,
                };
                (k, format!("{label}{k}"), end, end.is_none())
            })
            .collect();
        assert_eq!(rows, expected);

        // The patched second file: its statistics are those of its new values, and its
        // label column is the stored chunk, byte for byte.
        let snapshot = table.snapshot().unwrap();
        let second = snapshot
            .log_data()
            .iter()
            .find(|f| f.num_records() == Some(10) && f.stats().is_some_and(|s| s.contains("b11")))
            .expect("the second file, patched");
        let stats: serde_json::Value = serde_json::from_str(&second.stats().unwrap()).unwrap();
        assert_eq!(
            stats["nullCount"][VALID_TO], 5,
            "11, 12 (opened), 15, 17, 19"
        );
        assert_eq!(stats["maxValues"][VALID_TO], "1970-01-01T00:01:39Z");
        assert_eq!(stats["minValues"][VALID_TO], "1970-01-01T00:00:14Z");
        assert_eq!(stats["minValues"][IS_CURRENT], false);
        let read = |path: &std::path::Path| {
            let bytes = bytes::Bytes::from(std::fs::read(path).unwrap());
            let meta = parquet::file::metadata::ParquetMetaDataReader::new()
                .parse_and_finish(&bytes)
                .unwrap();
            let chunk = meta.row_group(0).column(1);
            let (start, len) = chunk.byte_range();
            bytes.slice(start as usize..(start + len) as usize)
        };
        let table_dir = dir.path().join("gold/v");
        let new_label = read(&table_dir.join(second.path().as_ref()));
        let old_labels: Vec<bytes::Bytes> = before
            .iter()
            .map(|uri| read(&table_dir.join(file_name(uri))))
            .collect();
        assert!(old_labels.contains(&new_label));
    }
}
