//! Dimensions: SCD type 2 (history, as DLT's auto CDC keeps it) or type 1 (overwrite), with
//! surrogate keys and an unknown member.
//!
//! Each run recomputes the versions of every key that has new silver rows from that key's whole
//! silver history (the change log), then writes only the difference to the gold rows of those
//! keys. So the result is the same whatever order or batches the changes arrived in: a late
//! change lands where its sequence value puts it, and one that repeats its predecessor's
//! tracked values makes no version, exactly as applying all changes one by one in sequence order.
//!
//! Surrogate keys are `max ever assigned + row_number() over (keys, valid_from)`; the maximum
//! is kept in the table's log (`txn` app id `tunelake.gold.sk`) in the same commit, so a key
//! whose version a late change made obsolete is never handed out again. A version keeps its
//! surrogate key as long as its (business key, valid_from) exists.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray, new_null_array,
};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::prelude::{Expr, SessionContext, lit};
use deltalake::kernel::Transaction;
use tracing::{debug, info};

use super::outrigger::Outrigger;
use super::rewrite::Rewrite;
use super::{
    TableReport, append, col, df_err, insert_from_source, merge_rows, op_is, project, recorded,
    register, schema_of, silver_changes, update_from_source,
};
use crate::config::ident::quote_ansi as q;
use crate::config::{GoldSpec, TableSpec};
use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::lake::layout;
use crate::lake::layout::gold_columns::{self, IS_CURRENT, VALID_FROM, VALID_TO};
use crate::lake::layout::silver_columns::{INGESTED_AT, SOURCE_FILE};
use crate::stages::Status;

/// Columns a gold table never takes from silver: lineage and rescue columns.
pub(super) fn is_lineage(name: &str) -> bool {
    name.starts_with('_')
}

/// The column roles of one dimension.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct DimColumns {
    pub sk: String,
    pub keys: Vec<String>,
    pub seq: String,
    /// Every non-key column kept in gold (for SCD1 this includes the sequence column).
    pub attrs: Vec<String>,
    /// The attributes whose changes make a new SCD2 version.
    pub tracked: Vec<String>,
    /// Silver columns that order two rows with the same key and sequence value.
    pub tiebreak: Vec<String>,
    /// Columns copied from other dimensions (`lookups`, see `outrigger`).
    pub copied: Vec<String>,
    pub scd2: bool,
    /// The SQL condition over silver columns that makes a row a delete (see
    /// [`super::delete_condition`]), if any row can be one.
    pub delete: Option<String>,
}

impl DimColumns {
    pub(super) fn new(table: &TableSpec, gold: &GoldSpec, silver: &Schema) -> Result<Self> {
        let names: Vec<&str> = silver.fields().iter().map(|f| f.name().as_str()).collect();
        let seq = table.sequence_by().to_string();
        let wanted = table
            .keys
            .iter()
            .chain(std::iter::once(&seq))
            .chain(&gold.track_history_except)
            .chain(&gold.except_columns);
        for column in wanted {
            if !names.contains(&column.as_str()) {
                return Err(Error::UnknownColumn {
                    table: format!("{} (for gold.{})", table.silver_name(), gold.name),
                    column: column.clone(),
                    available: names.join(", "),
                });
            }
        }
        let scd2 = gold.scd_type == 2;
        let attrs: Vec<String> = names
            .iter()
            .filter(|n| !is_lineage(n))
            .filter(|n| !table.keys.iter().any(|k| k == *n))
            .filter(|n| !(scd2 && **n == seq))
            .filter(|n| !gold.except_columns.iter().any(|c| c == *n))
            .map(|n| n.to_string())
            .collect();
        let tracked = attrs
            .iter()
            .filter(|a| **a != seq && !gold.track_history_except.contains(a))
            .cloned()
            .collect();
        let copied: Vec<String> = gold
            .lookups
            .iter()
            .flat_map(|l| l.columns.iter().cloned())
            .collect();
        if let Some(c) = copied
            .iter()
            .find(|c| names.contains(&c.as_str()) || copied.iter().filter(|d| d == c).count() > 1)
        {
            return Err(Error::Gold {
                table: gold.name.clone(),
                message: format!(
                    "its lookups copy a column {c}, which it already has (from silver.{} or another lookup)",
                    table.silver_name()
                ),
            });
        }
        let tiebreak = [INGESTED_AT, SOURCE_FILE]
            .iter()
            .filter(|c| names.contains(c))
            .map(|c| c.to_string())
            .collect();
        Ok(DimColumns {
            sk: gold.sk(),
            keys: table.keys.clone(),
            seq,
            attrs,
            tracked,
            tiebreak,
            copied,
            scd2,
            delete: super::deletes::condition(table, silver),
        })
    }

    /// The gold table's columns, in order.
    pub(super) fn output(&self) -> Vec<String> {
        let mut out = vec![self.sk.clone()];
        out.extend(self.keys.iter().cloned());
        out.extend(self.attrs.iter().cloned());
        out.extend(self.copied.iter().cloned());
        if self.scd2 {
            out.extend(gold_columns::SCD2.map(String::from));
        }
        out
    }
}

fn list(prefix: &str, names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{prefix}{}", q(n)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn join_on(a: &str, b: &str, keys: &[String]) -> String {
    keys.iter()
        .map(|k| format!("{a}.{k} = {b}.{k}", k = q(k)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The SQL that reads the whole silver history of every key in `changes` (`whole`: of every
/// key in silver), with (`tiebreak`) the columns that order rows with the same key and
/// sequence value. Unordered: [`history_order`] sorts it.
pub(super) fn history_sql(c: &DimColumns, whole: bool, tiebreak: bool) -> String {
    let s = q(&c.seq);
    let tiebreak: String = c
        .tiebreak
        .iter()
        .filter(|_| tiebreak)
        .map(|t| format!(", s.{}", q(t)))
        .collect();
    let attrs: String = c.attrs.iter().map(|a| format!(", s.{}", q(a))).collect();
    // Deletes are flagged over the silver row alone, before the join could make a column
    // of the condition ambiguous.
    let (silver, deletes) = match &c.delete {
        Some(condition) => (
            format!("(SELECT *, COALESCE(({condition}), false) AS __delete FROM silver)"),
            ", s.__delete",
        ),
        None => ("silver".to_string(), ""),
    };
    // When every silver row is a change (nothing consumed yet), the join with the changed
    // keys only drops NULL keys: a filter does that without hashing every key twice.
    let source = if whole {
        let not_null: String = c
            .keys
            .iter()
            .map(|k| format!(" AND s.{} IS NOT NULL", q(k)))
            .collect();
        format!("{silver} AS s WHERE s.{s} IS NOT NULL{not_null}")
    } else {
        format!(
            "{silver} AS s JOIN (SELECT DISTINCT {k} FROM changes) AS c ON {on} \
             WHERE s.{s} IS NOT NULL",
            k = list("", &c.keys),
            on = join_on("s", "c", &c.keys),
        )
    };
    format!(
        "SELECT {sk}, s.{s} AS __seq{attrs}{deletes}{tiebreak} FROM {source}",
        sk = list("s.", &c.keys),
    )
}

/// The order of a history's rows (from [`history_sql`]): by key, sequence value and, with
/// `tiebreak`, the preferred row first (latest `_ingested_at`, then `_source_file`,
/// descending). Sorting positions here instead of the rows in the query spares DataFusion's
/// sort and merge of every column (with `versions`' row encoding, a fifth of a dimension's
/// first build, perf). A single integer-like key with no tiebreak sorts as integer pairs.
pub(super) fn history_order(
    c: &DimColumns,
    history: &RecordBatch,
    tiebreak: bool,
) -> std::result::Result<Vec<u32>, arrow::error::ArrowError> {
    use crate::lake::ordered_i64;
    use arrow::compute::{SortColumn, SortOptions, lexsort_to_indices};
    let column = |name: &str| history_column(history, name);
    let seq = column("__seq")?;
    if let ([key], false) = (c.keys.as_slice(), tiebreak)
        && let (Some(key), Some(seq)) = (ordered_i64(&column(key)?), ordered_i64(&seq))
    {
        let mut rows: Vec<(i64, i64, u32)> = (key.values().iter().zip(seq.values()))
            .zip(0u32..)
            .map(|((k, s), i)| (*k, *s, i))
            .collect();
        rows.sort_unstable();
        return Ok(rows.into_iter().map(|(_, _, i)| i).collect());
    }
    let ascending = Some(SortOptions {
        descending: false,
        nulls_first: false,
    });
    let mut by = c
        .keys
        .iter()
        .map(|k| {
            Ok(SortColumn {
                values: column(k)?,
                options: ascending,
            })
        })
        .collect::<std::result::Result<Vec<_>, arrow::error::ArrowError>>()?;
    by.push(SortColumn {
        values: seq,
        options: ascending,
    });
    for t in c.tiebreak.iter().filter(|_| tiebreak) {
        by.push(SortColumn {
            values: column(t)?,
            options: Some(SortOptions {
                descending: true,
                nulls_first: true,
            }),
        });
    }
    Ok(lexsort_to_indices(&by, None)?.values().to_vec())
}

fn history_column(
    history: &RecordBatch,
    name: &str,
) -> std::result::Result<ArrayRef, arrow::error::ArrowError> {
    history
        .column_by_name(name)
        .cloned()
        .ok_or_else(|| arrow::error::ArrowError::SchemaError(format!("no column {name}")))
}

/// The versions of a history (see [`history_sql`]) taken in `order` (see [`history_order`]),
/// in one pass: for SCD2, every row
/// whose tracked values differ from the row before it of the same key starts a version that
/// ends where the next one starts; for SCD1, the latest row of each key. Rows repeating a
/// (key, sequence value) count once, the first (preferred) one. A delete (`__delete`, DLT's
/// `apply_as_deletes`) ends the key's open SCD2 version at its sequence value and starts
/// none, so the next change of the key opens a new version whatever its values; for SCD1 a
/// key whose latest row is a delete has no row. Returns the table `n`: keys,
/// attributes and, for SCD2, `valid_from` and `valid_to`, in key and sequence order; and
/// whether some (key, sequence value) repeats (then which row comes first matters).
pub(super) fn versions(
    c: &DimColumns,
    history: &RecordBatch,
    order: &[u32],
) -> std::result::Result<(RecordBatch, bool), arrow::error::ArrowError> {
    use arrow::array::{UInt32Array, make_comparator};
    use arrow::compute::SortOptions;
    use std::cmp::Ordering;
    let column = |name: &str| history_column(history, name);
    // Compared where needed, value by value: nulls equal nulls and floats compare by their
    // total order, as the row format did; most rows are a key's only one, so encoding every
    // tracked value (what that cost) is not needed.
    let same = |names: &[String]| {
        names
            .iter()
            .map(|n| {
                let a = column(n)?;
                make_comparator(a.as_ref(), a.as_ref(), SortOptions::default())
            })
            .collect::<std::result::Result<Vec<_>, arrow::error::ArrowError>>()
    };
    let keys = same(&c.keys)?;
    let seq = same(&["__seq".to_string()])?;
    let tracked = same(&c.tracked)?;
    let equal = |cmps: &[arrow::array::DynComparator], p: u32, i: u32| {
        cmps.iter()
            .all(|cmp| cmp(p as usize, i as usize) == Ordering::Equal)
    };
    // No tracked column: all rows of a key are equal, so only its first change makes a
    // version.
    let differs = |p: u32, i: u32| !equal(&tracked, p, i);
    let deletes = match history.column_by_name("__delete") {
        Some(d) => Some(
            d.as_boolean_opt()
                .cloned()
                .ok_or_else(|| arrow::error::ArrowError::SchemaError("__delete".into()))?,
        ),
        None => None,
    };
    let is_delete = |i: u32| deletes.as_ref().is_some_and(|d| d.value(i as usize));
    // The first row of each (key, sequence value): the only ones that count.
    let counted: Vec<u32> = order
        .iter()
        .enumerate()
        .filter(|&(j, &i)| {
            j == 0 || {
                let p = order[j - 1];
                !equal(&keys, p, i) || !equal(&seq, p, i)
            }
        })
        .map(|(_, &i)| i)
        .collect();
    let mut starts: Vec<u32> = Vec::new();
    let mut ends: Vec<Option<u32>> = Vec::new();
    let mut previous: Option<u32> = None;
    for &i in &counted {
        let same_key = previous.is_some_and(|p| equal(&keys, p, i));
        // Whether the key has an open version to end or compare with.
        let open = same_key && previous.is_some_and(|p| !is_delete(p));
        if c.scd2 {
            let changed = open && previous.is_some_and(|p| differs(p, i));
            if (is_delete(i) || changed)
                && let Some(end) = ends.last_mut().filter(|_| open)
            {
                *end = Some(i);
            }
            if !is_delete(i) && (!open || changed) {
                starts.push(i);
                ends.push(None);
            }
        } else if same_key {
            if let Some(last) = starts.last_mut() {
                *last = i;
            }
        } else {
            starts.push(i);
        }
        previous = Some(i);
    }
    if !c.scd2 {
        starts.retain(|&i| !is_delete(i));
    }
    let take_rows = UInt32Array::from(starts);
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for name in c.keys.iter().chain(&c.attrs) {
        let a = column(name)?;
        fields.push(arrow::datatypes::Field::new(
            name,
            a.data_type().clone(),
            true,
        ));
        arrays.push(arrow::compute::take(&a, &take_rows, None)?);
    }
    if c.scd2 {
        let seq = column("__seq")?;
        fields.push(arrow::datatypes::Field::new(
            VALID_FROM,
            seq.data_type().clone(),
            true,
        ));
        arrays.push(arrow::compute::take(&seq, &take_rows, None)?);
        fields.push(arrow::datatypes::Field::new(
            VALID_TO,
            seq.data_type().clone(),
            true,
        ));
        arrays.push(arrow::compute::take(&seq, &UInt32Array::from(ends), None)?);
    }
    let repeats = counted.len() < order.len();
    Ok((
        RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), arrays)?,
        repeats,
    ))
}

/// The SQL that compares the new versions (table `n`, from [`versions`]) of every key in
/// `changes` with `gold` (when `gold_columns` is given): the rows to write, with `__op` I
/// (insert), U (update) or D (delete), `__closed` (a current version got a `valid_to`),
/// `__period_only` (an update that changes only `valid_to`) and the stored surrogate keys
/// (NULL for an insert: [`numbered`] gives those).
pub(super) fn diff_sql(c: &DimColumns, gold_columns: Option<&HashSet<String>>) -> String {
    let k = list("", &c.keys);
    let touched = format!("touched AS (SELECT DISTINCT {k} FROM changes)");
    let attrs = |prefix: &str| {
        if c.attrs.is_empty() {
            String::new()
        } else {
            format!(", {}", list(prefix, &c.attrs))
        }
    };
    let period = if c.scd2 { ", valid_from, valid_to" } else { "" };
    let sk = q(&c.sk);
    let old = match gold_columns {
        Some(cols) => {
            let pick = |name: &str| {
                if cols.contains(name) {
                    format!("g.{}", q(name))
                } else {
                    format!("NULL AS {}", q(name))
                }
            };
            let mut picked = vec![format!("g.{sk}")];
            picked.extend(c.keys.iter().map(|k| format!("g.{}", q(k))));
            picked.extend(c.attrs.iter().map(|a| pick(a)));
            picked.extend(c.copied.iter().map(|a| pick(a)));
            if c.scd2 {
                picked.extend(gold_columns::PERIOD.map(|p| format!("g.{p}")));
            }
            format!(
                "o AS (SELECT {} FROM gold AS g JOIN touched AS c ON {})",
                picked.join(", "),
                join_on("g", "c", &c.keys)
            )
        }
        None => format!(
            "o AS (SELECT CAST(NULL AS BIGINT) AS {sk}, {k}{a}{copied}{period} FROM n WHERE false)",
            a = attrs(""),
            copied = c
                .copied
                .iter()
                .map(|a| format!(", NULL AS {}", q(a)))
                .collect::<String>(),
        ),
    };
    let mut differs: Vec<String> = c
        .attrs
        .iter()
        .map(|a| format!("(n.{a} IS DISTINCT FROM o.{a})", a = q(a)))
        .collect();
    let mut on = join_on("n", "o", &c.keys);
    let first_key = q(&c.keys[0]);
    // A stored SCD2 version whose attributes stay and whose end alone moves: its file can be
    // rewritten with only `valid_to` and `is_current` re-encoded (see `rewrite`).
    let period_only = if c.scd2 {
        let attrs_same = if differs.is_empty() {
            "true".to_string()
        } else {
            format!("NOT ({})", differs.join(" OR "))
        };
        format!(
            "COALESCE(n.{first_key} IS NOT NULL AND o.{sk} IS NOT NULL AND {attrs_same}, false)"
        )
    } else {
        "false".to_string()
    };
    if c.scd2 {
        differs.push("(n.valid_to IS DISTINCT FROM o.valid_to)".to_string());
        on.push_str(" AND n.valid_from = o.valid_from");
    }
    let differs = if differs.is_empty() {
        "false".to_string()
    } else {
        differs.join(" OR ")
    };
    let closed = if c.scd2 {
        "(o.valid_to IS NULL) AND (n.valid_to IS NOT NULL)"
    } else {
        "false"
    };
    let keys_coalesced = c
        .keys
        .iter()
        .map(|k| format!("COALESCE(n.{k}, o.{k}) AS {k}", k = q(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let n_period = if c.scd2 {
        ", n.valid_from AS valid_from, n.valid_to AS valid_to"
    } else {
        ""
    };
    let current = if c.scd2 {
        ", valid_from, valid_to, valid_to IS NULL AS is_current"
    } else {
        ""
    };
    // A version keeps the copied values it was written with (new ones get theirs later).
    let stored_copied: String = c
        .copied
        .iter()
        .map(|a| format!(", o.{a} AS {a}", a = q(a)))
        .collect();
    let copied: String = c.copied.iter().map(|a| format!(", {}", q(a))).collect();
    format!(
        "WITH {touched}, {old}, \
         d AS (SELECT o.{sk} AS __old_sk, \
            CASE WHEN n.{first_key} IS NULL THEN 'D' WHEN o.{sk} IS NULL THEN 'I' \
                 WHEN {differs} THEN 'U' ELSE 'S' END AS __op, \
            COALESCE({closed}, false) AS __closed, {period_only} AS __period_only, \
            {keys_coalesced}{na}{stored_copied}{n_period} \
            FROM n FULL OUTER JOIN o ON {on}) \
         SELECT __old_sk AS {sk}, {k}{a}{copied}{current}, __op, __closed, __period_only \
         FROM d WHERE __op <> 'S'",
        na = attrs("n."),
        a = attrs(""),
    )
}

/// The rows of [`diff_sql`] in one batch, the inserted versions numbered on from `max_sk` in
/// (keys, `valid_from`) order, as [`first_rows`] numbers a first build. The query's window
/// did this by sorting every row it gives (updates too) by operation first, on one thread.
pub(super) fn numbered(
    c: &DimColumns,
    schema: &SchemaRef,
    rows: &[RecordBatch],
    max_sk: i64,
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    use arrow::compute::{SortColumn, SortOptions, lexsort_to_indices};
    let batch = arrow::compute::concat_batches(schema, rows)?;
    let column = |name: &str| {
        batch.column_by_name(name).cloned().ok_or_else(|| {
            arrow::error::ArrowError::SchemaError(format!("no column {name} in the versions"))
        })
    };
    let op = column("__op")?;
    let op = op
        .as_string_opt::<i32>()
        .ok_or_else(|| arrow::error::ArrowError::SchemaError("__op is not text".into()))?;
    let inserted: Vec<u32> = (0..batch.num_rows())
        .filter(|&i| op.is_valid(i) && op.value(i) == "I")
        .map(|i| i as u32)
        .collect();
    if inserted.is_empty() {
        return Ok(batch);
    }
    let at = arrow::array::UInt32Array::from(inserted.clone());
    let mut by: Vec<&str> = c.keys.iter().map(String::as_str).collect();
    if c.scd2 {
        by.push(VALID_FROM);
    }
    let order = by
        .iter()
        .map(|name| {
            Ok(SortColumn {
                values: arrow::compute::take(&column(name)?, &at, None)?,
                options: Some(SortOptions {
                    descending: false,
                    nulls_first: false,
                }),
            })
        })
        .collect::<std::result::Result<Vec<_>, arrow::error::ArrowError>>()?;
    let order = lexsort_to_indices(&order, None)?;
    let (sk_index, _) = batch.schema().column_with_name(&c.sk).ok_or_else(|| {
        arrow::error::ArrowError::SchemaError(format!("no column {} in the versions", c.sk))
    })?;
    let stored = arrow::compute::cast(batch.column(sk_index), &DataType::Int64)?;
    let stored = stored.as_primitive::<arrow::datatypes::Int64Type>();
    let mut sks: Vec<Option<i64>> = stored.iter().collect();
    for (rank, j) in order.values().iter().enumerate() {
        sks[inserted[*j as usize] as usize] = Some(max_sk + 1 + rank as i64);
    }
    let mut columns = batch.columns().to_vec();
    columns[sk_index] = arrow::compute::cast(
        &(Arc::new(Int64Array::from(sks)) as ArrayRef),
        batch.column(sk_index).data_type(),
    )?;
    let fields: Vec<arrow::datatypes::FieldRef> = batch
        .schema()
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if i == sk_index {
                Arc::new(f.as_ref().clone().with_nullable(true))
            } else {
                Arc::clone(f)
            }
        })
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// What [`diff_sql`] gives when the table has no rows yet, without the query: every version
/// (table `n`, in (keys, `valid_from`) order as [`versions`] makes it) is inserted, numbered
/// on from `max_sk` in that order. A first build is most of a dimension's work, and the
/// query's outer join and window over every version cost it about a third.
pub(super) fn first_rows(
    c: &DimColumns,
    n: &RecordBatch,
    max_sk: i64,
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    use arrow::datatypes::Field;
    let rows = n.num_rows();
    let mut fields = vec![Field::new(&c.sk, DataType::Int64, true)];
    let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_iter_values(
        (1..=rows as i64).map(|i| max_sk + i),
    ))];
    let mut names: Vec<&str> = c.keys.iter().chain(&c.attrs).map(String::as_str).collect();
    if c.scd2 {
        names.extend(gold_columns::PERIOD);
    }
    for name in names {
        let (i, field) = n.schema_ref().column_with_name(name).ok_or_else(|| {
            arrow::error::ArrowError::SchemaError(format!("no column {name} in the versions"))
        })?;
        fields.push(field.clone());
        columns.push(n.column(i).clone());
    }
    // A version with an end is closed (as the query has it: no stored row was open).
    let ended: Vec<bool> = match c.scd2.then(|| columns.last()).flatten() {
        Some(valid_to) => (0..rows).map(|i| valid_to.is_valid(i)).collect(),
        None => vec![false; rows],
    };
    if c.scd2 {
        let current: BooleanArray = ended.iter().map(|e| Some(!e)).collect();
        fields.push(Field::new(IS_CURRENT, DataType::Boolean, true));
        columns.push(Arc::new(current));
    }
    fields.push(Field::new("__op", DataType::Utf8, true));
    columns.push(Arc::new(StringArray::from_iter_values(
        std::iter::repeat_n("I", rows),
    )));
    fields.push(Field::new("__closed", DataType::Boolean, true));
    columns.push(Arc::new(BooleanArray::from(ended)));
    fields.push(Field::new("__period_only", DataType::Boolean, false));
    columns.push(Arc::new(BooleanArray::from(vec![false; rows])));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// Brings one dimension up to date with its silver table, computing versions in ranges of
/// about `chunk_keys` changed keys (`settings.dimension_chunk_keys`), and writing an existing
/// table in one copy-on-write commit that rewrites only the files holding a changed version.
pub(super) async fn build(
    lake: &Lake,
    table: &TableSpec,
    all: &[TableSpec],
    chunk_keys: usize,
    built: &super::Built,
    report: &mut TableReport,
) -> Result<()> {
    let Some(gold) = &table.gold else {
        return Ok(());
    };
    let silver_name = table.silver_name();
    let name = gold.name.as_str();
    let path = layout::gold_table(name);
    let target = lake.delta_table(&path).await?;
    let app_id = layout::app_id::gold_consumed(&silver_name);
    let consumed = recorded(&target, &app_id, name).await?;
    let max_sk = recorded(&target, layout::app_id::SURROGATE_KEY, name)
        .await?
        .unwrap_or(0);
    let Some(changes) = silver_changes(lake, &silver_name, consumed, None).await? else {
        info!("Silver has no table yet; nothing to build.");
        return Ok(());
    };
    report.input_version = Some(changes.version);
    report.version = target.version();
    if changes.files.is_empty() {
        return Ok(());
    }
    let ctx = super::session();
    register(&ctx, "silver_all", &changes.table, None).await?;
    register(&ctx, "changes_all", &changes.table, Some(&changes.files)).await?;
    let silver_schema = schema_of(&changes.table, &silver_name)?;
    let columns = DimColumns::new(table, gold, &silver_schema)?;
    if let Some(condition) = gold.apply_as_truncates.as_deref().filter(|_| !columns.scd2) {
        super::deletes::truncate(&ctx, &columns.seq, condition, name).await?;
    }
    // Key ranges are disjoint, so each chunk can diff against the table as it was at the
    // start: no chunk writes a key of another.
    let gold_columns: Option<HashSet<String>> = match target.version() {
        Some(_) => {
            register(&ctx, "gold_all", &target, None).await?;
            let schema = schema_of(&target, name)?;
            Some(schema.fields().iter().map(|f| f.name().clone()).collect())
        }
        None => None,
    };
    report.rows_in = ctx
        .table("changes_all")
        .await
        .map_err(df_err(name, "reading silver changes"))?
        .count()
        .await
        .map_err(df_err(name, "reading silver changes"))? as u64;
    let mut outriggers = Vec::with_capacity(gold.lookups.len());
    for l in &gold.lookups {
        outriggers.push(Outrigger::open(lake, l, all, name).await?);
    }
    let ranges = key_ranges(&ctx, &columns.keys[0], chunk_keys, name).await?;
    debug!(
        rows_in = report.rows_in,
        ranges = ranges.len(),
        "Split the changed keys."
    );
    let output = columns.output();
    let mut target = target;
    let mut sk_base = max_sk;
    // An existing table changes in one copy-on-write commit (see `rewrite`), unless the
    // versions bring a column the table lacks: then each range merges, adding it.
    let mut rewrite = match &gold_columns {
        Some(stored) if output.iter().all(|c| stored.contains(c)) => {
            Some(Rewrite::new(&target, name, &columns.sk)?)
        }
        _ => None,
    };
    // What the single commit will change, for the facts waiting to resolve against it.
    let base = target.version();
    let mut staged = match (&rewrite, base) {
        (Some(_), Some(base)) if built.announces(name) => Some(super::Staged {
            base,
            consumed: changes.version as i64,
            rows: Vec::new(),
            replaced: Default::default(),
            taken: Default::default(),
        }),
        _ => None,
    };
    // What the facts' lookups read of staged versions.
    let mut staged_columns: Vec<&str> = columns.keys.iter().map(String::as_str).collect();
    staged_columns.push(&columns.sk);
    if columns.scd2 {
        staged_columns.extend(gold_columns::PERIOD);
    }
    staged_columns.extend(built.carried(name).iter().map(String::as_str));
    for (i, range) in ranges.iter().enumerate() {
        let last = i + 1 == ranges.len();
        let mut views = vec![("silver", "silver_all"), ("changes", "changes_all")];
        if gold_columns.is_some() {
            views.push(("gold", "gold_all"));
        }
        for (view, base) in views {
            let _ = ctx.deregister_table(view);
            let df = ctx
                .table(base)
                .await
                .map_err(df_err(name, "reading a key range"))?;
            let df = match range_filter(&columns.keys[0], range) {
                Some(filter) => df
                    .filter(filter)
                    .map_err(df_err(name, "reading a key range"))?,
                None => df,
            };
            ctx.register_table(view, df.into_view())
                .map_err(df_err(name, "reading a key range"))?;
        }
        // Silver holds each (key, sequence value) once, so the history is read without the
        // columns that order repeats (the lineage text cost most of the sort), and again
        // with them only if one repeats after all.
        let mut tiebreak = columns.tiebreak.is_empty();
        let (history, new_versions) = loop {
            let (history_schema, history) = collected(
                &ctx,
                &history_sql(&columns, consumed.is_none(), tiebreak),
                (name, "reading the history of the changed keys"),
            )
            .await?;
            let history = arrow::compute::concat_batches(&history_schema, &history)
                .map_err(|e| Error::arrow(name, e))?;
            let order =
                history_order(&columns, &history, tiebreak).map_err(|e| Error::arrow(name, e))?;
            let (new_versions, repeats) =
                versions(&columns, &history, &order).map_err(|e| Error::arrow(name, e))?;
            if repeats && !tiebreak {
                debug!(
                    range = i,
                    "A key repeats a sequence value; reading again in order."
                );
                tiebreak = true;
                continue;
            }
            break (history, new_versions);
        };
        debug!(
            range = i,
            history = history.num_rows(),
            versions = new_versions.num_rows(),
            "Read the history of a key range."
        );
        drop(history);
        let (schema, rows) = if gold_columns.is_none() {
            let rows =
                first_rows(&columns, &new_versions, sk_base).map_err(|e| Error::arrow(name, e))?;
            (rows.schema(), vec![rows])
        } else {
            let _ = ctx.deregister_table("n");
            ctx.register_batch("n", new_versions)
                .map_err(df_err(name, "staging the versions"))?;
            let (schema, rows) = collected(
                &ctx,
                &diff_sql(&columns, gold_columns.as_ref()),
                (name, "computing versions"),
            )
            .await?;
            // Registered, the range's versions would live on beside the next range's
            // history (8 MB for dim_user's 62,500 keys, at an incremental run's peak).
            let _ = ctx.deregister_table("n");
            let rows =
                numbered(&columns, &schema, &rows, sk_base).map_err(|e| Error::arrow(name, e))?;
            (rows.schema(), vec![rows])
        };
        debug!(range = i, "Compared the versions with the table.");
        let rows = rows
            .iter()
            .map(|batch| with_copied(batch, &outriggers, name))
            .collect::<Result<Vec<_>>>()?;
        let schema = with_copied(&RecordBatch::new_empty(schema), &outriggers, name)?.schema();
        let [inserted, updated, deleted, closed] = op_counts(&rows, name)?;
        report.inserted += inserted;
        report.updated += updated;
        report.deleted += deleted;
        report.closed += closed;
        sk_base += inserted as i64;
        if let Some(rewrite) = rewrite.as_mut() {
            // Inserted and updated versions are written now; an updated or deleted one's
            // stored row goes when the rewrite commits.
            // A version whose end alone moves is ended where it is stored; the facts see
            // it as any other replaced version.
            for batch in &rows {
                let op = op_column(batch, name)?;
                let in_place = match batch.column_by_name("__period_only") {
                    Some(p) if rewrite.ends_in_place() => p.as_boolean_opt().cloned(),
                    _ => None,
                }
                .unwrap_or_else(|| BooleanArray::from(vec![false; batch.num_rows()]));
                let new = arrow::compute::kernels::cmp::neq(op, &StringArray::new_scalar("D"))
                    .map_err(|e| Error::arrow(name, e))?;
                let written =
                    arrow::compute::and_not(&new, &in_place).map_err(|e| Error::arrow(name, e))?;
                rewrite
                    .write(
                        &arrow::compute::filter_record_batch(batch, &written)
                            .map_err(|e| Error::arrow(name, e))?,
                    )
                    .await?;
                rewrite.end(batch, &in_place)?;
                rewrite.replace(replaced_keys(
                    batch,
                    op,
                    &columns.sk,
                    Some(&in_place),
                    name,
                )?);
                if let Some(staged) = staged.as_mut() {
                    let read: Vec<usize> = (staged_columns.iter())
                        .filter_map(|c| batch.schema().index_of(c).ok())
                        .collect();
                    let lookups_read = batch.project(&read).map_err(|e| Error::arrow(name, e))?;
                    staged.rows.push(
                        arrow::compute::filter_record_batch(&lookups_read, &new)
                            .map_err(|e| Error::arrow(name, e))?,
                    );
                    staged
                        .replaced
                        .extend(replaced_keys(batch, op, &columns.sk, None, name)?);
                }
            }
            continue;
        }
        // A first build, or a table that gains a column: a commit per range. The highest
        // surrogate key goes with every commit, the consumed silver version only with the
        // last: a run stopped between ranges is redone, and finds the ranges already
        // written unchanged.
        let mut txns = vec![Transaction::new(layout::app_id::SURROGATE_KEY, sk_base)];
        if last {
            txns.push(Transaction::new(&app_id, changes.version as i64));
        }
        target = if target.version().is_none() {
            // First build: the unknown member comes with the first chunk, which creates the table.
            let (schema, mut batches) = project(&rows, &schema, &output, name)?;
            batches.insert(0, unknown_member(&schema, &columns)?);
            append(target, name, schema, batches, txns).await?
        } else if updated + deleted == 0 {
            if inserted == 0 && !last {
                // Nothing differs in this range (identical or excluded-column changes).
                continue;
            }
            // New versions only (or progress only): no row of the table changes.
            let (_, batches) = project(&rows, &schema, &output, name)?;
            let stored = schema_of(&target, name)?;
            append(target, name, stored, batches, txns).await?
        } else {
            let sk = columns.sk.clone();
            merge_rows(
                &ctx,
                target,
                name,
                rows,
                col("t", &sk).eq(col("s", &sk)),
                txns,
                |m| {
                    m.when_matched_delete(|d| d.predicate(op_is("D")))?
                        .when_matched_update(|u| update_from_source(u, op_is("U"), &output))?
                        .when_not_matched_insert(|i| insert_from_source(i, op_is("I"), &output))
                },
            )
            .await?
        };
    }
    if let Some(rewrite) = rewrite {
        let txns = vec![
            Transaction::new(layout::app_id::SURROGATE_KEY, sk_base),
            Transaction::new(&app_id, changes.version as i64),
        ];
        target = if rewrite.is_empty() {
            // Nothing differs (identical or excluded-column changes): progress only.
            let stored = schema_of(&target, name)?;
            append(target, name, stored, Vec::new(), txns).await?
        } else {
            debug!("Wrote the new versions; rewriting the files they replace.");
            if let Some(staged) = staged {
                built.stage(name, staged);
            }
            rewrite.commit(&ctx, target, txns).await?
        };
    }
    report.version = target.version();
    report.status = Status::Ok;
    info!(
        rows_in = report.rows_in,
        inserted = report.inserted,
        updated = report.updated,
        deleted = report.deleted,
        closed = report.closed,
        chunks = ranges.len(),
        version = report.version,
        "Built the dimension."
    );
    Ok(())
}

/// The rows of a query, with their schema (also when there are none).
async fn collected(
    ctx: &SessionContext,
    sql: &str,
    (name, context): (&str, &str),
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let df = ctx.sql(sql).await.map_err(df_err(name, context))?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let rows = df.collect().await.map_err(df_err(name, context))?;
    Ok((schema, rows))
}

/// A column of computed versions (see [`diff_sql`]).
fn computed<'a>(batch: &'a RecordBatch, column: &str, name: &str) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(column)
        .ok_or_else(|| Error::UnknownColumn {
            table: name.to_string(),
            column: column.to_string(),
            available: "(computed versions)".to_string(),
        })
}

/// How many computed versions insert, update, delete, and update a current version with an
/// end (`__closed`): one pass over the rows.
fn op_counts(rows: &[RecordBatch], name: &str) -> Result<[u64; 4]> {
    let mut counts = [0u64; 4];
    for batch in rows {
        let op = op_column(batch, name)?;
        let closed = batch
            .column_by_name("__closed")
            .and_then(|c| c.as_boolean_opt());
        for (i, op) in op.iter().enumerate() {
            match op {
                Some("I") => counts[0] += 1,
                Some("U") => {
                    counts[1] += 1;
                    if closed.is_some_and(|c| c.is_valid(i) && c.value(i)) {
                        counts[3] += 1;
                    }
                }
                Some("D") => counts[2] += 1,
                _ => {}
            }
        }
    }
    Ok(counts)
}

/// The `__op` column of computed versions.
fn op_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray> {
    computed(batch, "__op", name)?
        .as_string_opt::<i32>()
        .ok_or_else(|| Error::Gold {
            table: name.to_string(),
            message: "the computed __op column is not text".to_string(),
        })
}

/// The surrogate keys of the updated and deleted versions of a batch (but those `except`
/// picks): their stored rows go.
fn replaced_keys(
    batch: &RecordBatch,
    op: &StringArray,
    sk: &str,
    except: Option<&BooleanArray>,
    name: &str,
) -> Result<Vec<i64>> {
    let sks = super::rewrite::surrogate_keys(computed(batch, sk, name)?, name)?;
    let excepted = |i: usize| except.is_some_and(|e| e.is_valid(i) && e.value(i));
    Ok((0..batch.num_rows())
        .filter(|&i| op.is_valid(i) && matches!(op.value(i), "U" | "D") && sks.is_valid(i))
        .filter(|&i| !excepted(i))
        .map(|i| sks.value(i))
        .collect())
}

/// `batch` (rows with `__op`) with the columns copied from other dimensions: an inserted
/// version takes the current member's values, any other keeps those it has.
fn with_copied(batch: &RecordBatch, outriggers: &[Outrigger], name: &str) -> Result<RecordBatch> {
    if outriggers.is_empty() {
        return Ok(batch.clone());
    }
    let op = op_column(batch, name)?;
    let inserted = arrow::compute::kernels::cmp::eq(op, &StringArray::new_scalar("I"))
        .map_err(|e| Error::arrow(name, e))?;
    let mut fields: Vec<arrow::datatypes::FieldRef> =
        batch.schema().fields().iter().cloned().collect();
    let mut columns = batch.columns().to_vec();
    for outrigger in outriggers {
        for (column, new) in outrigger.values(batch, name)? {
            let value = match batch.column_by_name(&column) {
                Some(stored) => {
                    let stored = arrow::compute::cast(stored, new.data_type())
                        .map_err(|e| Error::arrow(name, e))?;
                    arrow::compute::kernels::zip::zip(&inserted, &new, &stored)
                        .map_err(|e| Error::arrow(name, e))?
                }
                None => new,
            };
            let field = Arc::new(arrow::datatypes::Field::new(
                &column,
                value.data_type().clone(),
                true,
            ));
            match fields.iter().position(|f| *f.name() == column) {
                Some(i) => {
                    fields[i] = field;
                    columns[i] = value;
                }
                None => {
                    fields.push(field);
                    columns.push(value);
                }
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| Error::arrow(name, e))
}

/// A range of the first key column, `[low, high)`; `None` is unbounded.
type KeyRange = (Option<ScalarValue>, Option<ScalarValue>);

/// Splits the changed keys into ranges of about `per_range` distinct values of the first key
/// column (one unbounded range when there are fewer), so a dimension's memory follows the
/// range, not the table.
async fn key_ranges(
    ctx: &SessionContext,
    first_key: &str,
    per_range: usize,
    name: &str,
) -> Result<Vec<KeyRange>> {
    use DataType::*;
    let fail = || df_err(name, "splitting the changed keys");
    let key = q(first_key);
    let per_range = per_range.max(1);
    let df = ctx
        .sql(&format!(
            "SELECT {key} AS k FROM changes_all WHERE {key} IS NOT NULL"
        ))
        .await
        .map_err(fail())?;
    let key_type = df.schema().field(0).data_type().clone();
    let bounds: Vec<ScalarValue> = if matches!(
        key_type,
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32
    ) {
        // Integer keys are made distinct and ordered here, by a bitmap when dense: the
        // query's hash aggregate and sort were 7% of a first build of a million keys.
        let batches = df.collect().await.map_err(fail())?;
        let mut values = Vec::with_capacity(batches.iter().map(|b| b.num_rows()).sum());
        for batch in &batches {
            let column = crate::lake::int_column(batch.column(0)).ok_or_else(|| Error::Gold {
                table: name.to_string(),
                message: format!("its key {first_key} is not an integer"),
            })?;
            values.extend(column.iter().flatten());
        }
        let distinct = distinct_ascending(values);
        starts(distinct.len(), per_range)
            .map(|i| ScalarValue::Int64(Some(distinct[i])).cast_to(&key_type))
            .collect::<datafusion::error::Result<_>>()
            .map_err(fail())?
    } else {
        let batches = df
            .distinct()
            .and_then(|d| d.sort(vec![datafusion::prelude::col("k").sort(true, false)]))
            .map_err(fail())?
            .collect()
            .await
            .map_err(fail())?;
        let at: Vec<(usize, usize)> = batches
            .iter()
            .enumerate()
            .flat_map(|(b, batch)| (0..batch.num_rows()).map(move |row| (b, row)))
            .collect();
        starts(at.len(), per_range)
            .map(|i| ScalarValue::try_from_array(batches[at[i].0].column(0), at[i].1))
            .collect::<datafusion::error::Result<_>>()
            .map_err(fail())?
    };
    let mut ranges = Vec::with_capacity(bounds.len() + 1);
    let mut low = None;
    for bound in bounds {
        ranges.push((low, Some(bound.clone())));
        low = Some(bound);
    }
    ranges.push((low, None));
    Ok(ranges)
}

/// Where each range after the first starts among `total` ordered distinct keys, `per_range`
/// apart (none when they fit one range).
fn starts(total: usize, per_range: usize) -> impl Iterator<Item = usize> {
    (1..)
        .map(move |j| j * per_range)
        .take_while(move |&p| total > per_range && p < total)
}

/// The distinct values of `values`, ascending: by a bitmap over their range when it is dense
/// (a dimension's keys mostly are), else by sorting.
fn distinct_ascending(mut values: Vec<i64>) -> Vec<i64> {
    let (Some(&lo), Some(&hi)) = (values.iter().min(), values.iter().max()) else {
        return values;
    };
    let width = (i128::from(hi) - i128::from(lo) + 1) as u128;
    if width > 64 * values.len() as u128 {
        values.sort_unstable();
        values.dedup();
        return values;
    }
    let mut seen = vec![0u64; (width as usize).div_ceil(64)];
    for &v in &values {
        let at = (v - lo) as usize;
        seen[at / 64] |= 1 << (at % 64);
    }
    let mut out = Vec::with_capacity(values.len());
    for (w, &word) in seen.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            out.push(lo + (w * 64 + bits.trailing_zeros() as usize) as i64);
            bits &= bits - 1;
        }
    }
    out
}

/// The filter of one key range; NULL keys fall in the first.
fn range_filter(first_key: &str, range: &KeyRange) -> Option<Expr> {
    let key = datafusion::prelude::col(datafusion::common::Column::from_name(first_key));
    match range {
        (None, None) => None,
        (None, Some(high)) => Some(key.clone().lt(lit(high.clone())).or(key.is_null())),
        (Some(low), None) => Some(key.gt_eq(lit(low.clone()))),
        (Some(low), Some(high)) => Some(
            key.clone()
                .gt_eq(lit(low.clone()))
                .and(key.lt(lit(high.clone()))),
        ),
    }
}

/// The unknown member: surrogate key -1, NULL business keys, "Unknown" for text
/// attributes, current.
fn unknown_member(schema: &SchemaRef, c: &DimColumns) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| -> ArrayRef {
            let name = f.name();
            if *name == c.sk {
                Arc::new(Int64Array::from(vec![-1]))
            } else if c.scd2 && name == IS_CURRENT {
                Arc::new(BooleanArray::from(vec![true]))
            } else if (c.attrs.contains(name) || c.copied.contains(name))
                && matches!(
                    f.data_type(),
                    DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
                )
            {
                let text: ArrayRef = Arc::new(StringArray::from(vec!["Unknown"]));
                arrow::compute::cast(&text, f.data_type())
                    .unwrap_or_else(|_| new_null_array(f.data_type(), 1))
            } else {
                new_null_array(f.data_type(), 1)
            }
        })
        .collect();
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| Error::arrow("the unknown member", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, TimeUnit};

    fn users() -> (TableSpec, Schema) {
        let pipeline =
            crate::config::Pipeline::parse(crate::config::DEFAULT_PIPELINE, "p").unwrap();
        let table = pipeline.select(&["DimUser".to_string()]).unwrap().remove(0);
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let schema = Schema::new(vec![
            Field::new("user_id", DataType::Int32, true),
            Field::new("user_name", DataType::Utf8, true),
            Field::new("country", DataType::Utf8, true),
            Field::new("updated_at", ts, true),
            Field::new("_source_file", DataType::Utf8, true),
            Field::new("_ingested_at", DataType::Utf8, true),
        ]);
        (table, schema)
    }

    #[test]
    fn a_history_is_ordered_by_key_sequence_and_preferred_row() {
        let (table, schema) = users();
        let c = DimColumns::new(&table, &table.gold.clone().unwrap(), &schema).unwrap();
        // Pseudo-random rows with few keys, sequence values and lineage, so all of them tie.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % m) as i64
        };
        let rows: Vec<(i64, i64, i64, i64)> = (0..400)
            .map(|_| (next(20) - 5, next(6), next(3), next(3)))
            .collect();
        let text = |v: i64| format!("t{v}");
        let history = |key: ArrayRef| {
            RecordBatch::try_new(
                Arc::new(Schema::new(vec![
                    Field::new("user_id", key.data_type().clone(), true),
                    Field::new("__seq", DataType::Int64, true),
                    Field::new("_ingested_at", DataType::Utf8, true),
                    Field::new("_source_file", DataType::Utf8, true),
                ])),
                vec![
                    key,
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                    Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|r| text(r.2)),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|r| text(r.3)),
                    )),
                ],
            )
            .unwrap()
        };
        let integers = history(Arc::new(arrow::array::Int32Array::from_iter_values(
            rows.iter().map(|r| r.0 as i32),
        )));
        // Text keys order as text: "-1" < "-5" < "0" < "10" < "2".
        let texts = history(Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.0.to_string()),
        )));
        let check = |h: &RecordBatch, tiebreak: bool, key: &dyn Fn(i64) -> String| {
            let order = history_order(&c, h, tiebreak).unwrap();
            let mut sorted: Vec<usize> = order.iter().map(|&i| i as usize).collect();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..rows.len()).collect::<Vec<_>>(), "a permutation");
            let sort_key = |i: u32| {
                let r = rows[i as usize];
                let preferred = if tiebreak { (-r.2, -r.3) } else { (0, 0) };
                (key(r.0), r.1, preferred)
            };
            for pair in order.windows(2) {
                assert!(
                    sort_key(pair[0]) <= sort_key(pair[1]),
                    "rows {pair:?} out of order (tiebreak {tiebreak})"
                );
            }
        };
        let numeric = |k: i64| format!("{:020}", k + 1_000_000);
        check(&integers, false, &numeric);
        check(&integers, true, &numeric);
        check(&texts, false, &|k| k.to_string());
        check(&texts, true, &|k| k.to_string());
    }

    #[test]
    fn roles_leave_out_lineage_and_the_sequence_column() {
        let (table, schema) = users();
        let gold = table.gold.clone().unwrap();
        let c = DimColumns::new(&table, &gold, &schema).unwrap();
        assert_eq!(c.sk, "user_sk");
        assert_eq!(c.attrs, ["user_name", "country"]);
        assert_eq!(c.tracked, ["user_name", "country"]);
        assert_eq!(c.tiebreak, ["_ingested_at", "_source_file"]);
        assert_eq!(
            c.output(),
            [
                "user_sk",
                "user_id",
                "user_name",
                "country",
                VALID_FROM,
                VALID_TO,
                IS_CURRENT
            ]
        );
        let mut gold1 = gold.clone();
        gold1.scd_type = 1;
        gold1.track_history_except = vec!["country".into()];
        let c1 = DimColumns::new(&table, &gold1, &schema).unwrap();
        assert_eq!(c1.attrs, ["user_name", "country", "updated_at"]);
        assert_eq!(c1.tracked, ["user_name"]);
    }

    #[tokio::test]
    async fn a_first_build_numbers_the_versions_as_the_diff_query_does() {
        let (table, schema) = users();
        let ts = |v: i64| Some(v);
        for scd in [2, 1] {
            let mut gold = table.gold.clone().unwrap();
            gold.scd_type = scd;
            let c = DimColumns::new(&table, &gold, &schema).unwrap();
            // Sorted history as `history_sql` gives it: three keys, key 2 changing twice
            // (once back to a value it had), key 5 repeating itself.
            let history = RecordBatch::try_new(
                Arc::new(Schema::new(vec![
                    Field::new("user_id", DataType::Int32, true),
                    Field::new("__seq", DataType::Int64, true),
                    Field::new("user_name", DataType::Utf8, true),
                    Field::new("country", DataType::Utf8, true),
                    Field::new("updated_at", DataType::Int64, true),
                ])),
                vec![
                    Arc::new(arrow::array::Int32Array::from(vec![1, 2, 2, 2, 5, 5])),
                    Arc::new(Int64Array::from(vec![
                        ts(10),
                        ts(1),
                        ts(4),
                        ts(9),
                        ts(3),
                        ts(7),
                    ])),
                    Arc::new(StringArray::from(vec!["a", "b", "c", "b", "e", "e"])),
                    Arc::new(StringArray::from(vec![
                        Some("X"),
                        None,
                        Some("Y"),
                        None,
                        Some("Z"),
                        Some("Z"),
                    ])),
                    Arc::new(Int64Array::from(vec![10, 1, 4, 9, 3, 7])),
                ],
            )
            .unwrap();
            let (n, repeats) = versions(&c, &history, &[0, 1, 2, 3, 4, 5]).unwrap();
            assert!(!repeats, "no (key, sequence value) comes twice");
            // The rows as a query hands them over, in no order: sorted, the same versions.
            let shuffled = arrow::compute::take_record_batch(
                &history,
                &arrow::array::UInt32Array::from(vec![3, 5, 0, 2, 4, 1]),
            )
            .unwrap();
            let order = history_order(&c, &shuffled, false).unwrap();
            assert_eq!(order, [2, 5, 3, 0, 4, 1]);
            assert_eq!(versions(&c, &shuffled, &order).unwrap(), (n.clone(), false));
            let repeated = arrow::compute::take_record_batch(
                &history,
                &arrow::array::UInt32Array::from(vec![0, 1, 2, 2, 3, 4, 5]),
            )
            .unwrap();
            let order = history_order(&c, &repeated, false).unwrap();
            assert!(
                versions(&c, &repeated, &order).unwrap().1,
                "key 2 at 4 comes twice"
            );
            let ctx = SessionContext::new();
            ctx.register_batch("n", n.clone()).unwrap();
            ctx.register_batch("changes", n.project(&[0]).unwrap())
                .unwrap();
            let by_sql = ctx.sql(&diff_sql(&c, None)).await.unwrap();
            let schema: SchemaRef = Arc::new(by_sql.schema().as_arrow().clone());
            let by_sql = by_sql.collect().await.unwrap();
            let by_sql = numbered(&c, &schema, &by_sql, 40).unwrap();
            let order =
                arrow::compute::sort_to_indices(by_sql.column_by_name(&c.sk).unwrap(), None, None)
                    .unwrap();
            let by_sql = arrow::compute::take_record_batch(&by_sql, &order).unwrap();
            let direct = first_rows(&c, &n, 40).unwrap();
            assert_eq!(direct.num_rows(), if scd == 2 { 5 } else { 3 });
            assert_eq!(direct.num_columns(), by_sql.num_columns());
            for (field, column) in by_sql.schema().fields().iter().zip(by_sql.columns()) {
                let mine = direct.column_by_name(field.name()).unwrap();
                let theirs = arrow::compute::cast(column, mine.data_type()).unwrap();
                assert_eq!(
                    mine.as_ref(),
                    theirs.as_ref(),
                    "SCD{scd} column {}",
                    field.name()
                );
            }
        }
    }

    #[test]
    fn unknown_columns_are_named_with_the_ones_there() {
        let (table, schema) = users();
        let mut gold = table.gold.clone().unwrap();
        gold.track_history_except = vec!["subscription".into()];
        let err = DimColumns::new(&table, &gold, &schema)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("subscription") && err.contains("user_name"),
            "{err}"
        );
    }
    #[test]
    fn key_ranges_split_distinct_keys_as_sorting_them_does() {
        // Dense (bitmap) and spread-out (sort) keys, repeated, negative and unordered.
        let mut next = super::super::scrambled(11u64);
        for spread in [1i64, 1_000_003] {
            let values: Vec<i64> = (0..5_000)
                .map(|_| (next(3_000) as i64 - 1_000) * spread)
                .collect();
            let mut expected = values.clone();
            expected.sort_unstable();
            expected.dedup();
            assert_eq!(distinct_ascending(values), expected, "spread {spread}");
        }
        assert!(distinct_ascending(Vec::new()).is_empty());
        assert_eq!(starts(10, 10).count(), 0);
        assert_eq!(starts(11, 10).collect::<Vec<_>>(), [10]);
        assert_eq!(starts(25, 10).collect::<Vec<_>>(), [10, 20]);
    }

    #[test]
    fn inserted_versions_are_numbered_in_key_and_start_order_after_the_largest_key() {
        let (table, schema) = users();
        let c = DimColumns::new(&table, table.gold.as_ref().unwrap(), &schema).unwrap();
        assert!(c.scd2);
        // Unordered, as a hash join gives them: updates keep their keys, inserts get 41...
        let rows = |ops: &[(Option<i64>, i32, i64, &str)]| {
            RecordBatch::try_new(
                Arc::new(Schema::new(vec![
                    Field::new("user_sk", DataType::Int64, true),
                    Field::new("user_id", DataType::Int32, true),
                    Field::new(VALID_FROM, DataType::Int64, true),
                    Field::new("__op", DataType::Utf8, true),
                ])),
                vec![
                    Arc::new(Int64Array::from(
                        ops.iter().map(|o| o.0).collect::<Vec<_>>(),
                    )),
                    Arc::new(arrow::array::Int32Array::from(
                        ops.iter().map(|o| o.1).collect::<Vec<_>>(),
                    )),
                    Arc::new(Int64Array::from(
                        ops.iter().map(|o| o.2).collect::<Vec<_>>(),
                    )),
                    Arc::new(StringArray::from(
                        ops.iter().map(|o| o.3).collect::<Vec<_>>(),
                    )),
                ],
            )
            .unwrap()
        };
        let first = rows(&[
            (None, 7, 30, "I"),
            (Some(3), 2, 10, "U"),
            (None, 7, 20, "I"),
        ]);
        let second = rows(&[(None, 2, 50, "I"), (Some(9), 9, 5, "D"), (None, 1, 99, "I")]);
        let out = numbered(&c, &first.schema(), &[first.clone(), second], 40).unwrap();
        let sks: Vec<Option<i64>> = out
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .iter()
            .collect();
        // (1, 99) -> 41, (2, 50) -> 42, (7, 20) -> 43, (7, 30) -> 44.
        assert_eq!(
            sks,
            [Some(44), Some(3), Some(43), Some(42), Some(9), Some(41)]
        );
        // Nothing inserted: the rows as they are.
        let kept = rows(&[(Some(3), 2, 10, "U")]);
        assert_eq!(
            numbered(&c, &kept.schema(), std::slice::from_ref(&kept), 40).unwrap(),
            kept
        );
    }
}
