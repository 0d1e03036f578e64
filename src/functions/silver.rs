//! The bronze-to-silver functions: `silver`, a queue trigger on `bronze-events` (Event Grid's
//! `BlobCreated` events for the bronze container; the handler reads the file from the lake,
//! never from the host), and `catchup`, a timer that loads every bronze file no event brought
//! (an event lost, dead-lettered or filtered out), so a file waits at most one schedule period.

use std::time::Instant;

use serde_json::json;
use tracing::{info, warn};

use super::{App, Outcome, payload};
use crate::alert;
use crate::config::TableSpec;
use crate::lake::events;
use crate::runs;
use crate::stages::silver::{FileStatus, GoldWorkItem, Silver};
use crate::stages::{Status, new_run_id};

/// What loading one bronze file came to.
struct Loaded {
    log: String,
    work: Option<GoldWorkItem>,
    error: Option<String>,
}

impl App {
    /// One queue message: each complete new bronze blob it announces is loaded; anything
    /// else (a deletion, an empty `CreateFile`, a blob outside the pipeline) is logged and
    /// acknowledged. A failed file fails the invocation so the host redelivers the message
    /// (files already loaded are recorded and skipped on redelivery).
    pub(super) async fn silver(&self, invocation: payload::Invocation) -> Outcome {
        let events = match invocation.blob_events("event") {
            Ok(events) => events,
            Err(message) => return Outcome::rejected(message),
        };
        let (mut logs, mut work, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        for event in events {
            if !event.is_complete_blob() {
                logs.push(format!(
                    "{} ({}) {}: not a complete new blob; ignored",
                    event.event_type,
                    event.api.as_deref().unwrap_or("no api"),
                    event.path
                ));
                continue;
            }
            let Some(table) = self.pipeline.table_for_bronze_path(&event.path) else {
                info!(path = %event.path, "Ignored a blob outside bronze.");
                logs.push(format!(
                    "{} is not a bronze file of a pipeline table; ignored",
                    event.path
                ));
                continue;
            };
            let loaded = self.load_file(table, &event.path).await;
            logs.push(loaded.log);
            work.extend(loaded.work);
            errors.extend(loaded.error);
        }
        let outputs = gold_queue(&work);
        let outcome = Outcome::done(logs, outputs);
        match errors.is_empty() {
            true => outcome,
            false => Outcome {
                error: Some(errors.join("; ")),
                ..outcome
            },
        }
    }

    /// Loads one bronze file, records the event and alerts on failure.
    async fn load_file(&self, table: &TableSpec, path: &str) -> Loaded {
        let started = chrono::Utc::now();
        let run_id = new_run_id();
        let silver = Silver::new(self.lake.clone(), self.pipeline.settings.clone(), &run_id);
        let begin = Instant::now();
        let outcome = silver.process_file(table, path).await;
        let seconds = begin.elapsed().as_secs_f64();
        let (status, counts, version, error) = match &outcome {
            Ok(o) => (
                match o.status {
                    FileStatus::Committed => Status::Ok,
                    FileStatus::Quarantined => Status::Failed,
                    _ => Status::Empty,
                },
                o.counts.clone(),
                o.version,
                o.reason.clone(),
            ),
            Err(e) => (
                Status::Failed,
                Default::default(),
                None,
                Some(e.to_string()),
            ),
        };
        let event = events::Event {
            run_id: run_id.clone(),
            stage: "silver".to_string(),
            table: table.silver_name(),
            status: status.to_string().to_lowercase(),
            rows_in: counts.rows_in as i64,
            rows_out: counts.rows_out as i64,
            rows_dropped: counts.rows_dropped as i64,
            rows_rescued: counts.rows_rescued as i64,
            input_version: None,
            output_version: version.map(|v| v as i64),
            started_at: started,
            seconds,
            error: error.clone(),
            details: Some(json!({
                "source_table": table.name,
                "files": u64::from(status == Status::Ok),
                "file": path,
                "duplicates": counts.rows_duplicate,
                "expectations": counts.expectations,
            })),
        };
        if let Err(e) = events::append(&self.lake, &[event]).await {
            warn!(error = %e, "The event log could not be appended.");
        }
        if let Some(error) = &error {
            runs::notify(
                &self.lake,
                &run_id,
                "silver",
                vec![alert::Failure {
                    table: format!("{} ({path})", table.silver_name()),
                    error: error.clone(),
                }],
            )
            .await;
        }
        match outcome {
            Err(e) => Loaded {
                log: format!("silver {} {path}: failed: {e}", table.silver_name()),
                work: None,
                error: Some(format!("{path}: {e}")),
            },
            // A quarantined file is handled (moved aside, alerted): retrying cannot help.
            Ok(o) => Loaded {
                log: format!(
                    "silver {} {path}: {:?}, {} rows in, {} out, {} dropped",
                    table.silver_name(),
                    o.status,
                    o.counts.rows_in,
                    o.counts.rows_out,
                    o.counts.rows_dropped
                ),
                work: match (o.status, o.version) {
                    (FileStatus::Committed, Some(version)) => Some(GoldWorkItem {
                        table: table.silver_name(),
                        version,
                    }),
                    _ => None,
                },
                error: None,
            },
        }
    }

    /// The catch-up timer: silver over every table, as `tunelake silver` runs it. A file an
    /// event already brought is recorded and skipped; one that no event brought is loaded
    /// and named in the logs, since it means an event was lost.
    pub(super) async fn catchup(&self, _: payload::Invocation) -> Outcome {
        let run_id = new_run_id();
        let tables = self.pipeline.tables.clone();
        let report = match runs::silver(&run_id, &self.lake, &self.pipeline, &tables).await {
            Ok(report) => report,
            Err(e) => return Outcome::error(e.to_string()),
        };
        let mut logs = Vec::new();
        let mut work = Vec::new();
        for t in &report.tables {
            if t.files > 0 {
                warn!(
                    table = %t.table,
                    files = t.files,
                    "Bronze files no event brought were loaded by the catch-up."
                );
            }
            logs.push(format!(
                "catchup {} {}: {} files loaded, {} skipped, {} rows",
                t.table, t.status, t.files, t.skipped, t.counts.rows_out
            ));
            if let (Status::Ok, Some(version)) = (t.status, t.version) {
                work.push(GoldWorkItem {
                    table: t.table.clone(),
                    version,
                });
            }
        }
        // One work item is enough: gold consumes every silver change since its last build.
        work.truncate(1);
        Outcome::done(logs, gold_queue(&work))
            .failed_if(report.failed(), "a table failed or a file was quarantined")
    }
}

/// The `goldQueue` output: one message per work item, each a JSON object (which the host
/// cannot mistake for base64).
fn gold_queue(work: &[GoldWorkItem]) -> serde_json::Value {
    let messages: Vec<String> = work
        .iter()
        .filter_map(|item| serde_json::to_string(item).ok())
        .collect();
    match messages.len() {
        0 => json!({}),
        _ => json!({ "goldQueue": messages }),
    }
}
