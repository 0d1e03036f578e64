//! Deletes in gold (DLT's `apply_as_deletes`): which silver rows are deletes, and how a fact
//! applies them. Dimensions apply theirs where they compute versions (`dimension::versions`).
//!
//! A silver row is a delete when the table's `apply_as_deletes` condition holds for it (a soft
//! delete, e.g. `is_deleted = 1`), or when it is a delete marker that ingest wrote for a key
//! that vanished from the source (`_change_type = 'delete'`, Delta's change-data-feed word).

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use tracing::warn;

use super::{SilverChanges, col, commit_properties, delta_err, df_err, register};
use crate::config::TableSpec;
use crate::config::ident::quote_ansi as q;
use crate::error::Result;
use crate::lake::layout;
use crate::lake::layout::silver_columns::CHANGE_TYPE;

/// The SQL condition over a silver row that makes it a delete, or `None` when no row of
/// `silver` can be one.
pub(super) fn condition(table: &TableSpec, silver: &Schema) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(expr) = table
        .gold
        .as_ref()
        .and_then(|g| g.apply_as_deletes.as_deref())
    {
        match missing_column(expr, silver) {
            None => parts.push(format!("COALESCE(({expr}), false)")),
            // A source column added for the condition reaches silver with the first row
            // that changes after it: until then no row is a delete by it.
            Some(reason) => warn!(
                apply_as_deletes = expr,
                reason,
                "Silver has no such column yet; no row is a delete by this condition until it arrives."
            ),
        }
    }
    if silver.field_with_name(CHANGE_TYPE).is_ok() {
        parts.push(format!("COALESCE({} = 'delete', false)", q(CHANGE_TYPE)));
    }
    (!parts.is_empty()).then(|| parts.join(" OR "))
}

/// Why `expr` cannot be read over `silver` (a column it names is missing), if it cannot; the
/// loader checked that it parses.
fn missing_column(expr: &str, silver: &Schema) -> Option<String> {
    let schema = match datafusion::common::DFSchema::try_from(silver.clone()) {
        Ok(schema) => schema,
        Err(e) => return Some(e.to_string()),
    };
    match SessionContext::new().parse_sql_expr(expr, &schema) {
        Ok(parsed) => parsed
            .column_refs()
            .into_iter()
            .find(|c| silver.field_with_name(&c.name).is_err())
            .map(|c| c.name.clone()),
        Err(e) => Some(e.to_string()),
    }
}

/// Applies an SCD1 dimension's `apply_as_truncates` to the views its build reads: rows at or
/// before the latest truncate leave `silver_all` (the history), and when the changes bring a
/// truncate, every silver row becomes a change (`changes_all`), so every key is compared with
/// gold and a key with no row after the truncate leaves gold.
pub(super) async fn truncate(
    ctx: &SessionContext,
    seq: &str,
    condition: &str,
    name: &str,
) -> Result<()> {
    use datafusion::prelude::{col, lit};
    let (Some(at), _) = latest_truncate(ctx, "silver_all", seq, condition, name).await? else {
        return Ok(());
    };
    let (_, in_changes) = latest_truncate(ctx, "changes_all", seq, condition, name).await?;
    let err = || df_err(name, "applying a truncate");
    let all = ctx.table("silver_all").await.map_err(err())?;
    if in_changes > 0 {
        let _ = ctx.deregister_table("changes_all");
        ctx.register_table("changes_all", all.clone().into_view())
            .map_err(err())?;
    }
    let after = all
        .filter(col(datafusion::common::Column::from_name(seq)).gt(lit(at)))
        .map_err(err())?;
    let _ = ctx.deregister_table("silver_all");
    ctx.register_table("silver_all", after.into_view())
        .map_err(err())?;
    Ok(())
}

/// The sequence value of the latest truncate in a view, and how many truncates it holds.
async fn latest_truncate(
    ctx: &SessionContext,
    view: &str,
    seq: &str,
    condition: &str,
    name: &str,
) -> Result<(Option<datafusion::common::ScalarValue>, i64)> {
    let err = || df_err(name, "reading the truncates");
    let sql = format!(
        "SELECT max({s}) AS t, count(*) AS n FROM {view} WHERE COALESCE(({condition}), false)",
        s = q(seq)
    );
    let rows = ctx
        .sql(&sql)
        .await
        .map_err(err())?
        .collect()
        .await
        .map_err(err())?;
    let Some(batch) = rows.first() else {
        return Ok((None, 0));
    };
    let at = datafusion::common::ScalarValue::try_from_array(batch.column(0), 0).map_err(err())?;
    let count = crate::lake::int_column(batch.column(1)).map_or(0, |c| c.value(0));
    Ok(((!at.is_null()).then_some(at), count))
}

/// The keys deleted by a fact's silver changes, each with its latest delete's sequence value
/// (`__deleted_at`).
pub(super) async fn of_changes(
    ctx: &SessionContext,
    changes: &SilverChanges,
    keys: &[String],
    seq: &str,
    condition: &str,
    name: &str,
) -> Result<Vec<RecordBatch>> {
    if changes.files.is_empty() {
        return Ok(Vec::new());
    }
    register(ctx, "__deletes", &changes.table, Some(&changes.files)).await?;
    let keys = keys.iter().map(|k| q(k)).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "SELECT {keys}, MAX({seq}) AS __deleted_at FROM __deletes \
         WHERE ({condition}) AND {seq} IS NOT NULL GROUP BY {keys}",
        seq = q(seq)
    );
    let rows = ctx
        .sql(&sql)
        .await
        .map_err(df_err(name, "reading the deletes"))?
        .collect()
        .await
        .map_err(df_err(name, "reading the deletes"))?;
    let _ = ctx.deregister_table("__deletes");
    Ok(rows.into_iter().filter(|b| b.num_rows() > 0).collect())
}

/// Removes the fact rows that `deletes` end (same key, sequence value at or before the
/// delete's: a later row of the key is a new fact), in one commit carrying `txns`. Returns
/// the table and how many rows went; a delete of a key the fact does not hold removes nothing.
pub(super) async fn apply(
    ctx: &SessionContext,
    target: DeltaTable,
    name: &str,
    deletes: Vec<RecordBatch>,
    keys: &[String],
    seq: &str,
    txns: Vec<Transaction>,
) -> Result<(DeltaTable, u64)> {
    let on = keys
        .iter()
        .map(|k| col("t", k).eq(col("s", k)))
        .reduce(datafusion::prelude::Expr::and)
        .unwrap_or(datafusion::prelude::lit(false));
    let source = ctx
        .read_batches(deletes)
        .map_err(df_err(name, "staging the deletes"))?;
    let ended = col("t", seq).lt_eq(col("s", "__deleted_at"));
    let (table, metrics) = target
        .merge(source, on)
        .with_source_alias("s")
        .with_target_alias("t")
        .when_matched_delete(|d| d.predicate(ended))
        .map_err(delta_err(layout::gold_table(name)))?
        .with_commit_properties(commit_properties(txns))
        .await
        .map_err(delta_err(layout::gold_table(name)))?;
    let removed = metrics.num_target_rows_deleted as u64;
    let asked = metrics.num_source_rows as u64;
    tracing::info!(
        deletes = asked,
        removed,
        "Applied the deletes; a delete of a key the fact does not hold (or holds newer) removes nothing."
    );
    Ok((table, removed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field};

    fn table(condition: Option<&str>) -> TableSpec {
        let text = format!(
            "[[tables]]\nname = \"DimArtist\"\ncdc_column = \"c\"\nkeys = [\"k\"]\n[tables.gold]\nname = \"dim_artist\"\n{}",
            condition
                .map(|c| format!("apply_as_deletes = {c:?}"))
                .unwrap_or_default()
        );
        crate::config::Pipeline::parse(&text, "p.toml")
            .unwrap()
            .tables
            .remove(0)
    }

    #[test]
    fn deletes_come_from_the_condition_and_from_markers_once_silver_has_its_columns() {
        let plain = Schema::new(vec![Field::new("k", DataType::Int32, true)]);
        let marked = Schema::new(vec![
            Field::new("k", DataType::Int32, true),
            Field::new("is_deleted", DataType::Int32, true),
            Field::new(CHANGE_TYPE, DataType::Utf8, true),
        ]);
        assert_eq!(condition(&table(None), &plain), None);
        assert_eq!(
            condition(&table(None), &marked).as_deref(),
            Some("COALESCE(\"_change_type\" = 'delete', false)")
        );
        let soft = table(Some("is_deleted = 1"));
        assert_eq!(
            condition(&soft, &marked).as_deref(),
            Some(
                "COALESCE((is_deleted = 1), false) OR COALESCE(\"_change_type\" = 'delete', false)"
            )
        );
        // A column the source has not brought to silver yet: no row is a delete by it.
        assert_eq!(condition(&soft, &plain), None);
    }
}
