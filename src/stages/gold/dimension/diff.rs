//! The new versions against the stored ones: which are inserted, updated (or only ended),
//! or deleted, with surrogate keys for the inserted ones. A first build has nothing stored:
//! every version is inserted, and [`changes`] takes a fast path without the query.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::prelude::SessionContext;

use super::super::df_err;
use super::columns::{DimColumns, join_on, list};
use super::write::collected;
use crate::config::ident::quote_ansi as q;
use crate::error::{Error, Result};
use crate::lake::layout::gold_columns::{self, IS_CURRENT, VALID_FROM, VALID_TO};

/// The rows that bring the stored table to the new versions `n` of the changed keys (see
/// `history::versions`), with `__op` I (insert), U (update) or D (delete), `__closed`,
/// `__period_only`, and surrogate keys numbered on from `max_sk` for the inserted ones.
/// `stored`: the table's columns, `None` before its first commit. The table is compared
/// by [`diff_sql`]; a first build, with nothing stored, takes [`first_rows`] instead.
/// `held`: `gold` holds exactly the stored rows of the changed keys (see `in_order`), so
/// they are not joined with the changes' keys again.
pub(super) async fn changes(
    ctx: &SessionContext,
    c: &DimColumns,
    n: RecordBatch,
    (stored, held): (Option<&HashSet<String>>, bool),
    max_sk: i64,
    name: &str,
) -> Result<RecordBatch> {
    let Some(stored) = stored else {
        return first_rows(c, &n, max_sk).map_err(|e| Error::arrow(name, e));
    };
    let _ = ctx.deregister_table("n");
    ctx.register_batch("n", n)
        .map_err(df_err(name, "staging the versions"))?;
    let (schema, rows) = collected(
        ctx,
        &diff_sql(c, Some(stored), held),
        (name, "computing versions"),
    )
    .await?;
    // Registered, the range's versions would live on beside the next range's history.
    let _ = ctx.deregister_table("n");
    numbered(c, &schema, &rows, max_sk).map_err(|e| Error::arrow(name, e))
}

/// The SQL that compares the new versions (table `n`, from [`versions`]) of every key in
/// `changes` with `gold` (when `gold_columns` is given): the rows to write, with `__op` I
/// (insert), U (update) or D (delete), `__closed` (a current version got a `valid_to`),
/// `__period_only` (an update that changes only `valid_to`) and the stored surrogate keys
/// (NULL for an insert: [`numbered`] gives those). `held`: as [`changes`] takes it.
fn diff_sql(c: &DimColumns, gold_columns: Option<&HashSet<String>>, held: bool) -> String {
    let k = list("", &c.keys);
    let touched = match held {
        false => format!("touched AS (SELECT DISTINCT {k} FROM changes), "),
        true => String::new(),
    };
    let attrs = |prefix: &str| {
        if c.attrs.is_empty() {
            String::new()
        } else {
            format!(", {}", list(prefix, &c.attrs))
        }
    };
    let period = if c.scd2 {
        format!(", {VALID_FROM}, {VALID_TO}")
    } else {
        String::new()
    };
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
            let joined = match held {
                false => format!(" JOIN touched AS c ON {}", join_on("g", "c", &c.keys)),
                true => String::new(),
            };
            format!("o AS (SELECT {} FROM gold AS g{joined})", picked.join(", "))
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
        differs.push(format!("(n.{VALID_TO} IS DISTINCT FROM o.{VALID_TO})"));
        on.push_str(&format!(" AND n.{VALID_FROM} = o.{VALID_FROM}"));
    }
    let differs = if differs.is_empty() {
        "false".to_string()
    } else {
        differs.join(" OR ")
    };
    let closed = if c.scd2 {
        format!("(o.{VALID_TO} IS NULL) AND (n.{VALID_TO} IS NOT NULL)")
    } else {
        "false".to_string()
    };
    let keys_coalesced = c
        .keys
        .iter()
        .map(|k| format!("COALESCE(n.{k}, o.{k}) AS {k}", k = q(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let (n_period, current) = if c.scd2 {
        (
            format!(", n.{VALID_FROM} AS {VALID_FROM}, n.{VALID_TO} AS {VALID_TO}"),
            format!(", {VALID_FROM}, {VALID_TO}, {VALID_TO} IS NULL AS {IS_CURRENT}"),
        )
    } else {
        (String::new(), String::new())
    };
    // A version keeps the copied values it was written with (new ones get theirs later).
    let stored_copied: String = c
        .copied
        .iter()
        .map(|a| format!(", o.{a} AS {a}", a = q(a)))
        .collect();
    let copied: String = c.copied.iter().map(|a| format!(", {}", q(a))).collect();
    format!(
        "WITH {touched}{old}, \
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
fn numbered(
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
fn first_rows(
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;
    use datafusion::prelude::SessionContext;

    use super::super::history::{history_order, versions};
    use super::super::testing::users;

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
            let by_sql = ctx.sql(&diff_sql(&c, None, false)).await.unwrap();
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
