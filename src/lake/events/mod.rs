//! The event log, `_system/events` (Delta): one row per run, stage and table, appended after
//! each stage. `status`, alerts and the run report read it; Spark or DuckDB can too.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
use chrono::{DateTime, Utc};
use deltalake::DeltaTable;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use serde::Serialize;

mod window;

use super::Lake;
use super::layout;
use crate::error::{Error, Result};

/// One row of the event log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// The run (one id for the stages of a `tunelake run`).
    pub run_id: String,
    /// `ingest`, `silver` or `gold`.
    pub stage: String,
    /// The table (the source name for ingest, the silver or gold name after).
    pub table: String,
    /// `ok`, `empty` or `failed`.
    pub status: String,
    /// Rows read.
    pub rows_in: i64,
    /// Rows written.
    pub rows_out: i64,
    /// Rows dropped (silver: by expectations; gold: deleted).
    pub rows_dropped: i64,
    /// Rows with a value moved to `_rescued_data`.
    pub rows_rescued: i64,
    /// The table version the stage read (gold: the silver version), when it applies.
    pub input_version: Option<i64>,
    /// The table version the stage left (silver, gold), when it applies.
    pub output_version: Option<i64>,
    /// When the stage started.
    pub started_at: DateTime<Utc>,
    /// How long the table took.
    pub seconds: f64,
    /// The error, when it failed.
    pub error: Option<String>,
    /// Stage-specific detail as a JSON object (silver: rows per broken expectation, duplicates,
    /// quarantined files; gold: versions inserted, closed, deleted; ingest: the window and
    /// watermark), which the run report reads. A column added later: older rows have none.
    pub details: Option<serde_json::Value>,
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
        text("details", true),
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
            Arc::new(
                events
                    .iter()
                    .map(|e| e.details.as_ref().map(|d| d.to_string()))
                    .collect::<StringArray>(),
            ),
        ],
    )
}

async fn open(lake: &Lake) -> Result<DeltaTable> {
    lake.delta_table(layout::EVENTS).await
}

/// Appends events (one commit). Appends never conflict with each other.
pub async fn append(lake: &Lake, events: &[Event]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let batch = to_batch(events).map_err(|e| Error::arrow(layout::EVENTS, e))?;
    open(lake)
        .await?
        .write(vec![batch])
        .with_save_mode(SaveMode::Append)
        .with_configuration(crate::lake::CREATED_WITH)
        // An event log written before `details` existed gains the column.
        .with_schema_mode(SchemaMode::Merge)
        .await
        .map_err(|e| Error::Delta {
            table: layout::EVENTS.to_string(),
            source: e,
        })?;
    Ok(())
}

fn fail(e: datafusion::error::DataFusionError) -> Error {
    Error::DataFusion {
        table: layout::EVENTS.to_string(),
        file: layout::EVENTS.to_string(),
        context: "reading the event log".to_string(),
        source: e,
    }
}

/// The log, or `None` before the first event.
async fn opened(lake: &Lake) -> Result<Option<DeltaTable>> {
    let table = open(lake).await?;
    Ok(table.version().is_some().then_some(table))
}

/// A session with the log's `files` (all of them when `None`) registered as `events`.
async fn session(
    table: &DeltaTable,
    files: Option<Vec<String>>,
) -> Result<datafusion::prelude::SessionContext> {
    let ctx = datafusion::prelude::SessionContext::new();
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| Error::Delta {
            table: layout::EVENTS.to_string(),
            source: e,
        })?;
    let mut provider = table.table_provider();
    if let Some(files) = files {
        provider = provider.with_file_paths(files);
    }
    let provider = provider.await.map_err(fail)?;
    ctx.register_table("events", provider).map_err(fail)?;
    Ok(ctx)
}

async fn query(ctx: &datafusion::prelude::SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    ctx.sql(sql)
        .await
        .map_err(fail)?
        .collect()
        .await
        .map_err(fail)
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

/// Runs `sql` (which holds `{cut}` where a time bound goes) over the events started since a
/// cut, from one hour before the newest event back, widening eightfold until it returns
/// `wanted` rows or covers the whole log; only the files that can hold such events are read.
async fn newest(table: &DeltaTable, sql: &str, wanted: usize) -> Result<Vec<RecordBatch>> {
    let ranges = window::ranges(table)?;
    let Some((earliest, latest)) = window::span(&ranges) else {
        return query(&session(table, None).await?, &sql.replace("{cut}", "TRUE")).await;
    };
    let mut back: i64 = 3_600_000_000;
    loop {
        let cut = latest.saturating_sub(back);
        let whole = cut <= earliest;
        let bound = match DateTime::from_timestamp_micros(cut) {
            Some(t) if !whole => format!("started_at >= '{}'", t.to_rfc3339()),
            _ => "TRUE".to_string(),
        };
        let files = (!whole).then(|| window::since(&ranges, cut));
        let found = query(&session(table, files).await?, &sql.replace("{cut}", &bound)).await?;
        if whole || rows(&found) >= wanted {
            return Ok(found);
        }
        back = back.saturating_mul(8);
    }
}

/// The latest `limit` events, newest first; empty when nothing ran yet.
pub async fn latest(lake: &Lake, limit: usize) -> Result<Vec<RecordBatch>> {
    let Some(table) = opened(lake).await? else {
        return Ok(Vec::new());
    };
    let sql = format!(
        "SELECT started_at, run_id, stage, \"table\", status, rows_in, rows_out, rows_dropped, rows_rescued, \
         input_version, output_version, round(seconds, 2) AS seconds, error FROM events WHERE {{cut}} \
         ORDER BY started_at DESC, stage, \"table\" LIMIT {limit}"
    );
    newest(&table, &sql, limit).await
}

/// The ids of the latest `limit` runs (by their newest event), newest first.
async fn latest_runs(table: &DeltaTable, limit: usize) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT run_id, max(started_at) AS newest FROM events WHERE {{cut}} \
         GROUP BY run_id ORDER BY newest DESC LIMIT {limit}"
    );
    let batches = newest(table, &sql, limit).await?;
    Ok(batches
        .iter()
        .flat_map(|b| (0..b.num_rows()).filter_map(move |row| text_at(b, 0, row)))
        .collect())
}

/// A session over the files that can hold events of `runs`.
async fn runs_session(
    table: &DeltaTable,
    runs: &[String],
) -> Result<datafusion::prelude::SessionContext> {
    let ranges = window::ranges(table)?;
    session(table, Some(window::of_runs(&ranges, runs))).await
}

fn quoted(runs: &[String]) -> String {
    runs.iter()
        .map(|r| format!("'{}'", r.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every event of run `run_id`, or of the latest run, in the order they were written; with
/// the run's id. `None` when the log is empty or has no such run.
pub async fn of_run(lake: &Lake, run_id: Option<&str>) -> Result<Option<(String, Vec<Event>)>> {
    let Some(table) = opened(lake).await? else {
        return Ok(None);
    };
    let run_id = match run_id {
        Some(id) => id.to_string(),
        None => match latest_runs(&table, 1).await?.into_iter().next() {
            Some(id) => id,
            None => return Ok(None),
        },
    };
    let ids = [run_id.clone()];
    let ctx = runs_session(&table, &ids).await?;
    let batches = query(
        &ctx,
        &format!(
            "SELECT * FROM events WHERE run_id IN ({}) ORDER BY started_at",
            quoted(&ids)
        ),
    )
    .await?;
    let events = from_batches(&batches);
    Ok((!events.is_empty()).then_some((run_id, events)))
}

/// One run in the event log, as the report lists recent runs.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// The run.
    pub run_id: String,
    /// When its first stage started.
    pub started_at: DateTime<Utc>,
    /// The stages it ran, in pipeline order.
    pub stages: Vec<String>,
    /// Tables it touched.
    pub tables: i64,
    /// Tables that failed.
    pub failed: i64,
    /// Tables that wrote data.
    pub wrote: i64,
}

/// The latest `limit` runs, newest first.
pub async fn recent_runs(lake: &Lake, limit: usize) -> Result<Vec<RunSummary>> {
    let Some(table) = opened(lake).await? else {
        return Ok(Vec::new());
    };
    let ids = latest_runs(&table, limit).await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ctx = runs_session(&table, &ids).await?;
    let batches = query(
        &ctx,
        &format!(
            "SELECT run_id, min(started_at) AS started, \
             array_to_string(array_agg(DISTINCT stage), ' ') AS stages, count(*) AS tables, \
             sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed, \
             sum(CASE WHEN status = 'ok' THEN 1 ELSE 0 END) AS wrote \
             FROM events WHERE run_id IN ({}) GROUP BY run_id ORDER BY started DESC",
            quoted(&ids)
        ),
    )
    .await?;
    let mut runs = Vec::new();
    for batch in &batches {
        let counts: Vec<_> = (3..=5)
            .map(|c| super::int_column(batch.column(c)))
            .collect();
        let int =
            |column: usize, row: usize| counts[column - 3].as_ref().map_or(0, |a| a.value(row));
        for row in 0..batch.num_rows() {
            let started_at = batch
                .column(1)
                .as_primitive_opt::<TimestampMicrosecondType>()
                .and_then(|a| DateTime::from_timestamp_micros(a.value(row)))
                .unwrap_or_default();
            let listed = text_at(batch, 2, row).unwrap_or_default();
            let stages = ["ingest", "silver", "gold"]
                .into_iter()
                .filter(|s| listed.split(' ').any(|l| l == *s))
                .map(String::from)
                .collect();
            runs.push(RunSummary {
                run_id: text_at(batch, 0, row).unwrap_or_default(),
                started_at,
                stages,
                tables: int(3, row),
                failed: int(4, row),
                wrote: int(5, row),
            });
        }
    }
    Ok(runs)
}

/// A text cell, whatever string layout the reader chose (DataFusion reads parquet text as
/// `Utf8View`).
fn text_at(batch: &RecordBatch, column: usize, row: usize) -> Option<String> {
    let array = arrow::compute::cast(batch.column(column), &DataType::Utf8).ok()?;
    let array = array.as_string_opt::<i32>()?;
    array.is_valid(row).then(|| array.value(row).to_string())
}

/// Events back from the log's batches; a column missing from an older log reads as empty.
fn from_batches(batches: &[RecordBatch]) -> Vec<Event> {
    let mut events = Vec::new();
    for batch in batches {
        let col = |name: &str| batch.schema().index_of(name).ok();
        let text = |name: &str, row: usize| col(name).and_then(|c| text_at(batch, c, row));
        let int = |name: &str, row: usize| {
            col(name).and_then(|c| {
                let a = batch.column(c).as_primitive_opt::<Int64Type>()?;
                a.is_valid(row).then(|| a.value(row))
            })
        };
        for row in 0..batch.num_rows() {
            let started_at = col("started_at")
                .and_then(|c| {
                    batch
                        .column(c)
                        .as_primitive_opt::<TimestampMicrosecondType>()
                })
                .and_then(|a| DateTime::from_timestamp_micros(a.value(row)))
                .unwrap_or_default();
            let seconds = col("seconds")
                .and_then(|c| batch.column(c).as_primitive_opt::<Float64Type>())
                .map(|a| a.value(row))
                .unwrap_or_default();
            events.push(Event {
                run_id: text("run_id", row).unwrap_or_default(),
                stage: text("stage", row).unwrap_or_default(),
                table: text("table", row).unwrap_or_default(),
                status: text("status", row).unwrap_or_default(),
                rows_in: int("rows_in", row).unwrap_or_default(),
                rows_out: int("rows_out", row).unwrap_or_default(),
                rows_dropped: int("rows_dropped", row).unwrap_or_default(),
                rows_rescued: int("rows_rescued", row).unwrap_or_default(),
                input_version: int("input_version", row),
                output_version: int("output_version", row),
                started_at,
                seconds,
                error: text("error", row),
                details: text("details", row).and_then(|d| serde_json::from_str(&d).ok()),
            });
        }
    }
    events
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
            details: Some(serde_json::json!({"expectations": {"valid_id": 1}})),
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

        let mut second_run = event("users", "ok", None);
        second_run.run_id = "r2".into();
        second_run.started_at = DateTime::from_timestamp(1_750_000_200, 0).unwrap();
        append(&lake, &[second_run.clone()]).await.unwrap();
        let (id, latest_run) = of_run(&lake, None).await.unwrap().unwrap();
        assert_eq!((id.as_str(), latest_run), ("r2", vec![second_run]));
        let (_, first_run) = of_run(&lake, Some("r1")).await.unwrap().unwrap();
        assert_eq!(first_run.len(), 2);
        assert_eq!(
            first_run[1].error.as_deref(),
            Some("table FactStream: boom")
        );
        assert!(of_run(&lake, Some("nope")).await.unwrap().is_none());
        let runs = recent_runs(&lake, 5).await.unwrap();
        let ids: Vec<&str> = runs.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, ["r2", "r1"]);
        assert_eq!((runs[1].tables, runs[1].failed, runs[1].wrote), (2, 1, 1));
        assert_eq!(runs[1].stages, ["silver"]);
    }

    #[tokio::test]
    async fn a_table_is_checkpointed_every_ten_commits_and_keeps_every_commit() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        for i in 0..12 {
            append(&lake, &[event(&format!("t{i}"), "ok", None)])
                .await
                .unwrap();
        }
        let log = dir.path().join(layout::EVENTS).join("_delta_log");
        let mut names: Vec<String> = std::fs::read_dir(&log)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json") || n.ends_with(".parquet"))
            .collect();
        names.sort();
        let checkpoints: Vec<&String> = names.iter().filter(|n| n.contains("checkpoint")).collect();
        assert_eq!(checkpoints, ["00000000000000000009.checkpoint.parquet"]);
        assert_eq!(names.iter().filter(|n| n.ends_with(".json")).count(), 12);
        // The first version is still there to read, past the checkpoint.
        let first = deltalake::DeltaTableBuilder::from_url(lake.table_url(layout::EVENTS).unwrap())
            .unwrap()
            .with_version(0)
            .load()
            .await
            .unwrap();
        assert_eq!(first.version(), Some(0));
        assert_eq!(
            latest(&lake, 20)
                .await
                .unwrap()
                .iter()
                .map(|b| b.num_rows())
                .sum::<usize>(),
            12
        );
    }

    /// Thirty hourly runs of three stages, each stage its own file, and one long run whose
    /// ingest started before all of them and whose gold ended last.
    #[tokio::test]
    async fn the_latest_runs_come_whole_from_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let at = |hours: i64, minutes: i64| {
            DateTime::from_timestamp(1_750_000_000 + hours * 3600 + minutes * 60, 0).unwrap()
        };
        let stage_event = |run: &str, stage: &str, started_at| Event {
            run_id: run.into(),
            stage: stage.into(),
            started_at,
            ..event("users", "ok", None)
        };
        append(&lake, &[stage_event("long", "ingest", at(-1, 0))])
            .await
            .unwrap();
        for run in 0..30 {
            for (i, stage) in ["ingest", "silver", "gold"].into_iter().enumerate() {
                let e = stage_event(&format!("run{run:02}"), stage, at(run, i as i64));
                append(&lake, &[e]).await.unwrap();
            }
        }
        append(&lake, &[stage_event("long", "gold", at(29, 30))])
            .await
            .unwrap();

        let table = open(&lake).await.unwrap();
        let ranges = window::ranges(&table).unwrap();
        assert_eq!(ranges.len(), 92);
        let (_, newest) = window::span(&ranges).unwrap();
        assert!(window::since(&ranges, newest - 3_600_000_000).len() <= 6);

        let whole = session(&table, None).await.unwrap();
        let everything = query(
            &whole,
            "SELECT started_at, run_id, stage FROM events ORDER BY started_at DESC, stage LIMIT 7",
        )
        .await
        .unwrap();
        let windowed = latest(&lake, 7).await.unwrap();
        let pick = |batches: &[RecordBatch]| -> Vec<(String, String)> {
            batches
                .iter()
                .flat_map(|b| {
                    (0..b.num_rows()).map(move |r| {
                        let col = |n: &str| text_at(b, b.schema().index_of(n).unwrap(), r).unwrap();
                        (col("run_id"), col("stage"))
                    })
                })
                .collect()
        };
        assert_eq!(pick(&windowed), pick(&everything));
        assert_eq!(rows(&windowed), 7);

        let runs = recent_runs(&lake, 3).await.unwrap();
        let ids: Vec<&str> = runs.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, ["run29", "run28", "long"], "by start, newest first");
        let long = &runs[2];
        assert_eq!(
            (long.tables, long.stages.clone()),
            (2, vec!["ingest".to_string(), "gold".to_string()])
        );
        assert_eq!(runs[0].tables, 3);

        let (id, events) = of_run(&lake, None).await.unwrap().unwrap();
        assert_eq!(
            (id.as_str(), events.len()),
            ("long", 2),
            "the run with the newest event"
        );
        let (_, early) = of_run(&lake, Some("run03")).await.unwrap().unwrap();
        assert_eq!(early.len(), 3);
    }
}
