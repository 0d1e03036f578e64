//! Arrow column builders for the SQL types tunelake maps, shared by the row-based sources.
//!
//! Every source maps its column types onto this closed set (DESIGN.md §6: datetime2 to
//! microsecond UTC timestamps, decimal to decimal128, bit to boolean, nvarchar to utf8), so a
//! table reads the same whichever database it comes from.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder, UInt8Builder,
};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};

/// The timestamp type every source produces: microseconds, UTC.
pub fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// A growing Arrow column of one of the mapped types.
pub enum ColumnBuilder {
    Boolean(BooleanBuilder),
    UInt8(UInt8Builder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder, u8, i8),
    Utf8(StringBuilder),
    Binary(BinaryBuilder),
    Date32(Date32Builder),
    Time64(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder),
}

impl ColumnBuilder {
    /// A builder for `data_type`, or `None` if the type is outside the mapped set.
    pub fn new(data_type: &DataType, capacity: usize) -> Option<Self> {
        Some(match data_type {
            DataType::Boolean => Self::Boolean(BooleanBuilder::with_capacity(capacity)),
            DataType::UInt8 => Self::UInt8(UInt8Builder::with_capacity(capacity)),
            DataType::Int16 => Self::Int16(Int16Builder::with_capacity(capacity)),
            DataType::Int32 => Self::Int32(Int32Builder::with_capacity(capacity)),
            DataType::Int64 => Self::Int64(Int64Builder::with_capacity(capacity)),
            DataType::Float32 => Self::Float32(Float32Builder::with_capacity(capacity)),
            DataType::Float64 => Self::Float64(Float64Builder::with_capacity(capacity)),
            DataType::Decimal128(p, s) => Self::Decimal(
                Decimal128Builder::with_capacity(capacity)
                    .with_precision_and_scale(*p, *s)
                    .ok()?,
                *p,
                *s,
            ),
            DataType::Utf8 => Self::Utf8(StringBuilder::with_capacity(capacity, capacity * 16)),
            DataType::Binary => Self::Binary(BinaryBuilder::with_capacity(capacity, capacity * 16)),
            DataType::Date32 => Self::Date32(Date32Builder::with_capacity(capacity)),
            DataType::Time64(TimeUnit::Microsecond) => {
                Self::Time64(Time64MicrosecondBuilder::with_capacity(capacity))
            }
            DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) if tz.as_ref() == "UTC" => {
                Self::Timestamp(
                    TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
                )
            }
            _ => return None,
        })
    }

    /// Appends a NULL.
    pub fn append_null(&mut self) {
        match self {
            Self::Boolean(b) => b.append_null(),
            Self::UInt8(b) => b.append_null(),
            Self::Int16(b) => b.append_null(),
            Self::Int32(b) => b.append_null(),
            Self::Int64(b) => b.append_null(),
            Self::Float32(b) => b.append_null(),
            Self::Float64(b) => b.append_null(),
            Self::Decimal(b, _, _) => b.append_null(),
            Self::Utf8(b) => b.append_null(),
            Self::Binary(b) => b.append_null(),
            Self::Date32(b) => b.append_null(),
            Self::Time64(b) => b.append_null(),
            Self::Timestamp(b) => b.append_null(),
        }
    }

    /// Takes the rows so far as an array, leaving the builder empty.
    pub fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Boolean(b) => Arc::new(b.finish()),
            Self::UInt8(b) => Arc::new(b.finish()),
            Self::Int16(b) => Arc::new(b.finish()),
            Self::Int32(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::Float32(b) => Arc::new(b.finish()),
            Self::Float64(b) => Arc::new(b.finish()),
            Self::Decimal(b, _, _) => Arc::new(b.finish()),
            Self::Utf8(b) => Arc::new(b.finish()),
            Self::Binary(b) => Arc::new(b.finish()),
            Self::Date32(b) => Arc::new(b.finish()),
            Self::Time64(b) => Arc::new(b.finish()),
            Self::Timestamp(b) => Arc::new(b.finish()),
        }
    }
}

/// Builders for every column of a schema, filled row by row and cut into batches.
pub struct BatchBuilder {
    schema: SchemaRef,
    pub columns: Vec<ColumnBuilder>,
    rows: usize,
}

impl BatchBuilder {
    /// Builders for `schema`; `table` names the table if a column type is outside the mapped set.
    pub fn new(table: &str, schema: SchemaRef, capacity: usize) -> Result<Self> {
        let columns = schema
            .fields()
            .iter()
            .map(|f| {
                ColumnBuilder::new(f.data_type(), capacity).ok_or_else(|| Error::UnsupportedType {
                    table: table.to_string(),
                    column: f.name().clone(),
                    source_type: f.data_type().to_string(),
                })
            })
            .collect::<Result<_>>()?;
        Ok(BatchBuilder {
            schema,
            columns,
            rows: 0,
        })
    }

    /// Counts one more complete row.
    pub fn end_row(&mut self) {
        self.rows += 1;
    }

    /// Rows appended since the last batch.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Cuts the rows so far into a record batch.
    pub fn finish(&mut self, table: &str) -> Result<RecordBatch> {
        let arrays = self.columns.iter_mut().map(ColumnBuilder::finish).collect();
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| Error::arrow(format!("table {table}: building a record batch"), e))
    }
}

/// Days since 1970-01-01 for a date.
pub fn days_since_epoch(date: chrono::NaiveDate) -> i32 {
    const EPOCH_CE_DAYS: i32 = 719_163;
    chrono::Datelike::num_days_from_ce(&date) - EPOCH_CE_DAYS
}

/// Parses `YYYY-MM-DD[ T]HH:MM:SS[.f{1,9}][Z]` into microseconds since the epoch, UTC.
///
/// Hand-rolled for the fixed layout SQL sources print, because it runs once per row of every
/// timestamp column; anything unusual falls back to chrono.
pub fn parse_timestamp_micros(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        b.get(r)?.iter().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let fast = (|| {
        if b.len() < 19
            || b[4] != b'-'
            || b[7] != b'-'
            || !(b[10] == b' ' || b[10] == b'T')
            || b[13] != b':'
            || b[16] != b':'
        {
            return None;
        }
        let date =
            chrono::NaiveDate::from_ymd_opt(digits(0..4)? as i32, digits(5..7)?, digits(8..10)?)?;
        let (h, m, s) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
        if h > 23 || m > 59 || s > 59 {
            return None;
        }
        let mut rest = &b[19..];
        let mut micros = 0u32;
        if let Some((b'.', frac)) = rest.split_first() {
            let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
            if n == 0 || n > 9 {
                return None;
            }
            for (i, c) in frac[..n].iter().enumerate() {
                if i < 6 {
                    micros = micros * 10 + u32::from(c - b'0');
                }
            }
            micros *= 10u32.pow(6u32.saturating_sub(n as u32));
            rest = &frac[n..];
        }
        if !(rest.is_empty() || rest == b"Z") {
            return None;
        }
        let secs = i64::from(days_since_epoch(date)) * 86_400 + i64::from(h * 3600 + m * 60 + s);
        Some(secs * 1_000_000 + i64::from(micros))
    })();
    fast.or_else(|| crate::window::parse_timestamp(text).map(|t| t.and_utc().timestamp_micros()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_in_every_spelling_to_the_same_micros() {
        let expected = chrono::NaiveDate::from_ymd_opt(2024, 3, 1)
            .unwrap()
            .and_hms_micro_opt(10, 15, 30, 120_000)
            .unwrap()
            .and_utc()
            .timestamp_micros();
        for text in [
            "2024-03-01 10:15:30.12",
            "2024-03-01T10:15:30.120000",
            "2024-03-01T10:15:30.120000000Z",
            "2024-03-01 10:15:30.120",
        ] {
            assert_eq!(parse_timestamp_micros(text), Some(expected), "{text}");
        }
        assert_eq!(parse_timestamp_micros("1970-01-01 00:00:00"), Some(0));
        assert_eq!(
            parse_timestamp_micros("1969-12-31 23:59:59"),
            Some(-1_000_000)
        );
        for bad in [
            "2024-02-30 00:00:00",
            "2024-03-01 25:00:00",
            "yesterday",
            "2024-03-01 10:15:30.Z",
            "",
        ] {
            assert_eq!(parse_timestamp_micros(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_mapped_type_has_a_builder_and_others_do_not() {
        for dt in [
            DataType::Boolean,
            DataType::UInt8,
            DataType::Int16,
            DataType::Int32,
            DataType::Int64,
            DataType::Float32,
            DataType::Float64,
            DataType::Decimal128(18, 2),
            DataType::Utf8,
            DataType::Binary,
            DataType::Date32,
            DataType::Time64(TimeUnit::Microsecond),
            utc_micros(),
        ] {
            let mut b = ColumnBuilder::new(&dt, 4).unwrap();
            b.append_null();
            let array = b.finish();
            assert_eq!(array.data_type(), &dt);
            assert_eq!(array.null_count(), 1);
        }
        assert!(ColumnBuilder::new(&DataType::Timestamp(TimeUnit::Nanosecond, None), 1).is_none());
    }
}
