//! The part of the event log a question needs: each file's range of start times and of run
//! ids, from the statistics the Delta log keeps per file, picks the files that can hold the
//! answer, so `status` and the run report read the latest runs, not the whole history.

use chrono::DateTime;
use deltalake::DeltaTable;

use crate::error::{Error, Result};
use crate::lake::layout;

/// What one data file of the log can hold; `None` where its statistics do not say.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct FileRange {
    pub path: String,
    /// The earliest and latest `started_at`, in microseconds.
    pub started: Option<(i64, i64)>,
    /// The smallest and largest `run_id`.
    pub runs: Option<(String, String)>,
}

/// The ranges of every live file of the log.
pub(super) fn ranges(table: &DeltaTable) -> Result<Vec<FileRange>> {
    let snapshot = table.snapshot().map_err(|e| Error::Delta {
        table: layout::EVENTS.to_string(),
        source: e,
    })?;
    let mut ranges = Vec::new();
    for file in snapshot.log_data() {
        let stats: Option<serde_json::Value> =
            file.stats().and_then(|s| serde_json::from_str(&s).ok());
        let bound = |side: &str, column: &str| -> Option<String> {
            stats
                .as_ref()?
                .get(side)?
                .get(column)?
                .as_str()
                .map(String::from)
        };
        let micros = |text: Option<String>| {
            DateTime::parse_from_rfc3339(&text?)
                .ok()
                .map(|t| t.timestamp_micros())
        };
        let started =
            micros(bound("minValues", "started_at")).zip(micros(bound("maxValues", "started_at")));
        let runs = bound("minValues", "run_id").zip(bound("maxValues", "run_id"));
        ranges.push(FileRange {
            path: file.path().to_string(),
            started,
            // Delta cuts long string statistics to a prefix; only whole ids bound a file.
            runs: runs.filter(|(lo, hi)| lo.len() < 32 && hi.len() < 32),
        });
    }
    Ok(ranges)
}

/// The files that may hold an event started at or after `cut`.
pub(super) fn since(ranges: &[FileRange], cut: i64) -> Vec<String> {
    ranges
        .iter()
        .filter(|r| r.started.is_none_or(|(_, newest)| newest >= cut))
        .map(|r| r.path.clone())
        .collect()
}

/// The files that may hold an event of one of `runs`.
pub(super) fn of_runs(ranges: &[FileRange], runs: &[String]) -> Vec<String> {
    ranges
        .iter()
        .filter(|r| {
            r.runs.as_ref().is_none_or(|(lo, hi)| {
                runs.iter()
                    .any(|id| lo.as_str() <= id.as_str() && id.as_str() <= hi.as_str())
            })
        })
        .map(|r| r.path.clone())
        .collect()
}

/// The span of start times the log covers, `(earliest, latest)`, when every file says.
pub(super) fn span(ranges: &[FileRange]) -> Option<(i64, i64)> {
    let mut span: Option<(i64, i64)> = None;
    for r in ranges {
        let (lo, hi) = r.started?;
        span = Some(span.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(path: &str, started: (i64, i64), runs: (&str, &str)) -> FileRange {
        FileRange {
            path: path.into(),
            started: Some(started),
            runs: Some((runs.0.into(), runs.1.into())),
        }
    }

    #[test]
    fn files_are_picked_by_what_their_statistics_allow() {
        let mut files = vec![
            range("old", (0, 100), ("a", "z")),
            range("run-m", (200, 210), ("m", "m")),
            range("run-q", (300, 300), ("q", "q")),
        ];
        assert_eq!(since(&files, 250), ["run-q"]);
        assert_eq!(since(&files, 100), ["old", "run-m", "run-q"]);
        assert_eq!(of_runs(&files, &["q".into()]), ["old", "run-q"]);
        assert_eq!(of_runs(&files, &["b".into(), "m".into()]), ["old", "run-m"]);
        assert_eq!(span(&files), Some((0, 300)));
        files.push(FileRange {
            path: "no-stats".into(),
            started: None,
            runs: None,
        });
        assert_eq!(since(&files, 250), ["run-q", "no-stats"]);
        assert_eq!(of_runs(&files, &["q".into()]), ["old", "run-q", "no-stats"]);
        assert_eq!(span(&files), None);
    }
}
