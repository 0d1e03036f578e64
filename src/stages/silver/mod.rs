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

mod clean;
mod dedup;
mod report;
mod rows;
#[cfg(test)]
mod testing;
mod write;

use clean::{Ahead, Body, Prepared, prepare, table_schema};
use dedup::without_loaded;
pub use report::{Counts, FileOutcome, FileStatus, GoldWorkItem, SilverReport, TableReport};
use rows::{Rows, with_lineage};
use write::{TWO_WRITERS_ROWS, by_key, feeds_dimension, finalize, halves, same_columns};

use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use bytes::Bytes;
use datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use tracing::{info, warn};

use super::Status;
use crate::config::{Settings, TableSpec};
use crate::error::{Error, Result};
use crate::lake::layout::Stage;
use crate::lake::layout::silver_columns::RESCUED;
use crate::lake::{Lake, layout};

/// Tries per file when another writer commits to the same table first.
const COMMIT_TRIES: usize = 5;

/// The silver stage over one lake.
pub struct Silver {
    lake: Lake,
    settings: Settings,
    run_id: String,
}

impl Silver {
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
                        warn!(error = %e, "The table failed; the files before the failure stay committed.");
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

    async fn catch_up(&self, table: &TableSpec, report: &mut TableReport) -> Result<()> {
        let mut listed: Vec<object_store::ObjectMeta> = self
            .lake
            .list(&layout::bronze_dir(&table.name))
            .await?
            .into_iter()
            .filter(|m| m.location.as_ref().ends_with(".parquet"))
            .collect();
        listed.sort_by(|a, b| a.location.cmp(&b.location));
        // The table as this run last left it: each file then reads only the commits since,
        // not the whole log again (25 files replayed 325 commits' file lists in all).
        let opened = self.open(table).await?;
        let mut latest = opened.version().is_some().then_some(opened);
        // Files the table already records are passed over here, before any is read ahead
        // (each file's commit checks again, against the table as it is then).
        let delta_err = crate::error::delta_err(layout::silver_table(&table.silver_name()));
        let mut files: Vec<String> = Vec::with_capacity(listed.len());
        for meta in listed {
            let path = meta.location.to_string();
            if let Some(delta) = &latest {
                let loaded = delta
                    .snapshot()
                    .map_err(&delta_err)?
                    .transaction_version(
                        delta.log_store().as_ref(),
                        &layout::app_id::silver_file(&path),
                    )
                    .await
                    .map_err(&delta_err)?;
                if loaded.is_some_and(|v| v >= meta.last_modified.timestamp_millis()) {
                    report.skipped += 1;
                    continue;
                }
            }
            files.push(path);
        }
        // The next file is read and cleaned while this one is written: the two halves of a
        // file's work, on two threads. Only once the table exists, whose schema the rows are
        // fitted to (a file that changes it has the next one prepared again). Not for a
        // dimension's files, which are put in key order (a copy of each): a second one in
        // flight per table held ~15 MB more at a first run's peak (scale 10, 17 alternating
        // pairs, two dimension tables at once) and saved no time, the other core being busy
        // with the facts' ingest then; an incremental run seldom brings a dimension two files.
        let read_ahead = !feeds_dimension(table);
        let mut ahead: Option<Ahead> = None;
        for (i, file) in files.iter().enumerate() {
            let prepared = match ahead.take() {
                Some(next) => next.wait().await,
                None => None,
            };
            if let Some(next) = files.get(i + 1).filter(|_| read_ahead)
                && let Some(schema) = latest.as_ref().and_then(table_schema)
            {
                let (lake, spec, path) = (self.lake.clone(), table.clone(), next.clone());
                ahead = Some(Ahead(tokio::spawn(async move {
                    prepare(&lake, &spec, &path, Some(schema)).await
                })));
            }
            let outcome = self.load_file(table, file, &mut latest, prepared).await?;
            report.counts.add(&outcome.counts);
            crate::progress::add(outcome.counts.rows_out);
            match outcome.status {
                FileStatus::Committed => {
                    report.files += 1;
                    report.status = Status::Ok;
                    report.version = outcome.version;
                    if outcome.counts.rows_dropped > 0 {
                        report
                            .quarantined_rows
                            .push(layout::quarantined_rows(&table.name, file));
                    }
                }
                FileStatus::AlreadyLoaded | FileStatus::Vanished => report.skipped += 1,
                FileStatus::Quarantined => report
                    .quarantined_files
                    .push((file.clone(), outcome.reason.unwrap_or_default())),
            }
        }
        if report.version.is_none() {
            report.version = self.open(table).await?.version();
        }
        Ok(())
    }

    async fn open(&self, table: &TableSpec) -> Result<DeltaTable> {
        self.lake
            .delta_table(&layout::silver_table(&table.silver_name()))
            .await
    }

    /// Processes one bronze file (what the blob trigger calls), retrying when another
    /// writer commits to the same table first.
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
                    if is_conflict(&source) && tries < COMMIT_TRIES =>
                {
                    info!(
                        file = path,
                        tries, "Another writer committed first; reading the table again."
                    );
                }
                other => return other,
            }
        }
    }

    async fn try_file(
        &self,
        table: &TableSpec,
        path: &str,
        latest: &mut Option<DeltaTable>,
        prepared: Option<Prepared>,
    ) -> Result<FileOutcome> {
        let name = table.silver_name();
        let delta_err = crate::error::delta_err(layout::silver_table(&name));
        let outcome = |status, counts, version, reason| FileOutcome {
            file: path.to_string(),
            status,
            counts,
            version,
            reason,
        };
        let location = Path::from(path);
        let meta = match self.lake.store().head(&location).await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => {
                warn!(
                    file = path,
                    "The file was listed but is gone; nothing to load."
                );
                return Ok(outcome(FileStatus::Vanished, Counts::default(), None, None));
            }
            Err(e) => return Err(Error::lake(path, e)),
        };
        let file_version = meta.last_modified.timestamp_millis();
        let app_id = layout::app_id::silver_file(path);
        // Taken: after a failure (a conflict included) the next try opens the table afresh.
        let delta = match latest.take() {
            Some(mut delta) if delta.version().is_some() => {
                delta.update_incremental(None).await.map_err(&delta_err)?;
                delta
            }
            _ => self.open(table).await?,
        };
        if delta.version().is_some() {
            let loaded = delta
                .snapshot()
                .map_err(&delta_err)?
                .transaction_version(delta.log_store().as_ref(), &app_id)
                .await
                .map_err(&delta_err)?;
            if loaded.is_some_and(|v| v >= file_version) {
                *latest = Some(delta);
                return Ok(outcome(
                    FileStatus::AlreadyLoaded,
                    Counts::default(),
                    None,
                    None,
                ));
            }
        }
        let existing_schema = table_schema(&delta);
        let prepared = match prepared {
            Some(p) if p.fitted_to == existing_schema => p,
            _ => prepare(&self.lake, table, path, existing_schema.clone()).await?,
        };
        let (mut counts, schema, firsts, kept_rows, dropped) = match prepared.body {
            Body::Vanished => {
                return Ok(outcome(FileStatus::Vanished, Counts::default(), None, None));
            }
            Body::Unreadable(reason) => {
                self.quarantine_file(table, path, &reason).await?;
                return Ok(outcome(
                    FileStatus::Quarantined,
                    Counts::default(),
                    None,
                    Some(reason),
                ));
            }
            Body::Empty(counts) => {
                // Nothing to transform: record the file in an empty commit when there is a
                // table to record it in; before the first rows there is nothing to create.
                let Some(existing) = existing_schema else {
                    return Ok(outcome(FileStatus::Vanished, counts, None, None));
                };
                let written = delta
                    .write(vec![RecordBatch::new_empty(existing)])
                    .with_save_mode(SaveMode::Append)
                    .with_commit_properties(
                        CommitProperties::default()
                            .with_application_transaction(Transaction::new(&app_id, file_version))
                            .with_max_retries(0),
                    )
                    .await
                    .map_err(&delta_err)?;
                let version = written.version();
                *latest = Some(written);
                return Ok(outcome(FileStatus::Committed, counts, version, None));
            }
            Body::Rows {
                counts,
                schema,
                firsts,
                kept_rows,
                dropped,
            } => (counts, schema, firsts, kept_rows, dropped),
        };
        if let Some(dropped) = dropped {
            self.quarantine_rows(table, path, dropped).await?;
        }
        let ctx = session();
        let df_err = |context: &'static str| {
            let table = table.name.clone();
            move |e: datafusion::error::DataFusionError| Error::DataFusion {
                table: table.clone(),
                file: path.to_string(),
                context: context.to_string(),
                source: e,
            }
        };
        let unique = match &existing_schema {
            Some(existing)
                if kept_rows > 0 && existing.field_with_name(&table.cdc_column).is_ok() =>
            {
                without_loaded(&ctx, firsts, schema.clone(), &delta, table)
                    .await
                    .map_err(df_err("removing versions silver already holds"))?
            }
            _ => firsts,
        };
        let unique = by_key(unique, table).map_err(|e| Error::arrow(path, e))?;
        counts.rows_out = unique.count() as u64;
        counts.rows_duplicate = kept_rows - counts.rows_out;

        let mut drop_if_empty = table.silver.drop_if_empty.clone();
        drop_if_empty.push(RESCUED.to_string());
        let (schema, unique) =
            finalize(schema, unique, &drop_if_empty).map_err(|e| Error::arrow(path, e))?;
        let batches = if unique.batches.is_empty() {
            Rows::all(vec![RecordBatch::new_empty(schema.clone())])
        } else {
            unique
        };
        let txn = Transaction::new(&app_id, file_version);
        let written = match existing_schema.filter(|_| counts.rows_out >= TWO_WRITERS_ROWS) {
            // A big file that brings no new column: its two halves go to two writers, one
            // commit. With one writer (delta-rs's write) encoding is one core, and silver
            // alone left the other half idle (perf: 1.3 of 2 cores for a fact's files).
            Some(stored) if same_columns(&schema, &stored) => {
                let rows =
                    with_lineage(&ctx, halves(batches), path).map_err(df_err("adding lineage"))?;
                let streams = rows
                    .execute_stream_partitioned()
                    .await
                    .map_err(df_err("writing the rows"))?;
                let silver_name = layout::silver_table(&table.silver_name());
                let written = crate::lake::writers::write_streams(
                    &delta,
                    &silver_name,
                    path,
                    streams,
                    None,
                    |_| Vec::new(),
                )
                .await?;
                crate::lake::writers::commit_append(delta, &silver_name, written.adds, vec![txn])
                    .await?
            }
            _ => {
                let rows =
                    with_lineage(&ctx, vec![batches], path).map_err(df_err("adding lineage"))?;
                let properties = crate::lake::parquet_properties(rows.schema().as_arrow()).build();
                let props = CommitProperties::default()
                    .with_application_transaction(txn)
                    .with_max_retries(0);
                delta
                    .write(Vec::new())
                    .with_input_plan(rows.into_unoptimized_plan())
                    .with_session_state(Arc::new(ctx.state()))
                    .with_writer_properties(properties)
                    .with_save_mode(SaveMode::Append)
                    .with_schema_mode(SchemaMode::Merge)
                    .with_configuration(crate::lake::CREATED_WITH)
                    .with_commit_properties(props)
                    .await
                    .map_err(&delta_err)?
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
        Ok(outcome(FileStatus::Committed, counts, version, None))
    }

    async fn quarantine_file(&self, table: &TableSpec, path: &str, reason: &str) -> Result<()> {
        let target = layout::quarantined_file(&table.name, path);
        warn!(file = path, to = %target, reason, "The file is not readable parquet; moving it to quarantine.");
        let store = self.lake.store();
        store
            .copy(&Path::from(path), &Path::from(target.as_str()))
            .await
            .map_err(|e| Error::lake(path, e))?;
        self.lake
            .put(
                &layout::reason_of(&target),
                Bytes::from(format!(
                    "file: {path}\ntable: {}\nrun: {}\nat: {}\nreason: {reason}\n",
                    table.name,
                    self.run_id,
                    chrono::Utc::now().to_rfc3339()
                )),
            )
            .await?;
        self.lake.delete(path).await
    }

    async fn quarantine_rows(
        &self,
        table: &TableSpec,
        file: &str,
        batch: RecordBatch,
    ) -> Result<()> {
        let path = layout::quarantined_rows(&table.name, file);
        let mut buffer = Vec::new();
        let mut writer = parquet::arrow::ArrowWriter::try_new(&mut buffer, batch.schema(), None)
            .map_err(|e| Error::Parquet {
                file: path.clone(),
                source: e,
            })?;
        writer.write(&batch).map_err(|e| Error::Parquet {
            file: path.clone(),
            source: e,
        })?;
        writer.close().map_err(|e| Error::Parquet {
            file: path.clone(),
            source: e,
        })?;
        info!(rows = batch.num_rows(), to = %path, "Rows broke drop expectations; quarantined.");
        self.lake.put(&path, Bytes::from(buffer)).await
    }
}

pub(crate) fn is_conflict(e: &DeltaTableError) -> bool {
    matches!(
        e,
        DeltaTableError::VersionAlreadyExists(_) | DeltaTableError::Transaction { .. }
    )
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
