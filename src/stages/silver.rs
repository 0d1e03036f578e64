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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions, StringArray, new_null_array,
};
use arrow::compute::kernels::cast::{CastOptions, cast_with_options};
use arrow::compute::{and, filter_record_batch, not, prep_null_mask_filter};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bytes::Bytes;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::{Column, JoinType, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{DataFrame, Expr, SessionConfig, SessionContext, lit};
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;
use tracing::{info, warn};

use super::Status;
use crate::config::{Action, Settings, TableSpec};
use crate::error::{Error, Result};
use crate::lake::{Lake, bronze_dir};

/// Lineage: the bronze file a silver row came from.
pub const SOURCE_FILE: &str = "_source_file";
/// Lineage: when silver loaded the row (UTC).
pub const INGESTED_AT: &str = "_ingested_at";
/// Values that did not fit their column's type, as a JSON object per row.
pub const RESCUED: &str = "_rescued_data";
/// What a row is in the source's change log: `delete` on the markers ingest writes for keys
/// that vanished from the source (`deletes = "detect"`), NULL where not known.
pub const CHANGE_TYPE: &str = "_change_type";
/// Names of the broken rules, on quarantined rows.
pub const FAILED_RULES: &str = "_failed_rules";
/// Tries per file when another writer commits to the same table first.
const COMMIT_TRIES: usize = 5;

/// The lake path of a silver table.
pub fn table_path(name: &str) -> String {
    format!("silver/{name}")
}

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
    fn add(&mut self, other: &Counts) {
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
    pub file: String,
    pub status: FileStatus,
    pub counts: Counts,
    /// The silver version of the commit, when committed.
    pub version: Option<u64>,
    /// Why a file was quarantined.
    pub reason: Option<String>,
}

/// What a silver run did to one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// The silver table name.
    pub table: String,
    /// The bronze (source) table name.
    pub source_table: String,
    pub status: Status,
    /// Files committed by this run.
    pub files: u64,
    /// Files already loaded or vanished.
    pub skipped: u64,
    /// Bronze files moved to quarantine, with the reason.
    pub quarantined_files: Vec<(String, String)>,
    #[serde(flatten)]
    pub counts: Counts,
    /// The table's version after the run.
    pub version: Option<u64>,
    /// Rows quarantined by expectations, where they went.
    pub quarantined_rows: Vec<String>,
    pub seconds: f64,
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
    fn new(table: &TableSpec) -> Self {
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
    pub run_id: String,
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
                stage: "silver".to_string(),
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
            "silver",
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
            .list(&bronze_dir(&table.name))
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
        let delta_err = |source| Error::Delta {
            table: table.silver_name(),
            source,
        };
        let mut files: Vec<String> = Vec::with_capacity(listed.len());
        for meta in listed {
            let path = meta.location.to_string();
            if let Some(delta) = &latest {
                let loaded = delta
                    .snapshot()
                    .map_err(delta_err)?
                    .transaction_version(delta.log_store().as_ref(), &file_app_id(&path))
                    .await
                    .map_err(delta_err)?;
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
                            .push(rows_quarantine_path(table, file));
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
            .delta_table(&table_path(&table.silver_name()))
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
        let delta_err = |e: DeltaTableError| Error::Delta {
            table: name.clone(),
            source: e,
        };
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
        let app_id = file_app_id(path);
        // Taken: after a failure (a conflict included) the next try opens the table afresh.
        let delta = match latest.take() {
            Some(mut delta) if delta.version().is_some() => {
                delta.update_incremental(None).await.map_err(delta_err)?;
                delta
            }
            _ => self.open(table).await?,
        };
        if delta.version().is_some() {
            let loaded = delta
                .snapshot()
                .map_err(delta_err)?
                .transaction_version(delta.log_store().as_ref(), &app_id)
                .await
                .map_err(delta_err)?;
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
                    .map_err(delta_err)?;
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
                let silver_name = table.silver_name();
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
                    .map_err(delta_err)?
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
        let name = path.rsplit('/').next().unwrap_or(path);
        let target = format!("bronze/_quarantine/{}/{name}", table.name);
        warn!(file = path, to = %target, reason, "The file is not readable parquet; moving it to quarantine.");
        let store = self.lake.store();
        store
            .copy(&Path::from(path), &Path::from(target.as_str()))
            .await
            .map_err(|e| Error::lake(path, e))?;
        self.lake
            .put(
                &format!("{target}.reason.txt"),
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
        let path = rows_quarantine_path(table, file);
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

/// The app id under which silver records a bronze file (its version: the file's
/// last-modified time in milliseconds).
fn file_app_id(path: &str) -> String {
    format!("tunelake.silver:{path}")
}

/// A bronze file read and cleaned, before it meets the table: what can be done for the next
/// file while the one before it is written.
struct Prepared {
    /// The table schema the rows were fitted to (`None`: there was no table yet).
    fitted_to: Option<SchemaRef>,
    body: Body,
}

enum Body {
    /// Gone before it could be read.
    Vanished,
    /// Not parquet (the reason), to be quarantined.
    Unreadable(String),
    /// No rows.
    Empty(Counts),
    /// The first row per (key, watermark) of the rows the expectations kept, and those they
    /// dropped.
    Rows {
        counts: Counts,
        schema: SchemaRef,
        firsts: Rows,
        kept_rows: u64,
        dropped: Option<RecordBatch>,
    },
}

/// The preparation of the next file, on a task of its own; dropped (an error before it is
/// used), it is cancelled: it has written nothing.
struct Ahead(tokio::task::JoinHandle<Result<Prepared>>);

impl Ahead {
    /// The prepared file, or `None` when preparing failed: the file is then prepared again
    /// in its turn, where the error (a `fail` expectation, say) belongs to it.
    async fn wait(mut self) -> Option<Prepared> {
        (&mut self.0).await.ok().and_then(|r| r.ok())
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The table's schema, once it has one.
fn table_schema(delta: &DeltaTable) -> Option<SchemaRef> {
    delta.version()?;
    delta.snapshot().ok().map(|s| s.snapshot().arrow_schema())
}

/// Reads a bronze file, fits it to the table's types (`existing`), applies the silver
/// columns and the expectations and keeps the first row per (key, watermark). Writes
/// nothing: quarantining is left to the commit, in file order.
async fn prepare(
    lake: &Lake,
    table: &TableSpec,
    path: &str,
    existing: Option<SchemaRef>,
) -> Result<Prepared> {
    let done = |body| {
        Ok(Prepared {
            fitted_to: existing.clone(),
            body,
        })
    };
    let Some(bytes) = lake.get_opt(path).await? else {
        return done(Body::Vanished);
    };
    let batches = match read_parquet(bytes) {
        Ok(b) => b,
        Err(reason) => return done(Body::Unreadable(reason)),
    };
    let mut counts = Counts {
        rows_in: batches.iter().map(|b| b.num_rows() as u64).sum(),
        ..Counts::default()
    };
    if counts.rows_in == 0 {
        return done(Body::Empty(counts));
    }
    // Rename targets come from another bronze column, not from bronze under their name.
    let computed: Vec<&str> = table.silver.rename.iter().map(|r| r.to.as_str()).collect();
    let (batches, rescued) = rescue(batches, existing.as_ref(), &computed, &table.name, path)?;
    counts.rows_rescued = rescued;
    // The file's rows stay one batch through the silver columns (the session would cut them
    // into 8k-row slices): expectations, first rows and a dimension's key order (one `take`,
    // not a gather from fifty batches) then work on whole columns. Silver's CPU -10%, a whole
    // first run's -5% at scale 10, for ~15 MB more at its peak (each expression's
    // intermediate results are file-sized).
    let batch_rows = usize::try_from(counts.rows_in).unwrap_or(usize::MAX);
    let ctx = session_with(SessionConfig::new().with_batch_size(batch_rows));
    let fail = |e| Error::DataFusion {
        table: table.name.clone(),
        file: path.to_string(),
        context: "applying the silver columns".to_string(),
        source: e,
    };
    let transformed = transform(&ctx, table, batches)
        .map_err(fail)?
        .collect()
        .await
        .map_err(fail)?;
    let rules = table.expectations();
    let checked = check_expectations(transformed, &rules, &table.name, path, &mut counts)?;
    let kept_rows: u64 = checked
        .kept
        .iter()
        .zip(&checked.passed)
        .map(|(b, p)| p.as_ref().map_or(b.num_rows(), |p| p.true_count()) as u64)
        .sum();
    let firsts = first_per_version(checked.kept, &checked.passed, table)
        .map_err(|e| Error::arrow(path, e))?;
    done(Body::Rows {
        counts,
        schema: checked.schema,
        firsts,
        kept_rows,
        dropped: checked.dropped,
    })
}

/// Where the rows of a bronze file that broke `drop` rules go (deterministic: a retry replaces).
pub fn rows_quarantine_path(table: &TableSpec, file: &str) -> String {
    let name = file.rsplit('/').next().unwrap_or(file);
    format!("bronze/_quarantine/{}/rows/{name}", table.name)
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

/// A bronze file's rows, as one batch: silver holds the whole file anyway, and a dimension's
/// rows are then put in key order with one `take` rather than gathered across batches (an
/// interleave over 65k-row batches was 2.5% of a first run's CPU at scale 10).
fn read_parquet(bytes: Bytes) -> Result<Vec<RecordBatch>, String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| {
            let rows = usize::try_from(b.metadata().file_metadata().num_rows()).unwrap_or(0);
            b.with_batch_size(rows.max(1)).build()
        })
        .map_err(|e| e.to_string())?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

fn same_type(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8,
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8,
        ) => true,
        (DataType::Timestamp(u1, _), DataType::Timestamp(u2, _)) => u1 == u2,
        _ => a == b,
    }
}

/// Fits each column to the silver table's type of the same name. Values the cast cannot
/// carry become NULL there and are kept, as text, in `_rescued_data` (a JSON object per row).
/// Returns the batches (always with a `_rescued_data` column) and the rows rescued.
fn rescue(
    batches: Vec<RecordBatch>,
    target: Option<&SchemaRef>,
    computed: &[&str],
    table: &str,
    file: &str,
) -> Result<(Vec<RecordBatch>, u64)> {
    let mut rescued_rows = 0;
    let mut out = Vec::with_capacity(batches.len());
    let options = CastOptions {
        safe: true,
        format_options: FormatOptions::default(),
    };
    for batch in batches {
        let rows = batch.num_rows();
        // Made at the first column that needs a cast: most files need none.
        let mut rescued: Option<Vec<serde_json::Map<String, serde_json::Value>>> = None;
        let mut fields = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
            if field.name() == RESCUED {
                continue;
            }
            let wanted = target
                .and_then(|t| t.field_with_name(field.name()).ok())
                .map(|f| f.data_type().clone())
                .filter(|t| !same_type(t, field.data_type()));
            let Some(wanted) = wanted else {
                fields.push(Field::new(field.name(), field.data_type().clone(), true));
                columns.push(column.clone());
                continue;
            };
            let cast = cast_with_options(column, &wanted, &options)
                .unwrap_or_else(|_| new_null_array(&wanted, rows));
            let formatter = ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default())
                .map_err(|e| Error::arrow(format!("table {table}, file {file}"), e))?;
            let rescued = rescued.get_or_insert_with(|| vec![serde_json::Map::new(); rows]);
            for (row, map) in rescued.iter_mut().enumerate() {
                if column.is_valid(row) && cast.is_null(row) {
                    map.insert(
                        field.name().clone(),
                        serde_json::Value::String(formatter.value(row).to_string()),
                    );
                }
            }
            fields.push(Field::new(field.name(), wanted, true));
            columns.push(cast);
        }
        // Columns silver has but this file lacks (dropped at the source, or an older file):
        // NULL, so the transforms see the table's full shape.
        for field in target
            .map(|t| t.fields().iter().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let name = field.name();
            if [RESCUED, SOURCE_FILE, INGESTED_AT].contains(&name.as_str())
                || computed.contains(&name.as_str())
                || fields.iter().any(|f| f.name() == name)
            {
                continue;
            }
            fields.push(Field::new(name, field.data_type().clone(), true));
            columns.push(new_null_array(field.data_type(), rows));
        }
        let texts: ArrayRef = match rescued {
            Some(rescued) => Arc::new(
                rescued
                    .into_iter()
                    .map(|m| {
                        (!m.is_empty()).then(|| {
                            rescued_rows += 1;
                            serde_json::Value::Object(m).to_string()
                        })
                    })
                    .collect::<StringArray>(),
            ),
            None => new_null_array(&DataType::Utf8, rows),
        };
        fields.push(Field::new(RESCUED, DataType::Utf8, true));
        columns.push(texts);
        out.push(
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
                .map_err(|e| Error::arrow(format!("table {table}, file {file}"), e))?,
        );
    }
    Ok((out, rescued_rows))
}

fn column(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

/// The pipeline file's columns, renames and drops, plus lineage, as a DataFusion plan.
/// The silver columns of a file's rows and its expectations' results (lineage is added as the
/// rows are written, see `with_lineage`).
fn transform(
    ctx: &SessionContext,
    table: &TableSpec,
    batches: Vec<RecordBatch>,
) -> datafusion::error::Result<DataFrame> {
    let df = ctx.read_batches(batches)?;
    let schema = df.schema().clone();
    let spec = &table.silver;
    let parse = |name: &str, sql: &str| -> datafusion::error::Result<Expr> {
        Ok(ctx.parse_sql_expr(sql, &schema)?.alias(name))
    };
    let mut select = Vec::new();
    for field in schema.fields() {
        match spec.columns.iter().find(|c| &c.name == field.name()) {
            Some(c) => select.push(parse(&c.name, &c.expr)?),
            None => select.push(column(field.name())),
        }
    }
    for c in spec
        .columns
        .iter()
        .filter(|c| schema.field_with_unqualified_name(&c.name).is_err())
    {
        select.push(parse(&c.name, &c.expr)?);
    }
    let mut df = df.select(select)?;
    for r in &spec.rename {
        df = df.with_column_renamed(&r.from, &r.to)?;
    }
    if !spec.drop.is_empty() {
        let names: Vec<&str> = spec.drop.iter().map(String::as_str).collect();
        df = df.drop_columns(&names)?;
    }
    let rules = table.expectations();
    // A delete marker carries its key alone: only the key rule speaks of it.
    let markers = df.schema().has_column_with_unqualified_name(CHANGE_TYPE);
    for (i, rule) in rules.iter().enumerate() {
        let mut expr = ctx.parse_sql_expr(&rule.rule, df.schema())?;
        if markers && rule.name != "keys_not_null" {
            expr = expr.or(column(CHANGE_TYPE).eq(lit("delete")));
        }
        df = df.with_column(&format!("__expect_{i}"), expr)?;
    }
    Ok(df)
}

/// Rows per file from which silver writes a file's rows with two writers (each half at least
/// a default row group), below which one file is better for readers.
const TWO_WRITERS_ROWS: u64 = 128 * 1024;

/// Whether the rows' columns are the table's (lineage aside), with the same types: no schema
/// change for the commit to make.
fn same_columns(rows: &SchemaRef, stored: &SchemaRef) -> bool {
    rows.fields()
        .iter()
        .filter(|f| ![SOURCE_FILE, INGESTED_AT].contains(&f.name().as_str()))
        .all(|f| {
            stored
                .field_with_name(f.name())
                .is_ok_and(|s| s.data_type() == f.data_type())
        })
}

/// The rows in two partitions of about the same number of rows, in order (the first half,
/// then the second), so that each writer's file keeps the rows' key order.
fn halves(rows: Rows) -> Vec<Rows> {
    let total: usize = rows.batches.iter().map(|b| b.num_rows()).sum();
    let mut room = total / 2;
    let (mut first, mut second) = (Rows::default(), Rows::default());
    for (batch, keep) in rows.batches.into_iter().zip(rows.keep) {
        let rows = batch.num_rows();
        if room >= rows {
            room -= rows;
            first.push(batch, keep);
        } else if room > 0 {
            let part = |at, len| keep.as_ref().map(|k| k.slice(at, len));
            first.push(batch.slice(0, room), part(0, room));
            second.push(batch.slice(room, rows - room), part(room, rows - room));
            room = 0;
        } else {
            second.push(batch, keep);
        }
    }
    vec![first, second]
}

/// A file's rows, each batch with the rows to keep (`None`: all of them). Duplicates and
/// dropped rows are taken out only as the rows are written, a slice at a time (see
/// [`with_lineage`]): filtered whole, a stream file was copied nearly whole (about 1% goes)
/// beside the rows it came from, and the two files prepared at once at an incremental run's
/// start held 2 × 48 MB (heaptrack, scale 10), half of it those copies.
#[derive(Debug, Clone, Default)]
struct Rows {
    batches: Vec<RecordBatch>,
    keep: Vec<Option<BooleanArray>>,
}

impl Rows {
    fn all(batches: Vec<RecordBatch>) -> Self {
        let keep = vec![None; batches.len()];
        Rows { batches, keep }
    }

    fn push(&mut self, batch: RecordBatch, keep: Option<BooleanArray>) {
        self.batches.push(batch);
        self.keep.push(keep);
    }

    /// The rows kept.
    fn count(&self) -> usize {
        (self.batches.iter().zip(&self.keep))
            .map(|(b, k)| k.as_ref().map_or(b.num_rows(), |k| k.true_count()))
            .sum()
    }

    /// The rows kept, as batches of their own, each column let go once filtered.
    fn filtered(self) -> std::result::Result<Vec<RecordBatch>, arrow::error::ArrowError> {
        (self.batches.into_iter().zip(self.keep))
            .map(|(batch, keep)| {
                let Some(keep) = keep else {
                    return Ok(batch);
                };
                let (schema, columns, _) = batch.into_parts();
                let columns = columns
                    .into_iter()
                    .map(|c| arrow::compute::filter(c.as_ref(), &keep))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let options = RecordBatchOptions::new().with_row_count(Some(keep.true_count()));
                RecordBatch::try_new_with_options(schema, columns, &options)
            })
            .collect()
    }

    /// The kept rows of each `size`-row slice, one slice at a time.
    fn slices(
        self,
        size: usize,
    ) -> impl Iterator<Item = std::result::Result<RecordBatch, arrow::error::ArrowError>> {
        (self.batches.into_iter().zip(self.keep)).flat_map(move |(batch, keep)| {
            let rows = batch.num_rows();
            (0..rows).step_by(size).map(move |at| {
                let len = size.min(rows - at);
                let slice = batch.slice(at, len);
                match &keep {
                    Some(keep) => filter_record_batch(&slice, &keep.slice(at, len)),
                    None => Ok(slice),
                }
            })
        })
    }
}

/// One writer's rows as a query's partition: the session's batch size, kept rows only.
#[derive(Debug)]
struct Slices {
    schema: SchemaRef,
    rows: Rows,
    size: usize,
}

impl PartitionStream for Slices {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _: Arc<TaskContext>) -> SendableRecordBatchStream {
        let slices = self
            .rows
            .clone()
            .slices(self.size)
            .map(|r| r.map_err(Into::into));
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter(slices),
        ))
    }
}

/// The rows to write, with the lineage columns last: the bronze file's path and the load
/// time. As a query, so the writer makes them one batch at a time (the session's size; a
/// file's rows come as one batch, see [`read_parquet`]): a whole file's worth of the same
/// path, repeated, was half the memory of a fact row in every copy the steps before writing
/// make.
///
/// In the given partitions (each a writer's, when there are two).
fn with_lineage(
    ctx: &SessionContext,
    partitions: Vec<Rows>,
    file: &str,
) -> datafusion::error::Result<DataFrame> {
    let now = ScalarValue::TimestampMicrosecond(
        Some(chrono::Utc::now().timestamp_micros()),
        Some("UTC".into()),
    );
    // Nullable like every stored column (a bare literal is not): `CASE` without `ELSE`.
    let nullable = |value: Expr| datafusion::logical_expr::when(lit(true), value).end();
    let schema = partitions
        .iter()
        .flat_map(|p| &p.batches)
        .next()
        .map(|b| b.schema())
        .ok_or_else(|| datafusion::error::DataFusionError::Plan("no rows to write".into()))?;
    let size = ctx.copied_config().batch_size().max(1);
    let partitions = partitions
        .into_iter()
        .map(|rows| {
            let schema = schema.clone();
            Arc::new(Slices { schema, rows, size }) as Arc<dyn PartitionStream>
        })
        .collect();
    ctx.read_table(Arc::new(StreamingTable::try_new(schema, partitions)?))?
        .with_column(SOURCE_FILE, nullable(lit(file.to_string()))?)?
        .with_column(INGESTED_AT, nullable(lit(now))?)
}

struct Checked {
    schema: SchemaRef,
    /// The file's batches, with each one's rows that passed the `drop` rules in `passed`
    /// (`None`: all of them). They are filtered once, with the duplicates, by
    /// [`first_per_version`]: filtering here too copied nearly every row of a fact file twice.
    kept: Vec<RecordBatch>,
    passed: Vec<Option<BooleanArray>>,
    dropped: Option<RecordBatch>,
}

/// Counts broken rules, fails the file on a broken `fail` rule, and splits off the rows
/// that broke `drop` rules (with the rules' names). NULL counts as broken.
fn check_expectations(
    batches: Vec<RecordBatch>,
    rules: &[crate::config::Expectation],
    table: &str,
    file: &str,
    counts: &mut Counts,
) -> Result<Checked> {
    let ctx = |e| {
        Error::arrow(
            format!("table {table}, file {file}: checking expectations"),
            e,
        )
    };
    let mut kept = Vec::new();
    let mut passed_rows = Vec::new();
    let mut dropped = Vec::new();
    let mut schema = None;
    for batch in batches {
        let data_columns: Vec<usize> = (0..batch.num_columns())
            .filter(|&i| !batch.schema().field(i).name().starts_with("__expect_"))
            .collect();
        let data = batch.project(&data_columns).map_err(ctx)?;
        let rows = batch.num_rows();
        let mut keep: Option<BooleanArray> = None;
        let mut drop_rules: Vec<(&str, BooleanArray)> = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let Some(result) = batch
                .column_by_name(&format!("__expect_{i}"))
                .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
            else {
                return Err(Error::BadArgument {
                    what: format!("expectation {} of table {table}", rule.name),
                    message: format!("{:?} is not a boolean expression", rule.rule),
                });
            };
            // NULL counts as broken.
            let passed = if result.null_count() == 0 {
                result.clone()
            } else {
                prep_null_mask_filter(result)
            };
            let broken = rows - passed.true_count();
            if broken == 0 {
                continue;
            }
            *counts.expectations.entry(rule.name.clone()).or_default() += broken as u64;
            match rule.action {
                Action::Warn => {}
                Action::Fail => {
                    return Err(Error::ExpectationFailed {
                        table: table.to_string(),
                        file: file.to_string(),
                        rule: rule.name.clone(),
                        rows: broken as u64,
                    });
                }
                Action::Drop => {
                    keep = Some(match keep {
                        Some(k) => and(&k, &passed).map_err(ctx)?,
                        None => passed.clone(),
                    });
                    drop_rules.push((&rule.name, passed));
                }
            }
        }
        schema.get_or_insert_with(|| data.schema());
        if let Some(keep) = &keep {
            let drop_mask = not(keep).map_err(ctx)?;
            let rows_out = filter_record_batch(&data, &drop_mask).map_err(ctx)?;
            let names: StringArray = (0..rows)
                .filter(|&row| !keep.value(row))
                .map(|row| {
                    let broke: Vec<&str> = drop_rules
                        .iter()
                        .filter(|(_, passed)| !passed.value(row))
                        .map(|(name, _)| *name)
                        .collect();
                    Some(broke.join(","))
                })
                .collect();
            let mut fields: Vec<Field> = rows_out
                .schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            fields.push(Field::new(FAILED_RULES, DataType::Utf8, false));
            let mut columns = rows_out.columns().to_vec();
            columns.push(Arc::new(names));
            dropped
                .push(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(ctx)?);
        }
        kept.push(data);
        passed_rows.push(keep);
    }
    counts.rows_dropped = dropped.iter().map(|b| b.num_rows() as u64).sum();
    let dropped = match dropped.first() {
        Some(first) => {
            Some(arrow::compute::concat_batches(&first.schema(), &dropped).map_err(ctx)?)
        }
        None => None,
    };
    Ok(Checked {
        schema: schema.unwrap_or_else(|| Arc::new(Schema::empty())),
        kept,
        passed: passed_rows,
        dropped,
    })
}

/// Keeps the first row per (keys, watermark value) within the file (as the rows to keep, see
/// [`Rows`]). Done with Arrow's row format and a hash set rather than a DataFusion DISTINCT
/// ON, which keeps an accumulator per column and was the slowest, hungriest step of a file
/// (measured: 1M streams).
fn first_per_version(
    batches: Vec<RecordBatch>,
    passed: &[Option<BooleanArray>],
    table: &TableSpec,
) -> std::result::Result<Rows, arrow::error::ArrowError> {
    use arrow::row::{RowConverter, SortField};
    let Some(first) = batches.first() else {
        return Ok(Rows::all(batches));
    };
    let names: Vec<&String> = table
        .keys
        .iter()
        .chain(std::iter::once(&table.cdc_column))
        .collect();
    let schema = first.schema();
    let indices = names
        .iter()
        .map(|n| schema.index_of(n))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let masks: Vec<BooleanArray> = match integer_pairs(&batches, &indices) {
        // One integer-like key and the watermark, neither NULL (the usual case): each row is
        // one number, found by slot or hash (`first_of_pairs`). Compared as row-format bytes
        // (a memcmp per probe), this set was a tenth of a fact file's silver time (perf, 10M
        // streams).
        Some(pairs) => first_of_pairs(&pairs, passed, total),
        // Otherwise rows are compared as their row-format bytes, borrowed from the converted
        // batches (no per-row allocation), under a fast non-cryptographic hash (the keys are
        // our own data).
        None => {
            let converter = RowConverter::new(
                indices
                    .iter()
                    .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                    .collect(),
            )?;
            let rows = batches
                .iter()
                .map(|batch| {
                    let columns: Vec<ArrayRef> =
                        indices.iter().map(|&i| batch.column(i).clone()).collect();
                    converter.convert_columns(&columns)
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let mut seen: std::collections::HashSet<&[u8], foldhash::fast::RandomState> =
                std::collections::HashSet::with_capacity_and_hasher(total, Default::default());
            rows.iter()
                .enumerate()
                .map(|(b, rows)| {
                    let counts = counted(passed, b);
                    mask(rows.num_rows(), |i| {
                        counts(i) && seen.insert(rows.row(i).data())
                    })
                })
                .collect()
        }
    };
    let keep = (batches.iter().zip(masks))
        .map(|(batch, mask)| (mask.true_count() < batch.num_rows()).then_some(mask))
        .collect();
    Ok(Rows { batches, keep })
}

/// The first row of each (key, watermark) pair (see [`integer_pairs`]), per batch.
///
/// When the file's keys are dense (their range at most four times its rows, as the near-
/// sequential ids of a fact file, or a dimension file's ids), each key gets a slot holding the
/// first watermark it came with, and only a key that comes with a second watermark goes to a
/// hash set. Slots are visited in the file's order, so this is a sequential pass where the
/// set was a random probe per row: the set was a tenth of silver's time for 10M streams.
fn first_of_pairs(
    pairs: &[Vec<u128>],
    passed: &[Option<BooleanArray>],
    total: usize,
) -> Vec<BooleanArray> {
    let key = |p: u128| i128::from((p >> 64) as u64 as i64);
    let range = pairs.iter().flatten().map(|&p| key(p)).fold(None, |r, k| {
        Some(r.map_or((k, k), |(l, h): (i128, i128)| (l.min(k), h.max(k))))
    });
    // Keys are i64, so the span of any range fits an i128.
    match range.map(|(low, high)| (low, usize::try_from(high - low + 1))) {
        Some((low, Ok(span))) if span <= total.saturating_mul(4) => {
            dense_firsts(pairs, passed, |p| (key(p) - low) as usize, span)
        }
        _ => hashed_firsts(pairs, passed, total),
    }
}

/// [`first_of_pairs`] with a hash set of every pair.
fn hashed_firsts(
    pairs: &[Vec<u128>],
    passed: &[Option<BooleanArray>],
    total: usize,
) -> Vec<BooleanArray> {
    let mut seen: std::collections::HashSet<u128, foldhash::fast::RandomState> =
        std::collections::HashSet::with_capacity_and_hasher(total, Default::default());
    pairs
        .iter()
        .enumerate()
        .map(|(b, p)| {
            let counts = counted(passed, b);
            mask(p.len(), |i| counts(i) && seen.insert(p[i]))
        })
        .collect()
}

/// `keep(i)` for rows `0..len`, in order, as a filter (no validity: a mask collected from
/// `Option<bool>`s built one, bit by bit, and cost as much as the set of pairs).
fn mask(len: usize, keep: impl FnMut(usize) -> bool) -> BooleanArray {
    BooleanArray::from(arrow::buffer::BooleanBuffer::collect_bool(len, keep))
}

/// Whether row `i` of batch `b` takes part in finding first rows: it passed the `drop` rules
/// (rows that did not are neither kept nor the first of their pair).
fn counted(passed: &[Option<BooleanArray>], b: usize) -> impl Fn(usize) -> bool + '_ {
    let passed = passed.get(b).and_then(Option::as_ref);
    move |i| passed.is_none_or(|p| p.value(i))
}

/// [`first_of_pairs`] with a slot per key in `0..span` (`slot` maps a pair to it).
fn dense_firsts(
    pairs: &[Vec<u128>],
    passed: &[Option<BooleanArray>],
    slot: impl Fn(u128) -> usize,
    span: usize,
) -> Vec<BooleanArray> {
    const EMPTY: u8 = 0;
    const ONE: u8 = 1;
    const MANY: u8 = 2;
    let mut state = vec![EMPTY; span];
    let mut first = vec![0u64; span];
    let mut many: std::collections::HashSet<u128, foldhash::fast::RandomState> = Default::default();
    let mut is_first = |p: u128| -> bool {
        let i = slot(p);
        let watermark = p as u64;
        match state[i] {
            EMPTY => {
                state[i] = ONE;
                first[i] = watermark;
                true
            }
            ONE if first[i] == watermark => false,
            ONE => {
                state[i] = MANY;
                many.insert((p >> 64 << 64) | u128::from(first[i]));
                many.insert(p)
            }
            _ => many.insert(p),
        }
    };
    pairs
        .iter()
        .enumerate()
        .map(|(b, p)| {
            let counts = counted(passed, b);
            mask(p.len(), |i| counts(i) && is_first(p[i]))
        })
        .collect()
}

/// Per batch, each row's two columns at `indices` as one number (the first in the high
/// half), when both are integers, dates or timestamps without NULLs; `None` otherwise.
fn integer_pairs(batches: &[RecordBatch], indices: &[usize]) -> Option<Vec<Vec<u128>>> {
    let [a, b] = indices else {
        return None;
    };
    batches
        .iter()
        .map(|batch| {
            let (high, low) = (
                crate::lake::ordered_i64(batch.column(*a))?,
                crate::lake::ordered_i64(batch.column(*b))?,
            );
            Some(
                high.values()
                    .iter()
                    .zip(low.values())
                    .map(|(&h, &l)| (u128::from(h as u64) << 64) | u128::from(l as u64))
                    .collect(),
            )
        })
        .collect()
}

/// Whether the table's gold is a dimension (which reads silver by key range).
fn feeds_dimension(table: &TableSpec) -> bool {
    table
        .gold
        .as_ref()
        .is_some_and(|g| g.kind == crate::config::GoldKind::Dimension)
}

/// For a table that feeds a gold dimension, the rows of a file in key order (one batch;
/// batches already in order are left alone). Bronze arrives in watermark order, so otherwise
/// every silver file spans every key, and gold, which reads a dimension's history one key
/// range at a time, would decode all of silver for each range; in key order, page statistics
/// skip the rest. Facts are read by file, not by key range, and are left as they come.
fn by_key(rows: Rows, table: &TableSpec) -> std::result::Result<Rows, arrow::error::ArrowError> {
    if !feeds_dimension(table) {
        return Ok(rows);
    }
    sorted_by_key(rows.filtered()?, table).map(Rows::all)
}

fn sorted_by_key(
    batches: Vec<RecordBatch>,
    table: &TableSpec,
) -> std::result::Result<Vec<RecordBatch>, arrow::error::ArrowError> {
    let Some(first) = batches.first() else {
        return Ok(batches);
    };
    let schema = first.schema();
    let Ok(key_columns) = table
        .keys
        .iter()
        .map(|k| schema.index_of(k))
        .collect::<std::result::Result<Vec<_>, _>>()
    else {
        return Ok(batches);
    };
    // Only the key columns are concatenated; the rows are gathered once, from the batches.
    let keys = key_columns
        .iter()
        .map(|&i| {
            let parts: Vec<&dyn Array> = batches.iter().map(|b| b.column(i).as_ref()).collect();
            arrow::compute::concat(&parts)
        })
        .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
    let order = match keys.as_slice() {
        [one] => arrow::compute::sort_to_indices(one, None, None)?,
        many => arrow::compute::lexsort_to_indices(
            &many
                .iter()
                .map(|k| arrow::compute::SortColumn {
                    values: k.clone(),
                    options: None,
                })
                .collect::<Vec<_>>(),
            None,
        )?,
    };
    if order
        .values()
        .iter()
        .enumerate()
        .all(|(i, &o)| i == o as usize)
    {
        return Ok(batches);
    }
    if batches.len() == 1 {
        // Column by column, each let go once gathered: the file's rows and their key-ordered
        // copy are never both whole in memory (two dimension files' copies were 42 MB of a
        // first run's peak at scale 10, beside the rows they were taken from).
        let Some((schema, columns, _)) = batches.into_iter().next().map(|b| b.into_parts()) else {
            return Ok(Vec::new());
        };
        let sorted = columns
            .into_iter()
            .map(|column| arrow::compute::take(column.as_ref(), &order, None))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        return Ok(vec![RecordBatch::try_new(schema, sorted)?]);
    }
    let mut starts = Vec::with_capacity(batches.len());
    let mut total = 0;
    for b in &batches {
        starts.push(total);
        total += b.num_rows();
    }
    let at: Vec<(usize, usize)> = order
        .values()
        .iter()
        .map(|&o| {
            let o = o as usize;
            let batch = starts.partition_point(|&s| s <= o) - 1;
            (batch, o - starts[batch])
        })
        .collect();
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    Ok(vec![arrow::compute::interleave_record_batch(&refs, &at)?])
}

/// Removes rows whose (keys, watermark value) silver already holds, reading only silver's
/// rows in the file's watermark range (file statistics prune the rest). Usually there are
/// none (a file of new versions): the rows are then kept as they are, without a join (which
/// hashed every row of the file: a fortieth of a second per 400k rows, on silver's critical
/// path). A few are held in memory and the file's rows probe them; more (an overlapping
/// backfill) stream through the join.
async fn without_loaded(
    ctx: &SessionContext,
    rows: Rows,
    schema: SchemaRef,
    delta: &DeltaTable,
    table: &TableSpec,
) -> datafusion::error::Result<Rows> {
    const HELD_ROWS: usize = 1 << 16;
    let cdc = column(&table.cdc_column);
    // The range of every row's watermark, the ones not kept included: it holds the kept ones'.
    let all = ctx.read_table(Arc::new(MemTable::try_new(
        schema.clone(),
        vec![rows.batches.clone()],
    )?))?;
    // No watermark value in the file: no row of it can be in silver already.
    let Some((lo, hi)) = crate::lake::bounds(all, &table.cdc_column).await? else {
        return Ok(rows);
    };
    let provider = crate::lake::delta_provider(delta, ctx, &table.silver_name())
        .await
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
    let names: Vec<&String> = table
        .keys
        .iter()
        .chain(std::iter::once(&table.cdc_column))
        .collect();
    let existing = ctx
        .read_table(provider)?
        .filter(cdc.clone().between(lit(lo), lit(hi)))?
        .select(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| column(n).alias(format!("__loaded_{i}")))
                .collect::<Vec<_>>(),
        )?;
    let held = existing
        .clone()
        .limit(0, Some(HELD_ROWS + 1))?
        .collect()
        .await?;
    let count: usize = held.iter().map(RecordBatch::num_rows).sum();
    if count == 0 {
        return Ok(rows);
    }
    let df = ctx.read_table(Arc::new(MemTable::try_new(schema, vec![rows.filtered()?])?))?;
    let left: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
    let right: Vec<String> = (0..names.len()).map(|i| format!("__loaded_{i}")).collect();
    let right: Vec<&str> = right.iter().map(String::as_str).collect();
    let kept = if count <= HELD_ROWS {
        ctx.read_batches(held)?
            .join(df, JoinType::RightAnti, &right, &left, None)?
    } else {
        df.join(existing, JoinType::LeftAnti, &left, &right, None)?
    };
    Ok(Rows::all(kept.collect().await?))
}

/// Makes every column nullable (so later files with NULLs always fit) and drops the
/// `drop_if_empty` columns that are NULL in every row of this file.
fn finalize(
    schema: SchemaRef,
    rows: Rows,
    drop_if_empty: &[String],
) -> std::result::Result<(SchemaRef, Rows), arrow::error::ArrowError> {
    let schema = rows.batches.first().map(|b| b.schema()).unwrap_or(schema);
    // Column `i` is NULL in every kept row.
    let empty = |i: usize| -> std::result::Result<bool, arrow::error::ArrowError> {
        for (b, keep) in rows.batches.iter().zip(&rows.keep) {
            let column = b.column(i);
            let some = match keep {
                _ if column.null_count() == column.len() => false,
                Some(keep) => and(&arrow::compute::is_not_null(column)?, keep)?.true_count() > 0,
                None => true,
            };
            if some {
                return Ok(false);
            }
        }
        Ok(true)
    };
    let mut columns = Vec::new();
    for i in 0..schema.fields().len() {
        if !(drop_if_empty.contains(schema.field(i).name()) && empty(i)?) {
            columns.push(i);
        }
    }
    let projected = Arc::new(schema.project(&columns)?);
    let batches = (rows.batches.iter())
        .map(|b| b.project(&columns))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let (schema, batches) = crate::lake::storable(batches, projected)?;
    let keep = rows.keep;
    Ok((schema, Rows { batches, keep }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int32Array, Int64Array};

    fn batch(fields: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let schema = Schema::new(
            fields
                .iter()
                .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
                .collect::<Vec<_>>(),
        );
        RecordBatch::try_new(
            Arc::new(schema),
            fields.into_iter().map(|(_, a)| a).collect(),
        )
        .unwrap()
    }

    fn spec(name: &str) -> TableSpec {
        crate::config::Pipeline::parse(crate::config::DEFAULT_PIPELINE, "p")
            .unwrap()
            .select(&[name.to_string()])
            .unwrap()
            .remove(0)
    }

    /// The first row of each (key, watermark) stays, across batches, whether the pair is
    /// compared as one number or (with a NULL watermark) as row-format bytes; a negative key
    /// and a key equal to another row's watermark stay distinct.
    #[test]
    fn the_first_row_per_key_and_watermark_stays_on_both_paths() {
        use arrow::array::TimestampMicrosecondArray;
        let rows = |ids: Vec<i32>, at: Vec<Option<i64>>, tag: Vec<&str>| {
            batch(vec![
                ("user_id", Arc::new(Int32Array::from(ids)) as ArrayRef),
                (
                    "updated_at",
                    Arc::new(TimestampMicrosecondArray::from(at).with_timezone("UTC")) as ArrayRef,
                ),
                ("tag", Arc::new(StringArray::from(tag)) as ArrayRef),
            ])
        };
        let tags = |batches: Vec<RecordBatch>| -> Vec<String> {
            batches
                .iter()
                .flat_map(|b| {
                    let tags = b.column(2).as_string::<i32>().clone();
                    (0..tags.len())
                        .map(|i| tags.value(i).to_string())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let spec = spec("DimUser");
        let numbers = vec![
            rows(
                vec![1, 1, -1, 5],
                vec![Some(5), Some(5), Some(5), Some(1)],
                vec!["a", "dup", "b", "c"],
            ),
            rows(
                vec![1, 5, 1],
                vec![Some(6), Some(1), Some(5)],
                vec!["d", "dup", "dup"],
            ),
        ];
        assert!(integer_pairs(&numbers, &[0, 1]).is_some());
        assert_eq!(
            tags(
                first_per_version(numbers, &[], &spec)
                    .unwrap()
                    .filtered()
                    .unwrap()
            ),
            ["a", "b", "c", "d"]
        );
        let with_null = vec![
            rows(
                vec![1, 1, -1, 5],
                vec![Some(5), Some(5), None, Some(1)],
                vec!["a", "dup", "b", "c"],
            ),
            rows(
                vec![1, -1, 1],
                vec![Some(6), None, Some(5)],
                vec!["d", "dup", "dup"],
            ),
        ];
        assert!(integer_pairs(&with_null, &[0, 1]).is_none());
        assert_eq!(
            tags(
                first_per_version(with_null, &[], &spec)
                    .unwrap()
                    .filtered()
                    .unwrap()
            ),
            ["a", "b", "c", "d"]
        );
        // Rows that broke a drop rule are neither kept nor the first of their pair: the next
        // row of the same key and watermark that passed is (both paths).
        for at in [Some(9), None] {
            let batches = vec![
                rows(
                    vec![1, 1, 2],
                    vec![Some(5), Some(5), at],
                    vec!["x", "a", "b"],
                ),
                rows(vec![2, 3], vec![at, Some(7)], vec!["dup", "y"]),
            ];
            let passed = [
                Some(BooleanArray::from(vec![false, true, true])),
                Some(BooleanArray::from(vec![true, false])),
            ];
            assert_eq!(
                tags(
                    first_per_version(batches, &passed, &spec)
                        .unwrap()
                        .filtered()
                        .unwrap()
                ),
                ["a", "b"],
                "watermark {at:?}"
            );
        }
    }

    #[test]
    fn dense_keys_find_the_same_first_rows_as_the_hash_set() {
        // Near-sequential ids with repeats, keys seen with several watermarks, negative keys.
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            state >> 33
        };
        let pairs: Vec<Vec<u128>> = (0..3)
            .map(|_| {
                (0..5_000)
                    .map(|_| {
                        let key = (next() % 6_000) as i64 - 100;
                        let watermark = (next() % 3) as i64 * 1_000_000_007;
                        (u128::from(key as u64) << 64) | u128::from(watermark as u64)
                    })
                    .collect()
            })
            .collect();
        // Batches without rows (all quarantined) have no key range.
        assert_eq!(first_of_pairs(&[vec![], vec![]], &[], 0).len(), 2);
        let total = 15_000;
        let dense = first_of_pairs(&pairs, &[], total);
        assert_eq!(dense, hashed_firsts(&pairs, &[], total));
        let kept: usize = dense.iter().map(|m| m.true_count()).sum();
        assert!(kept > 6_000 && kept < total, "{kept}");
        // A key range far wider than the rows takes the hash set, with the same answer.
        let sparse = vec![vec![1u128 << 100, 1, 1 << 100, 2, 1]];
        let firsts = first_of_pairs(&sparse, &[], 5);
        assert_eq!(firsts, hashed_firsts(&sparse, &[], 5));
        assert_eq!(
            firsts[0],
            BooleanArray::from(vec![true, true, false, true, false])
        );
    }

    #[test]
    fn a_dimension_files_rows_come_in_key_order_and_a_facts_as_they_were() {
        let rows = |ids: Vec<i32>, names: Vec<&str>| {
            batch(vec![
                ("user_id", Arc::new(Int32Array::from(ids)) as ArrayRef),
                ("user_name", Arc::new(StringArray::from(names)) as ArrayRef),
            ])
        };
        let by_key = |batches: Vec<RecordBatch>, table: &TableSpec| {
            by_key(Rows::all(batches), table).and_then(Rows::filtered)
        };
        let batches = vec![rows(vec![3, 1], vec!["c", "a"]), rows(vec![2], vec!["b"])];
        let sorted = by_key(batches.clone(), &spec("DimUser")).unwrap();
        assert_eq!(sorted.len(), 1);
        assert_eq!(
            sorted[0],
            rows(vec![1, 2, 3], vec!["a", "b", "c"]),
            "whole rows move with their key"
        );
        let one = by_key(
            vec![rows(vec![3, 1, 2], vec!["c", "a", "b"])],
            &spec("DimUser"),
        );
        assert_eq!(
            one.unwrap(),
            vec![rows(vec![1, 2, 3], vec!["a", "b", "c"])],
            "a file read as one batch"
        );
        let in_order = vec![rows(vec![1, 2], vec!["a", "b"]), rows(vec![2], vec!["b"])];
        assert_eq!(
            by_key(in_order.clone(), &spec("DimUser")).unwrap(),
            in_order
        );
        let streams = vec![batch(vec![(
            "stream_id",
            Arc::new(Int64Array::from(vec![9, 4])) as ArrayRef,
        )])];
        assert_eq!(
            by_key(streams.clone(), &spec("FactStream")).unwrap(),
            streams
        );
    }

    #[test]
    fn misfits_are_rescued_missing_columns_filled_and_computed_ones_left_alone() {
        let target = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, true),
            Field::new("amount", DataType::Int32, true),
            Field::new("note", DataType::Utf8, true),
            Field::new("renamed", DataType::Utf8, true),
        ]));
        let input = batch(vec![
            (
                "id",
                Arc::new(Int64Array::from(vec![1, 5_000_000_000])) as ArrayRef,
            ),
            (
                "amount",
                Arc::new(StringArray::from(vec![Some("12"), Some("lots")])),
            ),
        ]);
        let (out, rescued) = rescue(vec![input], Some(&target), &["renamed"], "T", "f").unwrap();
        assert_eq!(rescued, 1, "rows, not values");
        let b = &out[0];
        let names: Vec<_> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names,
            ["id", "amount", "note", RESCUED],
            "renamed is computed, not filled"
        );
        let id = b.column(0).as_any().downcast_ref::<Int32Array>().unwrap();
        assert_eq!((id.value(0), id.is_null(1)), (1, true));
        let texts = b.column(3).as_any().downcast_ref::<StringArray>().unwrap();
        assert!(texts.is_null(0), "row 0 fits: nothing rescued");
        assert_eq!(texts.value(1), r#"{"amount":"lots","id":"5000000000"}"#);
        assert_eq!(b.column(2).null_count(), 2);
    }

    #[test]
    fn empty_drop_if_empty_columns_go_and_everything_becomes_nullable() {
        let b = batch(vec![
            ("id", Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef),
            (
                RESCUED,
                Arc::new(StringArray::from(vec![None::<&str>, None])),
            ),
            (
                "kept",
                Arc::new(StringArray::from(vec![None::<&str>, None])),
            ),
        ]);
        let (schema, out) =
            finalize(b.schema(), Rows::all(vec![b]), &[RESCUED.to_string()]).unwrap();
        let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "kept"]);
        assert!(schema.fields().iter().all(|f| f.is_nullable()));
        assert_eq!(out.batches[0].num_columns(), 2);
    }

    /// A column is empty when every row that stays is NULL: a value in a row that goes (a
    /// duplicate) does not keep it, and the rows that stay are still marked.
    #[test]
    fn only_the_rows_kept_decide_whether_a_column_is_empty() {
        let b = batch(vec![
            ("id", Arc::new(Int32Array::from(vec![1, 2, 3])) as ArrayRef),
            (
                RESCUED,
                Arc::new(StringArray::from(vec![None, Some("{}"), None])),
            ),
            (
                "note",
                Arc::new(StringArray::from(vec![Some("x"), None, None])),
            ),
        ]);
        let rows = Rows {
            batches: vec![b.clone()],
            keep: vec![Some(BooleanArray::from(vec![true, false, true]))],
        };
        let drop = [RESCUED.to_string(), "note".to_string()];
        let (schema, out) = finalize(b.schema(), rows, &drop).unwrap();
        let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "note"]);
        assert_eq!(out.count(), 2);
        let kept = out.filtered().unwrap();
        let ids = kept[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int32Type>();
        assert_eq!(ids.values().to_vec(), [1, 3]);
    }

    #[test]
    fn halves_split_the_rows_in_order_into_two_equal_parts() {
        let ids = |r: std::ops::Range<i64>| -> RecordBatch {
            batch(vec![(
                "id",
                Arc::new(Int64Array::from_iter_values(r)) as ArrayRef,
            )])
        };
        // 3 + 4 + 6 rows: the middle falls inside the third batch.
        let parts = halves(Rows::all(vec![ids(0..3), ids(3..7), ids(7..13)]));
        let values = |part: &Rows| -> Vec<i64> {
            part.clone()
                .slices(2)
                .map(|b| b.unwrap())
                .inspect(|b| assert!(b.num_rows() <= 2))
                .flat_map(|b| {
                    b.column(0)
                        .as_primitive::<arrow::datatypes::Int64Type>()
                        .values()
                        .to_vec()
                })
                .collect()
        };
        assert_eq!(parts.len(), 2);
        assert_eq!(values(&parts[0]), (0..6).collect::<Vec<_>>());
        assert_eq!(values(&parts[1]), (6..13).collect::<Vec<_>>());
        // The rows to keep are split with them: the split falls on a row that goes.
        let keep = |k: Vec<bool>| Some(BooleanArray::from(k));
        let rows = Rows {
            batches: vec![ids(0..3), ids(3..10)],
            keep: vec![
                None,
                keep(vec![true, true, false, true, false, false, true]),
            ],
        };
        let parts = halves(rows);
        assert_eq!(values(&parts[0]), [0, 1, 2, 3, 4]);
        assert_eq!(values(&parts[1]), [6, 9]);
        assert_eq!(parts[0].count() + parts[1].count(), 7);
    }
}
