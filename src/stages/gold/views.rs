//! Business views: the template rendered with its parameters, run read-only over the lake's
//! tables (`gold.*`, `silver.*`), and materialized as a gold Delta table, replaced whole.

use datafusion::execution::context::SQLOptions;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use tracing::info;

use super::{delta_err, df_err, storable, table_path};
use crate::config::{Pipeline, ViewSpec};
use crate::error::{Error, Result};
use crate::lake::Lake;

/// Renders, runs and writes one view; returns its rows and the new table version.
pub(super) async fn materialize(
    lake: &Lake,
    pipeline: &Pipeline,
    view: &ViewSpec,
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
    let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
    let batches = df
        .collect()
        .await
        .map_err(df_err(name, "running the view"))?;
    let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
    let (schema, mut batches) = storable(batches, schema)?;
    if batches.is_empty() {
        batches.push(arrow::array::RecordBatch::new_empty(schema));
    }
    let table = lake.delta_table(&table_path(name)).await?;
    let written = table
        .write(batches)
        .with_save_mode(SaveMode::Overwrite)
        .with_schema_mode(SchemaMode::Overwrite)
        .await
        .map_err(delta_err(name))?;
    let version = written.version();
    info!(view = name, rows, version, "Materialized the view.");
    Ok((rows, version))
}
