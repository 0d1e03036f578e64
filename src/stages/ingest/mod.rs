//! Ingest: source tables to bronze parquet, incrementally by watermark (DESIGN.md §6).
//!
//! Per table: read the stored watermark, read `high = MAX(cdc)` *before* copying, stream the
//! `(low, high]` window into parquet parts with deterministic names, make them durable, and
//! only then move the watermark. Files left by a run that died before its watermark moved are
//! removed before the window is written again, so bronze never holds a row twice.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use parquet::arrow::AsyncArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::Serialize;
use tracing::{error, info, warn};

use super::Status;
use crate::config::ingest::{CdcMode, Deletes};
use crate::config::{Settings, TableSpec};
use crate::error::{Error, Result};
use crate::lake::discovery;
use crate::lake::layout::Stage;
use crate::lake::lease::Lease;
use crate::lake::{Lake, layout, watermark};
use crate::source::{self, Source};
use crate::window::{self, Bound, BoundKind, Window};

pub mod deletes;
mod snapshot;

/// What one table's ingest did.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// The source table.
    pub table: String,
    /// How the table ended.
    pub status: Status,
    /// The extracted window, `(low, high]`, in canonical text.
    pub window: Option<(Option<String>, String)>,
    /// Rows extracted.
    pub rows: u64,
    /// Lake paths of the parquet files written.
    pub files: Vec<String>,
    /// Bytes of parquet written.
    pub bytes: u64,
    /// The watermark after the run.
    pub watermark: Option<String>,
    /// Keys found deleted in the source (`deletes = "detect"`): delete markers written.
    pub deleted: u64,
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
        self.rows
    }
}

impl TableReport {
    /// A table with nothing written (yet), its watermark as stored.
    fn empty(table: &str, watermark: Option<String>) -> Self {
        TableReport {
            table: table.to_string(),
            status: Status::Empty,
            window: None,
            rows: 0,
            files: Vec::new(),
            bytes: 0,
            watermark,
            deleted: 0,
            seconds: 0.0,
            error: None,
        }
    }

    /// A table that failed before or while it was read (`error` says why).
    pub fn failed(table: &str, error: String, start: Instant) -> Self {
        TableReport {
            status: Status::Failed,
            seconds: start.elapsed().as_secs_f64(),
            error: Some(error),
            ..TableReport::empty(table, None)
        }
    }
}

/// What a whole ingest did, table by table in pipeline order.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    /// The run.
    pub run_id: String,
    /// Per table, in pipeline order.
    pub tables: Vec<TableReport>,
}

impl IngestReport {
    /// True when any table failed (the run's exit code is then non-zero).
    pub fn failed(&self) -> bool {
        self.tables.iter().any(|t| t.status == Status::Failed)
    }

    /// Rows written across tables.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }

    /// The event-log rows of this run (rows in = rows out = rows extracted).
    pub fn events(
        &self,
        started_at: chrono::DateTime<chrono::Utc>,
    ) -> Vec<crate::lake::events::Event> {
        self.tables
            .iter()
            .map(|t| crate::lake::events::Event {
                run_id: self.run_id.clone(),
                stage: Stage::Ingest.to_string(),
                table: t.table.clone(),
                status: t.status.to_string().to_lowercase(),
                rows_in: t.rows as i64,
                rows_out: t.rows as i64,
                rows_dropped: 0,
                rows_rescued: 0,
                input_version: None,
                output_version: None,
                started_at,
                seconds: t.seconds,
                error: t.error.clone(),
                details: Some(serde_json::json!({
                    "window_from": t.window.as_ref().and_then(|w| w.0.clone()),
                    "window_to": t.window.as_ref().map(|w| w.1.clone()),
                    "watermark": t.watermark,
                    "files": t.files.len(),
                    "deleted": t.deleted,
                    "bytes": t.bytes,
                })),
            })
            .collect()
    }
}

/// An ingest of some tables.
pub struct Ingest {
    source: Arc<dyn Source>,
    lake: Lake,
    settings: Settings,
    run_id: String,
    from: Option<String>,
}

impl Ingest {
    /// The ingest stage from `source` into `lake`, with the pipeline's settings.
    pub fn new(
        source: Arc<dyn Source>,
        lake: Lake,
        settings: Settings,
        run_id: impl Into<String>,
    ) -> Self {
        Ingest {
            source,
            lake,
            settings,
            run_id: run_id.into(),
            from: None,
        }
    }

    /// Backfill: extract `(min(from, watermark), high]` instead of `(watermark, high]`.
    pub fn with_from(mut self, from: Option<String>) -> Self {
        self.from = from;
        self
    }

    /// Ingests the tables, at most `max_concurrency` at once; a table's failure is reported
    /// in its row and does not stop the others.
    pub async fn run(self, tables: &[TableSpec]) -> IngestReport {
        let this = Arc::new(self);
        let worker = this.clone();
        let reports = super::per_table(
            tables,
            this.settings.max_concurrency,
            &this.run_id,
            Stage::Ingest,
            move |table| {
                let this = worker.clone();
                async move {
                    let start = Instant::now();
                    this.table(&table, start).await.unwrap_or_else(|e| {
                        error!(error = %e, "The table failed; its watermark was not moved.");
                        TableReport::failed(&table.name, e.to_string(), start)
                    })
                }
            },
            |table, message| TableReport::failed(&table.name, message, Instant::now()),
        )
        .await;
        IngestReport {
            run_id: this.run_id.clone(),
            tables: reports,
        }
    }

    /// Ingests one table while holding its lease, so that two runs never work on it at once.
    async fn table(&self, table: &TableSpec, start: Instant) -> Result<TableReport> {
        let wait = std::time::Duration::from_secs(self.settings.lease_wait_seconds);
        let lease =
            Lease::acquire(&self.lake, Stage::Ingest, &table.name, &self.run_id, wait).await?;
        let result = self.leased_table(table, start).await;
        lease.release().await;
        result
    }

    async fn leased_table(&self, table: &TableSpec, start: Instant) -> Result<TableReport> {
        if table.cdc_mode == CdcMode::ChangeTracking && !self.source.change_tracking() {
            return Err(Error::BadArgument {
                what: format!("table {}: cdc_mode", table.name),
                message: format!(
                    "change_tracking needs a SQL Server source; {} has none",
                    self.source.describe()
                ),
            });
        }
        if table.is_snapshot() {
            return snapshot::ingest(
                self.source.as_ref(),
                &self.lake,
                table,
                self.settings.batch_rows,
                &self.run_id,
                start,
            )
            .await;
        }
        let schema = self.source.schema(table).await?;
        let kind = source::check_columns(table, &schema)?;
        let mut report = self.window(table, schema.clone(), kind, start).await?;
        if table.deletes == Deletes::Detect {
            let at = marker_time(report.watermark.as_deref(), kind)?;
            let found = deletes::detect(
                self.source.as_ref(),
                &self.lake,
                table,
                &schema,
                at,
                self.settings.batch_rows,
            )
            .await?;
            report.deleted = found.deleted;
            if let Some(file) = found.file {
                info!(
                    deleted = found.deleted,
                    file, "Wrote delete markers for keys gone from the source."
                );
                report.files.push(file);
                report.status = Status::Ok;
            }
        }
        report.seconds = start.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Extracts the table's window, if it has one, and moves its watermark.
    async fn window(
        &self,
        table: &TableSpec,
        schema: arrow::datatypes::SchemaRef,
        kind: BoundKind,
        start: Instant,
    ) -> Result<TableReport> {
        let stored = watermark::read(&self.lake, &table.name, &table.cdc_column, kind).await?;
        let stored_bound = stored.as_ref().map(|w| w.bound()).transpose()?;
        let from = self.from.as_deref().map(|f| kind.parse(f)).transpose()?;
        let high = self.source.high_watermark(table, kind).await?;
        let lookback = match (table.lookback(), stored_bound) {
            (Some(l), Some(s)) => Some(l.below(s).map_err(|message| Error::BadArgument {
                what: format!("table {}: lookback", table.name),
                message,
            })?),
            _ => None,
        };
        let plan = window::plan(stored_bound, high, from, lookback);
        let mut report = TableReport::empty(&table.name, stored_bound.map(|b| b.to_string()));
        let Some(window) = plan.window else {
            info!("No rows past the watermark; nothing written.");
            report.seconds = start.elapsed().as_secs_f64();
            return Ok(report);
        };
        report.window = Some((window.low.map(|b| b.to_string()), window.high.to_string()));

        let leftovers = self
            .lake
            .remove_staging_leftovers(&layout::bronze_dir(&table.name))
            .await?;
        if leftovers > 0 {
            warn!(
                leftovers,
                "Removed partial uploads of a run that was killed."
            );
        }
        discovery::before_write(&self.lake, &table.name, &window.file_name(&table.name, 0)).await?;
        self.remove_uncommitted(table, kind, &window, stored_bound)
            .await?;
        let written = self.write_window(table, schema, window).await?;
        self.remove_extra_parts(table, &window, written.files.len())
            .await?;

        report.rows = written.rows;
        report.bytes = written.bytes;
        report.files = written.files;
        if written.rows > 0 {
            report.status = Status::Ok;
        }
        // A change version is the database's clock, not the table's: an empty window still
        // moves it, or a table that seldom changes would fall behind the change retention.
        if (written.rows > 0 || table.cdc_mode == CdcMode::ChangeTracking)
            && let Some(next) = plan.next_watermark.filter(|n| Some(*n) != stored_bound)
        {
            watermark::write(
                &self.lake,
                &table.name,
                &watermark::Watermark {
                    column: table.cdc_column.clone(),
                    kind,
                    value: next.to_string(),
                    run_id: self.run_id.clone(),
                    rows: written.rows,
                    at: chrono::Utc::now(),
                },
            )
            .await?;
            report.watermark = Some(next.to_string());
        }
        report.seconds = start.elapsed().as_secs_f64();
        info!(
            rows = report.rows,
            files = report.files.len(),
            seconds = report.seconds,
            "Extracted window {}.",
            window.file_stem(&table.name)
        );
        Ok(report)
    }

    /// Deletes files a crashed run left for a window that starts where this one does but
    /// was never committed (its high is past the stored watermark).
    async fn remove_uncommitted(
        &self,
        table: &TableSpec,
        kind: BoundKind,
        window: &Window,
        stored: Option<Bound>,
    ) -> Result<()> {
        let low = window
            .low
            .map_or_else(|| "0".to_string(), |b| b.file_token());
        let dir = layout::bronze_dir(&table.name);
        let prefix = format!("{}_{low}_", table.name);
        for meta in self.lake.list_prefixed(&dir, &prefix).await? {
            let Some(name) = meta.location.filename() else {
                continue;
            };
            let Some((file_low, file_high, _)) = Window::parse_file_name(&table.name, name) else {
                continue;
            };
            let uncommitted = match (kind.parse_file_token(file_high), stored) {
                (Some(h), Some(s)) => h > s,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if file_low == low
                && uncommitted
                && kind.parse_file_token(file_high) != Some(window.high)
            {
                warn!(file = %meta.location, "Removing a file of a run that never committed its watermark.");
                self.lake.delete(meta.location.as_ref()).await?;
            }
        }
        Ok(())
    }

    /// After a rerun of the same window wrote fewer parts, the surplus parts are stale.
    async fn remove_extra_parts(
        &self,
        table: &TableSpec,
        window: &Window,
        parts: usize,
    ) -> Result<()> {
        let stem = window.file_stem(&table.name);
        let dir = layout::bronze_dir(&table.name);
        for meta in self.lake.list_prefixed(&dir, &format!("{stem}_")).await? {
            let Some(name) = meta.location.filename() else {
                continue;
            };
            if let Some((_, _, part)) = Window::parse_file_name(&table.name, name)
                && part >= parts
            {
                self.lake.delete(meta.location.as_ref()).await?;
            }
        }
        Ok(())
    }

    async fn write_window(
        &self,
        table: &TableSpec,
        schema: arrow::datatypes::SchemaRef,
        window: Window,
    ) -> Result<Written> {
        let mut batches = self
            .source
            .extract(table, schema.clone(), window, self.settings.batch_rows)
            .await?;
        let max_bytes = (self.settings.max_file_mb * 1024 * 1024) as usize;
        let mut written = Written::default();
        let mut open: Option<(String, AsyncArrowWriter<_>)> = None;
        let mut file_rows = 0usize;
        let max_rows = self.settings.max_file_rows.max(1) as usize;
        while let Some(batch) = batches.next().await {
            // A batch that would carry a file past `max_file_rows` is split between parts.
            let mut rest = Some(batch?);
            while let Some(batch) = rest.take() {
                if batch.num_rows() == 0 {
                    break;
                }
                if open.is_none() {
                    let path = format!(
                        "{}/{}",
                        layout::bronze_dir(&table.name),
                        window.file_name(&table.name, written.files.len())
                    );
                    let writer = AsyncArrowWriter::try_new(
                        self.lake.parquet_sink(&path),
                        schema.clone(),
                        Some(self.writer_properties(table, &window, &schema)),
                    )
                    .map_err(|e| Error::Parquet {
                        file: path.clone(),
                        source: e,
                    })?;
                    open = Some((path, writer));
                    file_rows = 0;
                }
                let room = max_rows.saturating_sub(file_rows).max(1);
                let batch = if batch.num_rows() > room {
                    rest = Some(batch.slice(room, batch.num_rows() - room));
                    batch.slice(0, room)
                } else {
                    batch
                };
                if let Some((path, writer)) = open.as_mut() {
                    writer.write(&batch).await.map_err(|e| Error::Parquet {
                        file: path.clone(),
                        source: e,
                    })?;
                    written.rows += batch.num_rows() as u64;
                    crate::progress::add(batch.num_rows() as u64);
                    file_rows += batch.num_rows();
                    let full = writer.bytes_written() + writer.in_progress_size() >= max_bytes
                        || file_rows >= max_rows;
                    if full && let Some((path, writer)) = open.take() {
                        self.close(path, writer, &mut written).await?;
                    }
                }
            }
        }
        if let Some((path, writer)) = open.take() {
            self.close(path, writer, &mut written).await?;
        }
        Ok(written)
    }

    async fn close(
        &self,
        path: String,
        mut writer: AsyncArrowWriter<object_store::buffered::BufWriter>,
        written: &mut Written,
    ) -> Result<()> {
        writer.finish().await.map_err(|e| Error::Parquet {
            file: path.clone(),
            source: e,
        })?;
        self.lake.make_durable(&path).await?;
        written.bytes += writer.bytes_written() as u64;
        written.files.push(path);
        Ok(())
    }

    fn writer_properties(
        &self,
        table: &TableSpec,
        window: &Window,
        schema: &arrow::datatypes::Schema,
    ) -> WriterProperties {
        let meta = |k: &str, v: String| KeyValue::new(format!("tunelake.{k}"), v);
        // Min/max statistics for the watermark column only: silver loads whole bronze files
        // and nothing reads them by another column, and the other columns' statistics (one
        // or two comparisons per value as it is encoded) were a large share of ingest's CPU
        // (decision 002, "Parquet").
        let unfiltered = schema
            .fields()
            .iter()
            .filter(|f| *f.name() != table.cdc_column)
            .map(|f| parquet::schema::types::ColumnPath::from(f.name().as_str()));
        unfiltered
            .fold(crate::lake::parquet_properties(schema), |b, path| {
                b.set_column_statistics_enabled(
                    path,
                    parquet::file::properties::EnabledStatistics::None,
                )
            })
            .set_key_value_metadata(Some(vec![
                meta("table", table.name.clone()),
                meta("cdc_column", table.cdc_column.clone()),
                meta(
                    "window_low",
                    window.low.map(|b| b.to_string()).unwrap_or_default(),
                ),
                meta("window_high", window.high.to_string()),
                meta("run_id", self.run_id.clone()),
            ]))
            .build()
    }
}

/// The sequence value of this ingest's delete markers: the detection time, and never at or
/// below the table's watermark, so a marker always comes after every row extracted of its key.
fn marker_time(watermark: Option<&str>, kind: BoundKind) -> Result<Bound> {
    let stored = watermark.map(|w| kind.parse(w)).transpose()?;
    let now = chrono::Utc::now();
    Ok(match (kind, stored) {
        (BoundKind::Timestamp, s) => {
            let after = s.map_or(i64::MIN, |b| match b {
                Bound::Timestamp(us) => us.saturating_add(1),
                _ => i64::MIN,
            });
            Bound::Timestamp(now.timestamp_micros().max(after))
        }
        (BoundKind::Date, s) => {
            let today = now.date_naive();
            let after = s.and_then(|b| match b {
                Bound::Date(d) => d.succ_opt(),
                _ => None,
            });
            Bound::Date(after.map_or(today, |a| a.max(today)))
        }
        (BoundKind::Integer, s) => Bound::Integer(match s {
            Some(Bound::Integer(v)) => v.saturating_add(1),
            _ => 1,
        }),
    })
}

#[derive(Default)]
struct Written {
    rows: u64,
    bytes: u64,
    files: Vec<String>,
}
