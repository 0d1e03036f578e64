//! The changed keys of a range as a filter the parquet reader applies row by row: reading the
//! stored versions of those keys decodes the key column of the range's files, and every other
//! column only for the rows of a changed key.
//!
//! Why: changed keys spread over a dimension's whole key space, so the files of a range hold
//! many stored rows for each one read, and joining them with the keys decoded every column of
//! all of them (decision 002, "Gold dimensions").

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, BooleanArray};
use arrow::datatypes::DataType;
use datafusion::common::exec_err;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::{Expr, col};

/// A set of integer keys: a bitmap over their span when dense (a dimension's keys mostly
/// are), else the keys sorted.
#[derive(Debug)]
pub(super) enum KeySet {
    Bits { low: i64, words: Vec<u64> },
    Sorted(Vec<i64>),
}

impl KeySet {
    /// The set of `values` (in any order, repeated or not).
    pub fn of(mut values: Vec<i64>) -> Self {
        let (Some(&low), Some(&high)) = (values.iter().min(), values.iter().max()) else {
            return KeySet::Sorted(values);
        };
        let width = (i128::from(high) - i128::from(low) + 1) as u128;
        if width > 64 * values.len() as u128 {
            values.sort_unstable();
            values.dedup();
            return KeySet::Sorted(values);
        }
        let mut words = vec![0u64; (width as usize).div_ceil(64)];
        for &v in &values {
            let at = (v - low) as usize;
            words[at / 64] |= 1 << (at % 64);
        }
        KeySet::Bits { low, words }
    }

    /// The keys, ascending.
    pub fn ascending(&self) -> Vec<i64> {
        let (low, words) = match self {
            KeySet::Sorted(values) => return values.clone(),
            KeySet::Bits { low, words } => (*low, words),
        };
        let ones = words.iter().map(|w| w.count_ones() as usize).sum();
        let mut out = Vec::with_capacity(ones);
        for (w, &word) in words.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                out.push(low + (w * 64 + bits.trailing_zeros() as usize) as i64);
                bits &= bits - 1;
            }
        }
        out
    }

    pub fn contains(&self, value: i64) -> bool {
        match self {
            KeySet::Bits { low, words } => {
                let Some(at) = value.checked_sub(*low).filter(|at| *at >= 0) else {
                    return false;
                };
                let at = at as u64;
                (words.get((at / 64) as usize)).is_some_and(|w| w & (1 << (at % 64)) != 0)
            }
            KeySet::Sorted(values) => values.binary_search(&value).is_ok(),
        }
    }

    /// `key IN (this set)` as an expression the Delta scan hands to the parquet reader.
    pub fn filter(self: &Arc<Self>, key: &str) -> Expr {
        let udf = ScalarUDF::new_from_impl(InKeys {
            set: self.clone(),
            signature: Signature::any(1, Volatility::Immutable),
        });
        udf.call(vec![col(datafusion::common::Column::from_name(key))])
    }
}

/// `__in_changed_keys(key)`: whether an integer key is in the set (NULL is not).
#[derive(Debug)]
struct InKeys {
    set: Arc<KeySet>,
    signature: Signature,
}

impl PartialEq for InKeys {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.set, &other.set)
    }
}

impl Eq for InKeys {}

impl Hash for InKeys {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.set).hash(state);
    }
}

impl ScalarUDFImpl for InKeys {
    fn name(&self) -> &str {
        "__in_changed_keys"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let Some(key) = args.args.first() else {
            return exec_err!("__in_changed_keys needs the key");
        };
        let key = key.to_array(args.number_rows)?;
        let Some(values) = crate::lake::int_column(&key) else {
            return exec_err!(
                "__in_changed_keys needs an integer key, not {}",
                key.data_type()
            );
        };
        let found = BooleanArray::from(arrow::buffer::BooleanBuffer::collect_bool(
            values.len(),
            |i| values.is_valid(i) && self.set.contains(values.value(i)),
        ));
        Ok(ColumnarValue::Array(Arc::new(found)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_set_holds_exactly_its_keys_dense_or_spread() {
        // Dense (bitmap) and spread-out (sorted) keys, repeated, negative and unordered.
        let mut next = crate::stages::gold::scrambled(5u64);
        for spread in [1i64, 3, 1_000_003] {
            let values: Vec<i64> = (0..2_000)
                .map(|_| next(4_000) as i64 * spread - 900)
                .collect();
            let mut keys = values.clone();
            keys.sort_unstable();
            keys.dedup();
            let set = KeySet::of(values);
            assert_eq!(matches!(set, KeySet::Bits { .. }), spread < 64, "{spread}");
            assert_eq!(set.ascending(), keys, "spread {spread}");
            let (lo, hi) = (keys[0] - 70, keys[keys.len() - 1] + 70);
            for probe in (lo..=hi).step_by(spread as usize) {
                let expected = keys.binary_search(&probe).is_ok();
                assert_eq!(set.contains(probe), expected, "{probe}");
            }
            assert!(!set.contains(i64::MIN) && !set.contains(i64::MAX));
        }
        assert!(KeySet::of(Vec::new()).ascending().is_empty());
        assert!(!KeySet::of(Vec::new()).contains(0));
    }

    #[tokio::test]
    async fn the_filter_keeps_the_rows_of_the_set_and_not_null_keys() {
        use arrow::array::{Int32Array, RecordBatch};
        use arrow::datatypes::{Field, Schema};
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, true)]));
        let ids = Int32Array::from(vec![Some(1), None, Some(7), Some(8), Some(-3)]);
        let batch = RecordBatch::try_new(schema, vec![Arc::new(ids)]).unwrap();
        let ctx = datafusion::prelude::SessionContext::new();
        let set = Arc::new(KeySet::of(vec![9, -3, 7]));
        let rows = ctx
            .read_batch(batch)
            .unwrap()
            .filter(set.filter("id"))
            .unwrap()
            .collect()
            .await
            .unwrap();
        let kept: Vec<i32> = rows
            .iter()
            .flat_map(|b| {
                let c = b.column(0).as_any().downcast_ref::<Int32Array>().unwrap();
                c.iter().flatten().collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(kept, [7, -3]);
    }
}
