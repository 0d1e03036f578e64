//! One row per (key, watermark value): within a file (`first_per_version`) and against what
//! silver already holds in the file's watermark range (`without_loaded`).

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use datafusion::common::JoinType;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionContext, lit};
use deltalake::DeltaTable;

use super::clean::column;
use super::rows::Rows;
use crate::config::TableSpec;

/// Keeps the first row per (keys, watermark value) within the file (as the rows to keep, see
/// [`Rows`]). Done with Arrow's row format and a hash set rather than a DataFusion DISTINCT
/// ON, which keeps an accumulator per column and was the slowest, hungriest step of a file
/// (docs/decisions/002-speed-and-memory.md, "Silver").
pub(super) fn first_per_version(
    batches: Vec<RecordBatch>,
    passed: &[Option<BooleanArray>],
    table: &TableSpec,
) -> std::result::Result<Rows, arrow::error::ArrowError> {
    use arrow::row::{RowConverter, SortField};
    let Some(first) = batches.first() else {
        return Ok(Rows::all(batches));
    };
    let names: Vec<&String> = table
        .keys
        .iter()
        .chain(std::iter::once(&table.cdc_column))
        .collect();
    let schema = first.schema();
    let indices = names
        .iter()
        .map(|n| schema.index_of(n))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let masks: Vec<BooleanArray> = match integer_pairs(&batches, &indices) {
        // One integer-like key and the watermark, neither NULL (the usual case): each row is
        // one number, found by slot or hash (`first_of_pairs`), cheaper than comparing
        // row-format bytes (a memcmp per probe).
        Some(pairs) => first_of_pairs(&pairs, passed, total),
        // Otherwise rows are compared as their row-format bytes, borrowed from the converted
        // batches (no per-row allocation), under a fast non-cryptographic hash (the keys are
        // our own data).
        None => {
            let converter = RowConverter::new(
                indices
                    .iter()
                    .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                    .collect(),
            )?;
            let rows = batches
                .iter()
                .map(|batch| {
                    let columns: Vec<ArrayRef> =
                        indices.iter().map(|&i| batch.column(i).clone()).collect();
                    converter.convert_columns(&columns)
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let mut seen: std::collections::HashSet<&[u8], foldhash::fast::RandomState> =
                std::collections::HashSet::with_capacity_and_hasher(total, Default::default());
            rows.iter()
                .enumerate()
                .map(|(b, rows)| {
                    let counts = counted(passed, b);
                    mask(rows.num_rows(), |i| {
                        counts(i) && seen.insert(rows.row(i).data())
                    })
                })
                .collect()
        }
    };
    let keep = (batches.iter().zip(masks))
        .map(|(batch, mask)| (mask.true_count() < batch.num_rows()).then_some(mask))
        .collect();
    Ok(Rows { batches, keep })
}

/// The first row of each (key, watermark) pair (see [`integer_pairs`]), per batch.
///
/// When the file's keys are dense (their range at most four times its rows, as the near-
/// sequential ids of a fact file, or a dimension file's ids), each key gets a slot holding the
/// first watermark it came with, and only a key that comes with a second watermark goes to a
/// hash set. Slots are visited in the file's order, so this is a sequential pass where the
/// set was a random probe per row: the set was a tenth of silver's time for 10M streams.
pub(super) fn first_of_pairs(
    pairs: &[Vec<u128>],
    passed: &[Option<BooleanArray>],
    total: usize,
) -> Vec<BooleanArray> {
    let key = |p: u128| i128::from((p >> 64) as u64 as i64);
    let range = pairs.iter().flatten().map(|&p| key(p)).fold(None, |r, k| {
        Some(r.map_or((k, k), |(l, h): (i128, i128)| (l.min(k), h.max(k))))
    });
    // Keys are i64, so the span of any range fits an i128.
    match range.map(|(low, high)| (low, usize::try_from(high - low + 1))) {
        Some((low, Ok(span))) if span <= total.saturating_mul(4) => {
            dense_firsts(pairs, passed, |p| (key(p) - low) as usize, span)
        }
        _ => hashed_firsts(pairs, passed, total),
    }
}

/// [`first_of_pairs`] with a hash set of every pair.
pub(super) fn hashed_firsts(
    pairs: &[Vec<u128>],
    passed: &[Option<BooleanArray>],
    total: usize,
) -> Vec<BooleanArray> {
    let mut seen: std::collections::HashSet<u128, foldhash::fast::RandomState> =
        std::collections::HashSet::with_capacity_and_hasher(total, Default::default());
    pairs
        .iter()
        .enumerate()
        .map(|(b, p)| {
            let counts = counted(passed, b);
            mask(p.len(), |i| counts(i) && seen.insert(p[i]))
        })
        .collect()
}

/// `keep(i)` for rows `0..len`, in order, as a filter (no validity: a mask collected from
/// `Option<bool>`s built one, bit by bit, and cost as much as the set of pairs).
pub(super) fn mask(len: usize, keep: impl FnMut(usize) -> bool) -> BooleanArray {
    BooleanArray::from(arrow::buffer::BooleanBuffer::collect_bool(len, keep))
}

/// Whether row `i` of batch `b` takes part in finding first rows: it passed the `drop` rules
/// (rows that did not are neither kept nor the first of their pair).
pub(super) fn counted(passed: &[Option<BooleanArray>], b: usize) -> impl Fn(usize) -> bool + '_ {
    let passed = passed.get(b).and_then(Option::as_ref);
    move |i| passed.is_none_or(|p| p.value(i))
}

/// [`first_of_pairs`] with a slot per key in `0..span` (`slot` maps a pair to it).
pub(super) fn dense_firsts(
    pairs: &[Vec<u128>],
    passed: &[Option<BooleanArray>],
    slot: impl Fn(u128) -> usize,
    span: usize,
) -> Vec<BooleanArray> {
    const EMPTY: u8 = 0;
    const ONE: u8 = 1;
    const MANY: u8 = 2;
    let mut state = vec![EMPTY; span];
    let mut first = vec![0u64; span];
    let mut many: std::collections::HashSet<u128, foldhash::fast::RandomState> = Default::default();
    let mut is_first = |p: u128| -> bool {
        let i = slot(p);
        let watermark = p as u64;
        match state[i] {
            EMPTY => {
                state[i] = ONE;
                first[i] = watermark;
                true
            }
            ONE if first[i] == watermark => false,
            ONE => {
                state[i] = MANY;
                many.insert((p >> 64 << 64) | u128::from(first[i]));
                many.insert(p)
            }
            _ => many.insert(p),
        }
    };
    pairs
        .iter()
        .enumerate()
        .map(|(b, p)| {
            let counts = counted(passed, b);
            mask(p.len(), |i| counts(i) && is_first(p[i]))
        })
        .collect()
}

/// Per batch, each row's two columns at `indices` as one number (the first in the high
/// half), when both are integers, dates or timestamps without NULLs; `None` otherwise.
pub(super) fn integer_pairs(batches: &[RecordBatch], indices: &[usize]) -> Option<Vec<Vec<u128>>> {
    let [a, b] = indices else {
        return None;
    };
    batches
        .iter()
        .map(|batch| {
            let (high, low) = (
                crate::lake::ordered_i64(batch.column(*a))?,
                crate::lake::ordered_i64(batch.column(*b))?,
            );
            Some(
                high.values()
                    .iter()
                    .zip(low.values())
                    .map(|(&h, &l)| (u128::from(h as u64) << 64) | u128::from(l as u64))
                    .collect(),
            )
        })
        .collect()
}

/// Removes rows whose (keys, watermark value) silver already holds, reading only silver's
/// rows in the file's watermark range (file statistics prune the rest). Usually there are
/// none (a file of new versions): the rows are then kept as they are, without a join (which
/// hashed every row of the file: a fortieth of a second per 400k rows, on silver's critical
/// path). A few are held in memory and the file's rows probe them; more (an overlapping
/// backfill) stream through the join.
pub(super) async fn without_loaded(
    ctx: &SessionContext,
    rows: Rows,
    schema: SchemaRef,
    delta: &DeltaTable,
    table: &TableSpec,
) -> datafusion::error::Result<Rows> {
    const HELD_ROWS: usize = 1 << 16;
    let cdc = column(&table.cdc_column);
    // The range of every row's watermark, the ones not kept included: it holds the kept ones'.
    let all = ctx.read_table(Arc::new(MemTable::try_new(
        schema.clone(),
        vec![rows.batches.clone()],
    )?))?;
    // No watermark value in the file: no row of it can be in silver already.
    let Some((lo, hi)) = crate::lake::bounds(all, &table.cdc_column).await? else {
        return Ok(rows);
    };
    let provider = crate::lake::delta_provider(
        delta,
        ctx,
        &crate::lake::layout::silver_table(&table.silver_name()),
    )
    .await
    .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
    let names: Vec<&String> = table
        .keys
        .iter()
        .chain(std::iter::once(&table.cdc_column))
        .collect();
    let existing = ctx
        .read_table(provider)?
        .filter(cdc.clone().between(lit(lo), lit(hi)))?
        .select(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| column(n).alias(format!("__loaded_{i}")))
                .collect::<Vec<_>>(),
        )?;
    let held = existing
        .clone()
        .limit(0, Some(HELD_ROWS + 1))?
        .collect()
        .await?;
    let count: usize = held.iter().map(RecordBatch::num_rows).sum();
    if count == 0 {
        return Ok(rows);
    }
    let df = ctx.read_table(Arc::new(MemTable::try_new(schema, vec![rows.filtered()?])?))?;
    let left: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
    let right: Vec<String> = (0..names.len()).map(|i| format!("__loaded_{i}")).collect();
    let right: Vec<&str> = right.iter().map(String::as_str).collect();
    let kept = if count <= HELD_ROWS {
        ctx.read_batches(held)?
            .join(df, JoinType::RightAnti, &right, &left, None)?
    } else {
        df.join(existing, JoinType::LeftAnti, &left, &right, None)?
    };
    Ok(Rows::all(kept.collect().await?))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{batch, spec};
    use super::*;
    use arrow::array::{Array, StringArray};
    use arrow::array::{AsArray, Int32Array};

    /// The first row of each (key, watermark) stays, across batches, whether the pair is
    /// compared as one number or (with a NULL watermark) as row-format bytes; a negative key
    /// and a key equal to another row's watermark stay distinct.
    #[test]
    pub(super) fn the_first_row_per_key_and_watermark_stays_on_both_paths() {
        use arrow::array::TimestampMicrosecondArray;
        let rows = |ids: Vec<i32>, at: Vec<Option<i64>>, tag: Vec<&str>| {
            batch(vec![
                ("user_id", Arc::new(Int32Array::from(ids)) as ArrayRef),
                (
                    "updated_at",
                    Arc::new(TimestampMicrosecondArray::from(at).with_timezone("UTC")) as ArrayRef,
                ),
                ("tag", Arc::new(StringArray::from(tag)) as ArrayRef),
            ])
        };
        let tags = |batches: Vec<RecordBatch>| -> Vec<String> {
            batches
                .iter()
                .flat_map(|b| {
                    let tags = b.column(2).as_string::<i32>().clone();
                    (0..tags.len())
                        .map(|i| tags.value(i).to_string())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let spec = spec("DimUser");
        let numbers = vec![
            rows(
                vec![1, 1, -1, 5],
                vec![Some(5), Some(5), Some(5), Some(1)],
                vec!["a", "dup", "b", "c"],
            ),
            rows(
                vec![1, 5, 1],
                vec![Some(6), Some(1), Some(5)],
                vec!["d", "dup", "dup"],
            ),
        ];
        assert!(integer_pairs(&numbers, &[0, 1]).is_some());
        assert_eq!(
            tags(
                first_per_version(numbers, &[], &spec)
                    .unwrap()
                    .filtered()
                    .unwrap()
            ),
            ["a", "b", "c", "d"]
        );
        let with_null = vec![
            rows(
                vec![1, 1, -1, 5],
                vec![Some(5), Some(5), None, Some(1)],
                vec!["a", "dup", "b", "c"],
            ),
            rows(
                vec![1, -1, 1],
                vec![Some(6), None, Some(5)],
                vec!["d", "dup", "dup"],
            ),
        ];
        assert!(integer_pairs(&with_null, &[0, 1]).is_none());
        assert_eq!(
            tags(
                first_per_version(with_null, &[], &spec)
                    .unwrap()
                    .filtered()
                    .unwrap()
            ),
            ["a", "b", "c", "d"]
        );
        // Rows that broke a drop rule are neither kept nor the first of their pair: the next
        // row of the same key and watermark that passed is (both paths).
        for at in [Some(9), None] {
            let batches = vec![
                rows(
                    vec![1, 1, 2],
                    vec![Some(5), Some(5), at],
                    vec!["x", "a", "b"],
                ),
                rows(vec![2, 3], vec![at, Some(7)], vec!["dup", "y"]),
            ];
            let passed = [
                Some(BooleanArray::from(vec![false, true, true])),
                Some(BooleanArray::from(vec![true, false])),
            ];
            assert_eq!(
                tags(
                    first_per_version(batches, &passed, &spec)
                        .unwrap()
                        .filtered()
                        .unwrap()
                ),
                ["a", "b"],
                "watermark {at:?}"
            );
        }
    }

    #[test]
    pub(super) fn dense_keys_find_the_same_first_rows_as_the_hash_set() {
        // Near-sequential ids with repeats, keys seen with several watermarks, negative keys.
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            state >> 33
        };
        let pairs: Vec<Vec<u128>> = (0..3)
            .map(|_| {
                (0..5_000)
                    .map(|_| {
                        let key = (next() % 6_000) as i64 - 100;
                        let watermark = (next() % 3) as i64 * 1_000_000_007;
                        (u128::from(key as u64) << 64) | u128::from(watermark as u64)
                    })
                    .collect()
            })
            .collect();
        // Batches without rows (all quarantined) have no key range.
        assert_eq!(first_of_pairs(&[vec![], vec![]], &[], 0).len(), 2);
        let total = 15_000;
        let dense = first_of_pairs(&pairs, &[], total);
        assert_eq!(dense, hashed_firsts(&pairs, &[], total));
        let kept: usize = dense.iter().map(|m| m.true_count()).sum();
        assert!(kept > 6_000 && kept < total, "{kept}");
        // A key range far wider than the rows takes the hash set, with the same answer.
        let sparse = vec![vec![1u128 << 100, 1, 1 << 100, 2, 1]];
        let firsts = first_of_pairs(&sparse, &[], 5);
        assert_eq!(firsts, hashed_firsts(&sparse, &[], 5));
        assert_eq!(
            firsts[0],
            BooleanArray::from(vec![true, true, false, true, false])
        );
    }
}
