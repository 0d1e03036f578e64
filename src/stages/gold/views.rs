//! Business views: the template rendered with its parameters, run read-only over the lake's
//! tables (`gold.*`, `silver.*`), and materialized as a gold Delta table, replaced whole.
//!
//! A view records the version of every gold table it was built from (`txn` app ids
//! `tunelake.view.input:<table>`) in its own commit, and is rebuilt whenever the data of one
//! of them has changed since (a compaction changes none), so a run that died between a table
//! and its views leaves nothing stale behind.

use datafusion::execution::context::SQLOptions;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use tracing::info;

use deltalake::kernel::Transaction;

use super::{commit_properties, delta_err, df_err, recorded};
use crate::config::{Pipeline, ViewSpec};
use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::lake::layout;

/// Rebuilds a view when a gold table moved since it was built (or it was never built);
/// returns its rows and new version, or `None` when it was up to date.
pub(super) async fn refresh(
    lake: &Lake,
    pipeline: &Pipeline,
    view: &ViewSpec,
) -> Result<Option<(u64, Option<u64>)>> {
    let target = lake.delta_table(&layout::gold_table(&view.name)).await?;
    let mut inputs = Vec::new();
    let mut stale = target.version().is_none();
    for name in pipeline
        .tables
        .iter()
        .filter_map(|t| t.gold.as_ref().map(|g| g.name.as_str()))
    {
        let table = lake.delta_table(&layout::gold_table(name)).await?;
        let Some(version) = table.version() else {
            // A view waits until every gold table has been built once.
            info!(view = %view.name, missing = name, "Not built yet: a gold table is missing.");
            return Ok(None);
        };
        let app_id = layout::app_id::view_input(name);
        if !stale {
            stale = match recorded(&target, &app_id, &view.name).await? {
                // A table that only compaction or vacuum moved holds the same rows.
                Some(built) if built >= 0 && (built as u64) < version => {
                    super::data_changed(&table, built as u64, version).await
                }
                Some(built) => built != version as i64,
                None => true,
            };
        }
        inputs.push(Transaction::new(&app_id, version as i64));
    }
    if !stale {
        return Ok(None);
    }
    materialize(lake, pipeline, view, inputs).await.map(Some)
}

/// Renders, runs and writes one view; returns its rows and the new table version.
async fn materialize(
    lake: &Lake,
    pipeline: &Pipeline,
    view: &ViewSpec,
    inputs: Vec<Transaction>,
) -> Result<(u64, Option<u64>)> {
    let name = view.name.as_str();
    let sql = pipeline
        .templates
        .render(&view.template, &view.params)
        .map_err(|message| Error::BadArgument {
            what: format!("view {name}"),
            message,
        })?;
    let ctx = crate::query::session(lake).await?;
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx
        .sql_with_options(&sql, options)
        .await
        .map_err(df_err(name, "planning the view"))?;
    // The rows stream from the query into the table's files: a view can be as large as the
    // fact it reads.
    let df = crate::lake::storable_df(df, None).map_err(df_err(name, "planning the view"))?;
    let table = lake.delta_table(&layout::gold_table(name)).await?;
    let properties = crate::lake::parquet_properties(df.schema().as_arrow()).build();
    let written = table
        .write(Vec::new())
        .with_writer_properties(properties)
        .with_input_plan(df.into_unoptimized_plan())
        .with_session_state(std::sync::Arc::new(ctx.state()))
        .with_save_mode(SaveMode::Overwrite)
        .with_schema_mode(SchemaMode::Overwrite)
        .with_commit_properties(commit_properties(inputs))
        .await
        .map_err(delta_err(layout::gold_table(name)))?;
    let version = written.version();
    let rows = written_rows(&written, name)?;
    info!(view = name, rows, version, "Materialized the view.");
    Ok((rows, version))
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
