//! `tunelake config --check`: the pipeline file against its sources, moving no data. Every
//! problem is reported at once, as the loader reports the file's own: a source that cannot be
//! opened, a table it lacks, a watermark or key column the table lacks, a silver expression
//! that does not fit the table's columns, and a gold column, sequence or lookup column that
//! silver would not have.

use crate::config::ingest::CdcMode;
use crate::config::{GoldKind, Pipeline, TableSpec};
use crate::error::ConfigProblem;
use crate::lake::layout::silver_columns::SNAPSHOT_AT;
use crate::source::Source;

/// Every problem of `pipeline` against its sources (`default_url` for tables without one).
pub async fn check(pipeline: &Pipeline, default_url: &str) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    let mut problem = |location: String, message: String| {
        problems.push(ConfigProblem { location, message });
    };
    let sources = crate::source::open_for(pipeline, default_url, &pipeline.tables).await;
    for (name, source) in &sources {
        if let Err(e) = source {
            let at = match name {
                Some(n) => format!("sources.{n}"),
                None => "--source".to_string(),
            };
            problem(at, e.to_string());
        }
    }
    let mut silver_columns: Vec<(&TableSpec, Vec<String>)> = Vec::new();
    for (i, table) in pipeline.tables.iter().enumerate() {
        let at = format!("tables[{i}] ({})", table.name);
        let Some((_, Ok(source))) = sources.iter().find(|(n, _)| *n == table.source) else {
            continue;
        };
        match columns_of(source.as_ref(), table, &at, &mut problem).await {
            Some(columns) => silver_columns.push((table, columns)),
            None => continue,
        }
    }
    for (table, columns) in &silver_columns {
        let i = pipeline
            .tables
            .iter()
            .position(|t| t == *table)
            .unwrap_or(0);
        let at = format!("tables[{i}] ({}).gold", table.name);
        let Some(gold) = &table.gold else { continue };
        let has = |c: &str| columns.iter().any(|s| s == c);
        for (key, column) in gold.named_columns() {
            if !has(column) {
                problem(format!("{at}.{key}"), missing(column, table, columns));
            }
        }
        if !has(table.sequence_by()) {
            problem(
                format!("{at}.sequence_by"),
                missing(table.sequence_by(), table, columns),
            );
        }
        let mut carried: Vec<&str> = Vec::new();
        for (l, lookup) in gold.lookups.iter().enumerate() {
            for (j, column) in lookup.on.iter().enumerate() {
                if gold.kind == GoldKind::Fact
                    && !has(column)
                    && !carried.contains(&column.as_str())
                {
                    problem(
                        format!("{at}.lookups[{l}].on[{j}]"),
                        missing(column, table, columns),
                    );
                }
            }
            let dimension = silver_columns
                .iter()
                .find(|(t, _)| t.gold.as_ref().is_some_and(|g| g.name == lookup.dimension));
            for (j, column) in lookup.columns.iter().enumerate() {
                if let Some((dim, dim_columns)) = dimension
                    && !dim_columns.iter().any(|c| c == column)
                {
                    problem(
                        format!("{at}.lookups[{l}].columns[{j}]"),
                        missing(column, dim, dim_columns),
                    );
                }
                carried.push(column);
            }
        }
    }
    problems
}

/// The silver columns of `table` (from its source columns), or `None` after a problem.
async fn columns_of(
    source: &dyn Source,
    table: &TableSpec,
    at: &str,
    problem: &mut impl FnMut(String, String),
) -> Option<Vec<String>> {
    let schema = match source.schema(table).await {
        Ok(schema) => schema,
        Err(e) => {
            problem(at.to_string(), e.to_string());
            return None;
        }
    };
    // A snapshot table's sequence is added by ingest.
    let schema = match table.is_snapshot() {
        true => {
            let mut fields: Vec<arrow::datatypes::Field> =
                schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(arrow::datatypes::Field::new(
                SNAPSHOT_AT,
                arrow::datatypes::DataType::Timestamp(
                    arrow::datatypes::TimeUnit::Microsecond,
                    Some("UTC".into()),
                ),
                false,
            ));
            std::sync::Arc::new(arrow::datatypes::Schema::new(fields))
        }
        false => schema,
    };
    let bronze: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let lacks = |c: &str| !bronze.iter().any(|b| b == c);
    if table.cdc_mode != CdcMode::ChangeTracking && lacks(&table.cdc_column) {
        problem(
            format!("{at}.cdc_column"),
            format!(
                "{:?} is not a column of {} (it has: {})",
                table.cdc_column,
                table.name,
                bronze.join(", ")
            ),
        );
    }
    for (k, key) in table.keys.iter().enumerate() {
        if lacks(key) {
            problem(
                format!("{at}.keys[{k}]"),
                format!(
                    "{key:?} is not a column of {} (it has: {})",
                    table.name,
                    bronze.join(", ")
                ),
            );
        }
    }
    match crate::stages::silver::silver_schema(table, schema).await {
        Ok(silver) => Some(silver.fields().iter().map(|f| f.name().clone()).collect()),
        Err(e) => {
            problem(format!("{at}.silver"), e.to_string());
            None
        }
    }
}

fn missing(column: &str, table: &TableSpec, columns: &[String]) -> String {
    format!(
        "{column:?} is not a column silver.{} would have (it has: {})",
        table.silver_name(),
        columns.join(", ")
    )
}
