//! What a silver run reports: per file, per table, and the gold work its commits queue.

use std::collections::BTreeMap;

use serde::Serialize;

use super::super::Status;
use crate::config::TableSpec;
use crate::lake::layout::{self, Stage};

/// The unit of work the gold stage receives after a silver commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct GoldWorkItem {
    /// The silver table name, e.g. `users`.
    pub table: String,
    /// The Delta version that commit produced.
    pub version: u64,
}

/// How one bronze file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    /// Its rows are in silver, recorded in the same commit.
    Committed,
    /// An earlier commit already recorded this file (this version of it).
    AlreadyLoaded,
    /// Not readable as parquet: moved to `bronze/_quarantine/` with a reason file.
    Quarantined,
    /// Listed but gone before it could be read, or empty before silver has a table: nothing
    /// to load.
    Vanished,
}

/// Row counts of one file or table.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Rows read from bronze.
    pub rows_in: u64,
    /// Rows appended to silver.
    pub rows_out: u64,
    /// Rows quarantined by `drop` expectations.
    pub rows_dropped: u64,
    /// Rows whose (key, watermark value) was already in the file or in silver.
    pub rows_duplicate: u64,
    /// Rows with at least one value moved to `_rescued_data`.
    pub rows_rescued: u64,
    /// Rows breaking each rule, by rule name (all actions).
    pub expectations: BTreeMap<String, u64>,
}

impl Counts {
    pub(super) fn add(&mut self, other: &Counts) {
        self.rows_in += other.rows_in;
        self.rows_out += other.rows_out;
        self.rows_dropped += other.rows_dropped;
        self.rows_duplicate += other.rows_duplicate;
        self.rows_rescued += other.rows_rescued;
        for (rule, n) in &other.expectations {
            *self.expectations.entry(rule.clone()).or_default() += n;
        }
    }
}

/// What happened to one bronze file.
#[derive(Debug, Clone, Serialize)]
pub struct FileOutcome {
    /// The bronze file.
    pub file: String,
    /// How it ended.
    pub status: FileStatus,
    /// Its rows.
    pub counts: Counts,
    /// The silver version of the commit, when committed.
    pub version: Option<u64>,
    /// Why a file was quarantined.
    pub reason: Option<String>,
}

impl FileOutcome {
    /// A file's outcome with no version or reason.
    pub(super) fn new(file: &str, status: FileStatus, counts: Counts) -> Self {
        FileOutcome {
            file: file.to_string(),
            status,
            counts,
            version: None,
            reason: None,
        }
    }
}

/// What a silver run did to one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// The silver table name.
    pub table: String,
    /// The bronze (source) table name.
    pub source_table: String,
    /// How the table ended.
    pub status: Status,
    /// Files committed by this run.
    pub files: u64,
    /// Files already loaded or vanished.
    pub skipped: u64,
    /// Bronze files moved to quarantine, with the reason.
    pub quarantined_files: Vec<(String, String)>,
    /// Rows of the files committed, summed.
    #[serde(flatten)]
    pub counts: Counts,
    /// The table's version after the run.
    pub version: Option<u64>,
    /// Rows quarantined by expectations, where they went.
    pub quarantined_rows: Vec<String>,
    /// How long it took.
    pub seconds: f64,
    /// The error, when it failed.
    pub error: Option<String>,
}

impl crate::progress::Outcome for TableReport {
    fn status(&self) -> &'static str {
        self.status.as_str()
    }

    fn rows(&self) -> u64 {
        self.counts.rows_out
    }
}

impl TableReport {
    /// Adds what happened to one of the table's files.
    pub(super) fn add(&mut self, table: &TableSpec, outcome: FileOutcome) {
        self.counts.add(&outcome.counts);
        match outcome.status {
            FileStatus::Committed => {
                self.files += 1;
                self.status = Status::Ok;
                self.version = outcome.version;
                if outcome.counts.rows_dropped > 0 {
                    self.quarantined_rows
                        .push(layout::quarantined_rows(&table.name, &outcome.file));
                }
            }
            FileStatus::AlreadyLoaded | FileStatus::Vanished => self.skipped += 1,
            FileStatus::Quarantined => self
                .quarantined_files
                .push((outcome.file, outcome.reason.unwrap_or_default())),
        }
    }

    pub(super) fn new(table: &TableSpec) -> Self {
        TableReport {
            table: table.silver_name(),
            source_table: table.name.clone(),
            status: Status::Empty,
            files: 0,
            skipped: 0,
            quarantined_files: Vec::new(),
            counts: Counts::default(),
            version: None,
            quarantined_rows: Vec::new(),
            seconds: 0.0,
            error: None,
        }
    }
}

/// What a silver run did, table by table in pipeline order.
#[derive(Debug, Clone, Serialize)]
pub struct SilverReport {
    /// The run.
    pub run_id: String,
    /// Per table, in pipeline order.
    pub tables: Vec<TableReport>,
}

impl SilverReport {
    /// True when a table failed or a file had to be quarantined.
    pub fn failed(&self) -> bool {
        self.tables
            .iter()
            .any(|t| t.status == Status::Failed || !t.quarantined_files.is_empty())
    }

    /// The event-log rows of this run.
    pub fn events(
        &self,
        started_at: chrono::DateTime<chrono::Utc>,
    ) -> Vec<crate::lake::events::Event> {
        self.tables
            .iter()
            .map(|t| crate::lake::events::Event {
                run_id: self.run_id.clone(),
                stage: Stage::Silver.to_string(),
                table: t.table.clone(),
                status: t.status.to_string().to_lowercase(),
                rows_in: t.counts.rows_in as i64,
                rows_out: t.counts.rows_out as i64,
                rows_dropped: t.counts.rows_dropped as i64,
                rows_rescued: t.counts.rows_rescued as i64,
                input_version: None,
                output_version: t.version.map(|v| v as i64),
                started_at,
                seconds: t.seconds,
                error: t.error.clone().or_else(|| {
                    (!t.quarantined_files.is_empty()).then(|| {
                        t.quarantined_files
                            .iter()
                            .map(|(f, r)| format!("{f} quarantined: {r}"))
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                }),
                details: Some(serde_json::json!({
                    "source_table": t.source_table,
                    "files": t.files,
                    "skipped": t.skipped,
                    "duplicates": t.counts.rows_duplicate,
                    "expectations": t.counts.expectations,
                    "quarantined_files": t.quarantined_files,
                    "quarantined_rows": t.quarantined_rows,
                })),
            })
            .collect()
    }

    /// One gold work item per table that received commits.
    pub fn gold_work(&self) -> Vec<GoldWorkItem> {
        self.tables
            .iter()
            .filter(|t| t.files > 0)
            .filter_map(|t| {
                t.version.map(|version| GoldWorkItem {
                    table: t.table.clone(),
                    version,
                })
            })
            .collect()
    }
}
