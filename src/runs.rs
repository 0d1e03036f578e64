//! One run of a stage, as the command line and the Function App start it: the stage itself,
//! its rows in the event log, and one alert when a table failed. Also the whole pipeline as
//! one run ([`flow`]), where each table moves on as soon as what it needs is done, and the
//! maintenance of the tables a run wrote ([`maintain`]).

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tracing::warn;

use crate::alert::{self, Alert, Failure, Graph};
use crate::config::{GoldKind, Pipeline, TableSpec};
use crate::error::Result;
use crate::lake::layout::{self, Stage};
use crate::lake::lease::Lease;
use crate::lake::maintain::{self, Due, Maintained};
use crate::lake::{Lake, events};
use crate::source::Source;
use crate::stages::Status;
use crate::stages::gold::{Gold, GoldReport};
use crate::stages::ingest::{Ingest, IngestReport, TableReport as IngestTableReport};
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
    let sources = opened_sources(pipeline, source_url, tables).await?;
    // Each source's tables as one ingest (sources side by side); a source that could not be
    // opened fails its own tables only.
    let runs = sources.iter().map(|(name, source)| {
        let group: Vec<TableSpec> = (tables.iter())
            .filter(|t| t.source == *name)
            .cloned()
            .collect();
        let from = from.clone();
        async move {
            match source {
                Ok(source) => {
                    Ingest::new(
                        Arc::clone(source),
                        lake.clone(),
                        pipeline.settings.clone(),
                        run_id,
                    )
                    .with_from(from)
                    .run(&group)
                    .await
                    .tables
                }
                Err(message) => group
                    .iter()
                    .map(|t| IngestTableReport::failed(&t.name, message.clone(), Instant::now()))
                    .collect(),
            }
        }
    });
    let mut done: Vec<_> = futures::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect();
    done.sort_by_key(|r| tables.iter().position(|t| t.name == r.table));
    let report = IngestReport {
        run_id: run_id.to_string(),
        tables: done,
    };
    ingested(lake, &report, started).await?;
    Ok(report)
}

/// The sources `tables` read. A source that cannot be opened fails only its tables (its
/// error as their message), unless no source opens at all: then that is the run's error.
async fn opened_sources(
    pipeline: &Pipeline,
    default_url: &str,
    tables: &[TableSpec],
) -> Result<Vec<(Option<String>, std::result::Result<Arc<dyn Source>, String>)>> {
    let mut opened = crate::source::open_for(pipeline, default_url, tables).await;
    if opened.iter().all(|(_, s)| s.is_err())
        && let Some((_, Err(e))) = opened.pop()
    {
        return Err(e);
    }
    Ok(opened
        .into_iter()
        .map(|(name, source)| {
            let describe = |e: crate::error::Error| match &name {
                Some(n) => format!("source {n}: {e}"),
                None => e.to_string(),
            };
            (name.clone(), source.map_err(describe))
        })
        .collect())
}

/// Records an ingest run in the event log and alerts on its failed tables.
async fn ingested(lake: &Lake, report: &IngestReport, started: DateTime<Utc>) -> Result<()> {
    events::append(lake, &report.events(started)).await?;
    let failed = report.tables.iter().map(|t| (&t.table, t.status, &t.error));
    notify(
        lake,
        &report.run_id,
        Stage::Ingest.as_str(),
        failures(failed),
    )
    .await;
    Ok(())
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
    silvered(lake, &report, started).await?;
    let paths = committed(Some(&report), None);
    maintain(lake, pipeline, paths, run_id, Due::Compaction).await;
    clean_sources(lake, pipeline, tables).await;
    Ok(report)
}

/// Applies `[maintenance] clean_source` to the bronze files of `tables`; returns how many
/// files left bronze. Like the rest of maintenance it moves no data, so a failure is logged
/// and the next run tries again.
pub async fn clean_sources(lake: &Lake, pipeline: &Pipeline, tables: &[TableSpec]) -> usize {
    let now = chrono::Utc::now();
    let mut cleaned = 0;
    for table in tables {
        match crate::stages::silver::clean_source(lake, table, &pipeline.maintenance, now).await {
            Ok(n) => cleaned += n,
            Err(e) => {
                warn!(table = %table.name, error = %e, "Bronze retention failed; the next run tries again.")
            }
        }
    }
    cleaned
}

/// Records a silver run in the event log and alerts on its failed tables and quarantines.
async fn silvered(lake: &Lake, report: &SilverReport, started: DateTime<Utc>) -> Result<()> {
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
    notify(lake, &report.run_id, Stage::Silver.as_str(), failures).await;
    Ok(())
}

/// Brings the gold tables of `tables` (and the views) up to date.
pub async fn gold(
    run_id: &str,
    lake: &Lake,
    pipeline: &Pipeline,
    tables: &[TableSpec],
) -> Result<GoldReport> {
    let started = chrono::Utc::now();
    let report = Gold::new(lake.clone(), run_id)
        .with_lease_wait(lease_wait(pipeline))
        .run(pipeline, tables)
        .await;
    golden(lake, &report, started).await?;
    let paths = committed(None, Some(&report));
    maintain(lake, pipeline, paths, run_id, Due::Everything).await;
    Ok(report)
}

fn lease_wait(pipeline: &Pipeline) -> std::time::Duration {
    std::time::Duration::from_secs(pipeline.settings.lease_wait_seconds)
}

/// Records a gold run in the event log and alerts on its failed tables.
async fn golden(lake: &Lake, report: &GoldReport, started: DateTime<Utc>) -> Result<()> {
    events::append(lake, &report.events(started)).await?;
    let failed = report.tables.iter().map(|t| (&t.table, t.status, &t.error));
    notify(lake, &report.run_id, Stage::Gold.as_str(), failures(failed)).await;
    Ok(())
}

/// What a whole-pipeline run did, stage by stage.
pub struct FlowReport {
    /// What ingest did.
    pub ingest: IngestReport,
    /// What silver did.
    pub silver: SilverReport,
    /// What gold did.
    pub gold: GoldReport,
}

/// The whole pipeline over `tables` as one run, without waiting for a stage to finish every
/// table: a table goes on to silver as soon as its own ingest is done, a dimension to gold as
/// soon as its silver is, and a fact's gold as soon as its own silver is, reading each
/// dimension it looks up (of those in `tables`) once that one is built; the views come last,
/// when every table of the pipeline is in `tables`. Each stage does exactly what it does
/// when run alone, as the Function App's triggers run it, and takes at most `max_concurrency`
/// tables at once; only the idle time between stages goes (a small table no longer waits for
/// the largest one's ingest). The event log and alerts are per stage, as for the stages run
/// one by one.
pub async fn flow(
    run_id: &str,
    source_url: &str,
    lake: &Lake,
    pipeline: &Pipeline,
    tables: &[TableSpec],
) -> Result<FlowReport> {
    let sources = opened_sources(pipeline, source_url, tables).await?;
    let limit = pipeline.settings.max_concurrency.max(1);
    // Ingest, silver, gold dimensions, gold facts. Facts have their own: one waiting for a
    // dimension must not hold a place that dimension needs.
    let gates: [Semaphore; 4] = std::array::from_fn(|_| Semaphore::new(limit));
    let gold = Arc::new(Gold::new(lake.clone(), run_id).with_lease_wait(lease_wait(pipeline)));
    let is = |t: &TableSpec, kind: GoldKind| t.gold.as_ref().is_some_and(|g| g.kind == kind);
    // Each dimension's gold build says when it is over, failed or not: a fact then resolves
    // against whatever it left, as after a gold stage in which that dimension failed.
    let hand_overs = crate::stages::gold::handover::plan(tables);
    let chains = tables.iter().zip(hand_overs).map(|(table, waits)| {
        let source = (sources.iter())
            .find(|(name, _)| *name == table.source)
            .map(|(_, s)| s.clone());
        let (gates, gold) = (&gates, gold.clone());
        async move {
            let one = std::slice::from_ref(table);
            let mut started = [Utc::now(); 3];
            let ingest = {
                let _gate = gates[0].acquire().await;
                started[0] = Utc::now();
                match source {
                    Some(Ok(source)) => {
                        Ingest::new(source, lake.clone(), pipeline.settings.clone(), run_id)
                            .run(one)
                            .await
                    }
                    // Its source could not be opened: the table's ingest fails, and silver
                    // and gold still take in what bronze holds.
                    failed => IngestReport {
                        run_id: run_id.to_string(),
                        tables: vec![IngestTableReport::failed(
                            &table.name,
                            failed.and_then(|s| s.err()).unwrap_or_default(),
                            Instant::now(),
                        )],
                    },
                }
            };
            let silver = {
                let _gate = gates[1].acquire().await;
                started[1] = Utc::now();
                Silver::new(lake.clone(), pipeline.settings.clone(), run_id)
                    .run(one)
                    .await
            };
            let gold = {
                // A dimension that copies columns from others waits for them before it takes
                // a place they may need.
                if is(table, GoldKind::Dimension) {
                    for l in table.gold.iter().flat_map(|g| &g.lookups) {
                        waits.wait(&l.dimension).await;
                    }
                }
                let _gate = gates[if is(table, GoldKind::Fact) { 3 } else { 2 }]
                    .acquire()
                    .await;
                started[2] = Utc::now();
                gold.tables(pipeline, one, &waits).await
            };
            waits.done();
            (ingest.tables, silver.tables, gold, started)
        }
    });
    let chains = futures::future::join_all(chains);
    let done = chains.await;
    let first = |stage: usize| {
        done.iter()
            .map(|d| d.3[stage])
            .min()
            .unwrap_or_else(Utc::now)
    };
    let started = [first(0), first(1), first(2)];
    let mut report = FlowReport {
        ingest: IngestReport {
            run_id: run_id.to_string(),
            tables: Vec::new(),
        },
        silver: SilverReport {
            run_id: run_id.to_string(),
            tables: Vec::new(),
        },
        gold: GoldReport {
            run_id: run_id.to_string(),
            tables: Vec::new(),
        },
    };
    let mut facts = Vec::new();
    for ((ingest, silver, gold, _), table) in done.into_iter().zip(tables) {
        report.ingest.tables.extend(ingest);
        report.silver.tables.extend(silver);
        // Reported as a gold stage run reports them: dimensions, then facts, then views.
        if is(table, GoldKind::Fact) {
            facts.extend(gold);
        } else {
            report.gold.tables.extend(gold);
        }
    }
    report.gold.tables.extend(facts);
    if pipeline.tables.iter().all(|t| tables.contains(t)) {
        report.gold.tables.extend(gold.views(pipeline).await);
    }
    ingested(lake, &report.ingest, started[0]).await?;
    silvered(lake, &report.silver, started[1]).await?;
    golden(lake, &report.gold, started[2]).await?;
    let paths = committed(Some(&report.silver), Some(&report.gold));
    maintain(lake, pipeline, paths, run_id, Due::Everything).await;
    clean_sources(lake, pipeline, tables).await;
    Ok(report)
}

/// The Delta tables a run committed rows to: the silver tables that loaded files, the gold
/// tables and views that changed and the silver tables those read (in the cloud, silver's
/// per-file function leaves its maintenance to gold's), and the event log. Only these can
/// have gained small or removed files.
fn committed(
    silver: Option<&SilverReport>,
    gold: Option<&GoldReport>,
) -> Vec<(String, Option<String>)> {
    let mut paths: Vec<(String, Option<String>)> = Vec::new();
    let mut add = |path: String, gold: Option<String>| {
        if !paths.iter().any(|(p, _)| *p == path) {
            paths.push((path, gold));
        }
    };
    for t in silver.iter().flat_map(|r| &r.tables) {
        if t.status == Status::Ok {
            add(layout::silver_table(&t.table), None);
        }
    }
    for t in gold.iter().flat_map(|r| &r.tables) {
        if t.status == Status::Ok {
            add(layout::gold_table(&t.table), Some(t.table.clone()));
            if let Some(source) = &t.source {
                add(layout::silver_table(source), None);
            }
        }
    }
    add(layout::EVENTS.to_string(), None);
    paths
}

/// Every Delta table of a run over `tables`: their silver and gold tables, the views when
/// every table is in the run, and the event log (what `tunelake maintain` maintains).
pub fn written_tables(pipeline: &Pipeline, tables: &[TableSpec]) -> Vec<(String, Option<String>)> {
    let mut paths: Vec<(String, Option<String>)> = Vec::new();
    for t in tables {
        paths.push((layout::silver_table(&t.silver_name()), None));
        paths.push((layout::quarantine_table(&t.silver_name()), None));
        if let Some(g) = &t.gold {
            paths.push((layout::gold_table(&g.name), Some(g.name.clone())));
        }
    }
    if pipeline.tables.iter().all(|t| tables.contains(t)) {
        for v in &pipeline.views {
            paths.push((layout::gold_table(&v.name), Some(v.name.clone())));
        }
    }
    paths.push((layout::EVENTS.to_string(), None));
    paths
}

/// Maintains the Delta tables at `paths` (each with its gold name, for a gold table), as
/// `due` allows (`[maintenance]`). A gold table is maintained under its lease, so compaction
/// never races its build; one being built is left for the next run. Maintenance moves no
/// data: a failure is logged, and the next run tries again.
pub async fn maintain(
    lake: &Lake,
    pipeline: &Pipeline,
    paths: Vec<(String, Option<String>)>,
    run_id: &str,
    due: Due,
) -> Vec<Maintained> {
    let mut done = Vec::new();
    for (path, gold) in paths {
        let lease = match &gold {
            Some(name) => {
                let now = std::time::Duration::ZERO;
                match Lease::acquire(lake, Stage::Gold, name, run_id, now).await {
                    Ok(lease) => Some(lease),
                    Err(e) => {
                        warn!(table = %path, error = %e, "Not maintained: its gold build holds it.");
                        continue;
                    }
                }
            }
            None => None,
        };
        match maintain::table(lake, &path, &pipeline.maintenance, due).await {
            Ok(m) => done.push(m),
            Err(e) => {
                warn!(table = %path, error = %e, "Maintenance failed; the next run tries again.")
            }
        }
        if let Some(lease) = lease {
            lease.release().await;
        }
    }
    done
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
