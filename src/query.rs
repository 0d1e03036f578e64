//! Read-only SQL over the lake: every Delta table under `silver/`, `gold/` and `_system/` is
//! registered by name (`silver.users`, `gold.dim_user`, `system.events`) for DataFusion.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::ObjectStore;
use object_store::path::Path;

use crate::error::{Error, Result};
use crate::lake::Lake;

/// The lake folders whose Delta tables are queryable, and the schema each is registered as.
const AREAS: [(&str, &str); 3] = [
    ("silver", "silver"),
    ("gold", "gold"),
    ("_system", "system"),
];

/// How query results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// CSV with a header row.
    Csv,
    /// One JSON object per row, in an array.
    Json,
}

fn df_error(sql: &str) -> impl Fn(datafusion::error::DataFusionError) -> Error + '_ {
    move |e| Error::BadArgument {
        what: format!("query {sql:?}"),
        message: e.to_string(),
    }
}

/// A session with every Delta table of the lake registered.
pub async fn session(lake: &Lake) -> Result<SessionContext> {
    let config = SessionConfig::new()
        .set_bool("datafusion.sql_parser.enable_ident_normalization", false)
        .with_information_schema(true);
    let ctx = crate::lake::delta_session(config);
    let Some(catalog) = ctx.catalog("datafusion") else {
        return Err(Error::Task("DataFusion has no default catalog".to_string()));
    };
    let store = lake.store();
    for (folder, schema) in AREAS {
        let provider = Arc::new(MemorySchemaProvider::new());
        catalog
            .register_schema(schema, provider.clone())
            .map_err(df_error(schema))?;
        let listing = store
            .list_with_delimiter(Some(&Path::from(folder)))
            .await
            .map_err(|e| Error::lake(folder, e))?;
        for dir in listing.common_prefixes {
            let Some(name) = dir.filename().map(str::to_string) else {
                continue;
            };
            let path = format!("{folder}/{name}");
            let table = lake.delta_table(&path).await?;
            if table.version().is_none() {
                continue;
            }
            let provider_table = crate::lake::delta_provider(&table, &ctx, &path).await?;
            datafusion::catalog::SchemaProvider::register_table(
                provider.as_ref(),
                name,
                provider_table,
            )
            .map_err(df_error(&path))?;
        }
    }
    Ok(ctx)
}

/// Runs one read-only query. Anything but a query (DDL, DML, SET, ...) is refused.
pub async fn run(lake: &Lake, sql: &str) -> Result<Vec<RecordBatch>> {
    run_limited(lake, sql, None).await
}

/// [`run`], returning at most `limit` rows (the plan stops reading past them).
pub async fn run_limited(lake: &Lake, sql: &str, limit: Option<usize>) -> Result<Vec<RecordBatch>> {
    let ctx = session(lake).await?;
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx
        .sql_with_options(sql, options)
        .await
        .map_err(|e| Error::BadArgument {
            what: format!("query {sql:?}"),
            message: format!(
                "{e} (tunelake sql runs read-only queries over silver.*, gold.* and system.*)"
            ),
        })?;
    let df = match limit {
        Some(n) => df.limit(0, Some(n)).map_err(df_error(sql))?,
        None => df,
    };
    df.collect().await.map_err(df_error(sql))
}

/// Renders query results as a text table, CSV with a header, or a JSON array of objects.
pub fn render(batches: &[RecordBatch], format: Format) -> Result<String> {
    let bad = |e| Error::arrow("printing the query result", e);
    Ok(match format {
        Format::Table => arrow::util::pretty::pretty_format_batches(batches)
            .map_err(bad)?
            .to_string(),
        Format::Csv => {
            let mut out = Vec::new();
            {
                let mut writer = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out);
                for b in batches {
                    writer.write(b).map_err(bad)?;
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        }
        Format::Json => {
            let mut writer = arrow::json::ArrayWriter::new(Vec::new());
            for b in batches {
                writer.write(b).map_err(bad)?;
            }
            writer.finish().map_err(bad)?;
            let out = writer.into_inner();
            if out.is_empty() {
                "[]".to_string()
            } else {
                String::from_utf8_lossy(&out).into_owned()
            }
        }
    })
}
