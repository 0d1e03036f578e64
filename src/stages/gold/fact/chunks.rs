//! The new rows in chunks of whole silver files: grouped by the row counts silver's log keeps,
//! described by their first key (rows, unique or not, range), and checked against the table.

use futures::{StreamExt, TryStreamExt};
use tracing::Instrument;

use datafusion::common::ScalarValue;
use datafusion::prelude::{SessionContext, lit};
use deltalake::DeltaTable;

use super::super::rewrite::file_name;
use super::super::{SilverChanges, delta_err, df_err, register};
use crate::config::ident::quote_ansi as q;
use crate::error::{Error, Result};
use crate::lake::layout;

/// What one chunk of new rows holds, from its first key column alone.
#[derive(Debug, PartialEq)]
pub(super) struct ChunkKeys {
    pub(super) rows: u64,
    /// No key repeats and none is NULL (known for one key column; with more, assumed false).
    pub(super) unique: bool,
    /// The smallest and largest value of the first key column.
    pub(super) range: Option<(ScalarValue, ScalarValue)>,
}

/// Counts the rows of the registered `table` (one chunk of changes), and the distinct and
/// non-null values of its first key column and their range, in one aggregate.
async fn chunk_keys(
    ctx: &SessionContext,
    table: &str,
    keys: &[String],
    name: &str,
) -> Result<ChunkKeys> {
    if let [key] = keys
        && let Some(shape) = integer_chunk_keys(ctx, table, key, name).await?
    {
        return Ok(shape);
    }
    sql_chunk_keys(ctx, table, keys, name).await
}

/// [`chunk_keys`] for one integer key column (of a type that fits in 64-bit signed), without
/// the hash aggregate of `COUNT(DISTINCT)`, which sat on the fact's critical path (decision
/// 002, "Gold facts"). Repeats are found with a bitmap
/// over the chunk's key range when it is dense (fact keys mostly are), else by sorting.
/// `None` for any other key type.
pub(super) async fn integer_chunk_keys(
    ctx: &SessionContext,
    table: &str,
    key: &str,
    name: &str,
) -> Result<Option<ChunkKeys>> {
    use arrow::datatypes::DataType::*;
    let fail = |e| df_err(name, "reading silver changes")(e);
    let df = ctx
        .table(table)
        .await
        .map_err(fail)?
        .select(vec![datafusion::prelude::col(
            datafusion::common::Column::from_name(key),
        )])
        .map_err(fail)?;
    let key_type = df.schema().field(0).data_type().clone();
    if !matches!(
        key_type,
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32
    ) {
        return Ok(None);
    }
    let batches = df.collect().await.map_err(fail)?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut values: Vec<i64> = Vec::with_capacity(rows);
    for batch in &batches {
        let Some(column) = crate::lake::int_column(batch.column(0)) else {
            return Ok(None);
        };
        values.extend(column.iter().flatten());
    }
    let (Some(&lo), Some(&hi)) = (values.iter().min(), values.iter().max()) else {
        return Ok(Some(ChunkKeys {
            rows: rows as u64,
            unique: rows == 0,
            range: None,
        }));
    };
    let range = |v: i64| ScalarValue::Int64(Some(v)).cast_to(&key_type).map_err(fail);
    let range = Some((range(lo)?, range(hi)?));
    // NULL keys are not distinct values: they make the chunk "repeating", the safe side.
    let unique = values.len() == rows && !repeats(&mut values, lo, hi);
    Ok(Some(ChunkKeys {
        rows: rows as u64,
        unique,
        range,
    }))
}

/// Whether a value occurs twice in `values`, all within `lo..=hi` (may reorder them).
pub(super) fn repeats(values: &mut [i64], lo: i64, hi: i64) -> bool {
    let width = (i128::from(hi) - i128::from(lo) + 1) as u128;
    if width <= 64 * values.len() as u128 {
        let mut seen = vec![0u64; (width as usize).div_ceil(64)];
        for &v in values.iter() {
            let at = (v - lo) as usize;
            let (word, bit) = (at / 64, 1u64 << (at % 64));
            if seen[word] & bit != 0 {
                return true;
            }
            seen[word] |= bit;
        }
        false
    } else {
        values.sort_unstable();
        values.windows(2).any(|w| w[0] == w[1])
    }
}

/// [`chunk_keys`] by SQL, for any key.
pub(super) async fn sql_chunk_keys(
    ctx: &SessionContext,
    table: &str,
    keys: &[String],
    name: &str,
) -> Result<ChunkKeys> {
    let fail = |e| df_err(name, "reading silver changes")(e);
    let batches = ctx
        .sql(&format!(
            "SELECT COUNT(*), COUNT(DISTINCT {k}), COUNT({k}), MIN({k}), MAX({k}) FROM {t}",
            k = q(&keys[0]),
            t = q(table)
        ))
        .await
        .map_err(fail)?
        .collect()
        .await
        .map_err(fail)?;
    let value = |i: usize| crate::lake::first_int(&batches, i).unwrap_or(0).max(0) as u64;
    let (rows, distinct, non_null) = (value(0), value(1), value(2));
    let scalar = |i: usize| {
        batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .and_then(|b| ScalarValue::try_from_array(b.column(i), 0).ok())
            .filter(|v| !v.is_null())
    };
    Ok(ChunkKeys {
        rows,
        // NULL keys are not distinct values: they make the chunk "repeating", the safe side.
        unique: keys.len() == 1 && distinct == rows && non_null == rows,
        range: scalar(3).zip(scalar(4)),
    })
}

/// Whether two closed key ranges share no value (values that do not compare count as
/// sharing).
fn disjoint(a: &(ScalarValue, ScalarValue), b: &(ScalarValue, ScalarValue)) -> bool {
    use std::cmp::Ordering::Less;
    a.1.partial_cmp(&b.0) == Some(Less) || b.1.partial_cmp(&a.0) == Some(Less)
}

/// The added silver files in groups of at most `limit` rows (a bigger file is a group alone),
/// by the row counts the silver log keeps per file, in the order of their smallest first key
/// when the log has it for every file: files next to each other in key order make chunks
/// whose key ranges do not overlap, which are then written together. (The log lists files in
/// no particular order, and silver writes a big bronze file as two files of one commit.)
pub(super) fn chunk_files(
    changes: &SilverChanges,
    limit: usize,
    silver: &str,
    first_key: &str,
) -> Result<Vec<Vec<String>>> {
    let path = layout::silver_table(silver);
    group_files(
        &changes.table,
        changes.files.clone(),
        limit,
        &path,
        first_key,
    )
}

/// `files` of `table` (at `path`) in groups of at most `limit` rows, a bigger file alone, in
/// the order of their smallest `first_key` (see [`chunk_files`]).
pub(super) fn group_files(
    table: &DeltaTable,
    mut files: Vec<String>,
    limit: usize,
    path: &str,
    first_key: &str,
) -> Result<Vec<Vec<String>>> {
    let snapshot = table.snapshot().map_err(delta_err(path))?;
    // Keyed by file name (delta-rs names data files uniquely), so each lookup is one probe;
    // a file not found counts as a full chunk, which only makes chunks smaller.
    let logged: std::collections::HashMap<String, (usize, Option<serde_json::Value>)> = snapshot
        .log_data()
        .iter()
        .map(|f| {
            let min = f
                .stats()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .and_then(|s| s.get("minValues")?.get(first_key).cloned());
            (
                file_name(&f.path()).to_string(),
                (f.num_records().unwrap_or(limit), min),
            )
        })
        .collect();
    let rows_of = |uri: &str| logged.get(file_name(uri)).map_or(limit, |l| l.0);
    let min_of = |uri: &str| logged.get(file_name(uri)).and_then(|l| l.1.as_ref());
    let mins: Vec<Option<&serde_json::Value>> = files.iter().map(|f| min_of(f)).collect();
    if mins
        .iter()
        .all(|m| m.is_some_and(serde_json::Value::is_number))
    {
        files.sort_by(|a, b| {
            let n = |f: &str| min_of(f).and_then(serde_json::Value::as_f64);
            n(a).partial_cmp(&n(b)).unwrap_or(std::cmp::Ordering::Equal)
        });
    } else if mins
        .iter()
        .all(|m| m.is_some_and(serde_json::Value::is_string))
    {
        files.sort_by(|a, b| {
            let t = |f: &str| min_of(f).and_then(serde_json::Value::as_str);
            t(a).cmp(&t(b))
        });
    }
    let mut chunks: Vec<Vec<String>> = Vec::new();
    let mut in_chunk = 0;
    for file in files {
        let n = rows_of(&file);
        match chunks.last_mut() {
            Some(chunk) if in_chunk + n <= limit => {
                chunk.push(file);
                in_chunk += n;
            }
            _ => {
                chunks.push(vec![file]);
                in_chunk = n;
            }
        }
    }
    Ok(chunks)
}

/// Whether any key of `changes` is already in the table. The table is scanned only within
/// the chunk's range of the first key, which the files' statistics prune to little when
/// keys grow with time.
pub(super) async fn overlaps(
    ctx: &SessionContext,
    target: &DeltaTable,
    name: &str,
    keys: &[String],
    (lo, hi): &(ScalarValue, ScalarValue),
) -> Result<bool> {
    // Keys past every stored file's range by the log's statistics (new keys of a growing
    // sequence) are in no file: nothing to read.
    let units = |v: &ScalarValue| crate::lake::stats::units(v, &arrow::datatypes::DataType::Int64);
    if let (Some(ranges), Some(lo), Some(hi)) = (
        crate::lake::stats::int_ranges(target, &keys[0]),
        units(lo),
        units(hi),
    ) && ranges.iter().all(|&(_, min, max)| max < lo || min > hi)
    {
        return Ok(false);
    }
    let fail = |e| df_err(name, "looking for the new keys in the table")(e);
    let key = |k: &String| datafusion::prelude::col(datafusion::common::Column::from_name(k));
    let changes = ctx.table("changes").await.map_err(fail)?;
    let (lo, hi) = (lo.clone(), hi.clone());
    let _ = ctx.deregister_table("__target");
    register(ctx, "__target", target, None).await?;
    let existing = ctx
        .table("__target")
        .await
        .map_err(fail)?
        .filter(key(&keys[0]).between(lit(lo), lit(hi)))
        .map_err(fail)?
        .select(
            keys.iter()
                .enumerate()
                .map(|(i, k)| key(k).alias(format!("__t{i}")))
                .collect::<Vec<_>>(),
        )
        .map_err(fail)?;
    let new_keys = changes
        .select(keys.iter().map(key).collect::<Vec<_>>())
        .map_err(fail)?
        .distinct()
        .map_err(fail)?;
    let left: Vec<&str> = keys.iter().map(String::as_str).collect();
    let right: Vec<String> = (0..keys.len()).map(|i| format!("__t{i}")).collect();
    let right: Vec<&str> = right.iter().map(String::as_str).collect();
    let found = new_keys
        .join(
            existing,
            datafusion::common::JoinType::LeftSemi,
            &left,
            &right,
            None,
        )
        .map_err(fail)?
        .limit(0, Some(1))
        .map_err(fail)?
        .count()
        .await
        .map_err(fail)?;
    Ok(found > 0)
}

/// Describes every chunk (see [`chunk_keys`]), two at a time, each on its own task.
pub(super) async fn describe(
    ctx: &SessionContext,
    silver: &DeltaTable,
    chunks: &[Vec<String>],
    keys: &[String],
    name: &str,
) -> Result<Vec<ChunkKeys>> {
    futures::stream::iter(chunks.iter().cloned().enumerate().map(|(i, chunk)| {
        let (ctx, silver) = (ctx.clone(), silver.clone());
        let (keys, table) = (keys.to_vec(), name.to_string());
        let describe = async move {
            let view = format!("__chunk{i}");
            register(&ctx, &view, &silver, Some(&chunk)).await?;
            let shape = chunk_keys(&ctx, &view, &keys, &table).await;
            let _ = ctx.deregister_table(view.as_str());
            shape
        };
        let task = tokio::spawn(describe.in_current_span());
        async move {
            task.await
                .map_err(|e| Error::Task(format!("describing a chunk of gold.{name}: {e}")))?
        }
    }))
    .buffered(2)
    .try_collect()
    .await
}

/// The chunks that can be written together, by one query: those whose keys are unique, in
/// a range no other chunk's keys reach, and not yet in the table. They need neither "latest
/// row per key" nor a merge, whenever they are written, and one query builds each
/// dimension's hash table once for all of them rather than once per chunk.
pub(super) async fn together(
    ctx: &SessionContext,
    shapes: &[ChunkKeys],
    chunks: &[Vec<String>],
    changes: &SilverChanges,
    target: &DeltaTable,
    keys: &[String],
    name: &str,
) -> Result<Vec<usize>> {
    let mut together = Vec::new();
    for (i, shape) in shapes.iter().enumerate() {
        let Some(range) = shape.range.as_ref().filter(|_| shape.unique) else {
            continue;
        };
        let alone = shapes
            .iter()
            .enumerate()
            .all(|(j, other)| j == i || other.range.as_ref().is_none_or(|o| disjoint(range, o)));
        if !alone {
            continue;
        }
        if target.version().is_some() {
            let _ = ctx.deregister_table("changes");
            register(ctx, "changes", &changes.table, Some(&chunks[i])).await?;
            if overlaps(ctx, target, name, keys, range).await? {
                continue;
            }
        }
        together.push(i);
    }
    Ok(together)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
    use std::sync::Arc;

    async fn both(column: ArrayRef) -> (Option<ChunkKeys>, ChunkKeys) {
        let ctx = SessionContext::new();
        let batch = RecordBatch::try_from_iter([("k", column)]).unwrap();
        // Two batches, so a repeat can straddle them.
        let half = batch.num_rows() / 2;
        let batches = vec![
            batch.slice(0, half),
            batch.slice(half, batch.num_rows() - half),
        ];
        let table =
            datafusion::datasource::MemTable::try_new(batch.schema(), vec![batches]).unwrap();
        ctx.register_table("changes", Arc::new(table)).unwrap();
        let keys = ["k".to_string()];
        (
            integer_chunk_keys(&ctx, "changes", "k", "t").await.unwrap(),
            sql_chunk_keys(&ctx, "changes", &keys, "t").await.unwrap(),
        )
    }

    #[tokio::test]
    async fn integer_chunks_are_described_as_count_distinct_describes_them() {
        let nearly_sorted: Vec<i64> = (0..5000)
            .map(|i| if i % 97 == 0 { 20_000 - i } else { i })
            .collect();
        let mut repeated = nearly_sorted.clone();
        repeated[4000] = repeated[10];
        let cases: Vec<(&str, ArrayRef, bool)> = vec![
            (
                "dense, unique",
                Arc::new(Int64Array::from(nearly_sorted.clone())),
                true,
            ),
            (
                "dense, a repeat across batches",
                Arc::new(Int64Array::from(repeated)),
                false,
            ),
            (
                "sparse, unique",
                Arc::new(Int64Array::from(vec![i64::MIN, -5, 0, 1 << 40, i64::MAX])),
                true,
            ),
            (
                "sparse, a repeat",
                Arc::new(Int64Array::from(vec![1 << 50, 3, -(1 << 50), 3])),
                false,
            ),
            (
                "a NULL key",
                Arc::new(Int32Array::from(vec![Some(1), None, Some(3), Some(4)])),
                false,
            ),
            (
                "32-bit",
                Arc::new(Int32Array::from(vec![7, -2, 5, 6])),
                true,
            ),
            (
                "only NULLs",
                Arc::new(Int32Array::from(vec![None, None])),
                false,
            ),
            (
                "no rows",
                Arc::new(Int32Array::from(Vec::<i32>::new())),
                true,
            ),
        ];
        for (case, column, unique) in cases {
            let (fast, sql) = both(column).await;
            let fast = fast.expect(case);
            assert_eq!(fast, sql, "{case}");
            assert_eq!(fast.unique, unique, "{case}");
        }
        // Other key types go by SQL.
        let strings: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "a"]));
        let (fast, sql) = both(strings).await;
        assert!(fast.is_none() && !sql.unique);
    }

    #[tokio::test]
    async fn new_keys_overlap_a_table_only_where_it_holds_one() {
        let dir = tempfile::tempdir().unwrap();
        let lake = crate::lake::Lake::open(dir.path().to_str().unwrap()).unwrap();
        let mut table = lake.delta_table("gold/f").await.unwrap();
        // Files of keys 1-10 and 20-30, leaving 11-19 out.
        for keys in [(1..=10).collect::<Vec<i64>>(), (20..=30).collect()] {
            let column: ArrayRef = Arc::new(Int64Array::from(keys));
            let batch = RecordBatch::try_from_iter([("k", column)]).unwrap();
            table = table.write(vec![batch]).await.unwrap();
        }
        let ctx = crate::stages::gold::session();
        let keys = ["k".to_string()];
        for (new, expected) in [
            (vec![11, 19], false),
            (vec![12, 25], true),
            (vec![31, 40], false),
        ] {
            let column: ArrayRef = Arc::new(Int64Array::from(new.clone()));
            let batch = RecordBatch::try_from_iter([("k", column)]).unwrap();
            let held = datafusion::datasource::MemTable::try_new(batch.schema(), vec![vec![batch]]);
            let _ = ctx.deregister_table("changes");
            ctx.register_table("changes", Arc::new(held.unwrap()))
                .unwrap();
            let range = (
                ScalarValue::Int64(Some(new[0])),
                ScalarValue::Int64(Some(new[1])),
            );
            let found = overlaps(&ctx, &table, "f", &keys, &range).await.unwrap();
            assert_eq!(found, expected, "{new:?}");
        }
    }
}
