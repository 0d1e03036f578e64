//! A bronze file read and cleaned before it meets the table: columns fitted to it (`fit`),
//! the pipeline file's columns, renames and drops, and the expectations checked.

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, RecordBatch, StringArray};
use arrow::compute::{and, filter_record_batch, not, prep_null_mask_filter};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use datafusion::common::Column;
use datafusion::prelude::{DataFrame, Expr, SessionConfig, SessionContext, lit};
use deltalake::DeltaTable;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::dedup::first_per_version;
use super::report::Counts;
use super::rows::Rows;
use super::session_with;
use crate::config::{Action, TableSpec};
use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::lake::layout::silver_columns::{CHANGE_TYPE, FAILED_RULES};

/// A bronze file read and cleaned, before it meets the table: what can be done for the next
/// file while the one before it is written.
pub(super) struct Prepared {
    /// The table schema the rows were fitted to (`None`: there was no table yet).
    pub(super) fitted_to: Option<SchemaRef>,
    pub(super) body: Body,
}

pub(super) enum Body {
    /// Gone before it could be read.
    Vanished,
    /// Not parquet (the reason), to be quarantined.
    Unreadable(String),
    /// No rows.
    Empty(Counts),
    /// Rows to load.
    Rows(Cleaned),
}

/// A file's rows, cleaned: the first row per (key, watermark) of the rows the expectations
/// kept, and those they dropped.
pub(super) struct Cleaned {
    /// The file's counts so far (rows in, dropped, rescued, per rule).
    pub(super) counts: Counts,
    pub(super) schema: SchemaRef,
    pub(super) firsts: Rows,
    /// Rows the expectations kept, before duplicates were taken out.
    pub(super) kept_rows: u64,
    /// Rows `drop` rules took out, with the rules' names, for the quarantine.
    pub(super) dropped: Option<RecordBatch>,
}

/// The table's schema, once it has one.
pub(super) fn table_schema(delta: &DeltaTable) -> Option<SchemaRef> {
    delta.version()?;
    delta.snapshot().ok().map(|s| s.snapshot().arrow_schema())
}

/// Reads a bronze file, fits it to the table's types (`existing`), applies the silver
/// columns and the expectations and keeps the first row per (key, watermark). Writes
/// nothing: quarantining is left to the commit, in file order.
pub(super) async fn prepare(
    lake: &Lake,
    table: &TableSpec,
    path: &str,
    existing: Option<SchemaRef>,
) -> Result<Prepared> {
    let done = |body| {
        Ok(Prepared {
            fitted_to: existing.clone(),
            body,
        })
    };
    let Some(bytes) = lake.get_opt(path).await? else {
        return done(Body::Vanished);
    };
    let batches = match read_parquet(bytes) {
        Ok(b) => b,
        Err(reason) => return done(Body::Unreadable(reason)),
    };
    let mut counts = Counts {
        rows_in: batches.iter().map(|b| b.num_rows() as u64).sum(),
        ..Counts::default()
    };
    if counts.rows_in == 0 {
        return done(Body::Empty(counts));
    }
    // Rename targets come from another bronze column, not from bronze under their name.
    let computed: Vec<&str> = table.silver.rename.iter().map(|r| r.to.as_str()).collect();
    let policy = super::fit::Policy::of(table);
    let (batches, rescued) = super::fit::fit(batches, existing.as_ref(), &computed, &policy, path)?;
    counts.rows_rescued = rescued;
    // The file's rows stay one batch through the silver columns (the session would cut them
    // into 8k-row slices): expectations, first rows and a dimension's key order (one `take`,
    // not a gather from fifty batches) then work on whole columns: less CPU for a little
    // more memory, as each expression's intermediate results are file-sized (decision 002,
    // "Silver").
    let batch_rows = usize::try_from(counts.rows_in).unwrap_or(usize::MAX);
    let ctx = session_with(SessionConfig::new().with_batch_size(batch_rows));
    let fail = |e| Error::DataFusion {
        table: table.name.clone(),
        file: path.to_string(),
        context: "applying the silver columns".to_string(),
        source: e,
    };
    let transformed = transform(&ctx, table, batches)
        .map_err(fail)?
        .collect()
        .await
        .map_err(fail)?;
    let rules = table.expectations();
    let checked = check_expectations(transformed, &rules, &table.name, path, &mut counts)?;
    let kept_rows: u64 = checked
        .kept
        .iter()
        .zip(&checked.passed)
        .map(|(b, p)| p.as_ref().map_or(b.num_rows(), |p| p.true_count()) as u64)
        .sum();
    let firsts = first_per_version(checked.kept, &checked.passed, table)
        .map_err(|e| Error::arrow(path, e))?;
    done(Body::Rows(Cleaned {
        counts,
        schema: checked.schema,
        firsts,
        kept_rows,
        dropped: checked.dropped,
    }))
}

/// A bronze file's rows, as one batch: silver holds the whole file anyway, and a dimension's
/// rows are then put in key order with one `take` rather than gathered across batches.
pub(super) fn read_parquet(bytes: Bytes) -> Result<Vec<RecordBatch>, String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| {
            let rows = usize::try_from(b.metadata().file_metadata().num_rows()).unwrap_or(0);
            b.with_batch_size(rows.max(1)).build()
        })
        .map_err(|e| e.to_string())?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

pub(super) fn column(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

/// The pipeline file's columns, renames and drops, plus lineage, as a DataFusion plan.
/// The silver columns of a file's rows and its expectations' results (lineage is added as the
/// rows are written, see `with_lineage`).
pub(super) fn transform(
    ctx: &SessionContext,
    table: &TableSpec,
    batches: Vec<RecordBatch>,
) -> datafusion::error::Result<DataFrame> {
    let df = ctx.read_batches(batches)?;
    let schema = df.schema().clone();
    let spec = &table.silver;
    let parse = |name: &str, sql: &str| -> datafusion::error::Result<Expr> {
        Ok(ctx.parse_sql_expr(sql, &schema)?.alias(name))
    };
    let mut select = Vec::new();
    for field in schema.fields() {
        match spec.columns.iter().find(|c| &c.name == field.name()) {
            Some(c) => select.push(parse(&c.name, &c.expr)?),
            None => select.push(column(field.name())),
        }
    }
    for c in spec
        .columns
        .iter()
        .filter(|c| schema.field_with_unqualified_name(&c.name).is_err())
    {
        select.push(parse(&c.name, &c.expr)?);
    }
    let mut df = df.select(select)?;
    for r in &spec.rename {
        df = df.with_column_renamed(&r.from, &r.to)?;
    }
    if !spec.drop.is_empty() {
        let names: Vec<&str> = spec.drop.iter().map(String::as_str).collect();
        df = df.drop_columns(&names)?;
    }
    let rules = table.expectations();
    // A delete marker carries its key alone: only the key rule speaks of it.
    let markers = df.schema().has_column_with_unqualified_name(CHANGE_TYPE);
    for (i, rule) in rules.iter().enumerate() {
        let mut expr = ctx.parse_sql_expr(&rule.rule, df.schema())?;
        if markers && rule.name != "keys_not_null" {
            expr = expr.or(column(CHANGE_TYPE).eq(lit("delete")));
        }
        df = df.with_column(&format!("__expect_{i}"), expr)?;
    }
    Ok(df)
}

pub(super) struct Checked {
    schema: SchemaRef,
    /// The file's batches, with each one's rows that passed the `drop` rules in `passed`
    /// (`None`: all of them). They are filtered once, with the duplicates, by
    /// [`first_per_version`]: filtering here too copied nearly every row of a fact file twice.
    kept: Vec<RecordBatch>,
    passed: Vec<Option<BooleanArray>>,
    dropped: Option<RecordBatch>,
}

/// Counts broken rules, fails the file on a broken `fail` rule, and splits off the rows
/// that broke `drop` rules (with the rules' names). NULL counts as broken.
pub(super) fn check_expectations(
    batches: Vec<RecordBatch>,
    rules: &[crate::config::Expectation],
    table: &str,
    file: &str,
    counts: &mut Counts,
) -> Result<Checked> {
    let ctx = |e| {
        Error::arrow(
            format!("table {table}, file {file}: checking expectations"),
            e,
        )
    };
    let mut kept = Vec::new();
    let mut passed_rows = Vec::new();
    let mut dropped = Vec::new();
    let mut schema = None;
    for batch in batches {
        let data_columns: Vec<usize> = (0..batch.num_columns())
            .filter(|&i| !batch.schema().field(i).name().starts_with("__expect_"))
            .collect();
        let data = batch.project(&data_columns).map_err(ctx)?;
        let rows = batch.num_rows();
        let mut keep: Option<BooleanArray> = None;
        let mut drop_rules: Vec<(&str, BooleanArray)> = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let Some(result) = batch
                .column_by_name(&format!("__expect_{i}"))
                .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
            else {
                return Err(Error::BadArgument {
                    what: format!("expectation {} of table {table}", rule.name),
                    message: format!("{:?} is not a boolean expression", rule.rule),
                });
            };
            // NULL counts as broken.
            let passed = if result.null_count() == 0 {
                result.clone()
            } else {
                prep_null_mask_filter(result)
            };
            let broken = rows - passed.true_count();
            if broken == 0 {
                continue;
            }
            *counts.expectations.entry(rule.name.clone()).or_default() += broken as u64;
            match rule.action {
                Action::Warn => {}
                Action::Fail => {
                    return Err(Error::ExpectationFailed {
                        table: table.to_string(),
                        file: file.to_string(),
                        rule: rule.name.clone(),
                        rows: broken as u64,
                    });
                }
                Action::Drop => {
                    keep = Some(match keep {
                        Some(k) => and(&k, &passed).map_err(ctx)?,
                        None => passed.clone(),
                    });
                    drop_rules.push((&rule.name, passed));
                }
            }
        }
        schema.get_or_insert_with(|| data.schema());
        if let Some(keep) = &keep {
            let drop_mask = not(keep).map_err(ctx)?;
            let rows_out = filter_record_batch(&data, &drop_mask).map_err(ctx)?;
            let names: StringArray = (0..rows)
                .filter(|&row| !keep.value(row))
                .map(|row| {
                    let broke: Vec<&str> = drop_rules
                        .iter()
                        .filter(|(_, passed)| !passed.value(row))
                        .map(|(name, _)| *name)
                        .collect();
                    Some(broke.join(","))
                })
                .collect();
            let mut fields: Vec<Field> = rows_out
                .schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            fields.push(Field::new(FAILED_RULES, DataType::Utf8, false));
            let mut columns = rows_out.columns().to_vec();
            columns.push(Arc::new(names));
            dropped
                .push(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(ctx)?);
        }
        kept.push(data);
        passed_rows.push(keep);
    }
    counts.rows_dropped = dropped.iter().map(|b| b.num_rows() as u64).sum();
    let dropped = match dropped.first() {
        Some(first) => {
            Some(arrow::compute::concat_batches(&first.schema(), &dropped).map_err(ctx)?)
        }
        None => None,
    };
    Ok(Checked {
        schema: schema.unwrap_or_else(|| Arc::new(Schema::empty())),
        kept,
        passed: passed_rows,
        dropped,
    })
}
