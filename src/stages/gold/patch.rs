//! Ending stored SCD2 versions in place: a data file in which some rows get a new `valid_to`
//! (and so a new `is_current`), and nothing else changes, is copied with only those two
//! columns decoded and re-encoded; every other column chunk is copied as it is encoded.
//!
//! Why: an SCD2 run closes versions spread over every file of a dimension, and re-encoding
//! all columns of all rows of those files dominated an incremental dimension build
//! (docs/decisions/002-speed-and-memory.md, "Gold dimensions").

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanBufferBuilder, Int64Array};
use arrow::datatypes::{DataType, Int64Type, TimeUnit};
use bytes::Bytes;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::arrow_writer::{ArrowWriter, ArrowWriterOptions, compute_leaves};
use parquet::column::writer::ColumnCloseResult;

use crate::lake::layout::gold_columns::{IS_CURRENT, VALID_TO};

/// New ends of stored versions, by surrogate key, in the raw units of the table's
/// `valid_to` (`None`: the version is open again).
pub(super) type Ends = HashMap<i64, Option<i64>, foldhash::fast::RandomState>;

/// What went wrong patching a file: parquet or arrow, for the caller to name the file.
#[derive(Debug, thiserror::Error)]
pub(super) enum PatchError {
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("its statistics are not JSON: {0}")]
    Stats(#[from] serde_json::Error),
}

/// A patched file: its bytes and the Delta statistics of its two re-encoded columns.
pub(super) struct Patched {
    pub bytes: Vec<u8>,
    valid_to: Summary,
    is_current: Summary,
}

/// Minimum, maximum and null count of a column, as Delta statistics hold them.
#[derive(Default)]
struct Summary {
    min: Option<serde_json::Value>,
    max: Option<serde_json::Value>,
    nulls: u64,
}

/// `bytes` (a parquet file of a flat table with columns `sk`, `valid_to` and `is_current`)
/// with the rows whose surrogate key is in `ends` ended as it says. `None` when the file is
/// not of that shape (the caller then rewrites it row by row).
pub(super) fn patch(bytes: Bytes, sk: &str, ends: &Ends) -> Result<Option<Patched>, PatchError> {
    let meta = ArrowReaderMetadata::load(&bytes, ArrowReaderOptions::new())?;
    let schema = meta.schema().clone();
    let descr = meta.metadata().file_metadata().schema_descr_ptr();
    // One leaf per field, in order: what the column indexes below assume.
    let flat =
        descr.num_columns() == schema.fields().len()
            && schema.fields().iter().zip(descr.columns()).all(|(f, c)| {
                c.path().parts() == [f.name().as_str()] && !f.data_type().is_nested()
            });
    let (Ok(s), Ok(v), Ok(c)) = (
        schema.index_of(sk),
        schema.index_of(VALID_TO),
        schema.index_of(IS_CURRENT),
    ) else {
        return Ok(None);
    };
    let unit = match schema.field(v).data_type() {
        DataType::Timestamp(unit, tz) => (*unit, tz.is_some()),
        _ => return Ok(None),
    };
    if !flat || schema.field(c).data_type() != &DataType::Boolean {
        return Ok(None);
    }
    let props = crate::lake::parquet_properties(&schema).build();
    let writer = ArrowWriter::try_new_with_options(
        Vec::with_capacity(bytes.len()),
        schema.clone(),
        ArrowWriterOptions::new()
            .with_properties(props)
            .with_parquet_schema(descr.as_ref().clone()),
    )?;
    let (mut file, factory) = writer.into_serialized_writer()?;
    let (mut ended, mut current) = (Bounds::default(), Bounds::default());
    for (index, group) in meta.metadata().row_groups().iter().enumerate() {
        let read = ParquetRecordBatchReaderBuilder::new_with_metadata(bytes.clone(), meta.clone())
            .with_row_groups(vec![index])
            .with_projection(ProjectionMask::leaves(&descr, [s, v, c]))
            .with_batch_size(group.num_rows().max(1) as usize)
            .build()?;
        let batches = read.collect::<Result<Vec<_>, _>>()?;
        let Some(first) = batches.first() else {
            return Ok(None);
        };
        let batch = arrow::compute::concat_batches(&first.schema(), &batches)?;
        let column = |name: &str| -> Result<ArrayRef, PatchError> {
            batch.column_by_name(name).cloned().ok_or_else(|| {
                arrow::error::ArrowError::SchemaError(format!("no column {name}")).into()
            })
        };
        let (stored_to, stored_current) = (column(VALID_TO)?, column(IS_CURRENT)?);
        let changed = match crate::lake::int_column(&column(sk)?) {
            Some(sks) => ended_columns(&sks, &stored_to, &stored_current, ends)?,
            None => return Ok(None),
        };
        let (to, is_current) = changed
            .clone()
            .unwrap_or_else(|| (stored_to.clone(), stored_current.clone()));
        ended.add_raw(&arrow::compute::cast(&to, &DataType::Int64)?);
        current.add_bools(&is_current);
        let mut group_writer = file.next_row_group()?;
        let writers = factory.create_column_writers(index)?;
        for (i, mut writer) in writers.into_iter().enumerate() {
            let encoded = match (&changed, i) {
                (Some((to, _)), i) if i == v => Some(to),
                (Some((_, is_current)), i) if i == c => Some(is_current),
                _ => None,
            };
            match encoded {
                Some(array) => {
                    for leaf in compute_leaves(schema.field(i), array)? {
                        writer.write(&leaf)?;
                    }
                    let mut chunk = writer.close()?;
                    // The copied chunks come without page indexes, and a file has them for
                    // every chunk or none (parquet's writer panics otherwise).
                    let close = chunk.close_mut();
                    close.column_index = None;
                    close.offset_index = None;
                    chunk.append_to_row_group(&mut group_writer)?;
                }
                None => {
                    let chunk = group.column(i);
                    group_writer.append_column(
                        &bytes,
                        ColumnCloseResult {
                            bytes_written: chunk.compressed_size() as u64,
                            rows_written: group.num_rows() as u64,
                            metadata: chunk.clone(),
                            bloom_filter: None,
                            column_index: None,
                            offset_index: None,
                        },
                    )?;
                }
            }
        }
        group_writer.close()?;
    }
    Ok(Some(Patched {
        bytes: file.into_inner()?,
        valid_to: ended.timestamps(unit),
        is_current: current.booleans(),
    }))
}

/// The `valid_to` and `is_current` columns with the rows named in `ends` ended, or `None`
/// when no row is.
pub(super) fn ended_columns(
    sks: &Int64Array,
    valid_to: &ArrayRef,
    is_current: &ArrayRef,
    ends: &Ends,
) -> Result<Option<(ArrayRef, ArrayRef)>, arrow::error::ArrowError> {
    // Few rows of a file end: the stored columns are copied whole and only those rows set.
    let hits: Vec<(usize, Option<i64>)> = (0..sks.len())
        .filter(|&i| sks.is_valid(i))
        .filter_map(|i| ends.get(&sks.value(i)).map(|&end| (i, end)))
        .collect();
    if hits.is_empty() {
        return Ok(None);
    }
    let raw = arrow::compute::cast(valid_to, &DataType::Int64)?;
    let raw = raw.as_primitive::<Int64Type>();
    let current = is_current.as_boolean_opt().ok_or_else(|| {
        arrow::error::ArrowError::SchemaError(format!("{IS_CURRENT} is not boolean"))
    })?;
    let validity = |nulls: Option<&arrow::buffer::NullBuffer>| {
        let mut valid = BooleanBufferBuilder::new(sks.len());
        match nulls {
            Some(nulls) => valid.append_buffer(nulls.inner()),
            None => valid.append_n(sks.len(), true),
        }
        valid
    };
    let mut to = raw.values().to_vec();
    let mut to_valid = validity(raw.nulls());
    let mut now = BooleanBufferBuilder::new(sks.len());
    now.append_buffer(current.values());
    let mut now_valid = validity(current.nulls());
    for (i, end) in hits {
        to[i] = end.unwrap_or_default();
        to_valid.set_bit(i, end.is_some());
        now.set_bit(i, end.is_none());
        now_valid.set_bit(i, true);
    }
    let nulls = |mut valid: BooleanBufferBuilder| {
        Some(arrow::buffer::NullBuffer::new(valid.finish())).filter(|n| n.null_count() > 0)
    };
    let to: ArrayRef = Arc::new(Int64Array::new(to.into(), nulls(to_valid)));
    let now = arrow::array::BooleanArray::new(now.finish(), nulls(now_valid));
    Ok(Some((
        arrow::compute::cast(&to, valid_to.data_type())?,
        Arc::new(now),
    )))
}

/// Running minimum, maximum and null count of an integer or boolean column.
#[derive(Default)]
struct Bounds {
    min: Option<i64>,
    max: Option<i64>,
    nulls: u64,
}

impl Bounds {
    fn add_raw(&mut self, values: &ArrayRef) {
        let values = values.as_primitive::<Int64Type>();
        self.nulls += values.null_count() as u64;
        for bound in [arrow::compute::min(values), arrow::compute::max(values)] {
            self.extend(bound);
        }
    }

    fn add_bools(&mut self, values: &ArrayRef) {
        if let Some(values) = values.as_boolean_opt() {
            self.nulls += values.null_count() as u64;
            let (min, max) = (arrow::compute::min_boolean, arrow::compute::max_boolean);
            for bound in [min(values), max(values)] {
                self.extend(bound.map(i64::from));
            }
        }
    }

    /// Widens the bounds to `value` (a column's minimum or maximum); `None` adds nothing.
    fn extend(&mut self, value: Option<i64>) {
        if let Some(x) = value {
            self.min = Some(self.min.map_or(x, |m| m.min(x)));
            self.max = Some(self.max.map_or(x, |m| m.max(x)));
        }
    }

    fn booleans(&self) -> Summary {
        Summary {
            min: self.min.map(|m| serde_json::Value::Bool(m != 0)),
            max: self.max.map(|m| serde_json::Value::Bool(m != 0)),
            nulls: self.nulls,
        }
    }

    /// As delta-rs writes timestamp statistics: to the millisecond, without a fraction when
    /// it is zero (`Z` for a zoned timestamp, a space and no zone for a naive one).
    fn timestamps(&self, (unit, zoned): (TimeUnit, bool)) -> Summary {
        let text = |raw: i64| {
            let micros = match unit {
                TimeUnit::Second => raw.saturating_mul(1_000_000),
                TimeUnit::Millisecond => raw.saturating_mul(1_000),
                TimeUnit::Microsecond => raw,
                TimeUnit::Nanosecond => raw.div_euclid(1_000),
            };
            chrono::DateTime::from_timestamp_micros(micros).map(|t| {
                let whole = t.timestamp_subsec_nanos() == 0;
                let format = match (zoned, whole) {
                    (true, true) => "%Y-%m-%dT%H:%M:%SZ",
                    (true, false) => "%Y-%m-%dT%H:%M:%S%.3fZ",
                    (false, true) => "%Y-%m-%d %H:%M:%S",
                    (false, false) => "%Y-%m-%d %H:%M:%S%.3f",
                };
                serde_json::Value::from(t.format(format).to_string())
            })
        };
        Summary {
            min: self.min.and_then(text),
            max: self.max.and_then(text),
            nulls: self.nulls,
        }
    }
}

impl Patched {
    /// `old` (a file's Delta statistics) with those of the two re-encoded columns
    /// recomputed for the patched copy.
    pub(super) fn stats(&self, old: Option<String>) -> Result<Option<String>, PatchError> {
        let Some(old) = old else {
            return Ok(None);
        };
        let mut stats: serde_json::Value = serde_json::from_str(&old)?;
        for (column, summary) in [(VALID_TO, &self.valid_to), (IS_CURRENT, &self.is_current)] {
            summarize(&mut stats, column, summary);
        }
        Ok(Some(stats.to_string()))
    }
}

/// Puts `summary` into the statistics of `column`, if the statistics cover that column.
fn summarize(stats: &mut serde_json::Value, column: &str, summary: &Summary) {
    let covered = stats.get("nullCount").and_then(|n| n.get(column)).is_some();
    if !covered {
        return;
    }
    for (key, value) in [
        ("minValues", summary.min.clone()),
        ("maxValues", summary.max.clone()),
        ("nullCount", Some(serde_json::Value::from(summary.nulls))),
    ] {
        if let Some(map) = stats.get_mut(key).and_then(|m| m.as_object_mut()) {
            match value {
                Some(value) => {
                    map.insert(column.to_string(), value);
                }
                None => {
                    map.remove(column);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BooleanArray, TimestampMillisecondArray};

    #[test]
    fn only_the_named_versions_end_and_the_rest_keep_their_values_and_nulls() {
        let sks = Int64Array::from(vec![Some(1), None, Some(3), Some(4), Some(5)]);
        let to: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![
            Some(10),
            Some(20),
            None,
            Some(40),
            None,
        ]));
        let current: ArrayRef = Arc::new(BooleanArray::from(vec![
            Some(false),
            None,
            Some(true),
            Some(false),
            Some(true),
        ]));
        // 3 ends at 99, 4 opens again; 2 is named but no row holds it.
        let ends: Ends = [(3, Some(99)), (4, None), (2, Some(7))]
            .into_iter()
            .collect();
        let (to, current) = ended_columns(&sks, &to, &current, &ends).unwrap().unwrap();
        assert_eq!(
            to.data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, None)
        );
        let to = arrow::compute::cast(&to, &DataType::Int64).unwrap();
        let to: Vec<Option<i64>> = to.as_primitive::<Int64Type>().iter().collect();
        assert_eq!(to, vec![Some(10), Some(20), Some(99), None, None]);
        let current: Vec<Option<bool>> = current.as_boolean().iter().collect();
        assert_eq!(
            current,
            vec![Some(false), None, Some(false), Some(true), Some(true)]
        );
        let none: Ends = [(2, Some(7))].into_iter().collect();
        let stored_to: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![None; 5]));
        let stored_now: ArrayRef = Arc::new(BooleanArray::from(vec![true; 5]));
        assert!(
            ended_columns(&sks, &stored_to, &stored_now, &none)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn bounds_count_nulls_and_span_every_batch() {
        let mut b = Bounds::default();
        b.add_raw(&(Arc::new(Int64Array::from(vec![Some(5), None, Some(-2)])) as ArrayRef));
        b.add_raw(&(Arc::new(Int64Array::from(vec![Some(9)])) as ArrayRef));
        b.add_raw(&(Arc::new(Int64Array::from(vec![None, None])) as ArrayRef));
        assert_eq!((b.min, b.max, b.nulls), (Some(-2), Some(9), 3));
        let mut c = Bounds::default();
        c.add_bools(&(Arc::new(BooleanArray::from(vec![Some(true), None])) as ArrayRef));
        assert_eq!((c.min, c.max, c.nulls), (Some(1), Some(1), 1));
        c.add_bools(&(Arc::new(BooleanArray::from(vec![false])) as ArrayRef));
        assert_eq!((c.min, c.max, c.nulls), (Some(0), Some(1), 1));
    }
}
