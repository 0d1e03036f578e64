//! One run of a stage, as the command line and the Function App start it: the stage itself,
//! its rows in the event log, and one alert when a table failed.

use std::sync::Arc;

use crate::alert::{self, Alert, Failure, Graph};
use crate::config::{Pipeline, TableSpec};
use crate::error::Result;
use crate::lake::{Lake, events};
use crate::stages::Status;
use crate::stages::gold::{Gold, GoldReport};
use crate::stages::ingest::{Ingest, IngestReport};
use crate::stages::silver::{Silver, SilverReport};

/// Ingests `tables` from the source at `source_url`. A run id may span stages: `tunelake run`
/// gives all three the same one, so the report shows the whole pipeline run.
pub async fn ingest(
    run_id: &str,
    source_url: &str,
    lake: &Lake,
    pipeline: &Pipeline,
    tables: &[TableSpec],
    from: Option<String>,
) -> Result<IngestReport> {
    let started = chrono::Utc::now();
    let source = crate::source::open(source_url).await?;
    let report = Ingest::new(
        Arc::clone(&source),
        lake.clone(),
        pipeline.settings.clone(),
        run_id,
    )
    .with_from(from)
    .run(tables)
    .await;
    events::append(lake, &report.events(started)).await?;
    let failed = report.tables.iter().map(|t| (&t.table, t.status, &t.error));
    notify(lake, &report.run_id, "ingest", failures(failed)).await;
    Ok(report)
}

/// Loads every bronze file of `tables` that silver has not recorded.
pub async fn silver(
    run_id: &str,
    lake: &Lake,
    pipeline: &Pipeline,
    tables: &[TableSpec],
) -> Result<SilverReport> {
    let started = chrono::Utc::now();
    let report = Silver::new(lake.clone(), pipeline.settings.clone(), run_id)
        .run(tables)
        .await;
    events::append(lake, &report.events(started)).await?;
    let failures = report
        .events(started)
        .into_iter()
        .filter_map(|e| {
            e.error.map(|error| Failure {
                table: e.table,
                error,
            })
        })
        .collect();
    notify(lake, &report.run_id, "silver", failures).await;
    Ok(report)
}

/// Brings the gold tables of `tables` (and the views) up to date.
pub async fn gold(
    run_id: &str,
    lake: &Lake,
    pipeline: &Pipeline,
    tables: &[TableSpec],
) -> Result<GoldReport> {
    let started = chrono::Utc::now();
    let report = Gold::new(lake.clone(), run_id).run(pipeline, tables).await;
    events::append(lake, &report.events(started)).await?;
    let failed = report.tables.iter().map(|t| (&t.table, t.status, &t.error));
    notify(lake, &report.run_id, "gold", failures(failed)).await;
    Ok(report)
}

/// The failed tables of a report, from (table, status, error).
fn failures<'a>(
    tables: impl Iterator<Item = (&'a String, Status, &'a Option<String>)>,
) -> Vec<Failure> {
    tables
        .filter(|(_, status, _)| *status == Status::Failed)
        .map(|(table, _, error)| Failure {
            table: table.clone(),
            error: error.clone().unwrap_or_default(),
        })
        .collect()
}

/// Sends one alert for a run with failures; a failure to alert is logged, never raised, so
/// it cannot hide the run's own outcome.
pub async fn notify(lake: &Lake, run_id: &str, stage: &str, failures: Vec<Failure>) {
    if failures.is_empty() {
        return;
    }
    let alert = Alert {
        run_id: run_id.to_string(),
        stage: stage.to_string(),
        failures,
        counts: Default::default(),
    };
    let graph = match Graph::from_env() {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(error = %e, "The mail channel is misconfigured; the alert goes to the outbox.");
            None
        }
    };
    if let Err(e) = alert::send(lake, graph.as_ref(), &alert).await {
        tracing::error!(error = %e, run_id, stage, "The alert could not be delivered anywhere.");
    }
}
