//! The index as SQL: scalar functions that return a fact row's surrogate key (and carried
//! columns) from a `PointInTime`.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef};
use arrow::compute::take;
use arrow::datatypes::DataType;
use datafusion::common::exec_err;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use super::*;
use crate::error::Error;

/// What a lookup function returns: the surrogate key (`-1` where no version matches) or
/// one carried column (NULL there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Output {
    Sk,
    Carried(usize),
}

/// `name(key, seq)` (SCD2) or `name(key)` (SCD1) over one index.
#[derive(Debug)]
pub(super) struct LookupUdf {
    name: String,
    index: Arc<PointInTime>,
    output: Output,
    returns: DataType,
    signature: Signature,
}

impl PartialEq for LookupUdf {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.output == other.output
            && Arc::ptr_eq(&self.index, &other.index)
    }
}

impl Eq for LookupUdf {}

impl Hash for LookupUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.output.hash(state);
    }
}

impl ScalarUDFImpl for LookupUdf {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(self.returns.clone())
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let Some(key) = arrays.first() else {
            return exec_err!("{} needs the key", self.name);
        };
        let external = |e: Error| datafusion::error::DataFusionError::External(Box::new(e));
        let out: ArrayRef = match self.output {
            Output::Sk => Arc::new(
                self.index
                    .surrogate_keys(key, arrays.get(1))
                    .map_err(external)?,
            ),
            Output::Carried(c) => {
                let positions = self.index.positions(key, arrays.get(1)).map_err(external)?;
                take(&self.index.carried[c], &positions, None)?
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// The name of the function that returns carried column `c` of the index whose surrogate-key
/// function is `prefix`.
pub(in crate::stages::gold) fn carried_function(prefix: &str, c: usize) -> String {
    format!("{prefix}_{c}")
}

/// The functions of one index: the surrogate key's (`prefix`), then one per carried column
/// (`carried_function`).
pub(in crate::stages::gold) fn functions(prefix: &str, index: PointInTime) -> Vec<ScalarUDF> {
    let index = Arc::new(index);
    let args = if index.periods { 2 } else { 1 };
    let mut outputs = vec![(prefix.to_string(), Output::Sk, DataType::Int64)];
    for (c, column) in index.carried.iter().enumerate() {
        let name = carried_function(prefix, c);
        outputs.push((name, Output::Carried(c), column.data_type().clone()));
    }
    outputs
        .into_iter()
        .map(|(name, output, returns)| {
            ScalarUDF::new_from_impl(LookupUdf {
                name,
                index: index.clone(),
                output,
                returns,
                signature: Signature::any(args, Volatility::Immutable),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int32Array, TimestampMicrosecondArray};
    use arrow::datatypes::Int64Type;

    use super::super::testing::*;

    /// Members of up to four versions (back to back or with gaps, open or closed at the end),
    /// in scrambled order: every probe's surrogate key and carried value, with keys dense and
    /// spread apart, against a scan of the rows.
    #[test]
    fn dense_and_sparse_indexes_find_what_a_scan_finds() {
        let mut next = crate::stages::gold::scrambled(0x9e37_79b9_7f4a_7c15);
        let mut members: Vec<(i64, i32, i64, Option<i64>, String)> = Vec::new();
        for key in 0..400 {
            let count = next(5);
            let mut at = next(10) as i64;
            for v in 0..count {
                let end = at + 1 + next(20) as i64;
                let open = v + 1 == count && next(2) == 0;
                let sk = members.len() as i64 + 1;
                members.push((sk, key, at, (!open).then_some(end), format!("{key}.{v}")));
                at = end + if next(4) == 0 { next(5) as i64 } else { 0 };
            }
        }
        let mut order: Vec<(u64, usize)> = (0..members.len()).map(|i| (next(1 << 30), i)).collect();
        order.sort();
        for spread in [1, 100_003] {
            let rows: Vec<Row> = order
                .iter()
                .map(|&(_, i)| {
                    let (sk, key, from, to, ref name) = members[i];
                    (sk, Some(key * spread), Some(from), to, name.as_str())
                })
                .collect();
            let batch = dimension(&rows);
            let pit = index(&batch, true, DataType::Int64).unwrap();
            let dense = matches!(pit.keys, Keys::Dense(_));
            assert_eq!(dense, spread == 1, "spread {spread}");
            let probes: Vec<(Option<i64>, Option<i64>)> = (0..5_000)
                .map(|_| {
                    let key = (next(20) > 0).then(|| next(420) as i64 * i64::from(spread));
                    (key, (next(20) > 0).then(|| next(120) as i64))
                })
                .collect();
            let keys: ArrayRef = Arc::new(Int64Array::from(
                probes.iter().map(|p| p.0).collect::<Vec<_>>(),
            ));
            let seq: ArrayRef = Arc::new(
                TimestampMicrosecondArray::from(probes.iter().map(|p| p.1).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            );
            let udfs = functions("__pit_0", pit);
            let sks = invoke(&udfs[0], &keys, &seq);
            let names = invoke(&udfs[1], &keys, &seq);
            let (sks, names) = (sks.as_primitive::<Int64Type>(), names.as_string::<i32>());
            for (i, &(key, seq)) in probes.iter().enumerate() {
                let expected = rows.iter().find(|r| {
                    key.is_some()
                        && r.1.map(i64::from) == key
                        && seq.is_some_and(|s| {
                            r.2.is_some_and(|f| f <= s) && r.3.is_none_or(|t| s < t)
                        })
                });
                assert_eq!(
                    sks.value(i),
                    expected.map_or(-1, |r| r.0),
                    "key {key:?} at {seq:?}, spread {spread}"
                );
                assert_eq!(
                    names.is_valid(i).then(|| names.value(i)),
                    expected.map(|r| r.4),
                    "key {key:?} at {seq:?}, spread {spread}"
                );
            }
        }
    }

    #[test]
    fn functions_return_minus_one_and_null_where_nothing_matches() {
        let batch = dimension(&[
            (1, Some(100), Some(0), None, "x"),
            (2, Some(5_000_000), Some(0), None, "y"),
        ]);
        let pit = index(&batch, true, DataType::Int32).unwrap();
        assert!(
            matches!(pit.keys, Keys::Sparse { .. }),
            "two keys far apart"
        );
        let udfs = functions("__pit_0", pit);
        let keys: ArrayRef = Arc::new(Int32Array::from(vec![
            Some(5_000_000),
            None,
            Some(100),
            Some(3),
        ]));
        let seq: ArrayRef = Arc::new(
            TimestampMicrosecondArray::from(vec![Some(1), Some(1), None, Some(1)])
                .with_timezone("UTC"),
        );
        let call = |udf: &ScalarUDF| invoke(udf, &keys, &seq);
        let sk = call(&udfs[0]);
        assert_eq!(
            sk.as_primitive::<Int64Type>().values().to_vec(),
            [2, -1, -1, -1],
            "NULL key, NULL time and a missing key all give the unknown member"
        );
        let name = call(&udfs[1]);
        let name = name.as_string::<i32>();
        assert_eq!(name.value(0), "y");
        assert_eq!(name.null_count(), 3);
    }
}
