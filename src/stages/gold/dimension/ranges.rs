//! The changed keys in ranges of about `dimension_chunk_keys` distinct first-key values, so a
//! dimension's memory follows the range, not the table.

use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::prelude::{Expr, SessionContext, lit};

use super::super::df_err;
use crate::config::ident::quote_ansi as q;
use crate::error::{Error, Result};

/// A range of the first key column, `[low, high)`; `None` is unbounded.
pub(super) type KeyRange = (Option<ScalarValue>, Option<ScalarValue>);

/// Splits the changed keys into ranges of about `per_range` distinct values of the first key
/// column (one unbounded range when there are fewer), so a dimension's memory follows the
/// range, not the table.
pub(super) async fn key_ranges(
    ctx: &SessionContext,
    first_key: &str,
    per_range: usize,
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
        let distinct = distinct_ascending(values);
        starts(distinct.len(), per_range)
            .map(|i| ScalarValue::Int64(Some(distinct[i])).cast_to(&key_type))
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
    Ok(ranges)
}

/// Where each range after the first starts among `total` ordered distinct keys, `per_range`
/// apart (none when they fit one range).
pub(super) fn starts(total: usize, per_range: usize) -> impl Iterator<Item = usize> {
    (1..)
        .map(move |j| j * per_range)
        .take_while(move |&p| total > per_range && p < total)
}

/// The distinct values of `values`, ascending: by a bitmap over their range when it is dense
/// (a dimension's keys mostly are), else by sorting.
pub(super) fn distinct_ascending(mut values: Vec<i64>) -> Vec<i64> {
    let (Some(&lo), Some(&hi)) = (values.iter().min(), values.iter().max()) else {
        return values;
    };
    let width = (i128::from(hi) - i128::from(lo) + 1) as u128;
    if width > 64 * values.len() as u128 {
        values.sort_unstable();
        values.dedup();
        return values;
    }
    let mut seen = vec![0u64; (width as usize).div_ceil(64)];
    for &v in &values {
        let at = (v - lo) as usize;
        seen[at / 64] |= 1 << (at % 64);
    }
    let mut out = Vec::with_capacity(values.len());
    for (w, &word) in seen.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            out.push(lo + (w * 64 + bits.trailing_zeros() as usize) as i64);
            bits &= bits - 1;
        }
    }
    out
}

/// The filter of one key range; NULL keys fall in the first.
fn range_filter(first_key: &str, range: &KeyRange) -> Option<Expr> {
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
        let df = match range_filter(first_key, range) {
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

    #[test]
    fn key_ranges_split_distinct_keys_as_sorting_them_does() {
        // Dense (bitmap) and spread-out (sort) keys, repeated, negative and unordered.
        let mut next = crate::stages::gold::scrambled(11u64);
        for spread in [1i64, 1_000_003] {
            let values: Vec<i64> = (0..5_000)
                .map(|_| (next(3_000) as i64 - 1_000) * spread)
                .collect();
            let mut expected = values.clone();
            expected.sort_unstable();
            expected.dedup();
            assert_eq!(distinct_ascending(values), expected, "spread {spread}");
        }
        assert!(distinct_ascending(Vec::new()).is_empty());
        assert_eq!(starts(10, 10).count(), 0);
        assert_eq!(starts(11, 10).collect::<Vec<_>>(), [10]);
        assert_eq!(starts(25, 10).collect::<Vec<_>>(), [10, 20]);
    }
}
