//! Business views: the template rendered with its parameters, run read-only over the lake's
//! tables (`gold.*`, `silver.*`), and materialized as a gold Delta table.
//!
//! A view records, in its own commit, the version of every table it read (`txn` app ids
//! `tunelake.view.input:<area.table>`) and a hash of its definition. It is refreshed whenever
//! the data of one of them has changed since (a compaction changes none), so a run that died
//! between a table and its views leaves nothing stale behind. A view that declares an
//! `incremental_strategy` computes again and replaces only the rows the changes reach
//! ([`incremental`]), joining only the lookups again for rows that only they reach
//! ([`relook`]); any other view, and any change that cannot be followed to the view's
//! key (an edited definition, a log cleaned past the last build), rebuilds it whole.

mod incremental;
mod keys;
mod lineage;
mod relook;

use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use deltalake::kernel::Transaction;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use tracing::{debug, info, warn};

use super::{commit_properties, delta_err, df_err, record_only, recorded};
use crate::config::{GoldKind, Pipeline, ViewSpec};
use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::lake::layout;
use incremental::{Input, Reached};
use keys::Keys;

/// What one refresh wrote.
pub(super) struct Refreshed {
    /// Rows written: the whole view, or the rows replaced.
    pub rows: u64,
    pub version: Option<u64>,
    /// Whether only the reached rows were replaced.
    pub incremental: bool,
}

/// Refreshes a view when a table it reads moved since it was built (or it was never built,
/// or its definition changed); `None` when it was up to date.
pub(super) async fn refresh(
    lake: &Lake,
    pipeline: &Pipeline,
    view: &ViewSpec,
) -> Result<Option<Refreshed>> {
    let name = view.name.as_str();
    let start = std::time::Instant::now();
    let sql = render(pipeline, view)?;
    let target = lake.delta_table(&layout::gold_table(name)).await?;
    let Some(inputs) = open_inputs(lake, pipeline, &target, view, &sql).await? else {
        return Ok(None);
    };
    let definition = definition_hash(view, &sql);
    let same_definition =
        recorded(&target, layout::app_id::VIEW_DEFINITION, name).await? == Some(definition);
    if target.version().is_some() && same_definition && !inputs.iter().any(|i| i.changed) {
        return Ok(None);
    }
    let tables: Vec<(String, String, deltalake::DeltaTable)> = (inputs.iter())
        .map(|i| (i.area.clone(), i.table_name.clone(), i.table.clone()))
        .collect();
    // The query reads the inputs exactly as loaded, so the versions recorded are the ones read.
    let memory = pipeline.settings.view_memory_mb as usize * 1024 * 1024;
    let config = crate::query::view_config();
    let ctx = crate::query::session_over(&tables, config, Some(memory)).await?;
    let df = plan(&ctx, name, &sql).await?;
    let optimized = df
        .clone()
        .into_optimized_plan()
        .map_err(df_err(name, "planning the view"))?;
    let lineage = lineage::of(&optimized);
    debug!(
        view = name,
        seconds = start.elapsed().as_secs_f64(),
        "Planned the view and opened its inputs."
    );
    let mut txns: Vec<Transaction> = inputs
        .iter()
        .map(|i| Transaction::new(layout::app_id::view_input(&i.name), i.version as i64))
        .collect();
    txns.push(Transaction::new(
        layout::app_id::VIEW_DEFINITION,
        definition,
    ));
    if let (Some(key), Some(_), true) = (view.refresh_key(), target.version(), same_definition) {
        let reached = incremental::reached(lake, (name, &target), key, &lineage, &inputs).await;
        debug!(
            view = name,
            seconds = start.elapsed().as_secs_f64(),
            "Followed the changes to the view's keys."
        );
        match reached {
            Ok(Some(reached)) => {
                match replace(
                    lake,
                    &ctx,
                    target.clone(),
                    view,
                    key,
                    &sql,
                    (&reached, &optimized, &lineage),
                    &txns,
                    pipeline.settings.chunk_rows as usize,
                )
                .await
                {
                    Ok(Some(refreshed)) => return Ok(Some(refreshed)),
                    Ok(None) => {}
                    Err(e) => {
                        warn!(view = name, error = %e, "The incremental refresh failed; rebuilding the view.")
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                warn!(view = name, error = %e, "The changes could not be followed to the view's rows; rebuilding it.")
            }
        }
    }
    materialize(lake, &ctx, name, df, txns).await.map(Some)
}

/// The rendered query of a view.
fn render(pipeline: &Pipeline, view: &ViewSpec) -> Result<String> {
    pipeline
        .templates
        .render(&view.template, &view.params)
        .map_err(|message| Error::BadArgument {
            what: format!("view {}", view.name),
            message,
        })
}

/// Plans a read-only query in the lake's session.
async fn plan(ctx: &SessionContext, name: &str, sql: &str) -> Result<DataFrame> {
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    ctx.sql_with_options(sql, options)
        .await
        .map_err(df_err(name, "planning the view"))
}

/// The lake tables a view's query names, with the versions the view was built from; `None`
/// while a gold table it reads has not been built (the view waits for it). Facts are loaded
/// first: a fact holds only surrogate keys its dimensions had handed out when it was written,
/// so every key a loaded fact holds is in the dimensions loaded after it (which the
/// incremental refresh relies on).
async fn open_inputs(
    lake: &Lake,
    pipeline: &Pipeline,
    target: &deltalake::DeltaTable,
    view: &ViewSpec,
    sql: &str,
) -> Result<Option<Vec<Input>>> {
    let Some(named) = crate::query::named_tables(sql) else {
        return Err(Error::BadArgument {
            what: format!("view {}", view.name),
            message: "its query must name every table with its area (gold.<table>, silver.<table>)"
                .to_string(),
        });
    };
    let gold_of = |area: &str, table: &str| {
        (area == "gold")
            .then(|| pipeline.tables.iter().filter_map(|t| t.gold.as_ref()))
            .into_iter()
            .flatten()
            .find(|g| g.name == table)
    };
    let mut named: Vec<(String, String)> = named.into_iter().collect();
    named.sort_by_key(|(area, table)| {
        !gold_of(area, table).is_some_and(|g| g.kind == GoldKind::Fact)
    });
    let mut inputs = Vec::new();
    for (area, table_name) in named {
        let path = match area.as_str() {
            "gold" => layout::gold_table(&table_name),
            "silver" => layout::silver_table(&table_name),
            _ => format!("_{area}/{table_name}"),
        };
        let table = lake.delta_table(&path).await?;
        let Some(version) = table.version() else {
            if area == "gold" {
                info!(view = %view.name, missing = %table_name, "Not built yet: a gold table it reads is missing.");
                return Ok(None);
            }
            continue;
        };
        let name = format!("{area}.{table_name}");
        let built = recorded(target, &layout::app_id::view_input(&name), &view.name)
            .await?
            .and_then(|b| u64::try_from(b).ok())
            .filter(|b| *b <= version);
        let changed = match built {
            Some(b) if b == version => false,
            // A table that only compaction or vacuum moved holds the same rows.
            Some(b) => super::data_changed(&table, b, version).await,
            None => true,
        };
        let gold = gold_of(&area, &table_name);
        inputs.push(Input {
            name,
            path,
            area,
            table_name,
            table,
            version,
            built,
            changed,
            is_fact: gold.is_some_and(|g| g.kind == GoldKind::Fact),
            surrogate_key: gold
                .filter(|g| g.kind == GoldKind::Dimension)
                .map(|g| g.sk()),
        });
    }
    Ok(Some(inputs))
}

/// A hash of what the view computes (FNV-1a over the query and how it refreshes), stable
/// across builds of tunelake, as a non-negative `txn` version.
fn definition_hash(view: &ViewSpec, sql: &str) -> i64 {
    let strategy = view.incremental_strategy.map_or("", |s| s.name());
    let key = view.refresh_key().unwrap_or("");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in [sql, "\0", strategy, "\0", key].concat().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash & i64::MAX as u64) as i64
}

/// Replaces the view's rows whose key `keys` holds with the query's rows for them, in one
/// commit; `None` when the keys cannot be written as a predicate.
#[allow(clippy::too_many_arguments)]
async fn replace(
    lake: &Lake,
    ctx: &SessionContext,
    target: deltalake::DeltaTable,
    view: &ViewSpec,
    key: &str,
    sql: &str,
    (reached, optimized, lineage): (&Reached, &LogicalPlan, &lineage::Lineage),
    txns: &[Transaction],
    chunk_rows: usize,
) -> Result<Option<Refreshed>> {
    let name = view.name.as_str();
    let keys = &reached.keys;
    if keys.is_empty() {
        info!(view = name, "No row of the view is reached by the changes.");
        let written = record_only(target, name, txns.to_vec()).await?;
        return Ok(Some(Refreshed {
            rows: 0,
            version: written.version(),
            incremental: true,
        }));
    }
    // Keys in groups of about chunk_rows, one commit each (the last records the inputs): a
    // refresh after a large batch holds one group's rows at a time in its joins.
    let groups = keys::groups(keys, chunk_rows);
    let occupied = keys::occupied(&target, key);
    let mut predicates = Vec::with_capacity(groups.len());
    for group in &groups {
        match keys::predicate(key, group, &occupied) {
            Some(predicate) => predicates.push(predicate),
            None => return Ok(None),
        }
    }
    let (mut rows, mut version) = (0, target.version());
    let last = predicates.len().saturating_sub(1);
    let single = predicates.len() == 1;
    for (i, predicate) in predicates.into_iter().enumerate() {
        // Each key's rows come from one side of the union only if neither side's predicate
        // names keys it was not given.
        let relooked = match single && !reached.relooked.is_empty() && keys.named_exactly() {
            true => match relook::Rebase::of(optimized, lineage, key) {
                Some(rebase) => {
                    let at = (&target, key, occupied.as_slice());
                    with_relooked(ctx, at, sql, (&reached.relooked, &rebase), keys, name).await
                }
                None => None,
            },
            false => None,
        };
        let df = match relooked {
            Some(df) => df,
            None => plan(ctx, name, &query_of(sql, &predicate)).await?,
        };
        let group_txns = if i == last { txns.to_vec() } else { Vec::new() };
        let written = write(lake, ctx, name, df, Some(predicate), group_txns).await?;
        rows += added_rows(&written).await;
        version = written.version();
    }
    info!(
        view = name,
        keys = keys.len(),
        rows,
        ?version,
        "Refreshed the view's reached rows."
    );
    Ok(Some(Refreshed {
        rows,
        version,
        incremental: true,
    }))
}

/// The view's query over the rows `predicate` selects.
fn query_of(sql: &str, predicate: &str) -> String {
    format!(
        "SELECT * FROM (\n{}\n) AS __view WHERE {predicate}",
        sql.trim_end().trim_end_matches(';')
    )
}

/// The view's rows for `keys`: those of the `relooked` keys by joining the lookups again over
/// the stored rows (see `relook`), the others computed again; `None` (with the reason logged)
/// when the stored rows cannot stand for the base, and all are computed again.
async fn with_relooked(
    ctx: &SessionContext,
    (target, key, occupied): (&deltalake::DeltaTable, &str, &[(i64, i64)]),
    sql: &str,
    (relooked, rebase): (&Keys, &relook::Rebase),
    keys: &Keys,
    name: &str,
) -> Option<DataFrame> {
    let attempt = async {
        let Some(predicate) = keys::predicate(key, relooked, occupied) else {
            return Ok(None);
        };
        super::register(ctx, "__stored", target, None).await?;
        let Some(rows) = rebase.relooked(ctx, "__stored", &predicate, name).await? else {
            return Ok(None);
        };
        let fail = df_err(name, "joining the lookups again");
        let _ = ctx.deregister_table("__relooked");
        ctx.register_table("__relooked", rows.into_view())
            .map_err(&fail)?;
        let rest = keys.without(relooked);
        let query = match keys::predicate(key, &rest, occupied) {
            _ if rest.is_empty() => "SELECT * FROM __relooked".to_string(),
            Some(others) => format!(
                "{} UNION ALL SELECT * FROM __relooked",
                query_of(sql, &others)
            ),
            None => return Ok(None),
        };
        plan(ctx, name, &query).await.map(Some)
    };
    match attempt.await {
        Ok(Some(df)) => {
            debug!(
                view = name,
                relooked = relooked.len(),
                "Joining the lookups again over the stored rows of keys only they reach."
            );
            Some(df)
        }
        Ok(None) => None,
        Err(e) => {
            warn!(view = name, error = %e, "Could not join the lookups again over the stored rows; computing those keys again.");
            None
        }
    }
}

/// Writes the whole view; returns its rows and new version.
async fn materialize(
    lake: &Lake,
    ctx: &SessionContext,
    name: &str,
    df: DataFrame,
    txns: Vec<Transaction>,
) -> Result<Refreshed> {
    let written = write(lake, ctx, name, df, None, txns).await?;
    let version = written.version();
    let rows = written_rows(&written, name)?;
    info!(view = name, rows, version, "Materialized the view.");
    Ok(Refreshed {
        rows,
        version,
        incremental: false,
    })
}

/// Streams a query's rows into the view's table: over all of it, or over the rows that
/// `replace_where` selects.
async fn write(
    lake: &Lake,
    ctx: &SessionContext,
    name: &str,
    df: DataFrame,
    replace_where: Option<String>,
    txns: Vec<Transaction>,
) -> Result<deltalake::DeltaTable> {
    // The rows stream from the query into the table's files: a view can be as large as the
    // fact it reads.
    let df = crate::lake::storable_df(df, None).map_err(df_err(name, "planning the view"))?;
    let table = lake.delta_table(&layout::gold_table(name)).await?;
    let properties = crate::lake::parquet_properties(df.schema().as_arrow()).build();
    let mut builder = table
        .write(Vec::new())
        .with_writer_properties(properties)
        .with_input_plan(df.into_unoptimized_plan())
        .with_session_state(std::sync::Arc::new(ctx.state()))
        .with_save_mode(SaveMode::Overwrite)
        // A checkpoint every ten commits, as every lake table: a view commits on most runs.
        .with_configuration(crate::lake::CREATED_WITH)
        .with_commit_properties(commit_properties(txns));
    builder = match replace_where {
        Some(predicate) => builder.with_replace_where(predicate),
        None => builder.with_schema_mode(SchemaMode::Overwrite),
    };
    builder.await.map_err(delta_err(layout::gold_table(name)))
}

/// The rows the table's last commit added, from its operation metrics.
async fn added_rows(table: &deltalake::DeltaTable) -> u64 {
    use futures::StreamExt;
    let Some(Ok(commit)) = table.history(Some(1)).next().await else {
        return 0;
    };
    commit
        .info
        .get("operationMetrics")
        .cloned()
        .and_then(|m| m.get("num_added_rows").and_then(|n| n.as_u64()))
        .unwrap_or(0)
}

/// The rows of a table's current files, from the row counts its log keeps per file.
fn written_rows(table: &deltalake::DeltaTable, name: &str) -> Result<u64> {
    let snapshot = table
        .snapshot()
        .map_err(delta_err(layout::gold_table(name)))?;
    let mut rows = 0;
    for file in snapshot.log_data() {
        rows += file.num_records().unwrap_or(0) as u64;
    }
    Ok(rows)
}
