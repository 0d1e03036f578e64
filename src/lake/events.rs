//! The event log, `_system/events` (Delta): one row per run, stage and table, appended after
//! each stage. `status`, alerts and the run report read it; Spark or DuckDB can too.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};
use deltalake::DeltaTable;
use deltalake::protocol::SaveMode;
use serde::Serialize;

use super::Lake;
use crate::error::{Error, Result};

/// Where the event log lives in the lake.
pub const PATH: &str = "_system/events";

/// One row of the event log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub run_id: String,
    pub stage: String,
    pub table: String,
    /// `ok`, `empty` or `failed`.
    pub status: String,
    pub rows_in: i64,
    pub rows_out: i64,
    pub rows_dropped: i64,
    pub rows_rescued: i64,
    /// The table version the stage read (gold: the silver version), when it applies.
    pub input_version: Option<i64>,
    /// The table version the stage left (silver, gold), when it applies.
    pub output_version: Option<i64>,
    pub started_at: DateTime<Utc>,
    pub seconds: f64,
    pub error: Option<String>,
}

fn schema() -> SchemaRef {
    let text = |n: &str, null| Field::new(n, DataType::Utf8, null);
    let int = |n: &str, null| Field::new(n, DataType::Int64, null);
    Arc::new(Schema::new(vec![
        text("run_id", false),
        text("stage", false),
        text("table", false),
        text("status", false),
        int("rows_in", false),
        int("rows_out", false),
        int("rows_dropped", false),
        int("rows_rescued", false),
        int("input_version", true),
        int("output_version", true),
        Field::new(
            "started_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("seconds", DataType::Float64, false),
        text("error", true),
    ]))
}

fn to_batch(events: &[Event]) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let text = |f: fn(&Event) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(events.iter().map(f)))
    };
    let int = |f: fn(&Event) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(events.iter().map(f)))
    };
    let opt = |f: fn(&Event) -> Option<i64>| -> ArrayRef {
        Arc::new(events.iter().map(f).collect::<Int64Array>())
    };
    RecordBatch::try_new(
        schema(),
        vec![
            text(|e| &e.run_id),
            text(|e| &e.stage),
            text(|e| &e.table),
            text(|e| &e.status),
            int(|e| e.rows_in),
            int(|e| e.rows_out),
            int(|e| e.rows_dropped),
            int(|e| e.rows_rescued),
            opt(|e| e.input_version),
            opt(|e| e.output_version),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    events.iter().map(|e| e.started_at.timestamp_micros()),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from_iter_values(
                events.iter().map(|e| e.seconds),
            )),
            Arc::new(
                events
                    .iter()
                    .map(|e| e.error.as_deref())
                    .collect::<StringArray>(),
            ),
        ],
    )
}

async fn open(lake: &Lake) -> Result<DeltaTable> {
    lake.delta_table(PATH).await
}

/// Appends events (one commit). Appends never conflict with each other.
pub async fn append(lake: &Lake, events: &[Event]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let batch = to_batch(events).map_err(|e| Error::arrow(PATH, e))?;
    open(lake)
        .await?
        .write(vec![batch])
        .with_save_mode(SaveMode::Append)
        .await
        .map_err(|e| Error::Delta {
            table: PATH.to_string(),
            source: e,
        })?;
    Ok(())
}

/// The latest `limit` events, newest first; empty when nothing ran yet.
pub async fn latest(lake: &Lake, limit: usize) -> Result<Vec<RecordBatch>> {
    let table = open(lake).await?;
    if table.version().is_none() {
        return Ok(Vec::new());
    }
    let fail = |e: datafusion::error::DataFusionError| Error::DataFusion {
        table: PATH.to_string(),
        file: PATH.to_string(),
        context: "reading the event log".to_string(),
        source: e,
    };
    let ctx = datafusion::prelude::SessionContext::new();
    let provider = super::delta_provider(&table, &ctx, PATH).await?;
    ctx.register_table("events", provider).map_err(fail)?;
    ctx.sql(&format!(
        "SELECT started_at, run_id, stage, \"table\", status, rows_in, rows_out, rows_dropped, rows_rescued, \
         input_version, output_version, round(seconds, 2) AS seconds, error FROM events ORDER BY started_at DESC, stage, \"table\" LIMIT {limit}"
    ))
    .await
    .map_err(fail)?
    .collect()
    .await
    .map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(table: &str, status: &str, error: Option<&str>) -> Event {
        Event {
            run_id: "r1".into(),
            stage: "silver".into(),
            table: table.into(),
            status: status.into(),
            rows_in: 10,
            rows_out: 9,
            rows_dropped: 1,
            rows_rescued: 0,
            input_version: None,
            output_version: Some(3),
            started_at: DateTime::from_timestamp(1_750_000_000, 0).unwrap(),
            seconds: 0.5,
            error: error.map(String::from),
        }
    }

    #[tokio::test]
    async fn events_append_and_read_back_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        assert!(latest(&lake, 5).await.unwrap().is_empty());
        append(&lake, &[event("users", "ok", None)]).await.unwrap();
        let mut later = event("streams", "failed", Some("table FactStream: boom"));
        later.started_at = DateTime::from_timestamp(1_750_000_100, 0).unwrap();
        append(&lake, &[later]).await.unwrap();
        let batches = latest(&lake, 5).await.unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        let streams = text.find("streams").unwrap();
        let users = text.find("users").unwrap();
        assert!(streams < users, "newest first:\n{text}");
        assert!(text.contains("table FactStream: boom"), "{text}");
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    }
}
