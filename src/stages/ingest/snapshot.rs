//! Snapshot tables (no `cdc_column`): the source table read whole each run and written to
//! bronze as one file, with `_snapshot_at` (when it was taken) as its sequence, but only when
//! its content changed: a SHA-256 of its rows is kept in `bronze/_snapshots/<Table>.json`. Silver
//! turns each snapshot into its difference from the one before (inserts, updates, deletes).

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::TableReport;
use crate::config::TableSpec;
use crate::error::{Error, Result};
use crate::lake::layout::silver_columns::SNAPSHOT_AT;
use crate::lake::{Lake, layout, watermark};
use crate::source::Source;
use crate::stages::Status;
use crate::window::BoundKind;

/// The last snapshot written for a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    /// SHA-256 of the snapshot's rows (JSON lines, in the order the source gave them).
    hash: String,
    /// When it was taken, microseconds since the epoch (its `_snapshot_at`).
    at: i64,
    rows: u64,
    file: String,
    run_id: String,
}

/// Takes a snapshot of `table` and writes it to bronze if its content changed.
pub(super) async fn ingest(
    source: &dyn Source,
    lake: &Lake,
    table: &TableSpec,
    batch_rows: usize,
    run_id: &str,
    start: Instant,
) -> Result<TableReport> {
    let schema = source.schema(table).await?;
    for key in &table.keys {
        if schema.field_with_name(key).is_err() {
            return Err(Error::UnknownColumn {
                table: table.name.clone(),
                column: key.clone(),
                available: (schema.fields().iter())
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    let mut stream = source.snapshot(table, schema.clone(), batch_rows).await?;
    let mut batches = Vec::new();
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let mut lines = arrow::json::LineDelimitedWriter::new(Vec::new());
        lines
            .write(&batch)
            .and_then(|_| lines.finish())
            .map_err(|e| Error::arrow(&table.name, e))?;
        hash.update(&lines.into_inner());
        batches.push(batch);
    }
    let hash: String = hash
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    let state_path = layout::snapshot_state(&table.name);
    let previous: Option<State> = match lake.get_opt(&state_path).await? {
        Some(bytes) => serde_json::from_slice(&bytes).ok(),
        None => None,
    };
    let mut report = TableReport::empty(&table.name, previous.as_ref().map(|p| at_text(p.at)));
    if previous.as_ref().is_some_and(|p| p.hash == hash) {
        info!("The snapshot is unchanged; nothing written.");
        report.seconds = start.elapsed().as_secs_f64();
        return Ok(report);
    }
    if rows == 0 {
        // An empty read is more often a source being reloaded than every row deleted: the
        // last snapshot stays the current one.
        warn!("The snapshot has no rows; the previous one stays current.");
        report.seconds = start.elapsed().as_secs_f64();
        return Ok(report);
    }
    let at = chrono::Utc::now()
        .timestamp_micros()
        .max(previous.as_ref().map_or(0, |p| p.at + 1));
    let bytes = parquet_with_time(&table.name, &schema, batches, at)?;
    let file = layout::snapshot_file(&table.name, at);
    report.bytes = bytes.len() as u64;
    let name = file.rsplit('/').next().unwrap_or(&file);
    crate::lake::discovery::before_write(lake, &table.name, name).await?;
    lake.put(&file, bytes).await?;
    // Written after the file: a crash between the two takes the snapshot again next run, and
    // silver finds nothing new in the second copy.
    let state = State {
        hash,
        at,
        rows,
        file: file.clone(),
        run_id: run_id.to_string(),
    };
    let json = serde_json::to_vec_pretty(&state).map_err(|e| Error::Task(e.to_string()))?;
    lake.put(&state_path, Bytes::from(json)).await?;
    // The snapshot's time as the table's watermark, for `status` and the run report.
    let mark = watermark::Watermark {
        column: SNAPSHOT_AT.to_string(),
        kind: BoundKind::Timestamp,
        value: at_text(at),
        run_id: run_id.to_string(),
        rows,
        at: chrono::Utc::now(),
    };
    watermark::write(lake, &table.name, &mark).await?;
    info!(rows, file, "Wrote a changed snapshot.");
    report.status = Status::Ok;
    report.rows = rows;
    report.files = vec![file];
    report.watermark = Some(at_text(at));
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

fn at_text(at: i64) -> String {
    chrono::DateTime::from_timestamp_micros(at)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_else(|| at.to_string())
}

/// The snapshot's rows with `_snapshot_at = at`, as one parquet file.
fn parquet_with_time(
    table: &str,
    schema: &Arc<Schema>,
    batches: Vec<RecordBatch>,
    at: i64,
) -> Result<Bytes> {
    let time = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(SNAPSHOT_AT, time, false));
    let with_time = Arc::new(Schema::new(fields));
    let parquet_err = |source| Error::Parquet {
        file: format!("{table} snapshot"),
        source,
    };
    let properties = crate::lake::parquet_properties(&with_time).build();
    let mut buffer = Vec::new();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(&mut buffer, with_time.clone(), Some(properties))
            .map_err(parquet_err)?;
    for batch in batches {
        let rows = batch.num_rows();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(
            TimestampMicrosecondArray::from(vec![at; rows]).with_timezone("UTC"),
        ));
        let batch =
            RecordBatch::try_new(with_time.clone(), columns).map_err(|e| Error::arrow(table, e))?;
        writer.write(&batch).map_err(parquet_err)?;
    }
    writer.close().map_err(parquet_err)?;
    Ok(Bytes::from(buffer))
}
