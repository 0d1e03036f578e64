//! Bounds of a column read from a Delta table's file statistics (`add.stats` in the log),
//! without reading a data file: what lets a stage skip work the log already rules out.

use std::collections::HashSet;

use super::file_name;

use arrow::array::{Array, AsArray, StringArray};
use arrow::datatypes::{DataType, Int64Type, TimeUnit};

/// A bound no value of `column` in the files of `table` is past, in the units of
/// `column_type` (an integer's or a date's maximum as it is, a timestamp's one millisecond
/// past its statistic, since Delta writes them to the millisecond). `files` (names or URIs)
/// picks the files, all of them when `None`. `None` when a file's statistics do not say, when
/// no file has a value, or for another type (text statistics can be cut short): the rows
/// must be read then.
pub fn latest(
    table: &deltalake::DeltaTable,
    files: Option<&[String]>,
    column: &str,
    column_type: &DataType,
) -> Option<i64> {
    let maxima = extremes(table, files, column, "maxValues")?;
    bound(maxima, column_type, true)
}

/// A bound no value of `column` in the files of `table` is before, as [`latest`] is one no
/// value is past (a timestamp's one millisecond before its statistic, whichever way the
/// writer cut it).
pub fn earliest(
    table: &deltalake::DeltaTable,
    files: Option<&[String]>,
    column: &str,
    column_type: &DataType,
) -> Option<i64> {
    let minima = extremes(table, files, column, "minValues")?;
    bound(minima, column_type, false)
}

/// The statistic `side` (`minValues` or `maxValues`) of `column` in each file of `files`
/// that has a value, as text; see [`latest`] for `None`.
fn extremes(
    table: &deltalake::DeltaTable,
    files: Option<&[String]>,
    column: &str,
    side: &str,
) -> Option<Vec<String>> {
    let names: Option<HashSet<&str>> = files.map(|f| f.iter().map(|f| file_name(f)).collect());
    let (mut values, mut matched) = (Vec::new(), 0);
    for file in table.snapshot().ok()?.log_data().iter() {
        if names
            .as_ref()
            .is_some_and(|n| !n.contains(file_name(&file.path())))
        {
            continue;
        }
        matched += 1;
        let stats: serde_json::Value = serde_json::from_str(&file.stats()?).ok()?;
        // A file whose column is all NULL has no extremes, and holds no value to bound.
        let rows = stats.get("numRecords").and_then(serde_json::Value::as_u64);
        let nulls = stats.get("nullCount").and_then(|n| n.get(column)?.as_u64());
        if rows.is_some() && rows == nulls {
            continue;
        }
        values.push(match stats.get(side)?.get(column)? {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Number(number) => number.to_string(),
            _ => return None,
        });
    }
    if names.is_some_and(|n| matched < n.len()) {
        // A file named is not in this version of the table: read the rows to be sure.
        return None;
    }
    Some(values)
}

/// Each file of `table` (by path, as the log names it) with the smallest and largest value
/// of the integer `column` in it; a file whose column is all NULL is left out. `None` when a
/// file's statistics do not say.
pub fn int_ranges(table: &deltalake::DeltaTable, column: &str) -> Option<Vec<(String, i64, i64)>> {
    let mut ranges = Vec::new();
    for file in table.snapshot().ok()?.log_data().iter() {
        let stats: serde_json::Value = serde_json::from_str(&file.stats()?).ok()?;
        let rows = stats.get("numRecords").and_then(serde_json::Value::as_u64);
        let nulls = stats.get("nullCount").and_then(|n| n.get(column)?.as_u64());
        if rows.is_some() && rows == nulls {
            continue;
        }
        let bound = |side: &str| stats.get(side)?.get(column)?.as_i64();
        ranges.push((
            file.path().to_string(),
            bound("minValues")?,
            bound("maxValues")?,
        ));
    }
    Some(ranges)
}

/// The largest of `values` (statistics' text) in the units of `column_type`, past it by the
/// margin of [`latest`], or with `!upper` the smallest, before it by the margin. `None`
/// without a value.
fn bound(values: Vec<String>, column_type: &DataType, upper: bool) -> Option<i64> {
    use DataType::*;
    let margin = match column_type {
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | Date32 => 0,
        Timestamp(TimeUnit::Second | TimeUnit::Millisecond, _) => 1,
        Timestamp(TimeUnit::Microsecond, _) => 1_000,
        Timestamp(TimeUnit::Nanosecond, _) => 1_000_000,
        _ => return None,
    };
    let typed = arrow::compute::cast(&StringArray::from(values), column_type).ok()?;
    if typed.null_count() > 0 {
        return None;
    }
    let typed = arrow::compute::cast(&typed, &Int64).ok()?;
    let typed = typed.as_primitive_opt::<Int64Type>()?;
    match upper {
        true => arrow::compute::max(typed)?.checked_add(margin),
        false => arrow::compute::min(typed)?.checked_sub(margin),
    }
}

/// `value` in the raw units of `column_type` (an integer, date or timestamp type), as a
/// bound from [`latest`] is: cast first, so a timestamp becomes a date by rounding down.
pub fn units(value: &datafusion::common::ScalarValue, column_type: &DataType) -> Option<i64> {
    let typed = value.cast_to(column_type).ok()?.to_array().ok()?;
    let raw = arrow::compute::cast(&typed, &DataType::Int64).ok()?;
    let raw = raw.as_primitive_opt::<Int64Type>()?;
    (raw.len() == 1 && raw.is_valid(0)).then(|| raw.value(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::common::ScalarValue;

    #[test]
    fn statistics_bound_a_column_past_their_precision() {
        let text = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let micros = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        // 2023-11-17T13:16:40.123Z, plus the millisecond the statistic may have cut.
        let at = 1_700_227_000_123_000i64;
        assert_eq!(
            bound(
                text(&["2023-11-17T13:16:39Z", "2023-11-17T13:16:40.123Z"]),
                &micros,
                true
            ),
            Some(at + 1_000)
        );
        assert_eq!(
            bound(
                text(&["2023-11-17T13:16:41Z", "2023-11-17T13:16:40.123Z"]),
                &micros,
                false
            ),
            Some(at - 1_000)
        );
        assert_eq!(
            bound(text(&["5", "42", "-7"]), &DataType::Int64, true),
            Some(42)
        );
        assert_eq!(
            bound(text(&["5", "42", "-7"]), &DataType::Int64, false),
            Some(-7)
        );
        assert_eq!(
            bound(text(&["2024-01-02"]), &DataType::Date32, true),
            Some(19_724)
        );
        // Text statistics can be cut short; a value that does not parse says nothing.
        assert_eq!(bound(text(&["b"]), &DataType::Utf8, true), None);
        assert_eq!(bound(text(&["5", "x"]), &DataType::Int64, false), None);
        assert_eq!(bound(Vec::new(), &DataType::Int64, true), None);
    }

    #[test]
    fn a_value_in_a_columns_units_rounds_a_time_down_to_its_day() {
        let at = ScalarValue::TimestampMicrosecond(Some(1_700_227_000_123_456), None);
        let micros = DataType::Timestamp(TimeUnit::Microsecond, None);
        assert_eq!(units(&at, &micros), Some(1_700_227_000_123_456));
        // 2023-11-17 is day 19,678 since the epoch.
        assert_eq!(units(&at, &DataType::Date32), Some(19_678));
        assert_eq!(units(&ScalarValue::Int64(None), &DataType::Int64), None);
    }

    #[tokio::test]
    async fn the_latest_value_comes_from_the_named_files_or_all() {
        use arrow::array::{Int64Array, RecordBatch};
        use arrow::datatypes::{Field, Schema};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let lake = crate::lake::Lake::open(dir.path().to_str().unwrap()).unwrap();
        let mut table = lake.delta_table("gold/t").await.unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        for values in [
            vec![Some(3), Some(9)],
            vec![Some(40), None],
            vec![None, None],
        ] {
            let batch =
                RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(values))])
                    .unwrap();
            table = table.write(vec![batch]).await.unwrap();
        }
        assert_eq!(latest(&table, None, "v", &DataType::Int64), Some(40));
        assert_eq!(earliest(&table, None, "v", &DataType::Int64), Some(3));
        let mut uris: Vec<String> = table.get_file_uris().unwrap().collect();
        let first = table.snapshot().unwrap().log_data().iter().find_map(|f| {
            let stats: serde_json::Value = serde_json::from_str(&f.stats()?).ok()?;
            (stats["maxValues"]["v"] == 9).then(|| f.path().to_string())
        });
        let first = first.unwrap();
        uris.retain(|u| u.ends_with(&first));
        assert_eq!(latest(&table, Some(&uris), "v", &DataType::Int64), Some(9));
        assert_eq!(
            latest(
                &table,
                Some(&["gone.parquet".to_string()]),
                "v",
                &DataType::Int64
            ),
            None
        );
    }
}
