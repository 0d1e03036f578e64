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
    /// An integer column.
    Integer,
    /// A date column.
    Date,
    /// A timestamp column (microseconds, UTC).
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
    /// An integer value.
    Integer(i64),
    /// A date.
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
    /// Above this value (`None`: from the start).
    pub low: Option<Bound>,
    /// Up to this value, included.
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

/// How far below the stored watermark an incremental window starts, for rows that commit
/// late (`[[tables]] lookback`): a duration for timestamp columns (`90s`, `30m`, `2h`, `1d`),
/// whole days for date columns, a count for integer columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookback {
    /// Microseconds.
    Duration(i64),
    /// Units of an integer watermark.
    Count(i64),
}

impl Lookback {
    /// Reads `90s`, `30m`, `2h`, `1d` (or an integer, for integer watermarks).
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let text = text.trim();
        let bad = || {
            format!(
                "{text:?} is not a lookback: use a duration such as \"90s\", \"30m\", \"2h\" or \"1d\", or an integer for an integer watermark"
            )
        };
        if let Ok(n) = text.parse::<i64>() {
            return (n >= 0).then_some(Lookback::Count(n)).ok_or_else(bad);
        }
        let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (digits, unit) = text.split_at(split);
        let n: i64 = digits.parse().map_err(|_| bad())?;
        let unit_micros: i64 = match unit.trim() {
            "s" => 1_000_000,
            "m" => 60_000_000,
            "h" => 3_600_000_000,
            "d" => 86_400_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(unit_micros)
            .map(Lookback::Duration)
            .ok_or_else(bad)
    }

    /// The bound `self` below `bound`, or why this lookback does not fit that kind of column.
    pub fn below(self, bound: Bound) -> std::result::Result<Bound, String> {
        const DAY: i64 = 86_400_000_000;
        match (self, bound) {
            (Lookback::Duration(us), Bound::Timestamp(t)) => Ok(Bound::Timestamp(t.saturating_sub(us))),
            (Lookback::Duration(us), Bound::Date(d)) if us % DAY == 0 => Ok(Bound::Date(
                d.checked_sub_days(chrono::Days::new((us / DAY) as u64))
                    .unwrap_or(NaiveDate::MIN),
            )),
            (Lookback::Duration(_), Bound::Date(_)) => {
                Err("a date watermark takes a lookback in whole days (\"1d\", \"7d\")".into())
            }
            (Lookback::Count(n), Bound::Integer(v)) => Ok(Bound::Integer(v.saturating_sub(n))),
            (Lookback::Count(0), b) => Ok(b),
            (Lookback::Count(_), _) => Err(
                "a date or timestamp watermark takes a lookback duration (\"2h\", \"1d\"), not a number".into(),
            ),
            (Lookback::Duration(_), Bound::Integer(_)) => {
                Err("an integer watermark takes a lookback count, not a duration".into())
            }
        }
    }
}

/// What an ingest of one table should do, decided from the stored watermark, the source's
/// current maximum, a backfill start and the table's lookback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The window to extract, or `None` when there is nothing to read.
    pub window: Option<Window>,
    /// The watermark to store once the window is durably written; never below `stored`.
    pub next_watermark: Option<Bound>,
}

/// Plans one table's extract.
///
/// * Incremental: `(stored, high]`, nothing when `high <= stored`.
/// * Lookback: the window starts at `stored - lookback` and is read on every run, even when
///   nothing is past the watermark, so a row that committed late below it is still found.
/// * Backfill (`from`): `(min(from, start), high]`, so a backfill never skips the rows between
///   the watermark and `from`; the watermark becomes `max(stored, high)`, never lower.
/// * Empty source table (`high = None`): nothing to do, watermark unchanged.
pub fn plan(
    stored: Option<Bound>,
    high: Option<Bound>,
    from: Option<Bound>,
    lookback: Option<Bound>,
) -> Plan {
    let Some(high) = high else {
        return Plan {
            window: None,
            next_watermark: stored,
        };
    };
    // `lookback` is the stored watermark moved down already; it is only known with one.
    let start = lookback.filter(|_| stored.is_some()).or(stored);
    // No stored watermark: the first extract reads everything, whatever `from` says.
    let low = match (start, from) {
        (Some(s), Some(f)) => Some(s.min(f)),
        (s, _) => s,
    };
    let top = stored.map_or(high, |s| s.max(high));
    let window = match low {
        Some(low) if top <= low => None,
        // Nothing past the watermark and nothing asked below it: no window.
        _ if stored.is_some_and(|s| high <= s) && low == stored => None,
        _ => Some(Window { low, high: top }),
    };
    let next_watermark = match window {
        Some(_) => Some(top),
        None => stored,
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
        let p = plan(None, Some(ts("2024-06-30T12:00:00")), None, None);
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
            None,
        );
        assert_eq!(p.window.unwrap().low, Some(ts("2024-06-30T12:00:00")));
        assert_eq!(p.next_watermark, Some(ts("2024-07-31T00:00:00")));
    }

    #[test]
    fn no_new_rows_means_no_window_and_an_unchanged_watermark() {
        let wm = ts("2024-06-30T12:00:00");
        let p = plan(Some(wm), Some(wm), None, None);
        assert_eq!(p.window, None);
        assert_eq!(p.next_watermark, Some(wm));
        assert_eq!(plan(Some(wm), None, None, None).next_watermark, Some(wm));
        assert_eq!(
            plan(None, None, None, None),
            Plan {
                window: None,
                next_watermark: None
            }
        );
    }

    #[test]
    fn a_source_behind_the_watermark_never_moves_it_backward() {
        let wm = ts("2024-06-30T12:00:00");
        let p = plan(Some(wm), Some(ts("2024-01-01T00:00:00")), None, None);
        assert_eq!(p.window, None);
        assert_eq!(p.next_watermark, Some(wm));
    }

    #[test]
    fn backfill_extracts_from_the_given_value_and_keeps_the_watermark() {
        let wm = ts("2024-06-30T12:00:00");
        let from = ts("2024-03-01");
        let p = plan(Some(wm), Some(wm), Some(from), None);
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
            plan(Some(wm), Some(later), Some(from), None).next_watermark,
            Some(later)
        );
        // A backfill start past the source's maximum extracts nothing.
        assert_eq!(plan(Some(wm), Some(wm), Some(later), None).window, None);
    }

    #[test]
    fn a_backfill_starts_at_the_lower_of_its_start_and_the_watermark() {
        let wm = ts("2025-06-30T23:58:55");
        let high = ts("2025-07-30T00:00:00");
        // Before the watermark: from there.
        let before = plan(Some(wm), Some(high), Some(ts("2025-06-01")), None);
        assert_eq!(before.window.unwrap().low, Some(ts("2025-06-01")));
        assert_eq!(before.next_watermark, Some(high));
        // Past the watermark (inside the new rows): from the watermark, or the rows between
        // it and `from` would never be read.
        let past = plan(Some(wm), Some(high), Some(ts("2025-07-15")), None);
        assert_eq!(
            past.window,
            Some(Window {
                low: Some(wm),
                high
            })
        );
        assert_eq!(past.next_watermark, Some(high));
        // At the watermark: the same as an incremental run.
        assert_eq!(
            plan(Some(wm), Some(high), Some(wm), None),
            plan(Some(wm), Some(high), None, None)
        );
        // Past the source's maximum with nothing new: nothing.
        assert_eq!(plan(Some(wm), Some(wm), Some(high), None).window, None);
        // A source that went back below the watermark: the backfill reads up to the
        // watermark, which stays.
        let shrunk = plan(
            Some(wm),
            Some(ts("2025-06-15")),
            Some(ts("2025-06-01")),
            None,
        );
        assert_eq!(shrunk.window.unwrap().high, wm);
        assert_eq!(shrunk.next_watermark, Some(wm));
        // Never extracted: everything, whatever the start.
        let first = plan(None, Some(high), Some(ts("2025-07-15")), None);
        assert_eq!(first.window, Some(Window { low: None, high }));
    }

    #[test]
    fn a_lookback_rereads_below_the_watermark_on_every_run() {
        let wm = ts("2025-06-30T12:00:00");
        let lookback = Lookback::parse("2h").unwrap().below(wm).ok();
        assert_eq!(lookback, Some(ts("2025-06-30T10:00:00")));
        let high = ts("2025-07-01T00:00:00");
        let p = plan(Some(wm), Some(high), None, lookback);
        assert_eq!(
            p.window,
            Some(Window {
                low: lookback,
                high
            })
        );
        assert_eq!(p.next_watermark, Some(high));
        // Nothing new: the lookback window is still read (a late row may be in it), and the
        // watermark stays.
        let idle = plan(Some(wm), Some(wm), None, lookback);
        assert_eq!(
            idle.window,
            Some(Window {
                low: lookback,
                high: wm
            })
        );
        assert_eq!(idle.next_watermark, Some(wm));
        // A first run has nothing to look back from.
        assert_eq!(plan(None, Some(high), None, None).window.unwrap().low, None);
        // A backfill below the lookback start wins.
        let from = ts("2025-06-01");
        assert_eq!(
            plan(Some(wm), Some(high), Some(from), lookback)
                .window
                .unwrap()
                .low,
            Some(from)
        );
    }

    #[test]
    fn lookbacks_parse_as_durations_or_counts_and_fit_their_column() {
        assert_eq!(Lookback::parse("90s"), Ok(Lookback::Duration(90_000_000)));
        assert_eq!(
            Lookback::parse("30m"),
            Ok(Lookback::Duration(1_800_000_000))
        );
        assert_eq!(
            Lookback::parse("1d"),
            Ok(Lookback::Duration(86_400_000_000))
        );
        assert_eq!(Lookback::parse("100"), Ok(Lookback::Count(100)));
        for bad in ["2 hours", "h", "-5", "1.5h", "2w", ""] {
            assert!(Lookback::parse(bad).is_err(), "{bad}");
        }
        let day = Bound::Date(NaiveDate::from_ymd_opt(2025, 3, 1).unwrap());
        assert_eq!(
            Lookback::parse("2d").unwrap().below(day),
            Ok(Bound::Date(NaiveDate::from_ymd_opt(2025, 2, 27).unwrap()))
        );
        assert!(Lookback::parse("2h").unwrap().below(day).is_err());
        assert_eq!(
            Lookback::Count(10).below(Bound::Integer(100)),
            Ok(Bound::Integer(90))
        );
        assert!(Lookback::Count(10).below(ts("2025-01-01")).is_err());
        assert!(
            Lookback::parse("1h")
                .unwrap()
                .below(Bound::Integer(5))
                .is_err()
        );
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
