//! Watermark values and extract windows: `(low, high]` over a table's watermark column.
//!
//! A [`Bound`] is a typed watermark value (integer, date or microsecond timestamp). Windows are
//! planned here, in one pure function, so that the incremental, empty and backfill cases are
//! decided in one place and unit-tested without a source.

use std::fmt;

use arrow::datatypes::DataType;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};

use crate::error::{Error, Result};

/// The kind of a watermark column, derived from its Arrow type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BoundKind {
    Integer,
    Date,
    Timestamp,
}

impl BoundKind {
    /// The kind for a watermark column of this Arrow type, or `None` if the type cannot order rows.
    pub fn for_type(data_type: &DataType) -> Option<Self> {
        match data_type {
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => Some(Self::Integer),
            DataType::Date32 | DataType::Date64 => Some(Self::Date),
            DataType::Timestamp(_, _) => Some(Self::Timestamp),
            _ => None,
        }
    }

    /// Parses a user-given value (a `--from` argument or a stored watermark) as this kind.
    ///
    /// Dates given for a timestamp column mean midnight UTC; timestamps accept `T` or a space,
    /// fractional seconds and an optional `Z`.
    pub fn parse(self, text: &str) -> Result<Bound> {
        let text = text.trim();
        let bad = |expected: &str| Error::BadArgument {
            what: format!("watermark value {text:?}"),
            message: format!("expected {expected}"),
        };
        match self {
            BoundKind::Integer => text
                .parse::<i64>()
                .map(Bound::Integer)
                .map_err(|_| bad("an integer")),
            BoundKind::Date => parse_date(text)
                .map(Bound::Date)
                .ok_or_else(|| bad("a date like 2024-03-01")),
            BoundKind::Timestamp => parse_timestamp(text)
                .or_else(|| parse_date(text).map(|d| d.and_time(NaiveTime::MIN)))
                .map(|ts| Bound::Timestamp(ts.and_utc().timestamp_micros()))
                .ok_or_else(|| bad("a timestamp like 2024-03-01T10:00:00 or a date")),
        }
    }
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(text: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

/// Parses the timestamp spellings SQL sources produce: `T` or space, optional fraction, optional `Z`.
pub fn parse_timestamp(text: &str) -> Option<NaiveDateTime> {
    let text = text.strip_suffix('Z').unwrap_or(text);
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
}

/// A typed watermark value. Values of different kinds are never compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bound {
    Integer(i64),
    Date(NaiveDate),
    /// Microseconds since the Unix epoch, UTC.
    Timestamp(i64),
}

impl Bound {
    /// The kind of this value.
    pub fn kind(&self) -> BoundKind {
        match self {
            Bound::Integer(_) => BoundKind::Integer,
            Bound::Date(_) => BoundKind::Date,
            Bound::Timestamp(_) => BoundKind::Timestamp,
        }
    }

    /// The value as a UTC date-time, for timestamps.
    pub fn as_datetime(&self) -> Option<DateTime<Utc>> {
        match self {
            Bound::Timestamp(us) => DateTime::from_timestamp_micros(*us),
            _ => None,
        }
    }

    /// The compact, fixed-width, sortable spelling used in bronze file names:
    /// `20240301T101500123456` for timestamps, `20240301` for dates, digits for integers.
    pub fn file_token(&self) -> String {
        match self {
            Bound::Integer(v) => v.to_string(),
            Bound::Date(d) => d.format("%Y%m%d").to_string(),
            Bound::Timestamp(_) => self
                .as_datetime()
                .map(|dt| dt.format("%Y%m%dT%H%M%S%6f").to_string())
                .unwrap_or_else(|| "invalid".to_string()),
        }
    }
}

impl BoundKind {
    /// Reads a value back from its file-name token (see [`Bound::file_token`]).
    pub fn parse_file_token(self, token: &str) -> Option<Bound> {
        match self {
            BoundKind::Integer => token.parse().ok().map(Bound::Integer),
            BoundKind::Date => NaiveDate::parse_from_str(token, "%Y%m%d")
                .ok()
                .map(Bound::Date),
            BoundKind::Timestamp => NaiveDateTime::parse_from_str(token, "%Y%m%dT%H%M%S%6f")
                .ok()
                .map(|t| Bound::Timestamp(t.and_utc().timestamp_micros())),
        }
    }
}

/// The canonical text form: what watermark files store and what `status` prints.
impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::Integer(v) => write!(f, "{v}"),
            Bound::Date(d) => write!(f, "{}", d.format("%Y-%m-%d")),
            Bound::Timestamp(us) => match DateTime::from_timestamp_micros(*us) {
                Some(dt) => write!(f, "{}", dt.format("%Y-%m-%dT%H:%M:%S%.6fZ")),
                None => write!(f, "{us}us"),
            },
        }
    }
}

/// One extract: rows with `low < watermark <= high`; `low = None` means from the beginning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub low: Option<Bound>,
    pub high: Bound,
}

impl Window {
    /// The file-name stem of this window's bronze files: `<Table>_<low>_<high>`.
    ///
    /// The same window always gives the same stem, so a rerun overwrites its own files.
    pub fn file_stem(&self, table: &str) -> String {
        let low = self.low.map_or_else(|| "0".to_string(), |b| b.file_token());
        format!("{table}_{low}_{}", self.high.file_token())
    }

    /// Splits a bronze file name of `table` into its window tokens and part number.
    pub fn parse_file_name<'a>(table: &str, name: &'a str) -> Option<(&'a str, &'a str, usize)> {
        let rest = name
            .strip_prefix(table)?
            .strip_prefix('_')?
            .strip_suffix(".parquet")?;
        let mut parts = rest.split('_');
        let (low, high, part) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Some((low, high, part.parse().ok()?))
    }

    /// The object name of part `part` of this window.
    pub fn file_name(&self, table: &str, part: usize) -> String {
        format!("{}_{part:05}.parquet", self.file_stem(table))
    }
}

/// What an ingest of one table should do, decided from the stored watermark, the source's
/// current maximum, and an optional backfill start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The window to extract, or `None` when there is nothing new.
    pub window: Option<Window>,
    /// The watermark to store once the window is durably written; never below `stored`.
    pub next_watermark: Option<Bound>,
}

/// Plans one table's extract.
///
/// * Incremental: `(stored, high]`, empty when `high <= stored`.
/// * Backfill (`from`): `(from, high]`; the watermark becomes `max(stored, high)`, never lower.
/// * Empty source table (`high = None`): nothing to do, watermark unchanged.
pub fn plan(stored: Option<Bound>, high: Option<Bound>, from: Option<Bound>) -> Plan {
    let Some(high) = high else {
        return Plan {
            window: None,
            next_watermark: stored,
        };
    };
    let low = from.or(stored);
    let window = match low {
        Some(low) if high <= low => None,
        _ => Some(Window { low, high }),
    };
    let next_watermark = match (stored, window) {
        (Some(s), Some(_)) => Some(s.max(high)),
        (None, Some(_)) => Some(high),
        (s, None) => s,
    };
    Plan {
        window,
        next_watermark,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::TimeUnit;

    fn ts(text: &str) -> Bound {
        BoundKind::Timestamp.parse(text).unwrap()
    }

    #[test]
    fn first_run_extracts_everything_up_to_high() {
        let p = plan(None, Some(ts("2024-06-30T12:00:00")), None);
        assert_eq!(
            p.window,
            Some(Window {
                low: None,
                high: ts("2024-06-30T12:00:00")
            })
        );
        assert_eq!(p.next_watermark, Some(ts("2024-06-30T12:00:00")));
    }

    #[test]
    fn incremental_window_starts_after_the_stored_watermark() {
        let p = plan(
            Some(ts("2024-06-30T12:00:00")),
            Some(ts("2024-07-31T00:00:00")),
            None,
        );
        assert_eq!(p.window.unwrap().low, Some(ts("2024-06-30T12:00:00")));
        assert_eq!(p.next_watermark, Some(ts("2024-07-31T00:00:00")));
    }

    #[test]
    fn no_new_rows_means_no_window_and_an_unchanged_watermark() {
        let wm = ts("2024-06-30T12:00:00");
        let p = plan(Some(wm), Some(wm), None);
        assert_eq!(p.window, None);
        assert_eq!(p.next_watermark, Some(wm));
        assert_eq!(plan(Some(wm), None, None).next_watermark, Some(wm));
        assert_eq!(
            plan(None, None, None),
            Plan {
                window: None,
                next_watermark: None
            }
        );
    }

    #[test]
    fn a_source_behind_the_watermark_never_moves_it_backward() {
        let wm = ts("2024-06-30T12:00:00");
        let p = plan(Some(wm), Some(ts("2024-01-01T00:00:00")), None);
        assert_eq!(p.window, None);
        assert_eq!(p.next_watermark, Some(wm));
    }

    #[test]
    fn backfill_extracts_from_the_given_value_and_keeps_the_watermark() {
        let wm = ts("2024-06-30T12:00:00");
        let from = ts("2024-03-01");
        let p = plan(Some(wm), Some(wm), Some(from));
        assert_eq!(
            p.window,
            Some(Window {
                low: Some(from),
                high: wm
            })
        );
        assert_eq!(p.next_watermark, Some(wm));
        // New rows arrived since: the backfill covers them, so the watermark may advance.
        let later = ts("2024-07-15T00:00:00");
        assert_eq!(
            plan(Some(wm), Some(later), Some(from)).next_watermark,
            Some(later)
        );
        // A backfill start past the source's maximum extracts nothing.
        assert_eq!(plan(Some(wm), Some(wm), Some(later)).window, None);
    }

    #[test]
    fn file_names_are_deterministic_fixed_width_and_sortable() {
        let w = Window {
            low: Some(ts("2024-03-01T00:00:00")),
            high: ts("2024-06-30T12:34:56.789"),
        };
        assert_eq!(
            w.file_name("FactStream", 3),
            "FactStream_20240301T000000000000_20240630T123456789000_00003.parquet"
        );
        let first = Window {
            low: None,
            high: Bound::Date(NaiveDate::from_ymd_opt(2025, 12, 31).unwrap()),
        };
        assert_eq!(
            first.file_name("DimDate", 0),
            "DimDate_0_20251231_00000.parquet"
        );
        let name = w.file_name("Fact_Stream", 12);
        let (low, high, part) = Window::parse_file_name("Fact_Stream", &name).unwrap();
        assert_eq!(part, 12);
        assert_eq!(BoundKind::Timestamp.parse_file_token(low), w.low);
        assert_eq!(BoundKind::Timestamp.parse_file_token(high), Some(w.high));
        assert_eq!(Window::parse_file_name("Fact", &name), None);
        assert_eq!(
            BoundKind::Date.parse_file_token("20251231"),
            Some(first.high)
        );
        assert_eq!(
            Window {
                low: Some(Bound::Integer(7)),
                high: Bound::Integer(42)
            }
            .file_stem("T"),
            "T_7_42"
        );
    }

    #[test]
    fn values_parse_by_kind_and_print_canonically() {
        assert_eq!(
            ts("2024-03-01 10:00:00.5Z").to_string(),
            "2024-03-01T10:00:00.500000Z"
        );
        assert_eq!(ts("2024-03-01").to_string(), "2024-03-01T00:00:00.000000Z");
        assert_eq!(
            BoundKind::Date.parse("2024-03-01").unwrap().to_string(),
            "2024-03-01"
        );
        assert_eq!(
            BoundKind::Integer.parse(" 42 ").unwrap(),
            Bound::Integer(42)
        );
        assert!(BoundKind::Date.parse("March 1st").is_err());
        assert!(BoundKind::Integer.parse("2024-03-01").is_err());
        // Round trip through the canonical form.
        let v = ts("2024-12-31T23:59:59.999999");
        assert_eq!(BoundKind::Timestamp.parse(&v.to_string()).unwrap(), v);
    }

    #[test]
    fn kinds_follow_arrow_types() {
        assert_eq!(
            BoundKind::for_type(&DataType::Int32),
            Some(BoundKind::Integer)
        );
        assert_eq!(
            BoundKind::for_type(&DataType::Date32),
            Some(BoundKind::Date)
        );
        assert_eq!(
            BoundKind::for_type(&DataType::Timestamp(
                TimeUnit::Microsecond,
                Some("UTC".into())
            )),
            Some(BoundKind::Timestamp)
        );
        assert_eq!(BoundKind::for_type(&DataType::Utf8), None);
    }
}
