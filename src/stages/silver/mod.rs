//! Silver: bronze parquet files into cleaned Delta change logs, every file exactly once
//! (DESIGN.md §6, Auto Loader semantics).
//!
//! A file is processed in one Delta commit that also records it as an application
//! transaction (`txn`, app id = the bronze path, version = the file's last-modified time), so a
//! retry, a second process or a crash between write and checkpoint can never load it twice: the
//! record and the rows land together or not at all. Commits are made with no automatic retry;
//! on a conflict the file is re-read against the new table version (optimistic concurrency).
//!
//! Per file: read (a file that is not parquet is quarantined), fit values to the table's types
//! (misfits go to `_rescued_data`), apply the pipeline file's SQL transforms, check the
//! expectations (warn / drop to quarantine / fail), keep one row per (key, watermark value) —
//! within the file and against what silver already holds in the file's watermark range — and
//! append with lineage columns.

mod ahead;
mod clean;
mod dedup;
mod fit;
mod quarantine;
mod report;
mod retention;
mod rows;
mod snapshot;
#[cfg(test)]
mod testing;
mod write;

use ahead::ReadAhead;
use clean::{Body, Prepared, prepare, table_schema};
pub use report::{Counts, FileOutcome, FileStatus, GoldWorkItem, SilverReport, TableReport};
pub use retention::clean_source;

use std::sync::Arc;
use std::time::Instant;

use datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use tracing::{error, info, warn};

use super::Status;
use crate::config::{Settings, TableSpec};
use crate::error::{Error, Result};
use crate::lake::layout::Stage;
use crate::lake::{Lake, conflict, discovery, layout};

/// The silver stage over one lake.
pub struct Silver {
    lake: Lake,
    settings: Settings,
    run_id: String,
}

impl Silver {
    /// The silver stage over `lake`, its events under `run_id`.
    pub fn new(lake: Lake, settings: Settings, run_id: impl Into<String>) -> Self {
        Silver {
            lake,
            settings,
            run_id: run_id.into(),
        }
    }

    /// Catch-up: processes every bronze file of each table that silver has not recorded yet.
    pub async fn run(self, tables: &[TableSpec]) -> SilverReport {
        let this = Arc::new(self);
        let worker = this.clone();
        let reports = super::per_table(
            tables,
            this.settings.max_concurrency,
            &this.run_id,
            Stage::Silver,
            move |table| {
                let this = worker.clone();
                async move {
                    let start = Instant::now();
                    let mut report = TableReport::new(&table);
                    if let Err(e) = this.catch_up(&table, &mut report).await {
                        error!(error = %e, "The table failed; the files before the failure stay committed.");
                        report.status = Status::Failed;
                        report.error = Some(e.to_string());
                    }
                    report.seconds = start.elapsed().as_secs_f64();
                    report
                }
            },
            |table, message| TableReport {
                status: Status::Failed,
                error: Some(message),
                ..TableReport::new(table)
            },
        )
        .await;
        SilverReport {
            run_id: this.run_id.clone(),
            tables: reports,
        }
    }

    /// Loads every bronze file of the table that silver has not recorded yet, in name order
    /// (a window's order), each in its own commit.
    async fn catch_up(&self, table: &TableSpec, report: &mut TableReport) -> Result<()> {
        // The table as this run last left it: each file then reads only the commits since,
        // not the whole log again.
        let opened = self.open(table).await?;
        let mut latest = opened.version().is_some().then_some(opened);
        // A silver table that does not exist yet (or any more) has loaded nothing, whatever a
        // cursor says.
        let backfill_hours = match latest {
            Some(_) => self.settings.backfill_interval_hours,
            None => 0,
        };
        let (listed, listing) =
            discovery::candidates(&self.lake, &table.name, backfill_hours).await?;
        let files = self
            .unloaded(table, &listed, latest.as_ref(), report)
            .await?;
        let mut ahead = ReadAhead::new(&self.lake, table);
        for (i, file) in files.iter().enumerate() {
            let prepared = ahead.take().await;
            ahead.start(files.get(i + 1), latest.as_ref());
            let outcome = self.load_file(table, file, &mut latest, prepared).await?;
            crate::progress::add(outcome.counts.rows_out);
            report.add(table, outcome);
        }
        discovery::advance(&self.lake, &table.name, listing, &listed).await;
        if report.version.is_none() {
            report.version = self.open(table).await?.version();
        }
        Ok(())
    }

    /// The `listed` bronze files (in name order) without those the table already records
    /// (counted as skipped): passed over here, before any is read ahead; each file's commit
    /// checks again, against the table as it is then.
    async fn unloaded(
        &self,
        table: &TableSpec,
        listed: &[object_store::ObjectMeta],
        latest: Option<&DeltaTable>,
        report: &mut TableReport,
    ) -> Result<Vec<String>> {
        // Every file's record read in one pass over the log; file by file if that fails.
        let recorded = match latest {
            Some(delta) => crate::lake::transactions::all(delta).await,
            None => None,
        };
        let mut files = Vec::with_capacity(listed.len());
        for meta in listed {
            let path = meta.location.to_string();
            let version = meta.last_modified.timestamp_millis();
            let is_loaded = match (latest, &recorded) {
                (None, _) => false,
                (Some(_), Some(recorded)) => recorded
                    .get(&layout::app_id::silver_file(&path))
                    .is_some_and(|&v| v >= version),
                (Some(delta), None) => loaded(delta, table, &path, version).await?,
            };
            if is_loaded {
                report.skipped += 1;
            } else {
                files.push(path);
            }
        }
        Ok(files)
    }

    async fn open(&self, table: &TableSpec) -> Result<DeltaTable> {
        self.lake
            .delta_table(&layout::silver_table(&table.silver_name()))
            .await
    }

    /// Processes one bronze file (what the `silver` function does for each event), retrying
    /// when another writer commits to the same table first.
    pub async fn process_file(&self, table: &TableSpec, path: &str) -> Result<FileOutcome> {
        self.load_file(table, path, &mut None, None).await
    }

    /// `process_file`, starting from `latest` (the table as a previous file left it, brought
    /// up to date here) and leaving the table this file's commit made in it. `prepared` is
    /// the file read and cleaned ahead, used if the table's schema is still the one it was
    /// fitted to.
    async fn load_file(
        &self,
        table: &TableSpec,
        path: &str,
        latest: &mut Option<DeltaTable>,
        mut prepared: Option<Prepared>,
    ) -> Result<FileOutcome> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.try_file(table, path, latest, prepared.take()).await {
                Err(Error::Delta { source, .. })
                    if conflict::is_conflict(&source) && tries < conflict::COMMIT_TRIES =>
                {
                    info!(
                        file = path,
                        tries, "Another writer committed first; reading the table again."
                    );
                    conflict::back_off(tries).await;
                }
                other => return other,
            }
        }
    }

    /// One attempt at a file: skip it if recorded, else read and clean it (unless it was
    /// prepared ahead against the same schema), quarantine what cannot be loaded, and commit
    /// its rows with the record of the file.
    async fn try_file(
        &self,
        table: &TableSpec,
        path: &str,
        latest: &mut Option<DeltaTable>,
        prepared: Option<Prepared>,
    ) -> Result<FileOutcome> {
        let outcome = |status, counts| FileOutcome::new(path, status, counts);
        let Some(file_version) = self.file_version(path).await? else {
            return Ok(outcome(FileStatus::Vanished, Counts::default()));
        };
        // Taken: after a failure (a conflict included) the next try opens the table afresh.
        let delta = match latest.take() {
            Some(mut delta) if delta.version().is_some() => {
                let name = layout::silver_table(&table.silver_name());
                delta
                    .update_incremental(None)
                    .await
                    .map_err(crate::error::delta_err(name))?;
                delta
            }
            _ => self.open(table).await?,
        };
        if delta.version().is_some() && loaded(&delta, table, path, file_version).await? {
            *latest = Some(delta);
            return Ok(outcome(FileStatus::AlreadyLoaded, Counts::default()));
        }
        let existing = table_schema(&delta);
        let prepared = match prepared {
            Some(p) if p.fitted_to == existing => p,
            _ => prepare(&self.lake, table, path, existing.clone()).await?,
        };
        let txn = Transaction::new(layout::app_id::silver_file(path), file_version);
        let (written, counts) = match prepared.body {
            Body::Vanished => return Ok(outcome(FileStatus::Vanished, Counts::default())),
            Body::Unreadable(reason) => {
                quarantine::file(&self.lake, table, path, &reason, &self.run_id).await?;
                return Ok(FileOutcome {
                    reason: Some(reason),
                    ..outcome(FileStatus::Quarantined, Counts::default())
                });
            }
            // Before the first rows there is no table to record an empty file in.
            Body::Empty(counts) if existing.is_none() => {
                return Ok(outcome(FileStatus::Vanished, counts));
            }
            Body::Empty(counts) => (write::record_empty(delta, table, txn).await?, counts),
            Body::Rows(mut cleaned) => {
                if table.is_snapshot() {
                    cleaned =
                        snapshot::changes(&delta, existing.as_ref(), table, cleaned, path).await?;
                }
                let quarantined = match cleaned.dropped.take() {
                    Some(dropped) => {
                        let file = (path, file_version);
                        quarantine::spawn(&self.lake, table, file, &self.run_id, dropped)
                    }
                    None => quarantine::Pending::default(),
                };
                let rows = (cleaned, quarantined);
                write::append(delta, existing, table, path, rows, txn).await?
            }
        };
        let version = written.version();
        *latest = Some(written);
        info!(
            file = path,
            rows_in = counts.rows_in,
            rows_out = counts.rows_out,
            dropped = counts.rows_dropped,
            duplicates = counts.rows_duplicate,
            rescued = counts.rows_rescued,
            version,
            "Loaded a bronze file."
        );
        Ok(FileOutcome {
            version,
            ..outcome(FileStatus::Committed, counts)
        })
    }

    /// The file's version (its last-modified time in milliseconds), or `None` when it was
    /// listed but is gone.
    async fn file_version(&self, path: &str) -> Result<Option<i64>> {
        match self.lake.store().head(&Path::from(path)).await {
            Ok(meta) => Ok(Some(meta.last_modified.timestamp_millis())),
            Err(object_store::Error::NotFound { .. }) => {
                warn!(
                    file = path,
                    "The file was listed but is gone; nothing to load."
                );
                Ok(None)
            }
            Err(e) => Err(Error::lake(path, e)),
        }
    }
}

/// The columns silver makes of a bronze table with columns `bronze`, as its first file would
/// (types fitted, the pipeline file's columns, renames and drops), without lineage: for
/// `tunelake config --check`, which moves no data.
pub async fn silver_schema(
    table: &TableSpec,
    bronze: arrow::datatypes::SchemaRef,
) -> Result<arrow::datatypes::SchemaRef> {
    let empty = arrow::array::RecordBatch::new_empty(bronze);
    let computed: Vec<&str> = table.silver.rename.iter().map(|r| r.to.as_str()).collect();
    let policy = fit::Policy::of(table);
    let (batches, _) = fit::fit(vec![empty], None, &computed, &policy, "(check)")?;
    let df = clean::transform(&session(), table, batches).map_err(|e| Error::DataFusion {
        table: table.name.clone(),
        file: "(config --check)".to_string(),
        context: "applying the silver columns".to_string(),
        source: e,
    })?;
    Ok(Arc::new(df.schema().as_arrow().clone()))
}

/// Whether the table records this version of the bronze file (or a later one) as loaded.
async fn loaded(delta: &DeltaTable, table: &TableSpec, path: &str, version: i64) -> Result<bool> {
    let app_id = layout::app_id::silver_file(path);
    // One pass over the log per table version, remembered: asking delta-rs replays the log
    // for each question.
    if let Some(all) = crate::lake::transactions::cached(delta).await {
        return Ok(all.get(&app_id).is_some_and(|&v| v >= version));
    }
    let delta_err = crate::error::delta_err(layout::silver_table(&table.silver_name()));
    let recorded = delta
        .snapshot()
        .map_err(&delta_err)?
        .transaction_version(delta.log_store().as_ref(), &app_id)
        .await
        .map_err(&delta_err)?;
    Ok(recorded.is_some_and(|v| v >= version))
}

fn session() -> SessionContext {
    session_with(SessionConfig::new())
}

fn session_with(config: SessionConfig) -> SessionContext {
    // Names are case-sensitive, as the pipeline file and the source spell them.
    let config = config
        .set_bool("datafusion.sql_parser.enable_ident_normalization", false)
        .with_target_partitions(2);
    // Delta's planner: the writer takes the rows as a query (`with_lineage`).
    crate::lake::delta_session(config)
}
