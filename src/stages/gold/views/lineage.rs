//! What a view reads, from its optimized plan: the tables it scans, the columns it reads of
//! each, and the names of the columns it joins on. An incremental refresh follows an input's
//! changes to the view's rows through these.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan};

/// (view column, table column) pairs of a join condition.
type JoinPairs = Vec<(String, String)>;

/// The tables and columns a view's query reads.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Lineage {
    /// The columns read of each table, by `area.table` (`gold.fact_stream`); `None` as the
    /// area when the query named a table without one.
    pub tables: BTreeMap<String, BTreeSet<String>>,
    /// The names of the columns that join conditions compare.
    pub joins: BTreeSet<String>,
    /// Tables read only as lookups: the right side of a LEFT JOIN that only projections and
    /// other such joins lie above, scanned nowhere else; with the (view column, table column)
    /// pairs of its join condition. Such a table only fills in columns of rows the rest of
    /// the query decides, so its changed rows reach exactly the rows whose join key matches.
    pub lookups: BTreeMap<String, JoinPairs>,
    /// The view's own columns.
    pub output: BTreeSet<String>,
    /// What every scan of a table keeps of its rows, by table, where each scan filters (a
    /// filter pushed into the scan, or a join condition on the table alone): rows outside it
    /// never reach the view. Several scans keep what any of them keeps.
    pub filters: BTreeMap<String, Expr>,
}

/// The lineage of an optimized plan: after projection push-down, each scan lists exactly the
/// columns the query reads of its table (a filter pushed into the scan adds its own).
pub(super) fn of(plan: &LogicalPlan) -> Lineage {
    let mut lineage = Lineage {
        output: plan
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect(),
        ..Lineage::default()
    };
    let mut scans: BTreeMap<String, usize> = BTreeMap::new();
    // Per table, each scan's filter (`None`: a scan that keeps every row).
    let mut kept: BTreeMap<String, Vec<Option<Expr>>> = BTreeMap::new();
    // Filters right above a scan, by the scan's node (the walk meets the filter first).
    let mut above: std::collections::HashMap<*const LogicalPlan, Expr> = Default::default();
    let names = |e: &Expr| -> Vec<String> {
        e.column_refs()
            .into_iter()
            .map(|c| c.name.clone())
            .collect()
    };
    // The closure never fails, so neither does the walk.
    let _ = plan.apply_with_subqueries(|node| {
        match node {
            LogicalPlan::TableScan(scan) => {
                let table = match scan.table_name.schema() {
                    Some(area) => format!("{area}.{}", scan.table_name.table()),
                    None => scan.table_name.table().to_string(),
                };
                *scans.entry(table.clone()).or_default() += 1;
                let columns = lineage.tables.entry(table.clone()).or_default();
                columns.extend(
                    scan.projected_schema
                        .fields()
                        .iter()
                        .map(|f| f.name().clone()),
                );
                for filter in &scan.filters {
                    columns.extend(names(filter));
                }
                let over = above.remove(&std::ptr::from_ref(node));
                let filter = (scan.filters.iter().cloned().chain(over))
                    .filter(is_plain)
                    .map(unqualified)
                    .reduce(Expr::and);
                kept.entry(table).or_default().push(filter);
            }
            LogicalPlan::Filter(f) if matches!(*f.input, LogicalPlan::TableScan(_)) => {
                above.insert(std::sync::Arc::as_ptr(&f.input), f.predicate.clone());
            }
            LogicalPlan::Join(join) => {
                for (left, right) in &join.on {
                    lineage.joins.extend(names(left));
                    lineage.joins.extend(names(right));
                }
                if let Some(filter) = &join.filter {
                    lineage.joins.extend(names(filter));
                }
            }
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    });
    let mut found: BTreeMap<String, (usize, JoinPairs)> = BTreeMap::new();
    lookups(plan, &mut found);
    lineage.filters = kept
        .into_iter()
        .filter_map(|(table, filters)| {
            let any: Option<Vec<Expr>> = filters.into_iter().collect();
            Some((table, any?.into_iter().reduce(Expr::or)?))
        })
        .collect();
    lineage.lookups = found
        .into_iter()
        .filter(|(table, (n, _))| scans.get(table) == Some(n))
        .map(|(table, (_, pairs))| (table, pairs))
        .collect();
    lineage
}

/// Collects the lookups of the plan below `plan`, with how often each table is one.
fn lookups(plan: &LogicalPlan, found: &mut BTreeMap<String, (usize, JoinPairs)>) {
    match plan {
        LogicalPlan::Projection(p) => lookups(&p.input, found),
        LogicalPlan::SubqueryAlias(a) => lookups(&a.input, found),
        LogicalPlan::Sort(s) => lookups(&s.input, found),
        LogicalPlan::Join(j) if j.join_type == JoinType::Left => {
            let pairs: Vec<(String, String)> = (j.on.iter())
                .filter_map(|(l, r)| Some((column_name(l)?, column_name(r)?)))
                .collect();
            if let (Some(table), false) = (single_scan(&j.right), pairs.is_empty()) {
                let entry = found.entry(table).or_default();
                entry.0 += 1;
                entry.1.extend(pairs);
            }
            lookups(&j.left, found);
        }
        _ => {}
    }
}

/// The one table a plan reads, through projections, filters and aliases only.
pub(super) fn single_scan(plan: &LogicalPlan) -> Option<String> {
    match plan {
        LogicalPlan::Projection(p) => single_scan(&p.input),
        LogicalPlan::Filter(f) => single_scan(&f.input),
        LogicalPlan::SubqueryAlias(a) => single_scan(&a.input),
        LogicalPlan::TableScan(scan) => Some(match scan.table_name.schema() {
            Some(area) => format!("{area}.{}", scan.table_name.table()),
            None => scan.table_name.table().to_string(),
        }),
        _ => None,
    }
}

/// Whether `e` is decided by the row alone, the same on every evaluation (no subquery, no
/// volatile function): a conjunct that is not is left out, which only keeps more rows.
fn is_plain(e: &Expr) -> bool {
    use datafusion::common::tree_node::TreeNode;
    let subquery = e
        .exists(|e| {
            Ok(matches!(
                e,
                Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_)
            ))
        })
        .unwrap_or(true);
    !subquery && !e.is_volatile()
}

/// `e` with its columns named without their table, as a scan of the table alone names them.
fn unqualified(e: Expr) -> Expr {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    e.transform(|e| {
        Ok(match e {
            Expr::Column(c) => Transformed::yes(Expr::Column(
                datafusion::common::Column::new_unqualified(c.name),
            )),
            other => Transformed::no(other),
        })
    })
    // The closure never fails; were it to, a filter that keeps every row is the safe one.
    .map_or_else(|_| datafusion::prelude::lit(true), |t| t.data)
}

/// The column an expression names, through casts.
fn column_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Column(c) => Some(c.name.clone()),
        Expr::Cast(c) => column_name(&c.expr),
        Expr::TryCast(c) => column_name(&c.expr),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    use super::*;

    async fn lineage(sql: &str) -> Lineage {
        let ctx = SessionContext::new();
        ctx.sql("CREATE SCHEMA gold").await.unwrap();
        let tables = [
            (
                "fact",
                ["id", "user_sk", "user_id", "day", "secs"].as_slice(),
            ),
            (
                "dim_user",
                ["user_sk", "user_id", "name", "is_current"].as_slice(),
            ),
        ];
        for (name, columns) in tables {
            let fields: Vec<Field> = columns
                .iter()
                .map(|c| Field::new(*c, DataType::Int64, true))
                .collect();
            let table = MemTable::try_new(Arc::new(Schema::new(fields)), vec![vec![]]).unwrap();
            ctx.register_table(format!("gold.{name}"), Arc::new(table))
                .unwrap();
        }
        let plan = ctx.sql(sql).await.unwrap().into_optimized_plan().unwrap();
        of(&plan)
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn a_star_join_reads_its_columns_and_joins_on_the_key() {
        let l = lineage(
            "SELECT f.id, f.day, u.name FROM gold.fact AS f \
             LEFT JOIN gold.dim_user AS u ON f.user_sk = u.user_sk",
        )
        .await;
        assert_eq!(l.tables["gold.fact"], set(&["id", "day", "user_sk"]));
        assert_eq!(l.tables["gold.dim_user"], set(&["user_sk", "name"]));
        assert_eq!(l.joins, set(&["user_sk"]));
        let pairs = vec![("user_sk".to_string(), "user_sk".to_string())];
        assert_eq!(l.lookups["gold.dim_user"], pairs);
        assert!(!l.lookups.contains_key("gold.fact"));
        assert_eq!(l.output, set(&["id", "day", "name"]));
    }

    #[tokio::test]
    async fn a_table_that_filters_or_is_read_twice_is_no_lookup() {
        let filtered = lineage(
            "SELECT f.id, u.name FROM gold.fact AS f \
             LEFT JOIN gold.dim_user AS u ON f.user_sk = u.user_sk WHERE u.name > 3",
        )
        .await;
        assert!(filtered.lookups.is_empty(), "{:?}", filtered.lookups);
        let twice = lineage(
            "SELECT f.id, u.name FROM gold.fact AS f \
             LEFT JOIN gold.dim_user AS u ON f.user_sk = u.user_sk \
             WHERE f.user_id IN (SELECT user_id FROM gold.dim_user WHERE is_current = 1)",
        )
        .await;
        assert!(twice.lookups.is_empty(), "{:?}", twice.lookups);
    }

    #[tokio::test]
    async fn an_aggregate_named_by_the_current_version_joins_on_the_natural_key() {
        let l = lineage(
            "WITH p AS (SELECT day, user_id, SUM(secs) AS s FROM gold.fact GROUP BY day, user_id) \
             SELECT p.day, p.s, u.name FROM p \
             LEFT JOIN gold.dim_user AS u ON u.user_id = p.user_id AND u.is_current = 1",
        )
        .await;
        assert_eq!(l.tables["gold.fact"], set(&["day", "user_id", "secs"]));
        assert!(l.tables["gold.dim_user"].is_superset(&set(&["user_id", "name", "is_current"])));
        assert!(l.joins.contains("user_id"), "{:?}", l.joins);
        assert!(!l.joins.contains("user_sk"));
        // Only current versions reach the view: the others' changes cannot.
        let kept = l.filters["gold.dim_user"].to_string();
        assert!(kept.contains("is_current") && !kept.contains('.'), "{kept}");
        assert!(!l.filters.contains_key("gold.fact"));
    }

    #[tokio::test]
    async fn a_table_scanned_once_without_a_filter_keeps_every_row() {
        let l = lineage(
            "SELECT f.id, u.name FROM gold.fact AS f \
             LEFT JOIN gold.dim_user AS u ON f.user_sk = u.user_sk AND u.is_current = 1 \
             WHERE f.user_id IN (SELECT user_id FROM gold.dim_user)",
        )
        .await;
        assert!(l.filters.is_empty(), "{:?}", l.filters);
        let both = lineage(
            "SELECT f.id, u.name FROM gold.fact AS f \
             LEFT JOIN gold.dim_user AS u ON f.user_sk = u.user_sk AND u.is_current = 1 \
             WHERE f.user_id IN (SELECT user_id FROM gold.dim_user WHERE name = 7)",
        )
        .await;
        let kept = both.filters["gold.dim_user"].to_string();
        assert!(kept.contains(" OR "), "{kept}");
    }
}
