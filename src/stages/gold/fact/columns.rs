//! The column roles of a fact (keys, sequence, lookups and what they carry) and the SQL
//! that resolves its rows' lookups: point in time for SCD2, by key for SCD1.

use std::collections::HashSet;

use arrow::datatypes::Schema;
use datafusion::prelude::{Expr, lit};

use super::super::col;
use super::super::dimension::is_lineage;
use crate::config::ident::quote_ansi as q;
use crate::config::{GoldKind, TableSpec};
use crate::error::{Error, Result};
use crate::lake::layout::gold_columns::{VALID_FROM, VALID_TO};
use crate::lake::layout::silver_columns::{INGESTED_AT, SOURCE_FILE};

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
        super::super::check_named_columns(table, gold, &names)?;
        for column in table.keys.iter().chain([&seq]) {
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
            .filter(|n| table.keys.iter().any(|k| k == *n) || **n == seq || gold.keeps(n))
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
            delete: super::super::deletes::condition(table, silver),
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

    /// What re-resolution reads of a stored fact, as a `SELECT` list over `f`: keys, the
    /// sequence, the fact columns lookups match on, and (as `__old_<column>`) what they
    /// resolve to; the other columns are NULL, not read. `stored`: the fact table's columns.
    pub(super) fn reresolved_picks(&self, stored: &HashSet<String>) -> String {
        let needed: HashSet<&String> = (self.keys.iter())
            .chain([&self.seq])
            .chain(self.lookups.iter().flat_map(|l| {
                l.on.iter().filter_map(|from| match from {
                    From::Fact(c) => Some(c),
                    From::Lookup(..) => None,
                })
            }))
            .collect();
        let mut pick: Vec<String> = (self.base.iter())
            .map(|b| match needed.contains(b) && stored.contains(b) {
                true => format!("f.{}", q(b)),
                false => format!("NULL AS {}", q(b)),
            })
            .collect();
        for r in self.resolved() {
            let old = q(&format!("__old_{r}"));
            pick.push(match stored.contains(&r) {
                true => format!("f.{} AS {old}", q(&r)),
                false => format!("NULL AS {old}"),
            });
        }
        pick.join(", ")
    }

    /// Surrogate keys and carried columns: what re-resolution may change.
    pub(super) fn resolved(&self) -> Vec<String> {
        self.lookups
            .iter()
            .flat_map(|l| std::iter::once(l.sk.clone()).chain(l.carried.clone()))
            .collect()
    }
}

/// The name of lookup `i`'s surrogate-key function (`lookup::functions`); its carried columns'
/// are `lookup::carried_function` of it.
pub(super) fn index_function(i: usize) -> String {
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
                    let c = super::super::lookup::carried_function(&f, j);
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
                " AND {d}.{VALID_FROM} <= {r}.{s} AND ({d}.{VALID_TO} IS NULL OR {r}.{s} < {d}.{VALID_TO})"
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
    let (filter, flags) = if only_changed && !moved.is_empty() {
        let flags: String = (moved.iter().zip(c.resolved()))
            .map(|(m, col)| format!(", {m} AS {}", q(&moved_flag(&col))))
            .collect();
        (format!(" WHERE {}", moved.join(" OR ")), flags)
    } else {
        (String::new(), String::new())
    };
    format!(
        "SELECT {}{flags}, '{op}' AS __op FROM {rows}{filter}",
        select.join(", ")
    )
}

/// The column of [`resolve_sql`]'s rows (`only_changed`) that says whether resolved column
/// `column` moved in the row.
pub(super) fn moved_flag(column: &str) -> String {
    format!("__moved_{column}")
}

/// `t.key = s.key` for every key column.
pub(super) fn key_match(columns: &FactColumns) -> Expr {
    columns
        .keys
        .iter()
        .map(|k| col("t", k).eq(col("s", k)))
        .reduce(Expr::and)
        .unwrap_or(lit(false))
}
