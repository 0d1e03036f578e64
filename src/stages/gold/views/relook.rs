//! Keys that only a view's lookups reach. A lookup (a table the view LEFT JOINs at its top to
//! fill in columns, see [`Lineage`]) changes no row of what lies below its joins (the base),
//! so for a key no other input reached, the base's rows are those the view was built from,
//! and the view holds them. Such keys are refreshed by joining the lookups again over the
//! base's rows read back from the view, not by computing the base again: renaming a track
//! renames it on the days it ranks without ranking those days again.
//!
//! The view holds the base's rows exactly when every base column is a view column and no two
//! of the key's view rows share their base columns (each base row met at most one row of each
//! lookup, and no base row repeats); otherwise the keys are computed again as any other.

use std::collections::BTreeSet;

use arrow::datatypes::DataType;
use datafusion::common::Column;
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan, cast};
use datafusion::prelude::SessionContext;

use super::lineage::{Lineage, single_scan};
use crate::error::Result;
use crate::stages::gold::df_err;

/// A view's optimized plan, with the view column that holds each column of its base.
pub(super) struct Rebase {
    plan: LogicalPlan,
    /// The tables the view reads only as lookups.
    lookups: BTreeSet<String>,
    /// Per base column, in the base's order: the column as the plan above names it, the view
    /// column that holds it, and its type in the base.
    columns: Vec<(Column, String, DataType)>,
}

impl Rebase {
    /// `None` when the view has no lookup at its top, or a base column (or the key) is not a
    /// view column.
    pub(super) fn of(plan: &LogicalPlan, lineage: &Lineage, key: &str) -> Option<Rebase> {
        let lookups: BTreeSet<String> = lineage.lookups.keys().cloned().collect();
        let spine = spine(plan, &lookups);
        let (base, above) = spine.split_last()?;
        if !above.iter().any(|n| matches!(n, LogicalPlan::Join(_))) {
            return None;
        }
        let output = plan.schema();
        let names: std::collections::HashSet<&String> =
            output.fields().iter().map(|f| f.name()).collect();
        if names.len() != output.fields().len() {
            return None;
        }
        let mut columns = Vec::with_capacity(base.schema().fields().len());
        for (qualifier, field) in base.schema().iter() {
            let column = Column::new(qualifier.cloned(), field.name());
            let shown = above
                .iter()
                .rev()
                .try_fold(column.clone(), |c, node| renamed(node, c))?;
            output.index_of_column(&shown).ok()?;
            columns.push((column, shown.name, field.data_type().clone()));
        }
        columns
            .iter()
            .any(|(_, shown, _)| shown == key)
            .then(|| Rebase {
                plan: plan.clone(),
                lookups,
                columns,
            })
    }

    /// The view's plan over the stored rows that `predicate` selects of `stored` (the view's
    /// table in `ctx`) in place of its base; `None` when those rows do not hold the base's
    /// rows (see the module).
    pub(super) async fn relooked(
        &self,
        ctx: &SessionContext,
        stored: &str,
        predicate: &str,
        view: &str,
    ) -> Result<Option<DataFrame>> {
        let fail = || df_err(view, "reading the view's rows that only lookups reach");
        let shown: Vec<String> = (self.columns.iter())
            .map(|(_, shown, _)| format!("\"{shown}\""))
            .collect();
        let shown = shown.join(", ");
        // Read twice rather than held: a partition of a large view can hold many rows. The
        // check groups them within the session's memory bound (spilling past it).
        let select = format!("SELECT {shown} FROM {stored} WHERE {predicate}");
        let repeated = ctx
            .sql(&format!(
                "SELECT 1 FROM ({select}) AS s GROUP BY {shown} HAVING COUNT(*) > 1 LIMIT 1"
            ))
            .await
            .map_err(fail())?
            .count()
            .await
            .map_err(fail())?;
        if repeated > 0 {
            tracing::debug!(
                view,
                "Stored rows share their base columns; computing their keys again."
            );
            return Ok(None);
        }
        let base = ctx.sql(&select).await.map_err(fail())?;
        let stored: Vec<DataType> = (base.schema().fields().iter())
            .map(|f| f.data_type().clone())
            .collect();
        let exprs = self
            .columns
            .iter()
            .zip(&stored)
            .map(|((column, shown, data_type), stored)| {
                let value = Expr::Column(Column::new_unqualified(shown));
                let value = match stored == data_type {
                    true => value,
                    false => cast(value, data_type.clone()),
                };
                value.alias_qualified(column.relation.clone(), column.name.clone())
            });
        let mut plan = base.select(exprs).map_err(fail())?.into_unoptimized_plan();
        let spine = spine(&self.plan, &self.lookups);
        let above = &spine[..spine.len().saturating_sub(1)];
        for node in above.iter().rev() {
            let inputs = match node {
                LogicalPlan::Join(j) => vec![plan, j.right.as_ref().clone()],
                _ => vec![plan],
            };
            plan = node
                .with_new_exprs(node.expressions(), inputs)
                .map_err(fail())?;
        }
        Ok(Some(DataFrame::new(ctx.state(), plan)))
    }
}

/// The plan's nodes from its top down to its base: through projections, aliases, sorts
/// without a limit, and LEFT JOINs whose right side is a lookup, each to its left side.
fn spine<'a>(plan: &'a LogicalPlan, lookups: &BTreeSet<String>) -> Vec<&'a LogicalPlan> {
    let mut nodes = vec![plan];
    while let Some(node) = nodes.last() {
        let below = match node {
            LogicalPlan::Projection(p) => &p.input,
            LogicalPlan::SubqueryAlias(a) => &a.input,
            LogicalPlan::Sort(s) if s.fetch.is_none() => &s.input,
            LogicalPlan::Join(j)
                if j.join_type == JoinType::Left
                    && single_scan(&j.right).is_some_and(|t| lookups.contains(&t)) =>
            {
                &j.left
            }
            _ => break,
        };
        nodes.push(below.as_ref());
    }
    nodes
}

/// How `node` names `column` of its input: the same through a join or a sort, requalified by
/// an alias, and renamed by a projection that passes it on unchanged; `None` when a
/// projection drops it or only computes from it.
fn renamed(node: &LogicalPlan, column: Column) -> Option<Column> {
    match node {
        LogicalPlan::Projection(p) => {
            let at = p.expr.iter().position(|e| passes(e, &column))?;
            let (qualifier, field) = p.schema.qualified_field(at);
            Some(Column::new(qualifier.cloned(), field.name()))
        }
        LogicalPlan::SubqueryAlias(a) => Some(Column::new(Some(a.alias.clone()), column.name)),
        _ => Some(column),
    }
}

/// Whether `e` is `column`, maybe under an alias.
fn passes(e: &Expr, column: &Column) -> bool {
    match e {
        Expr::Column(c) => c == column,
        Expr::Alias(a) => passes(&a.expr, column),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{BooleanArray, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{Field, Schema};
    use datafusion::datasource::MemTable;
    use std::sync::Arc;

    use super::*;
    use crate::stages::gold::views::lineage;

    /// The two most active users of each day, named as they are now.
    const TOP: &str = "WITH plays AS ( \
          SELECT f.day, f.user_id, COUNT(*) AS streams FROM gold.fact AS f \
          GROUP BY f.day, f.user_id \
        ), ranked AS ( \
          SELECT p.day, p.user_id, p.streams, ROW_NUMBER() OVER ( \
            PARTITION BY p.day ORDER BY p.streams DESC, p.user_id) AS position \
          FROM plays AS p \
        ) \
        SELECT r.day, r.position, r.user_id, u.name, r.streams FROM ranked AS r \
        LEFT JOIN gold.dim_user AS u ON u.user_id = r.user_id AND u.is_current \
        WHERE r.position <= 2";

    fn ints(values: &[i64]) -> arrow::array::ArrayRef {
        Arc::new(Int64Array::from(values.to_vec()))
    }

    fn register(ctx: &SessionContext, name: &str, batch: RecordBatch) {
        let _ = ctx.deregister_table(name);
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
        ctx.register_table(name, Arc::new(table)).unwrap();
    }

    /// `users` as (user_id, name, is_current) rows of `gold.dim_user`.
    fn users(ctx: &SessionContext, users: &[(i64, &str, bool)]) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("is_current", DataType::Boolean, true),
        ]));
        let columns: Vec<arrow::array::ArrayRef> = vec![
            ints(&users.iter().map(|u| u.0).collect::<Vec<_>>()),
            Arc::new(StringArray::from_iter_values(users.iter().map(|u| u.1))),
            Arc::new(BooleanArray::from_iter(users.iter().map(|u| Some(u.2)))),
        ];
        register(
            ctx,
            "gold.dim_user",
            RecordBatch::try_new(schema, columns).unwrap(),
        );
    }

    /// A session whose fact has streams of users 1-3 on days 1-3, and the view's rows as
    /// the view's table stores them (`position` as BIGINT, as Delta has no unsigned type).
    async fn built(dim: &[(i64, &str, bool)]) -> SessionContext {
        let ctx = SessionContext::new();
        ctx.sql("CREATE SCHEMA gold").await.unwrap();
        let (days, users_of): (Vec<i64>, Vec<i64>) = [
            (1, 1),
            (1, 1),
            (1, 2),
            (2, 2),
            (2, 3),
            (2, 3),
            (3, 1),
            (3, 3),
        ]
        .into_iter()
        .unzip();
        let fact =
            RecordBatch::try_from_iter(vec![("day", ints(&days)), ("user_id", ints(&users_of))])
                .unwrap();
        register(&ctx, "gold.fact", fact);
        users(&ctx, dim);
        let stored = ctx
            .sql(&format!(
                "SELECT day, CAST(position AS BIGINT) AS position, user_id, name, streams \
                 FROM ({TOP}) AS v"
            ))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let stored = arrow::compute::concat_batches(&stored[0].schema(), &stored).unwrap();
        register(&ctx, "__stored", stored);
        ctx
    }

    async fn rebase(ctx: &SessionContext, sql: &str) -> Option<Rebase> {
        let plan = ctx.sql(sql).await.unwrap().into_optimized_plan().unwrap();
        Rebase::of(&plan, &lineage::of(&plan), "day")
    }

    async fn sorted(df: DataFrame) -> Vec<String> {
        let batches = df.collect().await.unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("| "))
            .skip(1)
            .map(String::from)
            .collect();
        lines.sort();
        lines
    }

    #[tokio::test]
    async fn the_lookups_joined_again_over_stored_rows_give_what_the_query_gives() {
        let ctx = built(&[(1, "ann", true), (2, "bo", true), (3, "cy", true)]).await;
        // Bo is renamed (a new current version), and a version of Cy that is no longer current.
        users(
            &ctx,
            &[
                (1, "ann", true),
                (2, "bo", false),
                (2, "bob", true),
                (3, "cy", true),
                (3, "cyrus", false),
            ],
        );
        let rebase = rebase(&ctx, TOP).await.expect("the base is shown");
        let relooked = rebase
            .relooked(&ctx, "__stored", "day IN (1, 2)", "top")
            .await
            .unwrap()
            .expect("distinct stored rows stand for the base");
        let again = ctx
            .sql(&format!("SELECT * FROM ({TOP}) AS v WHERE day IN (1, 2)"))
            .await
            .unwrap();
        let relooked = sorted(relooked).await;
        assert_eq!(relooked, sorted(again).await);
        assert_eq!(relooked.len(), 4, "{relooked:?}");
        assert!(relooked.iter().any(|r| r.contains("bob")), "{relooked:?}");
        assert!(
            !relooked.iter().any(|r| r.starts_with("| 3 ")),
            "{relooked:?}"
        );
    }

    #[tokio::test]
    async fn stored_rows_that_share_their_base_columns_are_computed_again() {
        // Two current rows of user 2 made two view rows of each of its ranks.
        let ctx = built(&[(1, "ann", true), (2, "bo", true), (2, "b.", true)]).await;
        let rebase = rebase(&ctx, TOP).await.expect("the base is shown");
        let relooked = rebase
            .relooked(&ctx, "__stored", "day = 1", "top")
            .await
            .unwrap();
        assert!(relooked.is_none());
    }

    #[tokio::test]
    async fn a_base_column_the_view_does_not_show_or_no_lookup_leaves_no_rebase() {
        let ctx = built(&[(1, "ann", true)]).await;
        // The user the base joins on is not shown.
        let hidden = TOP.replace("r.user_id, u.name", "u.name");
        assert!(rebase(&ctx, &hidden).await.is_none());
        let no_lookup = "SELECT f.day, COUNT(*) AS streams FROM gold.fact AS f GROUP BY f.day";
        assert!(rebase(&ctx, no_lookup).await.is_none());
        assert!(rebase(&ctx, TOP).await.is_some());
    }
}
