//! The history of the changed keys when every change is newer than all the dimension has
//! consumed (a timer's run, changes in order): the stored versions of those keys stand for
//! their silver history, so silver's older rows are not read again.
//!
//! Why the versions are the same: within a version every silver row repeats the version's
//! tracked values, so one row per stored version, at its `valid_from` and with its values,
//! starts the same versions as the key's silver rows did; a version that ends where no other
//! starts was ended by a delete, and a delete row there ends it again. Changes that all come
//! later continue from that. It does not hold with `ignore_null_updates` (a NULL takes the
//! key's last value, which a version's row may not hold), which keeps silver's history. A
//! change that repeats a stored (key, sequence value) falls back to it too.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, Schema};
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use super::columns::{DimColumns, join_on, list};
use super::history::{history_order, versions};
use super::keyset::KeySet;
use super::write::collected;
use crate::config::ident::quote_ansi as q;
use crate::error::{Error, Result};
use crate::lake::layout::gold_columns::{VALID_FROM, VALID_TO};
use crate::stages::gold::{SilverChanges, df_err, register};

/// Whether the stored versions can stand for the silver history of the changed keys: an
/// SCD2 dimension without `ignore_null_updates` whose stored table has every attribute, and
/// whose changes (`changes_all`) all come after every silver row it consumed before them.
pub(super) async fn applies(
    ctx: &SessionContext,
    c: &DimColumns,
    stored: &HashSet<String>,
    changes: &SilverChanges,
    name: &str,
) -> Result<bool> {
    let has = |n: &String| stored.contains(n);
    if !c.scd2 || c.ignore_null_updates || !c.attrs.iter().chain(&c.keys).all(has) {
        return Ok(false);
    }
    if ![VALID_FROM, VALID_TO].iter().all(|p| stored.contains(*p)) {
        return Ok(false);
    }
    let changed: HashSet<&String> = changes.files.iter().collect();
    let before: Vec<String> = changes
        .table
        .get_file_uris()
        .map_err(crate::error::delta_err(name))?
        .filter(|f| !changed.contains(f))
        .collect();
    if before.is_empty() {
        return Ok(false);
    }
    // The log's statistics of the changed files and of those before, when they tell the two
    // apart (a timer's runs, changes in order), read no row.
    let schema = crate::stages::gold::schema_of(&changes.table, name)?;
    if let Ok(seq) = schema.field_with_name(&c.seq) {
        use crate::lake::stats::{earliest, latest};
        let (table, t) = (&changes.table, seq.data_type());
        let first = earliest(table, Some(&changes.files), &c.seq, t);
        let latest = latest(table, Some(&before), &c.seq, t);
        if let (Some(first), Some(latest)) = (first, latest)
            && first > latest
        {
            tracing::debug!(
                first,
                latest,
                "The changes come after what was consumed, by the log's statistics."
            );
            return Ok(true);
        }
    }
    let s = q(&c.seq);
    let (_, earliest) = collected(
        ctx,
        &format!("SELECT min({s}) FROM changes_all"),
        (name, "reading the changes' earliest sequence value"),
    )
    .await?;
    let Some(earliest) = earliest
        .iter()
        .find(|b| b.num_rows() > 0)
        .map(|b| b.column(0))
    else {
        return Ok(false);
    };
    let latest =
        crate::lake::stats::latest(&changes.table, Some(&before), &c.seq, earliest.data_type());
    if let Some(latest) = latest {
        tracing::debug!(
            latest,
            "Bounded the consumed sequence values by the log's statistics."
        );
        return Ok(units(earliest).is_some_and(|earliest| earliest > latest));
    }
    // Without statistics to go by, the consumed rows' sequence column is read.
    register(ctx, "silver_before", &changes.table, Some(&before)).await?;
    let latest = collected(
        ctx,
        &format!("SELECT max({s}) FROM silver_before"),
        (name, "reading the consumed history's latest sequence value"),
    )
    .await;
    let _ = ctx.deregister_table("silver_before");
    let (_, latest) = latest?;
    let first = |column: &ArrayRef| ScalarValue::try_from_array(column, 0).ok();
    let (Some(earliest), Some(latest)) = (
        first(earliest),
        (latest.iter().find(|b| b.num_rows() > 0)).and_then(|b| first(b.column(0))),
    ) else {
        return Ok(false);
    };
    Ok(!latest.is_null() && earliest.partial_cmp(&latest) == Some(std::cmp::Ordering::Greater))
}

/// The first value of a one-row integer, date or timestamp column, in its own units.
fn units(column: &ArrayRef) -> Option<i64> {
    let values = arrow::compute::cast(column, &DataType::Int64).ok()?;
    let values = values.as_primitive_opt::<Int64Type>()?;
    (values.len() == 1 && values.is_valid(0)).then(|| values.value(0))
}

/// Holds the stored versions of the range's changed keys in memory as `gold` (what the
/// comparison with the stored table reads next), and returns the keys' versions computed
/// from them and the changes (see the module). `None` when silver's history must be read:
/// a change repeats a stored (key, sequence value), or the two disagree on a column's type.
///
/// `keys`, the range's changed keys of a single-column key, filter the stored rows batch by
/// batch as they are read (see `keyset`); without them, the rows are joined with the changes'
/// keys.
pub(super) async fn read_versions(
    ctx: &SessionContext,
    c: &DimColumns,
    keys: Option<&Arc<KeySet>>,
    name: &str,
) -> Result<Option<RecordBatch>> {
    let context = (name, "reading the stored versions of the changed keys");
    let (schema, stored) = match keys {
        Some(keys) => {
            use futures::StreamExt;
            let df = ctx.table("gold").await.map_err(df_err(name, context.1))?;
            let schema = Arc::new(df.schema().as_arrow().clone());
            let mut stream = df.execute_stream().await.map_err(df_err(name, context.1))?;
            let mut kept = Vec::new();
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(df_err(name, context.1))?;
                let column = batch.column_by_name(&c.keys[0]).cloned();
                let Some(mask) = column.and_then(|k| keys.mask(&k)) else {
                    return Ok(None);
                };
                let batch = arrow::compute::filter_record_batch(&batch, &mask)
                    .map_err(|e| Error::arrow(name, e))?;
                kept.push(batch);
            }
            (schema, kept)
        }
        None => {
            let k = list("", &c.keys);
            let sql = format!(
                "SELECT g.* FROM gold AS g JOIN (SELECT DISTINCT {k} FROM changes) AS c ON {}",
                join_on("g", "c", &c.keys)
            );
            collected(ctx, &sql, context).await?
        }
    };
    let _ = ctx.deregister_table("gold");
    let table = MemTable::try_new(schema.clone(), vec![stored])
        .map_err(df_err(name, "holding the stored versions"))?;
    ctx.register_table("gold", Arc::new(table))
        .map_err(df_err(name, "holding the stored versions"))?;
    let changes = ctx
        .table("changes")
        .await
        .map_err(df_err(name, "reading silver changes"))?;
    if !same_types(c, &schema, changes.schema().as_arrow()) {
        return Ok(None);
    }
    let (schema, history) = collected(ctx, &history_sql(c), (name, "reading the history")).await?;
    let history =
        arrow::compute::concat_batches(&schema, &history).map_err(|e| Error::arrow(name, e))?;
    let order = history_order(c, &history, false).map_err(|e| Error::arrow(name, e))?;
    let (versions, repeats) = versions(c, &history, &order).map_err(|e| Error::arrow(name, e))?;
    tracing::debug!(
        history = history.num_rows(),
        repeats,
        "Read the history of the changed keys from their stored versions."
    );
    Ok((!repeats).then_some(versions))
}

/// Whether the stored table's keys, attributes and `valid_from` have the types of the silver
/// keys, attributes and sequence column.
fn same_types(c: &DimColumns, stored: &Schema, silver: &Schema) -> bool {
    let pairs = c
        .keys
        .iter()
        .chain(&c.attrs)
        .map(|n| (n.as_str(), n.as_str()))
        .chain(std::iter::once((VALID_FROM, c.seq.as_str())));
    pairs.into_iter().all(
        |(g, s)| match (stored.field_with_name(g), silver.field_with_name(s)) {
            (Ok(g), Ok(s)) => g.data_type() == s.data_type(),
            _ => false,
        },
    )
}

/// The history of the range's changed keys: a row per stored version (at `valid_from`), a
/// delete row where a version ends and no other starts, and the changes themselves, with
/// `__delete` when the dimension has deletes. Unordered, like `history::history_sql`.
fn history_sql(c: &DimColumns) -> String {
    let k = list("", &c.keys);
    let attrs: String = c.attrs.iter().map(|a| format!(", {}", q(a))).collect();
    let nulls: String = c
        .attrs
        .iter()
        .map(|a| format!(", NULL AS {}", q(a)))
        .collect();
    let not_null: String = c
        .keys
        .iter()
        .map(|key| format!(" AND {} IS NOT NULL", q(key)))
        .collect();
    let s = q(&c.seq);
    let versions = format!("SELECT {k}, {VALID_FROM} AS __seq{attrs}");
    match &c.delete {
        None => format!(
            "{versions} FROM gold UNION ALL \
             SELECT {k}, {s} AS __seq{attrs} FROM changes WHERE {s} IS NOT NULL{not_null}"
        ),
        Some(condition) => format!(
            "{versions}, false AS __delete FROM gold UNION ALL \
             SELECT {k}, {VALID_TO} AS __seq{nulls}, true AS __delete FROM \
             (SELECT {k}, {VALID_TO}, LEAD({VALID_FROM}) OVER (PARTITION BY {k} ORDER BY {VALID_FROM}) \
             AS __next FROM gold) AS e \
             WHERE {VALID_TO} IS NOT NULL AND (__next IS NULL OR __next <> {VALID_TO}) UNION ALL \
             SELECT {k}, {s} AS __seq{attrs}, COALESCE(({condition}), false) AS __delete \
             FROM changes WHERE {s} IS NOT NULL{not_null}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int32Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, TimeUnit};

    use super::super::history;
    use super::super::testing::users;
    use crate::stages::gold::scrambled;

    /// A silver row: key, sequence value, name, country, and whether it is a delete.
    type Row = (i32, i64, &'static str, &'static str, bool);

    /// Silver rows as a batch of `schema`.
    fn rows(schema: &Arc<Schema>, rows: &[Row]) -> RecordBatch {
        let text = |f: &dyn Fn(&Row) -> Option<String>| -> ArrayRef {
            Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
        };
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.0))),
            text(&|r| Some(r.2.to_string())),
            text(&|r| Some(r.3.to_string())),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1))
                    .with_timezone("UTC"),
            ),
        ];
        if schema.field_with_name("_change_type").is_ok() {
            columns.push(text(&|r| {
                Some(if r.4 { "delete" } else { "upsert" }.into())
            }));
        }
        columns.push(text(&|r| Some(format!("f{}", r.1))));
        columns.push(text(&|_| Some("t".to_string())));
        RecordBatch::try_new(schema.clone(), columns).unwrap()
    }

    /// Random changes of `keys` keys with sequence values in `seqs`, values from a few
    /// (so many repeat the key's last ones), and deletes when `deletes`.
    fn random(
        next: &mut impl FnMut(u64) -> u64,
        keys: i32,
        seqs: std::ops::Range<i64>,
        deletes: bool,
    ) -> Vec<Row> {
        let mut out = Vec::new();
        for key in 0..keys {
            let mut seq = seqs.start + next(5) as i64;
            while seq < seqs.end {
                let name = ["A", "B"][next(2) as usize];
                let country = ["SE", "NO", "DK"][next(3) as usize];
                out.push((key, seq, name, country, deletes && next(6) == 0));
                seq += 1 + next(20) as i64;
            }
        }
        out
    }

    fn register(ctx: &SessionContext, name: &str, batches: Vec<RecordBatch>) {
        let schema = batches[0].schema();
        let _ = ctx.deregister_table(name);
        ctx.register_table(
            name,
            Arc::new(MemTable::try_new(schema, vec![batches]).unwrap()),
        )
        .unwrap();
    }

    #[tokio::test]
    async fn stored_versions_and_later_changes_make_the_versions_silver_history_does() {
        let (table, base) = users();
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        for (seed, deletes, except) in [(1u64, false, false), (2, true, false), (3, true, true)] {
            let mut fields = vec![
                Field::new("user_id", DataType::Int32, true),
                Field::new("user_name", DataType::Utf8, true),
                Field::new("country", DataType::Utf8, true),
                Field::new("updated_at", ts.clone(), true),
            ];
            if deletes {
                fields.push(Field::new("_change_type", DataType::Utf8, true));
            }
            fields.extend(base.fields()[4..].iter().map(|f| f.as_ref().clone()));
            let schema = Arc::new(Schema::new(fields));
            let mut gold = table.gold.clone().unwrap();
            if except {
                gold.track_history_except = vec!["country".to_string()];
            }
            let c = DimColumns::new(&table, &gold, &schema).unwrap();
            assert_eq!(c.delete.is_some(), deletes);
            let mut next = scrambled(seed * 7919);
            let old = rows(&schema, &random(&mut next, 40, 0..200, deletes));
            // A third of the stored keys has no change, for the reads to leave out.
            let mut new = random(&mut next, 50, 200..260, deletes);
            new.retain(|r| r.0 % 3 != 0);
            let new = rows(&schema, &new);
            let ctx = crate::stages::gold::session();
            // What the dimension stored from the old rows.
            register(&ctx, "silver", vec![old.clone()]);
            register(&ctx, "changes", vec![old.clone()]);
            let stored = history::read_versions(&ctx, &c, true, "t").await.unwrap();
            register(&ctx, "silver", vec![old, new.clone()]);
            register(&ctx, "changes", vec![new.clone()]);
            let expected = history::read_versions(&ctx, &c, false, "t").await.unwrap();
            // Joined with the changes' keys, and filtered by their set as the reader does.
            let changed: Vec<i64> = (new.column(0).as_primitive::<arrow::datatypes::Int32Type>())
                .iter()
                .flatten()
                .map(i64::from)
                .collect();
            let set = Arc::new(KeySet::of(changed));
            for keys in [None, Some(&set)] {
                register(&ctx, "gold", vec![stored.clone()]);
                let found = read_versions(&ctx, &c, keys, "t").await.unwrap();
                let how = keys.map_or("joined", |_| "filtered");
                assert_eq!(
                    found.as_ref(),
                    Some(&expected),
                    "seed {seed}, deletes {deletes}, {how}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_change_at_a_stored_version_start_reads_silver_history() {
        let (table, schema) = users();
        let schema = Arc::new(schema);
        let c = DimColumns::new(&table, &table.gold.clone().unwrap(), &schema).unwrap();
        let ctx = crate::stages::gold::session();
        let old = rows(
            &schema,
            &[(1, 10, "A", "SE", false), (1, 20, "B", "SE", false)],
        );
        register(&ctx, "silver", vec![old.clone()]);
        register(&ctx, "changes", vec![old]);
        let stored = history::read_versions(&ctx, &c, true, "t").await.unwrap();
        assert_eq!(stored.num_rows(), 2);
        register(&ctx, "gold", vec![stored]);
        register(
            &ctx,
            "changes",
            vec![rows(&schema, &[(1, 20, "C", "SE", false)])],
        );
        assert_eq!(read_versions(&ctx, &c, None, "t").await.unwrap(), None);
    }
}
