//! CSV and JSON-lines files of a files source: read with the table's schema, columns
//! normalized to the types a SQL source would give, and watermark values compared in order.

use std::io::{BufReader, Read, Seek};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::super::columns;
use super::{Batches, wrap};
use crate::error::{Error, Result};
use crate::window::{Bound, BoundKind};

pub(super) fn text_batches<R: Read + Seek + Send + 'static>(
    name: &str,
    ext: &str,
    mut reader: R,
    batch_rows: usize,
) -> Result<(SchemaRef, Batches), String> {
    let wrap = wrap(name);
    match ext {
        "csv" => {
            let (schema, _) = arrow::csv::reader::Format::default()
                .with_header(true)
                .infer_schema(&mut reader, Some(10_000))
                .map_err(|e| e.to_string())?;
            reader.rewind().map_err(|e| e.to_string())?;
            let schema = Arc::new(schema);
            let batches = arrow::csv::ReaderBuilder::new(schema.clone())
                .with_header(true)
                .with_batch_size(batch_rows)
                .build(reader)
                .map_err(|e| e.to_string())?;
            Ok((schema, Box::new(batches.map(move |b| b.map_err(&wrap)))))
        }
        "json" | "jsonl" => {
            let mut buffered = BufReader::new(reader);
            let (schema, _) =
                arrow::json::reader::infer_json_schema_from_seekable(&mut buffered, Some(10_000))
                    .map_err(|e| e.to_string())?;
            let schema = Arc::new(schema);
            let batches = arrow::json::ReaderBuilder::new(schema.clone())
                .with_batch_size(batch_rows)
                .build(buffered)
                .map_err(|e| e.to_string())?;
            Ok((schema, Box::new(batches.map(move |b| b.map_err(&wrap)))))
        }
        other => Err(format!(
            "unknown file type .{other} (use parquet, csv or json)"
        )),
    }
}

/// The table schema for a file schema: timestamps become microsecond UTC, all nullable.
pub(super) fn normalized(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                let data_type = match f.data_type() {
                    DataType::Timestamp(_, _) => columns::utc_micros(),
                    DataType::Date64 => DataType::Date32,
                    DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
                    other => other.clone(),
                };
                Field::new(f.name(), data_type, true)
            })
            .collect::<Vec<_>>(),
    ))
}

/// Casts a batch to the table schema, naming the file and column when a value does not fit.
pub(super) fn conform(file: &str, batch: RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    let columns = target
        .fields()
        .iter()
        .map(|field| {
            let Some(column) = batch.column_by_name(field.name()) else {
                return Ok(arrow::array::new_null_array(
                    field.data_type(),
                    batch.num_rows(),
                ));
            };
            let casted = match (column.data_type(), field.data_type()) {
                (DataType::Timestamp(_, _), DataType::Timestamp(_, _)) => to_utc_micros(column),
                _ => cast(column, field.data_type()),
            }
            .map_err(|e| Error::ValueDoesNotFit {
                table: file.to_string(),
                column: field.name().clone(),
                row: "(cast of the file's column)".to_string(),
                value: column.data_type().to_string(),
                expected: format!("{} ({e})", field.data_type()),
            })?;
            if casted.null_count() > column.null_count() {
                return Err(Error::ValueDoesNotFit {
                    table: file.to_string(),
                    column: field.name().clone(),
                    row: "(some rows)".to_string(),
                    value: column.data_type().to_string(),
                    expected: field.data_type().to_string(),
                });
            }
            Ok(casted)
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    RecordBatch::try_new(target.clone(), columns)
        .map_err(|e| Error::arrow(format!("file {file}"), e))
}

/// A timestamp column as microsecond UTC instants. Zone-less values are read as UTC, the
/// same rule as for SQL `datetime2`; zoned values are instants already, so only the unit
/// changes (which needs no time-zone database).
pub(super) fn to_utc_micros(column: &ArrayRef) -> Result<ArrayRef, arrow::error::ArrowError> {
    let DataType::Timestamp(_, tz) = column.data_type() else {
        return cast(column, &columns::utc_micros());
    };
    let micros = cast(
        column,
        &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, tz.clone()),
    )?;
    Ok(Arc::new(
        micros
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
            .clone()
            .with_timezone("UTC"),
    ))
}

/// The watermark column as comparable i64s (integers, days, or microseconds).
pub(super) fn ordinal(column: &ArrayRef) -> Result<Int64Array, arrow::error::ArrowError> {
    let as_int = match column.data_type() {
        DataType::Date32 => cast(&cast(column, &DataType::Int32)?, &DataType::Int64)?,
        DataType::Timestamp(_, _) => {
            cast(&cast(column, &columns::utc_micros())?, &DataType::Int64)?
        }
        _ => cast(column, &DataType::Int64)?,
    };
    Ok(as_int
        .as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .unwrap_or_else(|| Int64Array::from(Vec::<i64>::new())))
}

pub(super) fn bound_ordinal(bound: &Bound) -> i64 {
    match bound {
        Bound::Integer(v) => *v,
        Bound::Date(d) => i64::from(columns::days_since_epoch(*d)),
        Bound::Timestamp(us) => *us,
    }
}

pub(super) fn bound_from_ordinal(kind: BoundKind, value: i64) -> Option<Bound> {
    Some(match kind {
        BoundKind::Integer => Bound::Integer(value),
        BoundKind::Date => Bound::Date(
            chrono::DateTime::from_timestamp(value.checked_mul(86_400)?, 0)?.date_naive(),
        ),
        BoundKind::Timestamp => Bound::Timestamp(value),
    })
}
