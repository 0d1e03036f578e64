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
    session_with(lake, None, None).await
}

/// A session with every Delta table of the lake registered, its operators within `memory`
/// bytes (the SQL endpoint's session).
pub async fn session_within(lake: &Lake, memory: Option<usize>) -> Result<SessionContext> {
    session_with(lake, None, memory).await
}

/// Registers every Delta table of the lake in `ctx` again, at its latest version (a table
/// created since is added).
pub async fn refresh(lake: &Lake, ctx: &SessionContext) -> Result<()> {
    let fresh = session_with(lake, None, None).await?;
    let (Some(into), Some(from)) = (ctx.catalog("datafusion"), fresh.catalog("datafusion")) else {
        return Err(Error::Task("DataFusion has no default catalog".to_string()));
    };
    for (_, schema) in AREAS {
        let (Some(into), Some(from)) = (into.schema(schema), from.schema(schema)) else {
            continue;
        };
        for name in from.table_names() {
            let Ok(Some(table)) = from.table(&name).await else {
                continue;
            };
            into.deregister_table(&name).map_err(df_error(schema))?;
            into.register_table(name, table).map_err(df_error(schema))?;
        }
    }
    Ok(())
}

/// A session with the Delta tables that `sql` names registered (every table when the query
/// cannot be read, or asks the information schema): opening a table reads its log, so a
/// query pays for the tables it reads, not for the whole lake.
pub async fn session_for(lake: &Lake, sql: &str) -> Result<SessionContext> {
    let named = named_tables(sql);
    session_with(lake, named.as_ref(), None).await
}

/// The `(schema, table)` pairs a query names, or `None` when it names one without a schema,
/// reads the information schema, or does not parse.
pub(crate) fn named_tables(sql: &str) -> Option<std::collections::BTreeSet<(String, String)>> {
    let mut statements = datafusion::sql::parser::DFParser::parse_sql(sql).ok()?;
    let (Some(statement), true) = (statements.pop_front(), statements.is_empty()) else {
        return None;
    };
    // Names as written: the sessions turn identifier normalization off.
    let (references, _) =
        datafusion::sql::resolve::resolve_table_references(&statement, false).ok()?;
    let mut named = std::collections::BTreeSet::new();
    for reference in references {
        let (schema, table) = (reference.schema()?, reference.table());
        if schema == "information_schema" {
            return None;
        }
        // A name is a folder of the lake, never a path out of it.
        if table.contains(['/', '\\']) || table.starts_with('.') {
            continue;
        }
        named.insert((schema.to_string(), table.to_string()));
    }
    Some(named)
}

fn config() -> SessionConfig {
    SessionConfig::new()
        .set_bool("datafusion.sql_parser.enable_ident_normalization", false)
        .with_information_schema(true)
}

/// A view's session: one partition. Under its memory bound a `RepartitionExec` spills, and in
/// DataFusion 55 its spill pool can deadlock when two inputs spill at once
/// (apache/datafusion#24883, fixed after 55.2): a view's build has no timeout to end it, where
/// the query endpoints' sessions do (`query_timeout_seconds`).
pub(crate) fn view_config() -> SessionConfig {
    config().with_target_partitions(1)
}

async fn session_with(
    lake: &Lake,
    only: Option<&std::collections::BTreeSet<(String, String)>>,
    memory: Option<usize>,
) -> Result<SessionContext> {
    let store = lake.store();
    let mut tables = Vec::new();
    for (folder, schema) in AREAS {
        let names: Vec<String> = match only {
            Some(only) => (only.iter())
                .filter(|(s, _)| s == schema)
                .map(|(_, t)| t.clone())
                .collect(),
            None => store
                .list_with_delimiter(Some(&Path::from(folder)))
                .await
                .map_err(|e| Error::lake(folder, e))?
                .common_prefixes
                .iter()
                .filter_map(|dir| dir.filename().map(str::to_string))
                .collect(),
        };
        for name in names {
            let table = lake.delta_table(&format!("{folder}/{name}")).await?;
            tables.push((schema.to_string(), name, table));
        }
    }
    session_over(&tables, config(), memory).await
}

/// A session with exactly these tables registered, as `schema.name`, at the versions they
/// were loaded at (a table not created yet is left out), its operators within `memory` bytes;
/// `config` is [`view_config`] or the endpoints' own.
pub(crate) async fn session_over(
    tables: &[(String, String, deltalake::DeltaTable)],
    config: SessionConfig,
    memory: Option<usize>,
) -> Result<SessionContext> {
    let ctx = crate::lake::delta_session_within(config, memory);
    let Some(catalog) = ctx.catalog("datafusion") else {
        return Err(Error::Task("DataFusion has no default catalog".to_string()));
    };
    for (folder, schema) in AREAS {
        let provider = Arc::new(MemorySchemaProvider::new());
        catalog
            .register_schema(schema, provider.clone())
            .map_err(df_error(schema))?;
        for (_, name, table) in tables.iter().filter(|(s, _, _)| s == schema) {
            if table.version().is_none() {
                continue;
            }
            let path = format!("{folder}/{name}");
            let provider_table = crate::lake::delta_provider(table, &ctx, &path).await?;
            datafusion::catalog::SchemaProvider::register_table(
                provider.as_ref(),
                name.clone(),
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
    run_within(lake, sql, limit, Bounds::default()).await
}

/// What one query may use.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bounds {
    /// Bytes its operators may hold (sorts and aggregations spill past it).
    pub memory: Option<usize>,
    /// How long it may run, opening the tables included.
    pub time: Option<std::time::Duration>,
}

/// [`run_limited`] within `bounds`: a query past its time is stopped, one past its memory
/// fails; both are a [`Error::BadArgument`] that says which bound and how to change it.
pub async fn run_within(
    lake: &Lake,
    sql: &str,
    limit: Option<usize>,
    bounds: Bounds,
) -> Result<Vec<RecordBatch>> {
    run_rows(lake, sql, 0, limit, bounds).await
}

/// [`run_within`] from row `offset` on, at most `limit` rows (one page of the answer).
pub async fn run_page(
    lake: &Lake,
    sql: &str,
    offset: usize,
    limit: usize,
    bounds: Bounds,
) -> Result<Vec<RecordBatch>> {
    run_rows(lake, sql, offset, Some(limit), bounds).await
}

async fn run_rows(
    lake: &Lake,
    sql: &str,
    offset: usize,
    limit: Option<usize>,
    bounds: Bounds,
) -> Result<Vec<RecordBatch>> {
    let query = async {
        let named = named_tables(sql);
        let ctx = session_with(lake, named.as_ref(), bounds.memory).await?;
        execute(&ctx, sql, offset, limit).await
    };
    let result = match bounds.time {
        // Dropping the query's future cancels its streams.
        Some(time) => tokio::time::timeout(time, query)
            .await
            .map_err(|_| Error::BadArgument {
                what: format!("query {sql:?}"),
                message: format!(
                    "stopped after {} s (settings.query_timeout_seconds)",
                    time.as_secs()
                ),
            })?,
        None => query.await,
    };
    match (result, bounds.memory) {
        (Err(Error::BadArgument { what, message }), Some(bytes))
            if message.contains("Resources exhausted") =>
        {
            Err(Error::BadArgument {
                what,
                message: format!(
                    "needs more than {} MB of memory (settings.query_memory_mb): {message}",
                    bytes / 1_048_576
                ),
            })
        }
        (result, _) => result,
    }
}

async fn execute(
    ctx: &SessionContext,
    sql: &str,
    offset: usize,
    limit: Option<usize>,
) -> Result<Vec<RecordBatch>> {
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
    let df = match (offset, limit) {
        (0, None) => df,
        (skip, fetch) => df.limit(skip, fetch).map_err(df_error(sql))?,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_names_the_tables_it_reads() {
        let named = named_tables(
            "WITH x AS (SELECT * FROM gold.fact_stream) SELECT * FROM x \
             JOIN silver.users AS u ON true WHERE u.user_id IN (SELECT user_id FROM gold.dim_user)",
        )
        .unwrap();
        let names: Vec<String> = named.iter().map(|(s, t)| format!("{s}.{t}")).collect();
        assert_eq!(names, ["gold.dim_user", "gold.fact_stream", "silver.users"]);
        assert_eq!(
            named_tables("SELECT * FROM information_schema.tables"),
            None
        );
        assert_eq!(named_tables("SELECT * FROM users"), None);
        assert_eq!(named_tables("SELEC nonsense"), None);
        assert!(
            named_tables("SELECT * FROM gold.\"../x\"")
                .unwrap()
                .is_empty()
        );
    }
}
