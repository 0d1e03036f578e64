//! The changed keys of a range as a set the stored rows are filtered by, batch by batch, as
//! they are read: holding the stored versions of those keys holds only their rows.
//!
//! Why not a join, or the filter pushed into the parquet reader: changed keys spread over a
//! dimension's whole key space, so the files of a range hold many stored rows for each one
//! kept. Joining them with the keys hashed every row; the pushed-down filter's selection of
//! rows scattered over every page cost more to compute and to skip by than decoding the pages
//! whole (decision 002, "Gold dimensions").

use arrow::array::{Array, BooleanArray};

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

    /// Which rows of the integer column `key` hold a key of the set (a NULL none); `None`
    /// for a column that is not integers.
    pub fn mask(&self, key: &arrow::array::ArrayRef) -> Option<BooleanArray> {
        let values = crate::lake::int_column(key)?;
        Some(BooleanArray::from(
            arrow::buffer::BooleanBuffer::collect_bool(values.len(), |i| {
                values.is_valid(i) && self.contains(values.value(i))
            }),
        ))
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

    #[test]
    fn the_mask_keeps_the_rows_of_the_set_and_not_null_keys() {
        use arrow::array::{ArrayRef, Int32Array};
        use std::sync::Arc;
        let ids: ArrayRef = Arc::new(Int32Array::from(vec![
            Some(1),
            None,
            Some(7),
            Some(8),
            Some(-3),
        ]));
        let set = KeySet::of(vec![9, -3, 7]);
        let mask = set.mask(&ids).unwrap();
        let kept: Vec<bool> = mask.iter().map(|m| m.unwrap()).collect();
        assert_eq!(kept, [false, false, true, false, true]);
    }
}
