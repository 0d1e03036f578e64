//! Full refresh (Delta Live Tables' *full refresh*): start one table over from its source.
//!
//! The table's bronze files move to `bronze/_refreshed/<Table>/<run>/`, its watermark (and
//! key list for delete detection) goes, and its silver and gold tables are emptied as new
//! Delta versions (time travel keeps the old rows until vacuum), with gold's record of the
//! silver it consumed reset so that gold rebuilds from the new silver. Surrogate keys go on from where they were, never reused; facts that
//! look the table's dimension up are emptied the same way and rebuilt, since their surrogate
//! keys point at versions that no longer exist. The caller then runs the tables again.

use deltalake::kernel::Transaction;
use object_store::ObjectStoreExt;
use tracing::info;

use crate::config::{GoldKind, Pipeline, TableSpec};
use crate::error::{Error, Result, delta_err};
use crate::lake::layout::Stage;
use crate::lake::lease::Lease;
use crate::lake::{Lake, layout, watermark};

/// What a refresh of one table discards, for the operator to confirm.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Plan {
    /// The source table refreshed.
    pub table: String,
    /// Its stored watermark, if any.
    pub watermark: Option<String>,
    /// Bronze files moved aside.
    pub bronze_files: usize,
    /// Delta tables emptied, each with its current rows and (SCD2) closed versions: the
    /// history a source that no longer holds it cannot give back.
    pub emptied: Vec<Emptied>,
    /// The tables run again afterwards (the table and the facts rebuilt with it).
    pub rerun: Vec<String>,
}

/// One Delta table a refresh empties.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Emptied {
    /// `silver.<name>` or `gold.<name>`.
    pub table: String,
    /// Its rows.
    pub rows: u64,
    /// Closed SCD2 versions among `rows`.
    pub history: u64,
}

/// Works out what refreshing `table` would discard, changing nothing.
pub async fn plan(lake: &Lake, pipeline: &Pipeline, table: &TableSpec) -> Result<Plan> {
    let stored = watermark::read_all(lake)
        .await?
        .into_iter()
        .find(|(name, _)| *name == table.name)
        .and_then(|(_, w)| w.ok())
        .map(|w| w.value);
    let bronze_files = bronze_files(lake, &table.name).await?.len();
    let mut emptied = Vec::new();
    let silver_name = table.silver_name();
    if let Some(rows) = count(lake, &format!("silver.{silver_name}"), None).await {
        emptied.push(Emptied {
            table: format!("silver.{silver_name}"),
            rows,
            history: 0,
        });
    }
    for (spec, scd2) in gold_tables(pipeline, table) {
        let Some(g) = &spec.gold else { continue };
        let name = format!("gold.{}", g.name);
        let members = unknown_member(g).map(|m| format!("NOT ({m})"));
        if let Some(rows) = count(lake, &name, members.as_deref()).await {
            let history = if scd2 {
                count(lake, &name, Some("NOT is_current"))
                    .await
                    .unwrap_or(0)
            } else {
                0
            };
            emptied.push(Emptied {
                table: name,
                rows,
                history,
            });
        }
    }
    let mut rerun = vec![table.name.clone()];
    rerun.extend(
        dependent_facts(pipeline, table)
            .into_iter()
            .map(|t| t.name.clone()),
    );
    Ok(Plan {
        table: table.name.clone(),
        watermark: stored,
        bronze_files,
        emptied,
        rerun,
    })
}

/// Discards what [`plan`] listed, holding the table's ingest lease and the leases of the gold
/// tables it empties, so that no ingest or gold build of them runs meanwhile. Returns the
/// tables to run again.
///
/// The order makes a refresh that stops half-way safe to leave or to repeat: the watermark and
/// bronze go first (the next run extracts everything again; silver drops what it holds), then
/// silver, then gold (a gold emptied after its silver rebuilds from what silver then holds).
pub async fn reset(
    lake: &Lake,
    pipeline: &Pipeline,
    table: &TableSpec,
    run_id: &str,
) -> Result<Vec<TableSpec>> {
    let wait = std::time::Duration::from_secs(pipeline.settings.lease_wait_seconds);
    let mut leases = vec![Lease::acquire(lake, Stage::Ingest, &table.name, run_id, wait).await?];
    for (spec, _) in gold_tables(pipeline, table) {
        if let Some(g) = &spec.gold {
            leases.push(Lease::acquire(lake, Stage::Gold, &g.name, run_id, wait).await?);
        }
    }
    let result = reset_leased(lake, pipeline, table, run_id).await;
    for lease in leases {
        lease.release().await;
    }
    result
}

async fn reset_leased(
    lake: &Lake,
    pipeline: &Pipeline,
    table: &TableSpec,
    run_id: &str,
) -> Result<Vec<TableSpec>> {
    let archive = layout::refreshed(&table.name, run_id);
    for file in bronze_files(lake, &table.name).await? {
        let name = file.rsplit('/').next().unwrap_or(&file).to_string();
        let to = format!("{archive}/{name}");
        lake.store()
            .rename(&file.as_str().into(), &to.as_str().into())
            .await
            .map_err(|e| Error::lake(&file, e))?;
    }
    lake.delete(&layout::watermark(&table.name)).await?;
    // Silver lists the new extract in full.
    crate::lake::discovery::forget(lake, &table.name).await?;
    // A snapshot table is taken again even if its content did not change.
    lake.delete(&layout::snapshot_state(&table.name)).await?;
    // Deletes are detected afresh from the new extract on.
    lake.delete(&layout::keys(&table.name)).await?;
    empty(
        lake,
        &layout::silver_table(&table.silver_name()),
        None,
        Vec::new(),
    )
    .await?;
    for (spec, _) in gold_tables(pipeline, table) {
        if let Some(g) = &spec.gold {
            empty(
                lake,
                &layout::gold_table(&g.name),
                unknown_member(g),
                vec![Transaction::new(
                    layout::app_id::gold_consumed(&spec.silver_name()),
                    -1,
                )],
            )
            .await?;
        }
    }
    info!(table = %table.name, archive, "Refreshed: the table starts over from its source.");
    let mut rerun = vec![table.clone()];
    rerun.extend(dependent_facts(pipeline, table).into_iter().cloned());
    Ok(rerun)
}

/// Removes every row of a Delta table (but those matching `keep`) in one new version that
/// records `txns`; a table never written is left alone.
async fn empty(
    lake: &Lake,
    path: &str,
    keep: Option<String>,
    txns: Vec<Transaction>,
) -> Result<()> {
    let table = lake.delta_table(path).await?;
    if table.version().is_none() {
        return Ok(());
    }
    let delete = table.delete();
    let delete = match keep {
        Some(keep) => delete.with_predicate(format!("NOT ({keep})")),
        None => delete,
    };
    delete
        .with_commit_properties(
            deltalake::kernel::transaction::CommitProperties::default()
                .with_application_transactions(txns),
        )
        .await
        .map_err(delta_err(path))?;
    Ok(())
}

/// The condition that picks a dimension's unknown member, which a refresh keeps: only a first
/// build writes it.
fn unknown_member(g: &crate::config::GoldSpec) -> Option<String> {
    (g.kind == GoldKind::Dimension)
        .then(|| format!("{} = -1", crate::config::ident::quote_ansi(&g.sk())))
}

/// The gold tables a refresh of `table` empties (its own, and the facts that look its
/// dimension up), each with whether it keeps SCD2 history.
fn gold_tables<'a>(pipeline: &'a Pipeline, table: &'a TableSpec) -> Vec<(&'a TableSpec, bool)> {
    let scd2 = |t: &TableSpec| {
        t.gold
            .as_ref()
            .is_some_and(|g| g.kind == GoldKind::Dimension && g.scd_type == 2)
    };
    std::iter::once(table)
        .filter(|t| t.gold.is_some())
        .chain(dependent_facts(pipeline, table))
        .map(|t| (t, scd2(t)))
        .collect()
}

/// The facts whose lookups name `table`'s gold dimension.
fn dependent_facts<'a>(pipeline: &'a Pipeline, table: &TableSpec) -> Vec<&'a TableSpec> {
    let Some(dim) = table
        .gold
        .as_ref()
        .filter(|g| g.kind == GoldKind::Dimension)
    else {
        return Vec::new();
    };
    pipeline
        .tables
        .iter()
        .filter(|t| {
            t.gold.as_ref().is_some_and(|g| {
                g.kind == GoldKind::Fact && g.lookups.iter().any(|l| l.dimension == dim.name)
            })
        })
        .collect()
}

/// The table's bronze data files (not the quarantine, watermarks or archives beside them).
async fn bronze_files(lake: &Lake, table: &str) -> Result<Vec<String>> {
    let dir = layout::bronze_dir(table);
    Ok(lake
        .list(&dir)
        .await?
        .into_iter()
        .map(|m| m.location.to_string())
        .filter(|p| {
            p.strip_prefix(&format!("{dir}/"))
                .is_some_and(|name| !name.contains('/') && name.ends_with(".parquet"))
        })
        .collect())
}

/// Rows of a table by its query name, optionally those matching `filter`; `None` when it
/// does not exist.
async fn count(lake: &Lake, table: &str, filter: Option<&str>) -> Option<u64> {
    let sql = match filter {
        Some(f) => format!("SELECT count(*) FROM {table} WHERE {f}"),
        None => format!("SELECT count(*) FROM {table}"),
    };
    let batches = crate::query::run(lake, &sql).await.ok()?;
    let column = batches.first()?.column(0).clone();
    crate::lake::int_column(&column).map(|c| c.value(0) as u64)
}
