//! `[maintenance]`: how tunelake keeps its Delta tables healthy over a lifetime of runs, by
//! default and without being asked, as Databricks does for DLT tables. Names follow Delta's
//! table properties and Spark settings where those exist.

use serde::Deserialize;

/// Table maintenance (`[maintenance]`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Maintenance {
    /// Compact a table after a run's commits once it holds `compact_min_files` small files
    /// (Delta's `delta.autoOptimize.autoCompact`).
    pub auto_compact: bool,
    /// How many files smaller than `target_file_size_mb` make a table worth compacting
    /// (Databricks' `autoCompact.minNumFiles`, 50).
    pub compact_min_files: usize,
    /// The size compaction aims for (Delta's `delta.targetFileSize`).
    pub target_file_size_mb: u64,
    /// Vacuum removed files and clean the log of a table at most every `vacuum_interval_hours`,
    /// at the end of a run.
    pub auto_vacuum: bool,
    /// How often a run vacuums a table and cleans its log.
    pub vacuum_interval_hours: u64,
    /// Files removed from a table are deleted once older than this (Delta's
    /// `delta.deletedFileRetentionDuration`, 7 days): readers and time travel inside it work.
    pub deleted_file_retention_hours: u64,
    /// Log entries older than this are cleaned, up to a checkpoint (Delta's
    /// `delta.logRetentionDuration`, 30 days): time travel reaches back this far.
    pub log_retention_days: u64,
    /// Refuse a `deleted_file_retention_hours` below 168, which could delete files a reader
    /// or a late gold run still needs (Spark's `retentionDurationCheck.enabled`).
    pub retention_check: bool,
    /// What happens to a bronze file once silver has committed it and it is older than
    /// `clean_source_retention_days` (Auto Loader's `cloudFiles.cleanSource`): kept (`off`),
    /// deleted, or moved to `bronze/_archive/`. Bronze then holds only recent files, so the
    /// catch-up listing stays short.
    pub clean_source: CleanSource,
    /// How old a loaded bronze file must be before `clean_source` acts on it (Auto Loader's
    /// `cloudFiles.cleanSource.retentionDuration`, 30 days).
    pub clean_source_retention_days: u64,
}

/// Auto Loader's `cloudFiles.cleanSource` values.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CleanSource {
    /// Bronze keeps every file.
    Off,
    /// Loaded files past the retention are deleted.
    Delete,
    /// Loaded files past the retention are moved to `bronze/_archive/<Table>/`.
    Move,
}

impl Default for Maintenance {
    fn default() -> Self {
        Maintenance {
            auto_compact: true,
            compact_min_files: 50,
            target_file_size_mb: 128,
            auto_vacuum: true,
            vacuum_interval_hours: 24,
            deleted_file_retention_hours: SAFE_RETENTION_HOURS,
            log_retention_days: 30,
            retention_check: true,
            clean_source: CleanSource::Off,
            clean_source_retention_days: 30,
        }
    }
}

/// The shortest file retention allowed while `retention_check` is on: a week, as Delta's.
pub const SAFE_RETENTION_HOURS: u64 = 168;

/// Checks `[maintenance]`; each bad value is a problem.
pub(super) fn validate(m: &Maintenance, problem: &mut impl FnMut(String, String)) {
    if m.compact_min_files < 2 {
        problem(
            "maintenance.compact_min_files".into(),
            "must be at least 2: compacting one file changes nothing".into(),
        );
    }
    if m.target_file_size_mb == 0 {
        problem(
            "maintenance.target_file_size_mb".into(),
            "must be at least 1".into(),
        );
    }
    if m.retention_check && m.deleted_file_retention_hours < SAFE_RETENTION_HOURS {
        problem(
            "maintenance.deleted_file_retention_hours".into(),
            format!(
                "{} is below the safe minimum of {SAFE_RETENTION_HOURS} hours: files a running \
                 reader or a late gold run still reads could be deleted; set \
                 retention_check = false to force it",
                m.deleted_file_retention_hours
            ),
        );
    }
    if m.clean_source != CleanSource::Off && m.clean_source_retention_days == 0 {
        problem(
            "maintenance.clean_source_retention_days".into(),
            "must be at least 1: a file just loaded may still be read by a retry or an event"
                .into(),
        );
    }
    if m.log_retention_days == 0 {
        problem(
            "maintenance.log_retention_days".into(),
            "must be at least 1".into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(m: &Maintenance) -> Vec<String> {
        let mut found = Vec::new();
        validate(m, &mut |at: String, message: String| {
            found.push(format!("{at}: {message}"))
        });
        found
    }

    #[test]
    fn a_short_retention_is_refused_unless_forced() {
        assert!(problems(&Maintenance::default()).is_empty());
        let short = Maintenance {
            deleted_file_retention_hours: 1,
            ..Maintenance::default()
        };
        let found = problems(&short);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("safe minimum of 168"), "{found:?}");
        let forced = Maintenance {
            retention_check: false,
            ..short
        };
        assert!(problems(&forced).is_empty());
    }
}
