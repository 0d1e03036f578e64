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
use datafusion::common::ScalarValue;
use datafusion::prelude::{DataFrame, Expr, SessionContext, lit};
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use futures::{StreamExt, TryStreamExt};
use tracing::{Instrument, debug, info};

use super::dimension::is_lineage;
use super::rewrite::file_name;
use super::{
    SilverChanges, TableReport, append, col, count_op, delta_err, df_err, insert_from_source,
    merge_rows, op_is, project, recorded, register, schema_of, silver_changes, update_from_source,
};
use crate::config::ident::quote_ansi as q;
use crate::config::{GoldKind, TableSpec};
use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::lake::layout;
use crate::lake::layout::gold_columns::{self};
use crate::lake::layout::silver_columns::{INGESTED_AT, SOURCE_FILE};
use crate::stages::Status;

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
    /// The SQL condition that makes a silver row a delete, if any row can be one.
    pub delete: Option<String>,
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
            delete: super::deletes::condition(table, silver),
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

/// The name of lookup `i`'s surrogate-key function (`lookup::functions`); its carried columns'
/// are `lookup::carried_function` of it.
fn index_function(i: usize) -> String {
    format!("__pit_{i}")
}

/// `SELECT` resolving every lookup for the rows of `src` (which has the base columns), with
/// `op` as `__op`. With `only_changed`, `src` also has `__old_<column>` for every resolved
/// column and only rows where one of them moves are kept.
///
/// A lookup with an index (`indexed[i]`) is a call of its functions. Any other is
/// `dimension RIGHT JOIN (rows so far)`: the dimension is the join's left, build side
/// whenever the planner keeps the written order (`dimensions_built_once`), so one hash table
/// per dimension serves a stream of any number of facts.
pub(super) fn resolve_sql(
    c: &FactColumns,
    src: &str,
    op: &str,
    only_changed: bool,
    indexed: &[bool],
) -> String {
    let s = q(&c.seq);
    let mut rows = format!("{src} AS r0");
    for (i, l) in c.lookups.iter().enumerate() {
        let (d, r) = (format!("d{i}"), format!("r{i}"));
        if indexed.get(i).copied().unwrap_or(false) {
            let f = index_function(i);
            let mut args: Vec<String> =
                l.on.iter()
                    .map(|from| {
                        let (From::Fact(value) | From::Lookup(_, value)) = from;
                        format!("{r}.{}", q(value))
                    })
                    .collect();
            if l.scd2 {
                args.push(format!("{r}.{s}"));
            }
            let args = args.join(", ");
            let carried: String = l
                .carried
                .iter()
                .enumerate()
                .map(|(j, col)| {
                    let c = super::lookup::carried_function(&f, j);
                    format!(", {c}({args}) AS {}", q(col))
                })
                .collect();
            rows = format!(
                "(SELECT {r}.*, {f}({args}) AS {sk}{carried} FROM {rows}) AS r{next}",
                sk = q(&l.sk),
                next = i + 1,
            );
            continue;
        }
        let on: Vec<String> =
            l.on.iter()
                .zip(&l.dim_keys)
                .map(|(from, key)| {
                    let (From::Fact(value) | From::Lookup(_, value)) = from;
                    format!("{d}.{} = {r}.{}", q(key), q(value))
                })
                .collect();
        let period = if l.scd2 {
            format!(
                " AND {d}.valid_from <= {r}.{s} AND ({d}.valid_to IS NULL OR {r}.{s} < {d}.valid_to)"
            )
        } else {
            String::new()
        };
        let carried: String = l
            .carried
            .iter()
            .map(|col| format!(", {d}.{c} AS {c}", c = q(col)))
            .collect();
        rows = format!(
            "(SELECT {r}.*, COALESCE({d}.{sk}, CAST(-1 AS BIGINT)) AS {sk}{carried} \
             FROM {dim} AS {d} RIGHT JOIN {rows} ON {on}{period}) AS r{next}",
            sk = q(&l.sk),
            dim = q(&l.dimension),
            on = on.join(" AND "),
            next = i + 1,
        );
    }
    let r = format!("r{}", c.lookups.len());
    let select: Vec<String> = c
        .output()
        .iter()
        .map(|col| format!("{r}.{}", q(col)))
        .collect();
    let moved: Vec<String> = c
        .resolved()
        .iter()
        .map(|col| {
            format!(
                "({r}.{} IS DISTINCT FROM {r}.{})",
                q(col),
                q(&format!("__old_{col}"))
            )
        })
        .collect();
    let filter = if only_changed && !moved.is_empty() {
        format!(" WHERE {}", moved.join(" OR "))
    } else {
        String::new()
    };
    format!(
        "SELECT {}, '{op}' AS __op FROM {rows}{filter}",
        select.join(", ")
    )
}

/// Brings one fact up to date: new silver rows, and existing rows whose dimension versions
/// changed. New rows are resolved and written in chunks of about `chunk_rows`
/// (`settings.chunk_rows`), whole silver files each.
pub(super) async fn build(
    lake: &Lake,
    table: &TableSpec,
    all: &[TableSpec],
    chunk_rows: usize,
    built: &super::Built,
    report: &mut TableReport,
) -> Result<()> {
    let Some(gold) = &table.gold else {
        return Ok(());
    };
    let silver_name = table.silver_name();
    let name = gold.name.as_str();
    let target = lake.delta_table(&layout::gold_table(name)).await?;
    let app_id = layout::app_id::gold_consumed(&silver_name);
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
    // The new rows, as a query over `changes` (one chunk of the added silver files at a time).
    let mut ctes: Vec<String> = Vec::new();
    let keys = columns
        .keys
        .iter()
        .map(|k| q(k))
        .collect::<Vec<_>>()
        .join(", ");
    let base = columns
        .base
        .iter()
        .map(|b| q(b))
        .collect::<Vec<_>>()
        .join(", ");
    // Deletes make no fact row: the new rows are each key's latest other row, and the
    // deletes remove what they end once those are written (`deletes::apply`).
    let live = match &columns.delete {
        Some(condition) => format!("(SELECT * FROM changes WHERE NOT ({condition}))"),
        None => "changes".to_string(),
    };
    {
        let tiebreak: String = columns
            .tiebreak
            .iter()
            .map(|t| format!(", {} DESC", q(t)))
            .collect();
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
                "src_n AS (SELECT {picked} FROM {live} AS c JOIN \
                 (SELECT {keys}, MAX({s}) AS __latest FROM {live} AS a GROUP BY {keys}) AS l \
                 ON {on} AND c.{s} = l.__latest)"
            ));
        } else {
            ctes.push(format!(
                "ranked AS (SELECT {base}, ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {s} DESC{tiebreak}) AS __r \
                 FROM {live} AS c WHERE {s} IS NOT NULL)"
            ));
            ctes.push(format!(
                "src_n AS (SELECT {base} FROM ranked WHERE __r = 1)"
            ));
        }
    }

    // The chunks of new rows need no dimension: in a whole-pipeline run they are read
    // while the dimensions are still being built.
    let chunks = chunk_files(&changes, chunk_rows, &silver_name, &columns.keys[0])?;
    // Two at a time, each on its own task: at scale 10 the 26 chunks of a first build took
    // 0.3 s one by one, between silver's end and the fact's first write.
    // Described while the lookups' dimensions are read (below): both are on the path from
    // silver's end to the fact's first write.
    let describe = futures::stream::iter(chunks.iter().cloned().enumerate().map(|(i, chunk)| {
        let (ctx, silver) = (ctx.clone(), changes.table.clone());
        let (keys, table) = (columns.keys.clone(), name.to_string());
        let describe = async move {
            let view = format!("__chunk{i}");
            register(&ctx, &view, &silver, Some(&chunk)).await?;
            let shape = chunk_keys(&ctx, &view, &keys, &table).await;
            let _ = ctx.deregister_table(view.as_str());
            shape
        };
        let task = tokio::spawn(describe.in_current_span());
        async move {
            task.await
                .map_err(|e| Error::Task(format!("describing a chunk of gold.{name}: {e}")))?
        }
    }))
    .buffered(2)
    .try_collect::<Vec<ChunkKeys>>();
    // The dimensions, at the state their own last build left them, and their changes since
    // this fact last looked.
    let mut affected: Vec<String> = Vec::new();
    let mut params: Vec<datafusion::common::ScalarValue> = Vec::new();
    let fact_seq_type = silver_schema
        .field_with_name(&columns.seq)
        .map(|f| f.data_type().clone())
        .map_err(|e| Error::arrow(name, e))?;
    let fact_columns: Option<HashSet<String>> = match target.version() {
        Some(_) => {
            register(&ctx, "fact", &target, None).await?;
            let schema = schema_of(&target, name)?;
            Some(schema.fields().iter().map(|f| f.name().clone()).collect())
        }
        None => None,
    };
    let needed: HashSet<&String> = columns
        .keys
        .iter()
        .chain([&columns.seq])
        .chain(columns.lookups.iter().flat_map(|l| {
            l.on.iter().filter_map(|from| match from {
                From::Fact(c) => Some(c),
                From::Lookup(..) => None,
            })
        }))
        .collect();
    // The type a lookup's key value has on the fact's side.
    let fact_key = |l: &Lookup, carried_types: &[Schema]| {
        match l.on.as_slice() {
            [From::Fact(c)] => silver_schema.field_with_name(c).ok(),
            [From::Lookup(j, c)] => carried_types
                .get(*j)
                .and_then(|t| t.field_with_name(c).ok()),
            _ => None,
        }
        .map(|f| f.data_type().clone())
    };
    let hand_over = HandOver::default();
    let open_one = async |l: &Lookup, i: usize, key: Option<arrow::datatypes::DataType>| {
        let (ctx, seq) = (&ctx, &fact_seq_type);
        open_lookup(
            ctx,
            (lake, built, &hand_over),
            (l, i),
            (key.as_ref(), seq),
            name,
        )
        .await
    };
    // Lookups keyed by fact columns read their dimensions one at a time (while the chunks
    // are described), those already built first: one dimension still being built holds up
    // none of the others, and one dimension's rows are in memory at a time (read side by
    // side, both dimensions' rows were 70 MB of an incremental run's peak at scale 10). A
    // lookup keyed by a carried column needs its predecessor's types, so it is read in turn
    // below.
    let open = async {
        let mut order: Vec<(usize, &Lookup)> = columns
            .lookups
            .iter()
            .enumerate()
            .filter(|(_, l)| l.on.iter().all(|f| matches!(f, From::Fact(_))))
            .collect();
        order.sort_by_key(|(_, l)| built.building(&l.dimension));
        let mut opened: Vec<Option<_>> = columns.lookups.iter().map(|_| None).collect();
        for (i, l) in order {
            opened[i] = Some(open_one(l, i, fact_key(l, &[])).await?);
        }
        Ok::<_, Error>(opened)
    };
    let (shapes, mut opened) = futures::try_join!(describe, open)?;
    debug!(chunks = chunks.len(), "Described the chunks of new rows.");
    // A chunk whose keys are unique, in a range no other chunk's keys reach and not yet in
    // the table needs neither "latest row per key" nor a merge, whenever it is written. All
    // such chunks stream through ONE query: each dimension's hash table is built once, not
    // once per chunk (at scale 10, 25 chunks each re-hashed two million dimension rows).
    let mut together: Vec<usize> = Vec::new();
    for (i, shape) in shapes.iter().enumerate() {
        let Some(range) = shape.range.as_ref().filter(|_| shape.unique) else {
            continue;
        };
        let alone = shapes
            .iter()
            .enumerate()
            .all(|(j, other)| j == i || other.range.as_ref().is_none_or(|o| disjoint(range, o)));
        if !alone {
            continue;
        }
        if target.version().is_some() {
            let _ = ctx.deregister_table("changes");
            register(&ctx, "changes", &changes.table, Some(&chunks[i])).await?;
            if overlaps(&ctx, &target, name, &columns.keys, range).await? {
                continue;
            }
        }
        together.push(i);
    }
    let mut indexed: Vec<bool> = Vec::new();
    let mut carried_types: Vec<Schema> = Vec::new();
    for (i, l) in columns.lookups.iter().enumerate() {
        let (dim_consumed, carried, is_indexed) = match opened.get_mut(i).and_then(Option::take) {
            Some(opened) => opened,
            None => open_one(l, i, fact_key(l, &carried_types)).await?,
        };
        indexed.push(is_indexed);
        carried_types.push(carried);
        let lookup_id = layout::app_id::fact_lookup(&l.dimension);
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
        // Re-resolution reads and writes only keys, the sequence, lookup columns and what
        // they resolve to: the other columns are not read.
        let mut pick: Vec<String> = columns
            .base
            .iter()
            .map(|b| {
                if needed.contains(b) && fact_cols.contains(b) {
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
        // The earliest change bounds the facts it can move: as a literal, file statistics
        // skip every fact file before it (changes usually postdate all stored facts).
        let Some(earliest) = earliest_change(&ctx, &dchg, &l.dim_seq, name).await? else {
            continue;
        };
        // In the fact's type, so the bound binds; a value that does not convert only loses
        // the pruning (a date from a timestamp rounds down, which keeps it a lower bound).
        let bound = match earliest.cast_to(&fact_seq_type) {
            Ok(value) => {
                params.push(value);
                format!("f.{} >= ${} AND ", q(&columns.seq), params.len())
            }
            Err(_) => String::new(),
        };
        affected.push(format!(
            "SELECT {} FROM fact AS f JOIN (SELECT {dim_keys}, MIN({seq}) AS __since FROM {dchg} GROUP BY {dim_keys}) AS c \
             ON {on} WHERE {bound}f.{s} >= c.__since",
            pick.join(", "),
            seq = q(&l.dim_seq),
            s = q(&columns.seq),
        ));
    }
    let resolve_new = resolve_sql(&columns, "src_n", "N", false, &indexed);
    let new_sql = format!("WITH {} {resolve_new}", ctes.join(", "));
    // A chunk in which no key repeats needs no "latest row per key": every row with a
    // sequence value is its key's latest (and silver's rows are mostly so).
    let unique_sql = format!(
        "WITH src_n AS (SELECT {base} FROM {live} AS c WHERE {} IS NOT NULL) {resolve_new}",
        q(&columns.seq)
    );
    let deletes = match &columns.delete {
        Some(condition) => {
            super::deletes::of_changes(&ctx, &changes, &columns.keys, &columns.seq, condition, name)
                .await?
        }
        None => Vec::new(),
    };
    // Re-resolved facts first, then the new rows: a key in both ends with its newest row
    // (the new rows' merge lets a newer sequence win), resolved against today's dimensions.
    let apart: Vec<usize> = (0..chunks.len())
        .filter(|i| !together.contains(i))
        .collect();
    let writes = usize::from(!affected.is_empty())
        + usize::from(!together.is_empty())
        + apart.len()
        + usize::from(!deletes.is_empty());
    if writes == 0 {
        return Ok(());
    }
    let output = columns.output();
    let mut pending = Some(txns);
    let mut commits = 0;
    let mut next_txns = || {
        commits += 1;
        if commits == writes {
            pending.take().unwrap_or_default()
        } else {
            Vec::new()
        }
    };
    let mut target = target;
    if !affected.is_empty() {
        let sql = format!(
            "WITH aff AS ({}), src_r AS (SELECT * FROM aff) {}",
            affected.join(" UNION "),
            resolve_sql(&columns, "src_r", "R", true, &indexed)
        );
        let df = ctx
            .sql(&sql)
            .await
            .and_then(|df| df.with_param_values(params))
            .map_err(df_err(name, "re-resolving dimension keys"))?;
        let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
        let rows = df
            .collect()
            .await
            .map_err(df_err(name, "re-resolving dimension keys"))?;
        // Only keys and resolved columns are written (the others were not read).
        let written: Vec<String> = columns
            .keys
            .iter()
            .chain(&columns.resolved())
            .cloned()
            .chain(["__op".to_string()])
            .collect();
        let (_, rows) = project(&rows, &schema, &written, name)?;
        report.updated = count_op(&rows, "R", |_, _| true);
        let txns = next_txns();
        if report.updated > 0 || !txns.is_empty() {
            hand_over.confirm(lake, built, name).await?;
        }
        target = if report.updated == 0 {
            if txns.is_empty() {
                target
            } else {
                // Nothing moved, but this is the run's last commit: it records progress.
                let schema = schema_of(&target, name)?;
                append(target, name, schema, Vec::new(), txns).await?
            }
        } else {
            let resolved = columns.resolved();
            merge_rows(&ctx, target, name, rows, key_match(&columns), txns, |m| {
                m.when_matched_update(|u| update_from_source(u, op_is("R"), &resolved))
            })
            .await?
        };
    }
    if !together.is_empty() {
        let files: Vec<String> = together.iter().flat_map(|&i| chunks[i].clone()).collect();
        let _ = ctx.deregister_table("changes");
        register(&ctx, "changes", &changes.table, Some(&files)).await?;
        report.rows_in += together.iter().map(|&i| shapes[i].rows).sum::<u64>();
        let streaming = dimensions_built_once(&ctx);
        let df = streaming
            .sql(&unique_sql)
            .await
            .map_err(df_err(name, "resolving dimension keys"))?;
        let txns = next_txns();
        let commit = (txns, &hand_over, (lake, built));
        target = append_plan(target, name, df, &output, commit, &columns, report).await?;
    }
    for &i in &apart {
        let _ = ctx.deregister_table("changes");
        register(&ctx, "changes", &changes.table, Some(&chunks[i])).await?;
        let shape = &shapes[i];
        report.rows_in += shape.rows;
        let sql = if shape.unique { &unique_sql } else { &new_sql };
        let df = ctx
            .sql(sql)
            .await
            .map_err(df_err(name, "resolving dimension keys"))?;
        let txns = next_txns();
        let streamed = match (&shape.range, target.version()) {
            (_, None) | (None, _) => true,
            (Some(range), Some(_)) => !overlaps(&ctx, &target, name, &columns.keys, range).await?,
        };
        if streamed {
            // No key of the chunk is in the table: the rows stream straight into new files.
            let commit = (txns, &hand_over, (lake, built));
            target = append_plan(target, name, df, &output, commit, &columns, report).await?;
        } else {
            let rows = df
                .collect()
                .await
                .map_err(df_err(name, "resolving dimension keys"))?;
            report.inserted += count_op(&rows, "N", |_, _| true);
            for (l, (_, unknown)) in columns.lookups.iter().zip(unknown_slots(report, &columns)) {
                *unknown += count_op(&rows, "N", |b, i| is_unknown(b, i, &l.sk));
            }
            hand_over.confirm(lake, built, name).await?;
            if rows.iter().all(|b| b.num_rows() == 0) {
                // Every row of the chunk was a delete: nothing to merge.
                if !txns.is_empty() {
                    let schema = schema_of(&target, name)?;
                    target = append(target, name, schema, Vec::new(), txns).await?;
                }
                continue;
            }
            let newer = op_is("N").and(col("s", &columns.seq).gt_eq(col("t", &columns.seq)));
            target = merge_rows(&ctx, target, name, rows, key_match(&columns), txns, |m| {
                m.when_matched_update(|u| update_from_source(u, newer, &output))?
                    .when_not_matched_insert(|i| insert_from_source(i, op_is("N"), &output))
            })
            .await?;
        }
    }
    if !deletes.is_empty() {
        let txns = next_txns();
        hand_over.confirm(lake, built, name).await?;
        let (table, removed) = super::deletes::apply(
            &ctx,
            target,
            name,
            deletes,
            &columns.keys,
            &columns.seq,
            txns,
        )
        .await?;
        target = table;
        report.deleted += removed;
    }
    report.version = target.version();
    report.status = Status::Ok;
    info!(
        rows_in = report.rows_in,
        inserted = report.inserted,
        re_resolved = report.updated,
        deleted = report.deleted,
        chunks = chunks.len(),
        version = report.version,
        "Built the fact."
    );
    Ok(())
}

/// What one chunk of new rows holds, from its first key column alone.
#[derive(Debug, PartialEq)]
struct ChunkKeys {
    rows: u64,
    /// No key repeats and none is NULL (known for one key column; with more, assumed false).
    unique: bool,
    /// The smallest and largest value of the first key column.
    range: Option<(ScalarValue, ScalarValue)>,
}

/// Counts the rows of the registered `table` (one chunk of changes), and the distinct and
/// non-null values of its first key column and their range, in one aggregate.
async fn chunk_keys(
    ctx: &SessionContext,
    table: &str,
    keys: &[String],
    name: &str,
) -> Result<ChunkKeys> {
    if let [key] = keys
        && let Some(shape) = integer_chunk_keys(ctx, table, key, name).await?
    {
        return Ok(shape);
    }
    sql_chunk_keys(ctx, table, keys, name).await
}

/// [`chunk_keys`] for one integer key column (of a type that fits in 64-bit signed), without
/// the hash aggregate of `COUNT(DISTINCT)`: at scale 10 that was 0.9 s of the fact's
/// critical path for 25 chunks, reading the column about 0.06 s. Repeats are found with a bitmap
/// over the chunk's key range when it is dense (fact keys mostly are), else by sorting.
/// `None` for any other key type.
async fn integer_chunk_keys(
    ctx: &SessionContext,
    table: &str,
    key: &str,
    name: &str,
) -> Result<Option<ChunkKeys>> {
    use arrow::datatypes::DataType::*;
    let fail = |e| df_err(name, "reading silver changes")(e);
    let df = ctx
        .table(table)
        .await
        .map_err(fail)?
        .select(vec![datafusion::prelude::col(
            datafusion::common::Column::from_name(key),
        )])
        .map_err(fail)?;
    let key_type = df.schema().field(0).data_type().clone();
    if !matches!(
        key_type,
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32
    ) {
        return Ok(None);
    }
    let batches = df.collect().await.map_err(fail)?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut values: Vec<i64> = Vec::with_capacity(rows);
    for batch in &batches {
        let Some(column) = crate::lake::int_column(batch.column(0)) else {
            return Ok(None);
        };
        values.extend(column.iter().flatten());
    }
    let (Some(&lo), Some(&hi)) = (values.iter().min(), values.iter().max()) else {
        return Ok(Some(ChunkKeys {
            rows: rows as u64,
            unique: rows == 0,
            range: None,
        }));
    };
    let range = |v: i64| ScalarValue::Int64(Some(v)).cast_to(&key_type).map_err(fail);
    let range = Some((range(lo)?, range(hi)?));
    // NULL keys are not distinct values: they make the chunk "repeating", the safe side.
    let unique = values.len() == rows && !repeats(&mut values, lo, hi);
    Ok(Some(ChunkKeys {
        rows: rows as u64,
        unique,
        range,
    }))
}

/// Whether a value occurs twice in `values`, all within `lo..=hi` (may reorder them).
fn repeats(values: &mut [i64], lo: i64, hi: i64) -> bool {
    let width = (i128::from(hi) - i128::from(lo) + 1) as u128;
    if width <= 64 * values.len() as u128 {
        let mut seen = vec![0u64; (width as usize).div_ceil(64)];
        for &v in values.iter() {
            let at = (v - lo) as usize;
            let (word, bit) = (at / 64, 1u64 << (at % 64));
            if seen[word] & bit != 0 {
                return true;
            }
            seen[word] |= bit;
        }
        false
    } else {
        values.sort_unstable();
        values.windows(2).any(|w| w[0] == w[1])
    }
}

/// [`chunk_keys`] by SQL, for any key.
async fn sql_chunk_keys(
    ctx: &SessionContext,
    table: &str,
    keys: &[String],
    name: &str,
) -> Result<ChunkKeys> {
    let fail = |e| df_err(name, "reading silver changes")(e);
    let batches = ctx
        .sql(&format!(
            "SELECT COUNT(*), COUNT(DISTINCT {k}), COUNT({k}), MIN({k}), MAX({k}) FROM {t}",
            k = q(&keys[0]),
            t = q(table)
        ))
        .await
        .map_err(fail)?
        .collect()
        .await
        .map_err(fail)?;
    let value = |i: usize| crate::lake::first_int(&batches, i).unwrap_or(0).max(0) as u64;
    let (rows, distinct, non_null) = (value(0), value(1), value(2));
    let scalar = |i: usize| {
        batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .and_then(|b| ScalarValue::try_from_array(b.column(i), 0).ok())
            .filter(|v| !v.is_null())
    };
    Ok(ChunkKeys {
        rows,
        // NULL keys are not distinct values: they make the chunk "repeating", the safe side.
        unique: keys.len() == 1 && distinct == rows && non_null == rows,
        range: scalar(3).zip(scalar(4)),
    })
}

/// Whether two closed key ranges share no value (values that do not compare count as
/// sharing).
fn disjoint(a: &(ScalarValue, ScalarValue), b: &(ScalarValue, ScalarValue)) -> bool {
    use std::cmp::Ordering::Less;
    a.1.partial_cmp(&b.0) == Some(Less) || b.1.partial_cmp(&a.0) == Some(Less)
}

/// A session over the same tables whose planner keeps each join's written order and builds
/// a hash table of up to 512 MB or 16M rows in one piece: `resolve_sql` puts every dimension
/// on the build side, so however many facts stream through, each dimension is hashed once and
/// both partitions probe it. Left to statistics, the planner builds on the smaller side, the
/// facts, and probes the whole dimension with every batch of them.
fn dimensions_built_once(ctx: &SessionContext) -> SessionContext {
    // The catalog (and every table registered in it) is shared; a fresh default one would
    // replace it for both sessions.
    let mut config = ctx
        .copied_config()
        .with_create_default_catalog_and_schema(false);
    let optimizer = &mut config.options_mut().optimizer;
    optimizer.join_reordering = false;
    optimizer.hash_join_single_partition_threshold = 512 << 20;
    optimizer.hash_join_single_partition_threshold_rows = 16_000_000;
    let state = datafusion::execution::SessionStateBuilder::new_from_existing(ctx.state())
        .with_config(config)
        .build();
    SessionContext::new_with_state(state)
}

/// The earliest sequence value among a dimension's changes (registered as `changes`), or
/// `None` when none has one.
async fn earliest_change(
    ctx: &SessionContext,
    changes: &str,
    seq: &str,
    name: &str,
) -> Result<Option<datafusion::common::ScalarValue>> {
    let fail = |e| df_err(name, "reading the dimension's changes")(e);
    let changes = ctx.table(changes).await.map_err(fail)?;
    let bounds = crate::lake::bounds(changes, seq).await.map_err(fail)?;
    Ok(bounds.map(|(earliest, _)| earliest))
}

/// Reads lookup `i`'s dimension once it is built, or once it has staged its versions (then
/// as the table will be after its commit, which `hand_over` is told to wait for); see
/// [`cache_lookup`], which `types`, the fact's key and sequence types, are for. Returns the
/// silver version the dimension has consumed, the schema of the carried columns and whether
/// the lookup is indexed.
async fn open_lookup(
    ctx: &SessionContext,
    (lake, built, hand_over): (&Lake, &super::Built, &HandOver),
    (l, i): (&Lookup, usize),
    (fact_key, fact_seq): (
        Option<&arrow::datatypes::DataType>,
        &arrow::datatypes::DataType,
    ),
    name: &str,
) -> Result<(i64, Schema, bool)> {
    // While the dimension is being built, its current version is the one a hand-over will
    // apply to: it is read meanwhile, off the path from the hand-over to the fact's commit.
    let early = if built.building(&l.dimension) {
        let dim = lake.delta_table(&layout::gold_table(&l.dimension)).await?;
        match dim.version() {
            Some(version) => Some((
                version,
                lookup_rows(ctx, &dim, l, i, (fact_key, fact_seq), name).await?,
            )),
            None => None,
        }
    } else {
        None
    };
    let (rows, dim_consumed, staged) = match built.staged(&l.dimension).await {
        Some(staged) => {
            let rows = match early {
                Some((version, rows)) if version == staged.base => rows,
                _ => {
                    let path = layout::gold_table(&l.dimension);
                    let dim = super::table_at(lake, &path, staged.base).await?;
                    lookup_rows(ctx, &dim, l, i, (fact_key, fact_seq), name).await?
                }
            };
            hand_over.expect(l, &staged);
            staged
                .taken
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (rows, staged.consumed, Some(staged))
        }
        None => {
            drop(early);
            built.wait(&l.dimension).await;
            let (dim, consumed) =
                super::built_dimension(lake, &l.dimension, &l.silver, name).await?;
            (
                lookup_rows(ctx, &dim, l, i, (fact_key, fact_seq), name).await?,
                consumed,
                None,
            )
        }
    };
    debug!(dimension = %l.dimension, staged = staged.is_some(), "Have the rows of a dimension for its lookup.");
    let (carried, indexed) = cache_lookup(
        ctx,
        (rows, staged.as_deref()),
        l,
        i,
        fact_key,
        fact_seq,
        name,
    )
    .await?;
    debug!(dimension = %l.dimension, indexed, "Read a dimension for its lookup.");
    Ok((dim_consumed, carried, indexed))
}

/// The dimensions whose staged versions a fact resolved against: before its first commit,
/// each must have committed exactly those, as the version after the one they were staged on.
/// Otherwise (the dimension failed, or another run committed to it first) the fact's rows
/// may name versions that do not exist, and nothing of them is committed.
#[derive(Debug, Default)]
struct HandOver(std::sync::Mutex<Vec<(String, String, u64, i64)>>);

impl HandOver {
    fn expect(&self, l: &Lookup, staged: &super::Staged) {
        if let Ok(mut pending) = self.0.lock() {
            pending.push((
                l.dimension.clone(),
                l.silver.clone(),
                staged.base,
                staged.consumed,
            ));
        }
    }

    /// Waits for the dimensions handed over, and checks what they committed.
    async fn confirm(&self, lake: &Lake, built: &super::Built, name: &str) -> Result<()> {
        let pending = match self.0.lock() {
            Ok(mut pending) => std::mem::take(&mut *pending),
            Err(_) => return Err(Error::Task(format!("gold.{name}: a lookup task panicked"))),
        };
        for (dimension, silver, base, consumed) in pending {
            built.wait(&dimension).await;
            let (dim, now) = super::built_dimension(lake, &dimension, &silver, name).await?;
            if dim.version() != Some(base + 1) || now != consumed {
                return Err(Error::HandOver {
                    table: name.to_string(),
                    reason: format!(
                        "staged on version {base} consuming silver version {consumed}, the table is at version {} consuming {now}",
                        dim.version().map_or("none".to_string(), |v| v.to_string())
                    ),
                    dimension,
                });
            }
            debug!(dimension = %dimension, "The dimension committed what it handed over.");
        }
        Ok(())
    }
}

/// Keeps what a lookup needs of its dimension (read once, by [`lookup_rows`]) in memory:
/// every chunk of new rows and the re-resolution use it, instead of decoding parquet per
/// chunk (at scale 10 that was 28 chunks times 2.2M dimension rows on a first build). An
/// index built as the rows were read (see [`Read`]) takes the staged commit's changes and
/// becomes the lookup's functions; held rows become the index (`lookup::PointInTime`) when
/// their types allow, else an in-memory table under the dimension's name for the join.
/// Returns the schema of the carried columns and whether the lookup is indexed.
async fn cache_lookup(
    ctx: &SessionContext,
    (rows, staged): (Read, Option<&super::Staged>),
    l: &Lookup,
    i: usize,
    fact_key: Option<&arrow::datatypes::DataType>,
    fact_seq: &arrow::datatypes::DataType,
    name: &str,
) -> Result<(Schema, bool)> {
    let fail = |e| df_err(name, "reading a dimension for its lookup")(e);
    let schema = match &rows {
        Read::Indexed(schema, _) | Read::Rows((schema, _)) => std::sync::Arc::clone(schema),
    };
    let carried = schema
        .project(
            &l.carried
                .iter()
                .filter_map(|c| schema.index_of(c).ok())
                .collect::<Vec<_>>(),
        )
        .map_err(|e| Error::arrow(name, e))?;
    let (index, batches) = match rows {
        Read::Indexed(_, mut indexer) => {
            if let Some(staged) = staged {
                indexer.remove(&staged.replaced);
                for batch in fitted(&schema, staged, name)? {
                    indexer.add(&batch)?;
                }
            }
            (Some(indexer.index()), Vec::new())
        }
        Read::Rows((_, batches)) => match shape(l, (fact_key, fact_seq)) {
            Some(shape) => {
                let fitted = staged
                    .map(|staged| fitted(&schema, staged, name))
                    .transpose()?;
                let rows = super::lookup::DimensionRows {
                    stored: &batches,
                    replaced: staged.map(|s| &s.replaced),
                    staged: fitted.as_deref().unwrap_or_default(),
                };
                let index = super::lookup::PointInTime::build(&l.dimension, &schema, rows, &shape)?;
                (index, batches)
            }
            None => (None, batches),
        },
    };
    if let Some(index) = index {
        for f in super::lookup::functions(&index_function(i), index) {
            ctx.register_udf(f);
        }
        return Ok((carried, true));
    }
    let batches = match staged {
        Some(staged) => with_staged(&schema, batches, staged, (&l.sk, name))?,
        None => batches,
    };
    let table = datafusion::datasource::MemTable::try_new(schema, vec![batches]).map_err(fail)?;
    let _ = ctx.deregister_table(l.dimension.as_str());
    ctx.register_table(l.dimension.as_str(), std::sync::Arc::new(table))
        .map_err(fail)?;
    Ok((carried, false))
}

/// The columns of a dimension that a lookup uses, as read.
type Rows = (arrow::datatypes::SchemaRef, Vec<arrow::array::RecordBatch>);

/// A dimension's rows for a lookup: indexed as they were read (see `lookup::Indexer`), or
/// held (for the join, or an index that carries columns).
enum Read {
    Indexed(arrow::datatypes::SchemaRef, Box<super::lookup::Indexer>),
    Rows(Rows),
}

/// Reads the columns of `dim` that lookup `i` uses (keys, surrogate key, validity, carried
/// columns); see [`Read`] for `fact_key` and `fact_seq`, the fact's key and sequence types.
async fn lookup_rows(
    ctx: &SessionContext,
    dim: &DeltaTable,
    l: &Lookup,
    i: usize,
    (fact_key, fact_seq): (
        Option<&arrow::datatypes::DataType>,
        &arrow::datatypes::DataType,
    ),
    name: &str,
) -> Result<Read> {
    let fail = |e| df_err(name, "reading a dimension for its lookup")(e);
    let raw = format!("__raw_{i}");
    register(ctx, &raw, dim, None).await?;
    let mut wanted: Vec<&String> = l.dim_keys.iter().chain([&l.sk]).collect();
    let period = gold_columns::PERIOD.map(String::from);
    if l.scd2 {
        wanted.extend(&period);
    }
    wanted.extend(&l.carried);
    let mut seen = HashSet::new();
    wanted.retain(|c| seen.insert(c.as_str()));
    let df = ctx
        .table(raw.as_str())
        .await
        .map_err(fail)?
        .select(
            wanted
                .iter()
                .map(|c| datafusion::prelude::col(datafusion::common::Column::from_name(*c)))
                .collect::<Vec<_>>(),
        )
        .map_err(fail)?;
    let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
    let read = match indexer(dim, &schema, l, (fact_key, fact_seq)) {
        Some(mut indexer) => {
            let mut stream = df.execute_stream().await.map_err(fail)?;
            while let Some(batch) = stream.next().await {
                indexer.add(&batch.map_err(fail)?)?;
            }
            Read::Indexed(schema, Box::new(indexer))
        }
        None => Read::Rows((schema, df.collect().await.map_err(fail)?)),
    };
    let _ = ctx.deregister_table(raw.as_str());
    Ok(read)
}

/// An index to build as `dim`'s rows (`schema`) are read, for a lookup by one integer key
/// that carries no columns (carried ones are taken from the rows, which are then held).
fn indexer(
    dim: &DeltaTable,
    schema: &arrow::datatypes::SchemaRef,
    l: &Lookup,
    (fact_key, fact_seq): (
        Option<&arrow::datatypes::DataType>,
        &arrow::datatypes::DataType,
    ),
) -> Option<super::lookup::Indexer> {
    let shape = shape(l, (fact_key, fact_seq)).filter(|s| s.carried.is_empty())?;
    super::lookup::Indexer::new(&l.dimension, schema, &shape, key_span(dim, shape.key))
}

/// What an index of lookup `l` needs, when it matches one key the fact has
/// (`fact_key`, `fact_seq`: the fact's key and sequence types).
fn shape<'a>(
    l: &'a Lookup,
    (fact_key, fact_seq): (
        Option<&'a arrow::datatypes::DataType>,
        &'a arrow::datatypes::DataType,
    ),
) -> Option<super::lookup::Shape<'a>> {
    let ([key], Some(fact_key)) = (l.dim_keys.as_slice(), fact_key) else {
        return None;
    };
    Some(super::lookup::Shape {
        key,
        sk: &l.sk,
        period: l.scd2.then_some(fact_seq),
        carried: &l.carried,
        fact_key,
    })
}

/// The span of `table`'s `key` values by its log's statistics; `None` when a file has none.
fn key_span(table: &DeltaTable, key: &str) -> Option<super::lookup::Span> {
    use serde_json::Value;
    let snapshot = table.snapshot().ok()?;
    let mut span = super::lookup::Span {
        min: i64::MAX,
        max: i64::MIN,
        rows: 0,
    };
    for file in snapshot.log_data().iter() {
        let rows = file.num_records()?;
        let stats: Value = serde_json::from_str(&file.stats()?).ok()?;
        span.rows += rows;
        let nulls = stats.get("nullCount").and_then(|n| n.get(key)?.as_u64());
        if nulls == Some(rows as u64) {
            continue;
        }
        let bound = |side: &str| stats.get(side)?.get(key)?.as_i64();
        span.min = span.min.min(bound("minValues")?);
        span.max = span.max.max(bound("maxValues")?);
    }
    (span.min <= span.max).then_some(span)
}

/// A dimension's rows (`schema`, read at the version `staged` applies to) as its staged
/// commit leaves them: without the rows of the replaced surrogate keys, with the staged rows.
fn with_staged(
    schema: &arrow::datatypes::SchemaRef,
    batches: Vec<arrow::array::RecordBatch>,
    staged: &super::Staged,
    (sk, name): (&str, &str),
) -> Result<Vec<arrow::array::RecordBatch>> {
    let mut out = Vec::with_capacity(batches.len() + staged.rows.len());
    for batch in &batches {
        out.push(super::rewrite::without_replaced(
            batch,
            sk,
            &staged.replaced,
            name,
        )?);
    }
    out.extend(fitted(schema, staged, name)?);
    Ok(out)
}

/// The rows `staged` adds to a dimension, in its `schema`.
fn fitted(
    schema: &arrow::datatypes::SchemaRef,
    staged: &super::Staged,
    name: &str,
) -> Result<Vec<arrow::array::RecordBatch>> {
    staged
        .rows
        .iter()
        .map(|batch| crate::lake::writers::fit(batch, schema).map_err(|e| Error::arrow(name, e)))
        .collect()
}

/// The added silver files in groups of at most `limit` rows (a bigger file is a group alone),
/// by the row counts the silver log keeps per file, in the order of their smallest first key
/// when the log has it for every file: files next to each other in key order make chunks
/// whose key ranges do not overlap, which are then written together. (The log lists files in
/// no particular order, and silver writes a big bronze file as two files of one commit.)
fn chunk_files(
    changes: &SilverChanges,
    limit: usize,
    silver: &str,
    first_key: &str,
) -> Result<Vec<Vec<String>>> {
    let snapshot = changes
        .table
        .snapshot()
        .map_err(delta_err(layout::silver_table(silver)))?;
    // Keyed by file name (delta-rs names data files uniquely), so each lookup is one probe;
    // a file not found counts as a full chunk, which only makes chunks smaller.
    let logged: std::collections::HashMap<String, (usize, Option<serde_json::Value>)> = snapshot
        .log_data()
        .iter()
        .map(|f| {
            let min = f
                .stats()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .and_then(|s| s.get("minValues")?.get(first_key).cloned());
            (
                file_name(&f.path()).to_string(),
                (f.num_records().unwrap_or(limit), min),
            )
        })
        .collect();
    let rows_of = |uri: &str| logged.get(file_name(uri)).map_or(limit, |l| l.0);
    let min_of = |uri: &str| logged.get(file_name(uri)).and_then(|l| l.1.as_ref());
    let mut files = changes.files.clone();
    let mins: Vec<Option<&serde_json::Value>> = files.iter().map(|f| min_of(f)).collect();
    if mins
        .iter()
        .all(|m| m.is_some_and(serde_json::Value::is_number))
    {
        files.sort_by(|a, b| {
            let n = |f: &str| min_of(f).and_then(serde_json::Value::as_f64);
            n(a).partial_cmp(&n(b)).unwrap_or(std::cmp::Ordering::Equal)
        });
    } else if mins
        .iter()
        .all(|m| m.is_some_and(serde_json::Value::is_string))
    {
        files.sort_by(|a, b| {
            let t = |f: &str| min_of(f).and_then(serde_json::Value::as_str);
            t(a).cmp(&t(b))
        });
    }
    let mut chunks: Vec<Vec<String>> = Vec::new();
    let mut in_chunk = 0;
    for file in files {
        let n = rows_of(&file);
        match chunks.last_mut() {
            Some(chunk) if in_chunk + n <= limit => {
                chunk.push(file);
                in_chunk += n;
            }
            _ => {
                chunks.push(vec![file]);
                in_chunk = n;
            }
        }
    }
    Ok(chunks)
}

/// `t.key = s.key` for every key column.
fn key_match(columns: &FactColumns) -> Expr {
    columns
        .keys
        .iter()
        .map(|k| col("t", k).eq(col("s", k)))
        .reduce(Expr::and)
        .unwrap_or(lit(false))
}

fn is_unknown(batch: &arrow::array::RecordBatch, row: usize, sk: &str) -> bool {
    batch
        .column_by_name(sk)
        .and_then(|c| {
            c.as_primitive_opt::<Int64Type>()
                .map(|c| c.is_valid(row) && c.value(row) == -1)
        })
        .unwrap_or(false)
}

/// The report's per-lookup unknown counters, created on first use.
fn unknown_slots<'a>(
    report: &'a mut TableReport,
    columns: &FactColumns,
) -> std::slice::IterMut<'a, (String, u64)> {
    if report.unknown.len() != columns.lookups.len() {
        report.unknown = columns.lookups.iter().map(|l| (l.sk.clone(), 0)).collect();
    }
    report.unknown.iter_mut()
}

/// Whether any key of `changes` is already in the table. The table is scanned only within
/// the chunk's range of the first key, which the files' statistics prune to little when
/// keys grow with time.
async fn overlaps(
    ctx: &SessionContext,
    target: &DeltaTable,
    name: &str,
    keys: &[String],
    (lo, hi): &(ScalarValue, ScalarValue),
) -> Result<bool> {
    let fail = |e| df_err(name, "looking for the new keys in the table")(e);
    let key = |k: &String| datafusion::prelude::col(datafusion::common::Column::from_name(k));
    let changes = ctx.table("changes").await.map_err(fail)?;
    let (lo, hi) = (lo.clone(), hi.clone());
    let _ = ctx.deregister_table("__target");
    register(ctx, "__target", target, None).await?;
    let existing = ctx
        .table("__target")
        .await
        .map_err(fail)?
        .filter(key(&keys[0]).between(lit(lo), lit(hi)))
        .map_err(fail)?
        .select(
            keys.iter()
                .enumerate()
                .map(|(i, k)| key(k).alias(format!("__t{i}")))
                .collect::<Vec<_>>(),
        )
        .map_err(fail)?;
    let new_keys = changes
        .select(keys.iter().map(key).collect::<Vec<_>>())
        .map_err(fail)?
        .distinct()
        .map_err(fail)?;
    let left: Vec<&str> = keys.iter().map(String::as_str).collect();
    let right: Vec<String> = (0..keys.len()).map(|i| format!("__t{i}")).collect();
    let right: Vec<&str> = right.iter().map(String::as_str).collect();
    let found = new_keys
        .join(
            existing,
            datafusion::common::JoinType::LeftSemi,
            &left,
            &right,
            None,
        )
        .map_err(fail)?
        .limit(0, Some(1))
        .map_err(fail)?
        .count()
        .await
        .map_err(fail)?;
    Ok(found > 0)
}

/// Where a writer closes a fact file. Each writer (one per partition of the query) builds the
/// file it writes in memory, so this bounds that part of the write's memory whatever the size of the stream
/// (delta-rs's default is 100 MB per file; at scale 10 the measured peaks with either were
/// within noise of each other); a few dozen MB is still a large file for readers.
const FACT_FILE_BYTES: u64 = 32 << 20;

/// Appends the rows of the query `df` in one commit carrying `txns`, streaming, and adds
/// them (and the unknown members they point to) to the report. A missing table is first
/// created empty with the stored schema (every column nullable, plain strings); a crash
/// between the two leaves an empty table with no consumed version, which the next run fills
/// through the ordinary path.
///
/// Each partition of the query has its own writer (see `lake::writers`); a partition reads a
/// contiguous run of silver's files, so each writer's files keep silver's key order.
async fn append_plan(
    target: DeltaTable,
    name: &str,
    df: DataFrame,
    output: &[String],
    (txns, hand_over, (lake, built)): (Vec<Transaction>, &HandOver, (&Lake, &super::Built)),
    columns: &FactColumns,
    report: &mut TableReport,
) -> Result<DeltaTable> {
    let df = crate::lake::storable_df(df, Some(output))
        .map_err(df_err(name, "shaping the fact's rows"))?;
    let target = match target.version() {
        Some(_) => target,
        None => {
            let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
            append(target, name, schema, Vec::new(), Vec::new()).await?
        }
    };
    let streams = df
        .execute_stream_partitioned()
        .await
        .map_err(df_err(name, "resolving dimension keys"))?;
    let sks: Vec<String> = columns.lookups.iter().map(|l| l.sk.clone()).collect();
    // Rows pointing to each lookup's unknown member, counted as they are written.
    let unknown = move |batch: &arrow::array::RecordBatch| -> Vec<u64> {
        sks.iter()
            .map(|sk| {
                batch
                    .column_by_name(sk)
                    .and_then(|c| c.as_primitive_opt::<Int64Type>())
                    .map_or(0, |c| c.iter().filter(|v| *v == Some(-1)).count() as u64)
            })
            .collect()
    };
    let written = crate::lake::writers::write_streams(
        &target,
        &layout::gold_table(name),
        &layout::gold_table(name),
        streams,
        std::num::NonZeroU64::new(FACT_FILE_BYTES),
        unknown,
    )
    .await?;
    report.inserted += written.rows;
    for ((_, unknown), counted) in unknown_slots(report, columns).zip(written.counted) {
        *unknown += counted;
    }
    // The rows are written; they are committed once the dimensions they name are.
    hand_over.confirm(lake, built, name).await?;
    crate::lake::writers::commit_append(target, &layout::gold_table(name), written.adds, txns).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
    use std::sync::Arc;

    async fn both(column: ArrayRef) -> (Option<ChunkKeys>, ChunkKeys) {
        let ctx = SessionContext::new();
        let batch = RecordBatch::try_from_iter([("k", column)]).unwrap();
        // Two batches, so a repeat can straddle them.
        let half = batch.num_rows() / 2;
        let batches = vec![
            batch.slice(0, half),
            batch.slice(half, batch.num_rows() - half),
        ];
        let table =
            datafusion::datasource::MemTable::try_new(batch.schema(), vec![batches]).unwrap();
        ctx.register_table("changes", Arc::new(table)).unwrap();
        let keys = ["k".to_string()];
        (
            integer_chunk_keys(&ctx, "changes", "k", "t").await.unwrap(),
            sql_chunk_keys(&ctx, "changes", &keys, "t").await.unwrap(),
        )
    }

    /// The span comes from every file's statistics; a file whose keys are all NULL counts
    /// its rows but no bounds.
    #[tokio::test]
    async fn a_tables_key_span_is_read_from_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let lake = crate::lake::Lake::open(dir.path().to_str().unwrap()).unwrap();
        let mut table = lake.delta_table("gold/dim").await.unwrap();
        assert_eq!(key_span(&table, "id"), None, "no table yet");
        for keys in [
            vec![Some(9), None, Some(5)],
            vec![Some(100), Some(7)],
            vec![None, None],
        ] {
            let batch =
                RecordBatch::try_from_iter([("id", Arc::new(Int64Array::from(keys)) as ArrayRef)])
                    .unwrap();
            table = table.write(vec![batch]).await.unwrap();
        }
        let span = key_span(&table, "id");
        let expected = super::super::lookup::Span {
            min: 5,
            max: 100,
            rows: 7,
        };
        assert_eq!(span, Some(expected));
        assert_eq!(
            key_span(&table, "other"),
            None,
            "no statistics of the column"
        );
    }

    #[tokio::test]
    async fn integer_chunks_are_described_as_count_distinct_describes_them() {
        let nearly_sorted: Vec<i64> = (0..5000)
            .map(|i| if i % 97 == 0 { 20_000 - i } else { i })
            .collect();
        let mut repeated = nearly_sorted.clone();
        repeated[4000] = repeated[10];
        let cases: Vec<(&str, ArrayRef, bool)> = vec![
            (
                "dense, unique",
                Arc::new(Int64Array::from(nearly_sorted.clone())),
                true,
            ),
            (
                "dense, a repeat across batches",
                Arc::new(Int64Array::from(repeated)),
                false,
            ),
            (
                "sparse, unique",
                Arc::new(Int64Array::from(vec![i64::MIN, -5, 0, 1 << 40, i64::MAX])),
                true,
            ),
            (
                "sparse, a repeat",
                Arc::new(Int64Array::from(vec![1 << 50, 3, -(1 << 50), 3])),
                false,
            ),
            (
                "a NULL key",
                Arc::new(Int32Array::from(vec![Some(1), None, Some(3), Some(4)])),
                false,
            ),
            (
                "32-bit",
                Arc::new(Int32Array::from(vec![7, -2, 5, 6])),
                true,
            ),
            (
                "only NULLs",
                Arc::new(Int32Array::from(vec![None, None])),
                false,
            ),
            (
                "no rows",
                Arc::new(Int32Array::from(Vec::<i32>::new())),
                true,
            ),
        ];
        for (case, column, unique) in cases {
            let (fast, sql) = both(column).await;
            let fast = fast.expect(case);
            assert_eq!(fast, sql, "{case}");
            assert_eq!(fast.unique, unique, "{case}");
        }
        // Other key types go by SQL.
        let strings: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "a"]));
        let (fast, sql) = both(strings).await;
        assert!(fast.is_none() && !sql.unique);
    }
}
