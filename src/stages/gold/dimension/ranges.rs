//! The changed keys in ranges of about `dimension_chunk_keys` distinct first-key values, so a
//! dimension's memory follows the range, not the table.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::prelude::{Expr, SessionContext, lit};

use super::super::df_err;
use super::keyset::KeySet;
use crate::config::ident::quote_ansi as q;
use crate::error::{Error, Result};

/// A range of the first key column, `[low, high)`; `None` is unbounded.
pub(super) type Bounds = (Option<ScalarValue>, Option<ScalarValue>);

/// A range of changed keys: its bounds, and its changed first-key values when they are
/// integers and were asked for.
pub(super) struct KeyRange {
    pub bounds: Bounds,
    pub keys: Option<Arc<KeySet>>,
}

/// Splits the changed keys into ranges of about `per_range` distinct values of the first key
/// column (one unbounded range when there are fewer), so a dimension's memory follows the
/// range, not the table; `with_sets`, each range also holds its changed keys.
pub(super) async fn key_ranges(
    ctx: &SessionContext,
    first_key: &str,
    (per_range, with_sets): (usize, bool),
    name: &str,
) -> Result<Vec<KeyRange>> {
    use DataType::*;
    let fail = || df_err(name, "splitting the changed keys");
    let key = q(first_key);
    let per_range = per_range.max(1);
    let df = ctx
        .sql(&format!(
            "SELECT {key} AS k FROM changes_all WHERE {key} IS NOT NULL"
        ))
        .await
        .map_err(fail())?;
    let key_type = df.schema().field(0).data_type().clone();
    let mut sets = None;
    let bounds: Vec<ScalarValue> = if matches!(
        key_type,
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32
    ) {
        // Integer keys are made distinct and ordered here, by a bitmap when dense, rather
        // than by the query's hash aggregate and sort.
        let batches = df.collect().await.map_err(fail())?;
        let mut values = Vec::with_capacity(batches.iter().map(|b| b.num_rows()).sum());
        for batch in &batches {
            let column = crate::lake::int_column(batch.column(0)).ok_or_else(|| Error::Gold {
                table: name.to_string(),
                message: format!("its key {first_key} is not an integer"),
            })?;
            values.extend(column.iter().flatten());
        }
        let distinct = KeySet::of(values).ascending();
        let at: Vec<usize> = starts(distinct.len(), per_range).collect();
        if with_sets {
            let cuts = std::iter::once(0).chain(at.iter().copied());
            let ends = at.iter().copied().chain(std::iter::once(distinct.len()));
            let parts = cuts
                .zip(ends)
                .map(|(a, b)| KeySet::of(distinct[a..b].to_vec()));
            sets = Some(parts.map(Arc::new).collect::<Vec<_>>());
        }
        at.iter()
            .map(|&i| ScalarValue::Int64(Some(distinct[i])).cast_to(&key_type))
            .collect::<datafusion::error::Result<_>>()
            .map_err(fail())?
    } else {
        let batches = df
            .distinct()
            .and_then(|d| d.sort(vec![datafusion::prelude::col("k").sort(true, false)]))
            .map_err(fail())?
            .collect()
            .await
            .map_err(fail())?;
        let at: Vec<(usize, usize)> = batches
            .iter()
            .enumerate()
            .flat_map(|(b, batch)| (0..batch.num_rows()).map(move |row| (b, row)))
            .collect();
        starts(at.len(), per_range)
            .map(|i| ScalarValue::try_from_array(batches[at[i].0].column(0), at[i].1))
            .collect::<datafusion::error::Result<_>>()
            .map_err(fail())?
    };
    let mut ranges = Vec::with_capacity(bounds.len() + 1);
    let mut low = None;
    for bound in bounds {
        ranges.push((low, Some(bound.clone())));
        low = Some(bound);
    }
    ranges.push((low, None));
    let mut sets = sets.map(Vec::into_iter);
    Ok(ranges
        .into_iter()
        .map(|bounds| KeyRange {
            bounds,
            keys: sets.as_mut().and_then(Iterator::next),
        })
        .collect())
}

/// Where each range after the first starts among `total` ordered distinct keys, `per_range`
/// apart (none when they fit one range).
pub(super) fn starts(total: usize, per_range: usize) -> impl Iterator<Item = usize> {
    (1..)
        .map(move |j| j * per_range)
        .take_while(move |&p| total > per_range && p < total)
}

/// The filter of one key range; NULL keys fall in the first.
fn range_filter(first_key: &str, range: &Bounds) -> Option<Expr> {
    let key = datafusion::prelude::col(datafusion::common::Column::from_name(first_key));
    match range {
        (None, None) => None,
        (None, Some(high)) => Some(key.clone().lt(lit(high.clone())).or(key.is_null())),
        (Some(low), None) => Some(key.gt_eq(lit(low.clone()))),
        (Some(low), Some(high)) => Some(
            key.clone()
                .gt_eq(lit(low.clone()))
                .and(key.lt(lit(high.clone()))),
        ),
    }
}

/// Registers `silver`, `changes` and (with `gold`) `gold` as the rows of one key range of
/// `silver_all`, `changes_all` and `gold_all`.
pub(super) async fn focus(
    ctx: &SessionContext,
    first_key: &str,
    range: &KeyRange,
    gold: bool,
    name: &str,
) -> Result<()> {
    let mut views = vec![("silver", "silver_all"), ("changes", "changes_all")];
    if gold {
        views.push(("gold", "gold_all"));
    }
    for (view, base) in views {
        let _ = ctx.deregister_table(view);
        let df = (ctx.table(base).await).map_err(df_err(name, "reading a key range"))?;
        let df = match range_filter(first_key, &range.bounds) {
            Some(filter) => df
                .filter(filter)
                .map_err(df_err(name, "reading a key range"))?,
            None => df,
        };
        ctx.register_table(view, df.into_view())
            .map_err(df_err(name, "reading a key range"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_range_holds_the_changed_keys_within_its_bounds() {
        use arrow::array::{Int32Array, RecordBatch};
        use arrow::datatypes::{Field, Schema};
        let mut next = crate::stages::gold::scrambled(3u64);
        let ids: Vec<Option<i32>> = (0..300)
            .map(|i| (i % 17 != 0).then(|| next(120) as i32 - 20))
            .collect();
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, true)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int32Array::from(ids.clone()))]).unwrap();
        let ctx = SessionContext::new();
        ctx.register_batch("changes_all", batch).unwrap();
        let bare = key_ranges(&ctx, "id", (25, false), "t").await.unwrap();
        assert!(bare.iter().all(|r| r.keys.is_none()));
        let ranges = key_ranges(&ctx, "id", (25, true), "t").await.unwrap();
        assert_eq!(ranges.len(), bare.len());
        assert!(ranges.len() > 3);
        let within = |v: i64, bounds: &Bounds| {
            let v = ScalarValue::Int32(Some(v as i32));
            bounds.0.as_ref().is_none_or(|low| &v >= low)
                && bounds.1.as_ref().is_none_or(|high| &v < high)
        };
        let mut all = Vec::new();
        for range in &ranges {
            let mut expected: Vec<i64> = ids.iter().flatten().map(|&v| i64::from(v)).collect();
            expected.retain(|&v| within(v, &range.bounds));
            expected.sort_unstable();
            expected.dedup();
            let keys = range.keys.as_ref().unwrap().ascending();
            assert_eq!(keys, expected);
            all.extend(keys);
        }
        assert_eq!(all.len(), KeySet::of(all.clone()).ascending().len());
    }

    #[test]
    fn ranges_start_per_range_keys_apart() {
        assert_eq!(starts(10, 10).count(), 0);
        assert_eq!(starts(11, 10).collect::<Vec<_>>(), [10]);
        assert_eq!(starts(25, 10).collect::<Vec<_>>(), [10, 20]);
    }
}
