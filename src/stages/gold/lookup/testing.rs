//! Helpers for the lookup index's unit tests.

use super::*;
use crate::lake::layout::gold_columns::{VALID_FROM, VALID_TO};
use arrow::array::{Int32Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{Field, Schema, TimeUnit};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF};

pub(super) fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// (sk, key, valid_from, valid_to, name)
pub(super) type Row<'a> = (i64, Option<i32>, Option<i64>, Option<i64>, &'a str);

/// A dimension of rows, in the order given.
pub(super) fn dimension(rows: &[Row]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("sk", DataType::Int64, true),
        Field::new("id", DataType::Int32, true),
        Field::new(VALID_FROM, ts(), true),
        Field::new(VALID_TO, ts(), true),
        Field::new("name", DataType::Utf8, true),
    ]));
    let column = |f: fn(&Row) -> Option<i64>| {
        TimestampMicrosecondArray::from(rows.iter().map(f).collect::<Vec<_>>()).with_timezone("UTC")
    };
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Int32Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(column(|r| r.2)),
            Arc::new(column(|r| r.3)),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.4))),
        ],
    )
    .unwrap()
}

/// The shape of a lookup of the test dimension (`dimension`) by `id`.
pub(super) fn shape<'a>(
    period: Option<&'a DataType>,
    carried: &'a [String],
    fact_key: &'a DataType,
) -> Shape<'a> {
    Shape {
        key: "id",
        sk: "sk",
        period,
        carried,
        fact_key,
    }
}

pub(super) fn index(batch: &RecordBatch, scd2: bool, fact_key: DataType) -> Option<PointInTime> {
    let carried = ["name".to_string()];
    let seq = ts();
    let shape = shape(scd2.then_some(&seq), &carried, &fact_key);
    let rows = DimensionRows {
        stored: std::slice::from_ref(batch),
        replaced: None,
        staged: &[],
    };
    PointInTime::build("dim", &batch.schema(), rows, &shape).unwrap()
}

/// `udf(keys, seq)` as a query calls it.
pub(super) fn invoke(udf: &ScalarUDF, keys: &ArrayRef, seq: &ArrayRef) -> ArrayRef {
    let args = ScalarFunctionArgs {
        args: vec![
            ColumnarValue::Array(keys.clone()),
            ColumnarValue::Array(seq.clone()),
        ],
        arg_fields: vec![
            Arc::new(Field::new("k", keys.data_type().clone(), true)),
            Arc::new(Field::new("s", ts(), true)),
        ],
        number_rows: keys.len(),
        return_field: Arc::new(Field::new("out", udf.return_type(&[]).unwrap(), true)),
        config_options: Arc::new(Default::default()),
    };
    match udf.invoke_with_args(args).unwrap() {
        ColumnarValue::Array(a) => a,
        ColumnarValue::Scalar(_) => panic!("an array"),
    }
}
