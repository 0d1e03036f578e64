//! An incremental refresh: which of a view's rows its inputs' changes can reach, as values of
//! the view's key, and the predicate that names them for a Delta `replaceWhere`.
//!
//! The view's key is a column of one input, the driving table (a fact, when several inputs
//! hold the column). The rows that changed in an input are the symmetric difference of its
//! files then and now, over the columns the view reads of it, so rows that a rewrite only
//! moved (compaction, a chunk written again) cancel out, and so do SCD2 columns the view does
//! not read. The driving table's changed rows give their keys; any other input reaches the
//! driving rows that hold one of its changed values in a column of the same name that the
//! view joins on. An input that no such column links makes the refresh a rebuild. A lookup
//! (a table the view only LEFT JOINs at its top to fill in columns, see [`Lineage`]) whose
//! join key the view shows reaches just the view's rows with a changed key: renaming a track
//! replaces the days the track is in the top ten, not every day it was played.
//! Keys reached only that way are told apart ([`Reached::relooked`]): their rows need only the
//! lookups joined again (see `relook`).

use std::collections::BTreeSet;

use arrow::array::{Array, Int64Array, StringArray};
use arrow::datatypes::DataType;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use tracing::info;

use super::keys::Keys;
use super::lineage::Lineage;
use crate::error::delta_err;
use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::lake::layout;
use crate::stages::gold::rewrite::file_name;
use crate::stages::gold::{Commit, df_err, recorded, register, table_at};

/// Past this share of the driving table's rows written since the view's build (a correction
/// that moved most facts), finding the reached rows costs more than a rebuild, in time and
/// memory: the view is rebuilt.
const MAX_REWRITTEN_SHARE: f64 = 0.5;

/// One table a view reads: as it is now, and the version the view was last built from.
pub(super) struct Input {
    /// `area.table`, as the query names it.
    pub name: String,
    /// The table's folder in the lake.
    pub path: String,
    /// The area (`gold`, `silver`) and the table's name in it.
    pub area: String,
    pub table_name: String,
    pub table: DeltaTable,
    pub version: u64,
    /// The version the view was built from, when the view recorded one not newer than now.
    pub built: Option<u64>,
    /// Whether the table's data changed since `built`.
    pub changed: bool,
    /// Whether it is a gold fact.
    pub is_fact: bool,
    /// A gold dimension's surrogate key column.
    pub surrogate_key: Option<String>,
}

/// The keys of the view's rows that the inputs' changes reach.
pub(super) struct Reached {
    /// Every reached key.
    pub keys: Keys,
    /// Those only lookups reach (see `relook`).
    pub relooked: Keys,
}

/// The keys of the view's rows that the inputs' changes since the view was built can reach,
/// or `None` when the changes cannot be followed to the key (the refresh is then a rebuild).
pub(super) async fn reached(
    lake: &Lake,
    (view, held): (&str, &DeltaTable),
    key: &str,
    lineage: &Lineage,
    inputs: &[Input],
) -> Result<Option<Reached>> {
    let Some(driving) = driving_of(view, key, lineage, inputs) else {
        return Ok(None);
    };
    if inputs.iter().any(|i| i.changed && i.built.is_none()) {
        return Ok(None);
    }
    let ctx = crate::stages::gold::session();
    let schema = driving
        .table
        .snapshot()
        .map_err(delta_err(&driving.path))?
        .schema()
        .as_ref()
        .clone();
    let driving_columns: BTreeSet<String> = schema.fields().map(|f| f.name().clone()).collect();
    let Some(text) = schema.field(key).and_then(|f| is_text(f.data_type())) else {
        return Ok(None);
    };
    let selected = if text {
        format!("DISTINCT CAST(\"{key}\" AS VARCHAR)")
    } else {
        format!("DISTINCT CAST(\"{key}\" AS BIGINT)")
    };
    register(&ctx, "__driving", &driving.table, None).await?;
    register(&ctx, "__view", held, None).await?;
    let follow = Follow {
        lake,
        ctx: &ctx,
        view,
        key,
        selected: &selected,
        lineage,
        driving,
        driving_columns: &driving_columns,
        text,
    };
    let changed: Vec<(usize, &Input)> = (inputs.iter().enumerate())
        .filter(|(_, i)| i.changed)
        .collect();
    // The driving table first: when a correction rewrote most of it, the view is rebuilt,
    // and following the dimensions through it would cost more than the rebuild.
    let mut followed = Vec::with_capacity(changed.len());
    if let Some((n, input)) = changed.iter().find(|(_, i)| follow.is_driving(i)) {
        match follow.input(*n, input).await? {
            Some(keys) => followed.push(Some(keys)),
            None => return Ok(None),
        }
    }
    // The other inputs at once: most of a small input's cost is reading its log and
    // planning, which the other inputs' queries overlap.
    followed.extend(
        futures::future::try_join_all(
            (changed.iter())
                .filter(|(_, i)| !follow.is_driving(i))
                .map(|(n, input)| follow.input(*n, input)),
        )
        .await?,
    );
    // Keys reached through the rows below the lookups, and through the lookups.
    let [mut rows, mut looked_up] = [follow.empty(), follow.empty()];
    for reached in followed {
        let Some((some, through_lookup)) = reached else {
            return Ok(None);
        };
        let into = if through_lookup {
            &mut looked_up
        } else {
            &mut rows
        };
        if !into.absorb(some) {
            return Ok(None);
        }
    }
    let relooked = looked_up.without(&rows);
    if !rows.absorb(looked_up) {
        return Ok(None);
    }
    Ok(Some(Reached {
        keys: rows,
        relooked,
    }))
}

/// What following one input's changes to the view's key needs.
struct Follow<'a> {
    lake: &'a Lake,
    ctx: &'a SessionContext,
    view: &'a str,
    key: &'a str,
    /// The select list of the key's distinct values, cast as the predicate compares them.
    selected: &'a str,
    lineage: &'a Lineage,
    driving: &'a Input,
    driving_columns: &'a BTreeSet<String>,
    text: bool,
}

impl Follow<'_> {
    fn is_driving(&self, input: &Input) -> bool {
        std::ptr::eq(input, self.driving)
    }

    fn empty(&self) -> Keys {
        if self.text {
            Keys::Text(BTreeSet::new())
        } else {
            Keys::Ints(BTreeSet::new())
        }
    }

    /// The keys of the view's rows that input `n`'s changes reach, and whether it reached them
    /// as a lookup; `None` when they cannot be followed to the key (the refresh is then a
    /// rebuild).
    async fn input(&self, n: usize, input: &Input) -> Result<Option<(Keys, bool)>> {
        let (view, key, lineage, ctx) = (self.view, self.key, self.lineage, self.ctx);
        let mut keys = self.empty();
        let Some(read) = lineage.tables.get(&input.name) else {
            return Ok(Some((keys, false)));
        };
        let is_driving = self.is_driving(input);
        // A lookup whose join key the view shows reaches the view's rows with that key.
        let shown: Vec<&(String, String)> = match (is_driving, lineage.lookups.get(&input.name)) {
            (false, Some(pairs)) => (pairs.iter())
                .filter(|(column, _)| lineage.output.contains(column))
                .collect(),
            _ => Vec::new(),
        };
        let through_lookup = !shown.is_empty();
        let links: Vec<&String> = if is_driving || through_lookup {
            vec![]
        } else {
            let links: Vec<&String> = read
                .iter()
                .filter(|c| self.driving_columns.contains(*c) && lineage.joins.contains(*c))
                .collect();
            if links.is_empty() {
                info!(view, input = %input.name, "No join column links this input to the view's key; rebuilding.");
                return Ok(None);
            }
            links
        };
        let mut columns: Vec<String> = read.iter().cloned().collect();
        if is_driving && !read.contains(key) {
            columns.push(key.to_string());
        }
        let alias = format!("__in{n}");
        let filter = lineage.filters.get(&input.name);
        let Some(changed) = changed_rows(self.lake, ctx, (input, filter), &alias, &columns).await?
        else {
            return Ok(Some((keys, false)));
        };
        if is_driving && changed.share > MAX_REWRITTEN_SHARE {
            info!(
                view,
                share = changed.share,
                "The changes rewrote most of the driving table; rebuilding."
            );
            return Ok(None);
        }
        let (changed_sql, selected) = (&changed.sql, self.selected);
        if is_driving {
            let sql = format!("SELECT {selected} FROM ({changed_sql}) AS c");
            collect(ctx, view, &sql, &mut keys).await?;
        } else if through_lookup {
            for (column, own) in shown {
                let sql = format!(
                    "SELECT {selected} FROM __view WHERE \"{column}\" IN \
                     (SELECT \"{own}\" FROM ({changed_sql}) AS c)"
                );
                collect(ctx, view, &sql, &mut keys).await?;
            }
        } else {
            let linked = (view, selected, alias.as_str());
            through_driving(ctx, linked, input, &changed, &links, &mut keys).await?;
        }
        tracing::debug!(view, input = %input.name, keys = keys.len(), "Followed an input's changes.");
        Ok(Some((keys, through_lookup)))
    }
}

/// An input's changes since the view was built.
struct Changed {
    /// A query of the rows that differ, over the columns the view reads.
    sql: String,
    /// For a dimension: the largest surrogate key it had handed out then.
    sk_before: Option<i64>,
    /// The share of the table's rows now in files written since.
    share: f64,
}

/// The share of `table`'s rows held by the files `added` (URIs of its live files).
fn rewritten_share(table: &DeltaTable, added: &[String], path: &str) -> Result<f64> {
    let snapshot = table.snapshot().map_err(delta_err(path))?;
    let names: BTreeSet<&str> = added.iter().map(|u| file_name(u)).collect();
    let (mut new, mut all) = (0u64, 0u64);
    for file in snapshot.log_data() {
        let rows = file.num_records().unwrap_or(0) as u64;
        all += rows;
        if names.contains(file_name(&file.path())) {
            new += rows;
        }
    }
    Ok(if all == 0 {
        1.0
    } else {
        new as f64 / all as f64
    })
}

/// The files (URIs) whose rows data changes added since the build, live now, and removed,
/// live then, from the commits between: a compaction only moves rows, so its output counts
/// as its sources until a data change rewrites it (then its sources count as removed), and
/// as added only where it absorbed a file a data change added (its sources then count as
/// removed, and the unchanged rows cancel out). `None` when a name is not where it should be.
fn data_sides(
    commits: &[Commit],
    now: &BTreeSet<String>,
    then: &BTreeSet<String>,
) -> Option<(Vec<String>, Vec<String>)> {
    let mut sides = Sides::default();
    for commit in commits {
        let absorbs = commit.removes.iter().any(|r| sides.added.contains(r));
        if commit.data_change || absorbs {
            for name in &commit.removes {
                sides.gone(name);
            }
            sides.added.extend(commit.adds.iter().cloned());
        } else {
            let sources: Vec<String> = (commit.removes.iter())
                .flat_map(|r| sides.origin.remove(r).unwrap_or_else(|| vec![r.clone()]))
                .collect();
            for name in &commit.adds {
                sides.origin.insert(name.clone(), sources.clone());
            }
        }
    }
    let locate = |names: &BTreeSet<String>, uris: &BTreeSet<String>| -> Option<Vec<String>> {
        names
            .iter()
            .map(|n| uris.iter().find(|u| file_name(u) == n.as_str()).cloned())
            .collect()
    };
    Some((locate(&sides.added, now)?, locate(&sides.removed, then)?))
}

/// The commits as a view reading `columns` of the table sees them: one that changed only
/// other columns moved its stored rows, as a compaction does (a correction that moved every
/// fact's `user_sk` changes nothing a view of tracks per day reads), and added its new files
/// (an SCD2 build's new versions, beside the versions it only ended).
fn as_read_by(commits: Vec<Commit>, columns: &[String]) -> Vec<Commit> {
    let mut seen = Vec::with_capacity(commits.len());
    for mut commit in commits {
        let unread = (commit.changed_columns.as_ref())
            .is_some_and(|changed| changed.iter().all(|c| !columns.contains(c)));
        if !unread {
            seen.push(commit);
            continue;
        }
        let new_files = std::mem::take(&mut commit.new_files);
        commit.adds.retain(|a| !new_files.contains(a));
        commit.data_change = false;
        seen.push(commit);
        if !new_files.is_empty() {
            seen.push(Commit {
                adds: new_files,
                removes: Vec::new(),
                data_change: true,
                changed_columns: None,
                new_files: Vec::new(),
            });
        }
    }
    seen
}

/// Holds, as a table named after `side`, the `columns` of its rows that no row of `other` with
/// the same surrogate key and `compared` values matches: a matched row has the same values in
/// every column (only `compared` ones can differ), so the difference of the sides is the
/// difference of these few rows, found by an anti-join on the key instead of a comparison of
/// every column of every row.
async fn unmatched(
    ctx: &SessionContext,
    (side, other): (&str, &str),
    (sk, compared): (&str, &[&String]),
    columns: &str,
    table: &str,
) -> Result<String> {
    let fail = || df_err(table, "finding the rows a change reached");
    let same: String = (compared.iter())
        .map(|c| format!(" AND y.\"{c}\" IS NOT DISTINCT FROM x.\"{c}\""))
        .collect();
    let rows = ctx
        .sql(&format!(
            "SELECT {columns} FROM {side} AS x WHERE NOT EXISTS \
             (SELECT 1 FROM {other} AS y WHERE y.\"{sk}\" = x.\"{sk}\"{same})"
        ))
        .await
        .map_err(fail())?;
    let schema = std::sync::Arc::new(rows.schema().as_arrow().clone());
    let rows = rows.collect().await.map_err(fail())?;
    let held = datafusion::datasource::MemTable::try_new(schema, vec![rows]).map_err(fail())?;
    let name = format!("{side}_unmatched");
    let _ = ctx.deregister_table(name.as_str());
    ctx.register_table(name.as_str(), std::sync::Arc::new(held))
        .map_err(fail())?;
    Ok(name)
}

/// The columns the data-changing `commits` changed in the rows they kept (each names them,
/// or only adds rows); `None` when one may have changed any.
fn changed_only(commits: &[Commit]) -> Option<BTreeSet<String>> {
    let mut changed = BTreeSet::new();
    for commit in commits.iter().filter(|c| c.data_change) {
        match &commit.changed_columns {
            Some(columns) => changed.extend(columns.iter().cloned()),
            None if commit.removes.is_empty() => {}
            None => return None,
        }
    }
    Some(changed)
}

/// File names while the commits are walked: added by data changes, removed from the build's
/// version, and the build's files each untouched compaction output holds the rows of.
#[derive(Default)]
struct Sides {
    added: BTreeSet<String>,
    removed: BTreeSet<String>,
    origin: std::collections::HashMap<String, Vec<String>>,
}

impl Sides {
    /// A file a data change removed: a file added since cancels out; a compaction's output
    /// stands for its sources.
    fn gone(&mut self, name: &String) {
        if self.added.remove(name) {
            return;
        }
        match self.origin.remove(name) {
            Some(sources) => self.removed.extend(sources),
            None => {
                self.removed.insert(name.clone());
            }
        }
    }
}

/// The rows, over `columns`, that differ between `input` at the version the view was built
/// from and now, among those `filter` keeps (what the view keeps of the table); `None` when no
/// file differs.
async fn changed_rows(
    lake: &Lake,
    ctx: &SessionContext,
    (input, filter): (&Input, Option<&datafusion::prelude::Expr>),
    alias: &str,
    columns: &[String],
) -> Result<Option<Changed>> {
    let Some(built) = input.built else {
        return Ok(None);
    };
    let before = table_at(lake, &input.path, built).await?;
    let sk_before = match input.surrogate_key {
        Some(_) => recorded(&before, layout::app_id::SURROGATE_KEY, &input.table_name).await?,
        None => None,
    };
    let uris = |t: &DeltaTable| -> Result<BTreeSet<String>> {
        Ok(t.get_file_uris().map_err(delta_err(&input.path))?.collect())
    };
    let (now, then) = (uris(&input.table)?, uris(&before)?);
    let commits = (crate::stages::gold::commits(&input.table, built, input.version).await)
        .map(|commits| as_read_by(commits, columns));
    let by_log = (commits.as_ref()).and_then(|commits| data_sides(commits, &now, &then));
    // A dimension's row keeps its surrogate key: when the commits say which columns they
    // changed, a stored row differs from its earlier copy only in those.
    let identity = match (&input.surrogate_key, &commits) {
        (Some(sk), Some(commits)) => changed_only(commits).map(|changed| {
            let compared: Vec<&String> = columns.iter().filter(|c| changed.contains(*c)).collect();
            (sk, compared)
        }),
        _ => None,
    };
    // Without the commits (a log cleaned past the build), every file that differs is read.
    let (added, removed) = by_log.unwrap_or_else(|| {
        (
            now.difference(&then).cloned().collect(),
            then.difference(&now).cloned().collect(),
        )
    });
    let share = rewritten_share(&input.table, &added, &input.path)?;
    let columns = columns
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut sides = Vec::new();
    for (side, table, files) in [
        ("added", &input.table, added),
        ("removed", &before, removed),
    ] {
        if !files.is_empty() {
            let name = format!("{alias}_{side}");
            register(ctx, &name, table, Some(&files)).await?;
            if let Some(filter) = filter {
                let fail = df_err(&input.name, "filtering the changed rows as the view does");
                let kept = (ctx.table(name.as_str()).await)
                    .and_then(|t| t.filter(filter.clone()))
                    .map_err(&fail)?;
                let _ = ctx.deregister_table(name.as_str());
                (ctx.register_table(name.as_str(), kept.into_view())).map_err(&fail)?;
            }
            sides.push(name);
        }
    }
    let sql = match (sides.as_slice(), identity) {
        ([], _) => return Ok(None),
        ([one], _) => format!("SELECT {columns} FROM {one}"),
        ([a, r, ..], identity) => {
            let (a, r) = match identity {
                Some((sk, compared)) => {
                    let (a, r) = (a.as_str(), r.as_str());
                    let compared = (sk.as_str(), compared.as_slice());
                    futures::try_join!(
                        unmatched(ctx, (a, r), compared, &columns, &input.name),
                        unmatched(ctx, (r, a), compared, &columns, &input.name),
                    )?
                }
                None => (a.clone(), r.clone()),
            };
            format!(
                "(SELECT {columns} FROM {a} EXCEPT SELECT {columns} FROM {r}) UNION ALL \
                 (SELECT {columns} FROM {r} EXCEPT SELECT {columns} FROM {a})"
            )
        }
    };
    Ok(Some(Changed {
        sql,
        sk_before,
        share,
    }))
}

/// The input that holds the view's key: the one that reads it, or the fact among several.
fn driving_of<'a>(
    view: &str,
    key: &str,
    lineage: &Lineage,
    inputs: &'a [Input],
) -> Option<&'a Input> {
    let holders: Vec<&Input> = (inputs.iter())
        .filter(|i| lineage.tables.get(&i.name).is_some_and(|c| c.contains(key)))
        .collect();
    let facts: Vec<&Input> = holders.iter().copied().filter(|i| i.is_fact).collect();
    match (facts.as_slice(), holders.as_slice()) {
        ([one], _) | ([], [one]) => Some(*one),
        _ => {
            info!(
                view,
                key, "No single input holds the view's key; rebuilding."
            );
            None
        }
    }
}

/// Whether a key column is compared as text (`Some(false)`: as an integer); `None` for a
/// type a predicate cannot name.
fn is_text(data_type: &deltalake::kernel::DataType) -> Option<bool> {
    use deltalake::kernel::PrimitiveType as P;
    match data_type {
        deltalake::kernel::DataType::Primitive(p) => {
            Some(!matches!(p, P::Byte | P::Short | P::Integer | P::Long))
        }
        _ => None,
    }
}

/// Adds the keys of the driving rows that hold a changed value of `input` in one of `links`.
/// A dimension's surrogate key newer than the view's build can only be held by driving rows
/// written since (see `open_inputs`), whose keys the driving table's own changes give, so
/// only older keys are looked for; with none, the driving table is not read at all.
async fn through_driving(
    ctx: &SessionContext,
    (view, selected, alias): (&str, &str, &str),
    input: &Input,
    changed: &Changed,
    links: &[&String],
    keys: &mut Keys,
) -> Result<()> {
    for link in links {
        let bound = match (&input.surrogate_key, changed.sk_before) {
            (Some(sk), Some(max)) if sk == *link => format!(" WHERE c.\"{link}\" <= {max}"),
            _ => String::new(),
        };
        let context = "finding the rows the changes reach";
        let values = ctx
            .sql(&format!(
                "SELECT DISTINCT \"{link}\" FROM ({}) AS c{bound}",
                changed.sql
            ))
            .await
            .map_err(df_err(view, context))?
            .collect()
            .await
            .map_err(df_err(view, context))?;
        let Some(first) = values.iter().find(|b| b.num_rows() > 0) else {
            continue;
        };
        let batch = arrow::compute::concat_batches(&first.schema(), &values)
            .map_err(|e| Error::arrow(view, e))?;
        let linked = format!("{alias}_link");
        let _ = ctx.deregister_table(linked.as_str());
        ctx.register_batch(linked.as_str(), batch)
            .map_err(df_err(view, context))?;
        let sql = format!(
            "SELECT {selected} FROM __driving WHERE \"{link}\" IN (SELECT \"{link}\" FROM {linked})"
        );
        collect(ctx, view, &sql, keys).await?;
    }
    Ok(())
}

/// Runs a query of one key column and adds its values to `keys`.
async fn collect(ctx: &SessionContext, view: &str, sql: &str, keys: &mut Keys) -> Result<()> {
    let batches = ctx
        .sql(sql)
        .await
        .map_err(df_err(view, "finding the rows the changes reach"))?
        .collect()
        .await
        .map_err(df_err(view, "finding the rows the changes reach"))?;
    let (mut ints, mut texts) = (Vec::new(), Vec::new());
    for batch in &batches {
        let column = batch.column(0);
        let unexpected = || unexpected(view, column.data_type());
        match keys {
            Keys::Ints(_) => {
                let values = column.as_any().downcast_ref::<Int64Array>();
                ints.extend(values.ok_or_else(unexpected)?.iter().flatten());
            }
            Keys::Text(_) => {
                let values = column.as_any().downcast_ref::<StringArray>();
                let values = values.ok_or_else(unexpected)?.iter().flatten();
                texts.extend(values.map(str::to_string));
            }
        }
    }
    // Built from all the values at once (sorted, then in bulk) and merged: a hundred thousand
    // inserts one by one cost more than the query that found them.
    match keys {
        Keys::Ints(set) => set.append(&mut ints.into_iter().collect()),
        Keys::Text(set) => set.append(&mut texts.into_iter().collect()),
    }
    Ok(())
}

fn unexpected(view: &str, found: &DataType) -> Error {
    Error::Gold {
        table: view.to_string(),
        message: format!("the view's key values came back as {found}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(data_change: bool, removes: &[&str], adds: &[&str]) -> Commit {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect();
        Commit {
            adds: names(adds),
            removes: names(removes),
            data_change,
            changed_columns: None,
            new_files: Vec::new(),
        }
    }

    #[test]
    fn rows_compare_by_key_only_while_every_change_names_its_columns_or_only_adds() {
        let ended = Commit {
            changed_columns: Some(vec!["valid_to".into(), "is_current".into()]),
            new_files: vec!["new.parquet".into()],
            ..commit(true, &["a.parquet"], &["b.parquet", "new.parquet"])
        };
        let appended = commit(true, &[], &["c.parquet"]);
        let compacted = commit(false, &["b.parquet", "c.parquet"], &["d.parquet"]);
        let changed = changed_only(&[ended.clone(), appended, compacted]);
        let expected: BTreeSet<String> = ["is_current", "valid_to"].map(String::from).into();
        assert_eq!(changed, Some(expected));
        // A rewrite that does not say what it changed may have changed any column.
        let rewritten = commit(true, &["d.parquet"], &["e.parquet"]);
        assert_eq!(changed_only(&[ended, rewritten]), None);
    }

    #[test]
    fn an_scd2_build_that_only_ended_versions_adds_just_its_new_versions_for_a_view() {
        // dim_user's build ended versions in `d` (copied as `d2`) and wrote new ones in `v`.
        let history = || {
            let mut build = commit(true, &["d"], &["d2", "v"]);
            build.changed_columns = Some(vec!["valid_to".into(), "is_current".into()]);
            build.new_files = vec!["v".into()];
            vec![build]
        };
        let (now, then) = (uris(&["d2", "v"]), uris(&["d"]));
        let read = |columns: &[&str]| {
            let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
            let (added, removed) =
                data_sides(&as_read_by(history(), &columns), &now, &then).unwrap();
            let names = |v: Vec<String>| -> Vec<String> {
                v.iter().map(|u| file_name(u).to_string()).collect()
            };
            (names(added), names(removed))
        };
        assert_eq!(read(&["user_sk", "country"]), (vec!["v".into()], vec![]));
        assert_eq!(
            read(&["user_id", "is_current"]),
            (vec!["d2".into(), "v".into()], vec!["d".into()])
        );
    }

    #[test]
    fn a_commit_that_changed_only_columns_a_view_does_not_read_moved_its_rows() {
        // A re-resolution rewrote the view's file `a`, then new rows came in `n`.
        let history = || {
            let mut reresolved = commit(true, &["a"], &["a2"]);
            reresolved.changed_columns = Some(vec!["user_sk".to_string()]);
            vec![reresolved, commit(true, &[], &["n"])]
        };
        let (now, then) = (uris(&["a2", "n"]), uris(&["a"]));
        let names = |v: Vec<String>| -> Vec<String> {
            v.iter().map(|u| file_name(u).to_string()).collect()
        };
        let read = |columns: &[&str]| {
            let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
            let commits = as_read_by(history(), &columns);
            let (added, removed) = data_sides(&commits, &now, &then).unwrap();
            (names(added), names(removed))
        };
        // Tracks per day: the rows of `a` only moved; `n` is new.
        assert_eq!(read(&["track_sk", "date_key"]), (vec!["n".into()], vec![]));
        // A view of users reads what moved: both sides of the rewrite count.
        assert_eq!(
            read(&["user_sk", "date_key"]),
            (vec!["a2".into(), "n".into()], vec!["a".into()])
        );
    }

    fn uris(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| format!("file:///t/{n}")).collect()
    }

    fn sides(commits: &[Commit], now: &[&str], then: &[&str]) -> (Vec<String>, Vec<String>) {
        let (added, removed) = data_sides(commits, &uris(now), &uris(then)).unwrap();
        let names = |u: Vec<String>| u.iter().map(|u| file_name(u).to_string()).collect();
        (names(added), names(removed))
    }

    #[test]
    fn compaction_moves_rows_and_only_data_changes_count() {
        let none: Vec<String> = Vec::new();
        // Only a compaction: nothing changed.
        let only = [commit(false, &["a", "b"], &["c"])];
        assert_eq!(
            sides(&only, &["c"], &["a", "b"]),
            (none.clone(), none.clone())
        );
        // A new file, then compacted with older ones: the output against its sources.
        let absorbed = [
            commit(true, &[], &["f"]),
            commit(false, &["a", "f"], &["c"]),
        ];
        assert_eq!(
            sides(&absorbed, &["b", "c"], &["a", "b"]),
            (vec!["c".to_string()], vec!["a".to_string()])
        );
        // A compaction, then a merge that rewrites its output: the sources are removed.
        let rewritten = [
            commit(false, &["a", "b"], &["c"]),
            commit(true, &["c"], &["d"]),
        ];
        assert_eq!(
            sides(&rewritten, &["d"], &["a", "b"]),
            (
                vec!["d".to_string()],
                vec!["a".to_string(), "b".to_string()]
            )
        );
        // A file added and rewritten since: only the last one is new.
        let twice = [commit(true, &[], &["f"]), commit(true, &["f"], &["g"])];
        assert_eq!(
            sides(&twice, &["a", "g"], &["a"]),
            (vec!["g".to_string()], none)
        );
        // A name the table does not hold: the caller compares whole file lists instead.
        assert!(data_sides(&[commit(true, &[], &["x"])], &uris(&["a"]), &uris(&["a"])).is_none());
    }
}
