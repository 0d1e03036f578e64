//! Facts: silver rows upserted by key, each carrying the surrogate keys of the dimension
//! versions valid at its sequence value (point in time), `-1` where no version was valid.
//!
//! Dimension history can change after a fact was written: a late or out-of-order change splits
//! a version, a member arrives after its facts. A change of key `k` with sequence value `t`
//! can only alter versions from `t` on, so each run re-resolves the existing facts of the
//! changed keys at or after the earliest such `t`, and writes those whose keys moved. Which
//! dimension changes the fact has seen is recorded per lookup in its log (`txn` app id
//! `tunelake.gold.lookup:<dimension>`, the dimension's consumed silver version).

use std::collections::HashSet;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int64Type, Schema};
use datafusion::prelude::{DataFrame, Expr, SessionContext, lit};
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use tracing::info;

use super::dimension::is_lineage;
use super::{
    TableReport, append, col, consumed_app_id, count_op, df_err, insert_from_source, merge_rows,
    op_is, recorded, register, schema_of, silver_changes, table_path, update_from_source,
};
use crate::config::ident::quote_ansi as q;
use crate::config::{GoldKind, TableSpec};
use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::stages::Status;
use crate::stages::silver::{INGESTED_AT, SOURCE_FILE};

fn lookup_app_id(dimension: &str) -> String {
    format!("tunelake.gold.lookup:{dimension}")
}

/// Where a lookup's key value comes from: a fact column, or a column an earlier lookup
/// carried in.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum From {
    Fact(String),
    Lookup(usize, String),
}

/// One resolved lookup.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Lookup {
    pub dimension: String,
    pub dim_keys: Vec<String>,
    pub on: Vec<From>,
    /// The fact column each `on` value is stored in (to find the facts of a changed key).
    pub on_columns: Vec<String>,
    pub sk: String,
    pub scd2: bool,
    pub carried: Vec<String>,
    /// The dimension's silver table and sequence column (to read its changes).
    pub silver: String,
    pub dim_seq: String,
}

/// The column roles of one fact.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct FactColumns {
    pub keys: Vec<String>,
    pub seq: String,
    /// Silver columns kept (keys and sequence included), minus carried ones.
    pub base: Vec<String>,
    pub lookups: Vec<Lookup>,
    pub tiebreak: Vec<String>,
}

impl FactColumns {
    pub(super) fn new(table: &TableSpec, all: &[TableSpec], silver: &Schema) -> Result<Self> {
        let Some(gold) = &table.gold else {
            return Err(Error::Gold {
                table: table.name.clone(),
                message: "the table has no [tables.gold] section".to_string(),
            });
        };
        let names: Vec<&str> = silver.fields().iter().map(|f| f.name().as_str()).collect();
        let unknown = |column: &str| Error::UnknownColumn {
            table: format!("{} (for gold.{})", table.silver_name(), gold.name),
            column: column.to_string(),
            available: names.join(", "),
        };
        let seq = table.sequence_by().to_string();
        for column in table.keys.iter().chain([&seq]).chain(&gold.except_columns) {
            if !names.contains(&column.as_str()) {
                return Err(unknown(column));
            }
        }
        let mut lookups: Vec<Lookup> = Vec::new();
        for l in &gold.lookups {
            let Some((dim_table, dim)) = all.iter().find_map(|t| {
                t.gold
                    .as_ref()
                    .filter(|g| g.name == l.dimension && g.kind == GoldKind::Dimension)
                    .map(|g| (t, g))
            }) else {
                return Err(Error::Gold {
                    table: gold.name.clone(),
                    message: format!("lookup dimension {} is not in the pipeline", l.dimension),
                });
            };
            let mut on = Vec::new();
            for column in &l.on {
                let carried = lookups
                    .iter()
                    .enumerate()
                    .find(|(_, p)| p.carried.contains(column))
                    .map(|(j, _)| From::Lookup(j, column.clone()));
                match carried {
                    Some(from) => on.push(from),
                    None if names.contains(&column.as_str()) => on.push(From::Fact(column.clone())),
                    None => return Err(unknown(column)),
                }
            }
            lookups.push(Lookup {
                dimension: l.dimension.clone(),
                dim_keys: dim_table.keys.clone(),
                on_columns: l.on.clone(),
                on,
                sk: dim.sk(),
                scd2: dim.scd_type == 2,
                carried: l.columns.clone(),
                silver: dim_table.silver_name(),
                dim_seq: dim_table.sequence_by().to_string(),
            });
        }
        let carried: Vec<&String> = lookups.iter().flat_map(|l| &l.carried).collect();
        let base = names
            .iter()
            .filter(|n| !is_lineage(n))
            .filter(|n| !gold.except_columns.iter().any(|c| c == *n))
            .filter(|n| !carried.iter().any(|c| c == n))
            .map(|n| n.to_string())
            .collect();
        let tiebreak = [INGESTED_AT, SOURCE_FILE]
            .iter()
            .filter(|c| names.contains(c))
            .map(|c| c.to_string())
            .collect();
        Ok(FactColumns {
            keys: table.keys.clone(),
            seq,
            base,
            lookups,
            tiebreak,
        })
    }

    /// The gold table's columns, in order: keys, surrogate keys, the rest, carried columns.
    pub(super) fn output(&self) -> Vec<String> {
        let mut out = self.keys.clone();
        out.extend(self.lookups.iter().map(|l| l.sk.clone()));
        out.extend(self.base.iter().filter(|b| !self.keys.contains(b)).cloned());
        out.extend(self.lookups.iter().flat_map(|l| l.carried.clone()));
        out
    }

    /// Surrogate keys and carried columns: what re-resolution may change.
    fn resolved(&self) -> Vec<String> {
        self.lookups
            .iter()
            .flat_map(|l| std::iter::once(l.sk.clone()).chain(l.carried.clone()))
            .collect()
    }
}

/// `SELECT` resolving every lookup for the rows of `src` (which has the base columns), with
/// `op` as `__op`. With `only_changed`, `src` also has `__old_<column>` for every resolved
/// column and only rows where one of them moves are kept.
pub(super) fn resolve_sql(c: &FactColumns, src: &str, op: &str, only_changed: bool) -> String {
    let s = q(&c.seq);
    let mut select: Vec<String> = c.keys.iter().map(|k| format!("src.{}", q(k))).collect();
    let mut joins = String::new();
    let mut moved: Vec<String> = Vec::new();
    for (i, l) in c.lookups.iter().enumerate() {
        let d = format!("d{i}");
        let sk_expr = format!("COALESCE({d}.{}, CAST(-1 AS BIGINT))", q(&l.sk));
        select.push(format!("{sk_expr} AS {}", q(&l.sk)));
        moved.push(format!(
            "({sk_expr} IS DISTINCT FROM src.{})",
            q(&format!("__old_{}", l.sk))
        ));
        let on: Vec<String> =
            l.on.iter()
                .zip(&l.dim_keys)
                .map(|(from, key)| {
                    let value = match from {
                        From::Fact(col) => format!("src.{}", q(col)),
                        From::Lookup(j, col) => format!("d{j}.{}", q(col)),
                    };
                    format!("{d}.{} = {value}", q(key))
                })
                .collect();
        let period = if l.scd2 {
            format!(
                " AND {d}.valid_from <= src.{s} AND ({d}.valid_to IS NULL OR src.{s} < {d}.valid_to)"
            )
        } else {
            String::new()
        };
        joins.push_str(&format!(
            " LEFT JOIN {} AS {d} ON {}{period}",
            q(&l.dimension),
            on.join(" AND ")
        ));
    }
    select.extend(
        c.base
            .iter()
            .filter(|b| !c.keys.contains(b))
            .map(|b| format!("src.{}", q(b))),
    );
    for (i, l) in c.lookups.iter().enumerate() {
        for col in &l.carried {
            select.push(format!("d{i}.{} AS {}", q(col), q(col)));
            moved.push(format!(
                "(d{i}.{} IS DISTINCT FROM src.{})",
                q(col),
                q(&format!("__old_{col}"))
            ));
        }
    }
    let filter = if only_changed && !moved.is_empty() {
        format!(" WHERE {}", moved.join(" OR "))
    } else {
        String::new()
    };
    format!(
        "SELECT {}, '{op}' AS __op FROM {src} AS src{joins}{filter}",
        select.join(", ")
    )
}

/// Brings one fact up to date: new silver rows, and existing rows whose dimension versions
/// changed.
pub(super) async fn build(
    lake: &Lake,
    table: &TableSpec,
    all: &[TableSpec],
    report: &mut TableReport,
) -> Result<()> {
    let Some(gold) = &table.gold else {
        return Ok(());
    };
    let silver_name = table.silver_name();
    let name = gold.name.as_str();
    let target = lake.delta_table(&table_path(name)).await?;
    let app_id = consumed_app_id(&silver_name);
    let consumed = recorded(&target, &app_id, name).await?;
    let Some(changes) = silver_changes(lake, &silver_name, consumed, None).await? else {
        info!("Silver has no table yet; nothing to build.");
        return Ok(());
    };
    report.input_version = Some(changes.version);
    report.version = target.version();
    let silver_schema = schema_of(&changes.table, &silver_name)?;
    let columns = FactColumns::new(table, all, &silver_schema)?;
    let ctx = super::session();
    let mut txns = vec![Transaction::new(&app_id, changes.version as i64)];
    let mut parts: Vec<String> = Vec::new();
    let mut ctes: Vec<String> = Vec::new();
    let keys = columns
        .keys
        .iter()
        .map(|k| q(k))
        .collect::<Vec<_>>()
        .join(", ");
    let has_new = !changes.files.is_empty();
    if has_new {
        register(&ctx, "changes", &changes.table, Some(&changes.files)).await?;
        report.rows_in = ctx
            .table("changes")
            .await
            .map_err(df_err(name, "reading silver changes"))?
            .count()
            .await
            .map_err(df_err(name, "reading silver changes"))? as u64;
        let tiebreak: String = columns
            .tiebreak
            .iter()
            .map(|t| format!(", {} DESC", q(t)))
            .collect();
        let base = columns
            .base
            .iter()
            .map(|b| q(b))
            .collect::<Vec<_>>()
            .join(", ");
        let s = q(&columns.seq);
        if table.sequence_by() == table.cdc_column {
            // Silver holds one row per (keys, watermark value): the latest row of each key is
            // found by an aggregate and a join, far cheaper than a window partitioned by key
            // (one partition per stream).
            let on = columns
                .keys
                .iter()
                .map(|k| format!("c.{k} = l.{k}", k = q(k)))
                .collect::<Vec<_>>()
                .join(" AND ");
            let picked = columns
                .base
                .iter()
                .map(|b| format!("c.{}", q(b)))
                .collect::<Vec<_>>()
                .join(", ");
            ctes.push(format!(
                "src_n AS (SELECT {picked} FROM changes AS c JOIN \
                 (SELECT {keys}, MAX({s}) AS __latest FROM changes GROUP BY {keys}) AS l \
                 ON {on} AND c.{s} = l.__latest)"
            ));
        } else {
            ctes.push(format!(
                "ranked AS (SELECT {base}, ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {s} DESC{tiebreak}) AS __r \
                 FROM changes WHERE {s} IS NOT NULL)"
            ));
            ctes.push(format!(
                "src_n AS (SELECT {base} FROM ranked WHERE __r = 1)"
            ));
        }
        parts.push(resolve_sql(&columns, "src_n", "N", false));
    }

    // The dimensions, at the state their own last build left them, and their changes since
    // this fact last looked.
    let mut affected: Vec<String> = Vec::new();
    let fact_columns: Option<HashSet<String>> = match target.version() {
        Some(_) => {
            register(&ctx, "fact", &target, None).await?;
            let schema = schema_of(&target, name)?;
            Some(schema.fields().iter().map(|f| f.name().clone()).collect())
        }
        None => None,
    };
    for (i, l) in columns.lookups.iter().enumerate() {
        let dim = lake.delta_table(&table_path(&l.dimension)).await?;
        let Some(dim_consumed) = recorded(&dim, &consumed_app_id(&l.silver), &l.dimension).await?
        else {
            return Err(Error::Gold {
                table: name.to_string(),
                message: format!(
                    "it looks up gold.{} which has not been built (see that table's error, or load silver.{} first)",
                    l.dimension, l.silver
                ),
            });
        };
        register(&ctx, &l.dimension, &dim, None).await?;
        let lookup_id = lookup_app_id(&l.dimension);
        txns.push(Transaction::new(&lookup_id, dim_consumed));
        let Some(fact_cols) = &fact_columns else {
            continue;
        };
        let seen = recorded(&target, &lookup_id, name).await?;
        if seen.is_some_and(|v| v >= dim_consumed) {
            continue;
        }
        let Some(dim_changes) =
            silver_changes(lake, &l.silver, seen, Some(dim_consumed as u64)).await?
        else {
            continue;
        };
        if dim_changes.files.is_empty() {
            continue;
        }
        let dchg = format!("dchg{i}");
        register(&ctx, &dchg, &dim_changes.table, Some(&dim_changes.files)).await?;
        let dim_keys = l
            .dim_keys
            .iter()
            .map(|k| q(k))
            .collect::<Vec<_>>()
            .join(", ");
        let on = l
            .on_columns
            .iter()
            .zip(&l.dim_keys)
            .map(|(f, k)| format!("f.{} = c.{}", q(f), q(k)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let mut pick: Vec<String> = columns
            .base
            .iter()
            .map(|b| {
                if fact_cols.contains(b) {
                    format!("f.{}", q(b))
                } else {
                    format!("NULL AS {}", q(b))
                }
            })
            .collect();
        for r in columns.resolved() {
            let old = q(&format!("__old_{r}"));
            pick.push(if fact_cols.contains(&r) {
                format!("f.{} AS {old}", q(&r))
            } else {
                format!("NULL AS {old}")
            });
        }
        affected.push(format!(
            "SELECT {} FROM fact AS f JOIN (SELECT {dim_keys}, MIN({seq}) AS __since FROM {dchg} GROUP BY {dim_keys}) AS c \
             ON {on} WHERE f.{s} >= c.__since",
            pick.join(", "),
            seq = q(&l.dim_seq),
            s = q(&columns.seq),
        ));
    }
    if !affected.is_empty() {
        ctes.push(format!("aff AS ({})", affected.join(" UNION ")));
        let src_r = if has_new {
            let on = columns
                .keys
                .iter()
                .map(|k| format!("aff.{k} = nk.{k}", k = q(k)))
                .collect::<Vec<_>>()
                .join(" AND ");
            format!(
                "src_r AS (SELECT aff.* FROM aff LEFT JOIN (SELECT DISTINCT {keys} FROM src_n) AS nk ON {on} \
                 WHERE nk.{} IS NULL)",
                q(&columns.keys[0])
            )
        } else {
            "src_r AS (SELECT * FROM aff)".to_string()
        };
        ctes.push(src_r);
        parts.push(resolve_sql(&columns, "src_r", "R", true));
    }
    if parts.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "{}{}",
        if ctes.is_empty() {
            String::new()
        } else {
            format!("WITH {} ", ctes.join(", "))
        },
        parts.join(" UNION ALL ")
    );
    let df = ctx
        .sql(&sql)
        .await
        .map_err(df_err(name, "resolving dimension keys"))?;
    let output = columns.output();
    if fact_columns.is_none() {
        // The first build: every row is new, so the rows stream from the silver files
        // through the lookups into the table's files, never all in memory at once.
        let written = first_build(&ctx, target, name, df, &output, txns).await?;
        count_first_build(&ctx, &written, name, &columns, report).await?;
        report.version = written.version();
        report.status = Status::Ok;
        info!(
            rows_in = report.rows_in,
            inserted = report.inserted,
            version = report.version,
            "Built the fact (first build, streamed)."
        );
        return Ok(());
    }
    let rows = df
        .collect()
        .await
        .map_err(df_err(name, "resolving dimension keys"))?;
    report.inserted = count_op(&rows, "N", |_, _| true);
    report.updated = count_op(&rows, "R", |_, _| true);
    report.unknown = columns
        .lookups
        .iter()
        .map(|l| {
            let unknown = count_op(&rows, "N", |b, i| {
                b.column_by_name(&l.sk)
                    .and_then(|c| {
                        c.as_primitive_opt::<Int64Type>()
                            .map(|c| c.is_valid(i) && c.value(i) == -1)
                    })
                    .unwrap_or(false)
            });
            (l.sk.clone(), unknown)
        })
        .collect();
    let written = if rows.iter().all(|b| b.num_rows() == 0) {
        let schema = schema_of(&target, name)?;
        append(target, name, schema, Vec::new(), txns).await?
    } else {
        let on = columns
            .keys
            .iter()
            .map(|k| col("t", k).eq(col("s", k)))
            .reduce(Expr::and)
            .unwrap_or(lit(false));
        let newer = op_is("N").and(col("s", &columns.seq).gt_eq(col("t", &columns.seq)));
        let resolved = columns.resolved();
        merge_rows(&ctx, target, name, rows, on, txns, |m| {
            m.when_matched_update(|u| update_from_source(u, newer, &output))?
                .when_matched_update(|u| update_from_source(u, op_is("R"), &resolved))?
                .when_not_matched_insert(|i| insert_from_source(i, op_is("N"), &output))
        })
        .await?
    };
    report.version = written.version();
    report.status = Status::Ok;
    info!(
        rows_in = report.rows_in,
        inserted = report.inserted,
        re_resolved = report.updated,
        version = report.version,
        "Built the fact."
    );
    Ok(())
}

/// Writes a fact's first build from the query `df`, streaming: the table is created empty
/// with the stored schema (every column nullable, plain strings), then one commit appends the
/// rows and records `txns`. A crash between the two leaves an empty table with no consumed
/// version, which the next run fills through the ordinary merge.
async fn first_build(
    ctx: &SessionContext,
    target: DeltaTable,
    name: &str,
    df: DataFrame,
    output: &[String],
    txns: Vec<Transaction>,
) -> Result<DeltaTable> {
    let df = crate::lake::storable_df(df, Some(output))
        .map_err(df_err(name, "shaping the fact's rows"))?;
    let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
    let created = append(target, name, schema, Vec::new(), Vec::new()).await?;
    created
        .write(Vec::new())
        .with_input_plan(df.into_unoptimized_plan())
        .with_session_state(std::sync::Arc::new(ctx.state()))
        .with_save_mode(deltalake::protocol::SaveMode::Append)
        .with_commit_properties(super::commit_properties(txns))
        .await
        .map_err(super::delta_err(name))
}

/// The report's counts of a first build, read back from what was written.
async fn count_first_build(
    ctx: &SessionContext,
    written: &DeltaTable,
    name: &str,
    columns: &FactColumns,
    report: &mut TableReport,
) -> Result<()> {
    register(ctx, "__written", written, None).await?;
    let unknown: Vec<String> = columns
        .lookups
        .iter()
        .map(|l| format!("SUM(CASE WHEN {} = -1 THEN 1 ELSE 0 END)", q(&l.sk)))
        .collect();
    let sql = format!(
        "SELECT COUNT(*){} FROM __written",
        unknown.iter().map(|u| format!(", {u}")).collect::<String>()
    );
    let batches = ctx
        .sql(&sql)
        .await
        .map_err(df_err(name, "counting the first build"))?
        .collect()
        .await
        .map_err(df_err(name, "counting the first build"))?;
    let value = |i: usize| -> u64 {
        batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .and_then(|b| {
                arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Int64).ok()
            })
            .and_then(|a| {
                let a = a.as_primitive::<Int64Type>();
                a.is_valid(0).then(|| a.value(0).max(0) as u64)
            })
            .unwrap_or(0)
    };
    report.inserted = value(0);
    report.unknown = columns
        .lookups
        .iter()
        .enumerate()
        .map(|(i, l)| (l.sk.clone(), value(i + 1)))
        .collect();
    Ok(())
}
