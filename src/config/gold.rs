//! Gold metadata: per table `[tables.gold]` (a dimension with its SCD type, or a fact with its
//! point-in-time lookups), and the `[[views]]` rendered from templates.

use serde::Deserialize;

use super::TableSpec;
use super::ident;

/// What a gold table is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum GoldKind {
    /// A dimension with surrogate keys, kept as SCD type 1 or 2.
    #[default]
    Dimension,
    /// A fact: rows upserted by key, dimension surrogate keys looked up at a point in time.
    Fact,
}

/// How a silver table becomes a gold table (`[tables.gold]`), after Delta Live Tables'
/// `create_auto_cdc_flow(keys, sequence_by, stored_as_scd_type, track_history_except_column_list)`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GoldSpec {
    /// The gold table, `gold/<name>/`.
    pub name: String,
    /// A dimension (the default) or a fact.
    #[serde(default)]
    pub kind: GoldKind,
    /// 1 (overwrite in place) or 2 (keep history); dimensions only.
    #[serde(default = "default_scd_type")]
    pub scd_type: u8,
    /// The column that orders changes of one key (default: the watermark column). A
    /// dimension's `valid_from` is its value; it is not repeated as a column in SCD2 tables.
    pub sequence_by: Option<String>,
    /// Columns whose changes make no new SCD2 version (the sequence column never does).
    #[serde(default)]
    pub track_history_except: Vec<String>,
    /// DLT's `track_history_column_list`: the only columns whose changes make a new SCD2
    /// version (instead of `track_history_except`).
    pub track_history_columns: Option<Vec<String>>,
    /// Silver columns left out of the gold table (lineage columns `_*` always are).
    #[serde(default)]
    pub except_columns: Vec<String>,
    /// DLT's `column_list`: the only silver columns the gold table keeps besides the keys and
    /// the sequence column (instead of `except_columns`).
    pub columns: Option<Vec<String>>,
    /// DLT's `ignore_null_updates`: a NULL in a change keeps the key's current value of that
    /// column instead of overwriting it (and so makes no new SCD2 version by itself).
    #[serde(default)]
    pub ignore_null_updates: bool,
    /// The surrogate key column (default: `<entity>_sk`, `dim_user` → `user_sk`).
    pub surrogate_key: Option<String>,
    /// DLT's `apply_as_deletes`: a SQL condition over silver columns that makes a row a
    /// delete of its key (e.g. `is_deleted = 1`). SCD2 ends the key's current version at the
    /// row's sequence value, SCD1 and facts remove the key's row; a later change of the key
    /// starts it again. Delete markers from `deletes = "detect"` are applied the same way.
    pub apply_as_deletes: Option<String>,
    /// DLT's `apply_as_truncates` (SCD1 dimensions only): a SQL condition that makes a row a
    /// truncate of the whole table at its sequence value: every key's row older than it goes,
    /// and rows of older sequence values that arrive later never come back.
    pub apply_as_truncates: Option<String>,
    /// Facts: the dimensions whose surrogate keys each row carries, looked up in order.
    /// Dimensions: the dimensions whose current attributes (`columns`) each new version
    /// copies when it is written (a snowflake's outrigger, flattened).
    #[serde(default)]
    pub lookups: Vec<LookupSpec>,
}

fn default_scd_type() -> u8 {
    2
}

/// A fact's reference to a dimension: the version valid at the fact's sequence value.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupSpec {
    /// The gold dimension, by name.
    pub dimension: String,
    /// Fact columns matched, in order, to the dimension's keys. A column carried by an
    /// earlier lookup may be used (the track's `artist_id` finds the artist).
    pub on: Vec<String>,
    /// Dimension attributes copied into the fact (from the same version).
    #[serde(default)]
    pub columns: Vec<String>,
}

/// A business view: a template in `templates/` rendered with `params`, run as one query and
/// materialized as `gold/<name>/`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ViewSpec {
    /// The view, materialized as `gold/<name>/`.
    pub name: String,
    /// The template's file name under `templates/`.
    pub template: String,
    /// Parameters handed to the template as they are written.
    #[serde(default)]
    #[schemars(with = "std::collections::BTreeMap<String, serde_json::Value>")]
    pub params: toml::Table,
    /// How the view refreshes (dbt's `incremental_strategy`); without one it is rebuilt whole.
    #[serde(default)]
    pub incremental_strategy: Option<Incremental>,
    /// For `merge`: the column that identifies a row of the view.
    #[serde(default)]
    pub unique_key: Option<String>,
    /// For `insert_overwrite`: the column whose values are the partitions a refresh replaces.
    #[serde(default)]
    pub partition_by: Option<String>,
}

/// An incremental refresh: only the view's rows that the inputs' changes can reach are
/// computed again and replaced, by row key (`merge`) or by partition (`insert_overwrite`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Incremental {
    /// Replace the rows whose `unique_key` the changes reach.
    Merge,
    /// Replace every row of the `partition_by` values the changes reach.
    InsertOverwrite,
}

impl ViewSpec {
    /// The column an incremental refresh replaces rows by, or `None` for a rebuild.
    pub fn refresh_key(&self) -> Option<&str> {
        match self.incremental_strategy? {
            Incremental::Merge => self.unique_key.as_deref(),
            Incremental::InsertOverwrite => self.partition_by.as_deref(),
        }
    }

    /// The problems of the incremental settings, as (key, message).
    pub(super) fn refresh_problems(&self) -> Vec<(&'static str, String)> {
        let strategy = self.incremental_strategy.map(Incremental::name);
        let needed = match self.incremental_strategy {
            Some(Incremental::Merge) => Some("unique_key"),
            Some(Incremental::InsertOverwrite) => Some("partition_by"),
            None => None,
        };
        let mut problems = Vec::new();
        for (key, value) in [
            ("unique_key", &self.unique_key),
            ("partition_by", &self.partition_by),
        ] {
            match (value, needed) {
                (None, Some(n)) if n == key => problems.push((
                    key,
                    format!("incremental_strategy = {strategy:?} needs it"),
                )),
                (Some(_), None) => problems.push((
                    key,
                    "is used only with incremental_strategy = \"merge\" (unique_key) or \"insert_overwrite\" (partition_by)".to_string(),
                )),
                (Some(_), Some(n)) if n != key => problems.push((
                    key,
                    format!("is not used by incremental_strategy = {strategy:?}, which replaces rows by {n}"),
                )),
                (Some(column), _) => {
                    if let Some(p) = ident::problem(column) {
                        problems.push((key, p));
                    }
                }
                _ => {}
            }
        }
        problems
    }
}

impl Incremental {
    /// The strategy as the pipeline file spells it.
    pub fn name(self) -> &'static str {
        match self {
            Incremental::Merge => "merge",
            Incremental::InsertOverwrite => "insert_overwrite",
        }
    }
}

impl GoldSpec {
    /// Whether the gold table keeps silver column `name` (a non-key, non-lineage column):
    /// listed in `columns` when that is given, else not in `except_columns`.
    pub fn keeps(&self, name: &str) -> bool {
        match &self.columns {
            Some(only) => only.iter().any(|c| c == name),
            None => !self.except_columns.iter().any(|c| c == name),
        }
    }

    /// Whether a change of attribute `name` makes a new SCD2 version: listed in
    /// `track_history_columns` when that is given, else not in `track_history_except`.
    pub fn tracks(&self, name: &str) -> bool {
        match &self.track_history_columns {
            Some(only) => only.iter().any(|c| c == name),
            None => !self.track_history_except.iter().any(|c| c == name),
        }
    }

    /// Every column the section names, with its key (`columns[2]`), for checks against the
    /// silver table.
    pub fn named_columns(&self) -> Vec<(String, &str)> {
        let lists: [(&str, &[String]); 4] = [
            ("track_history_except", &self.track_history_except),
            ("except_columns", &self.except_columns),
            (
                "track_history_columns",
                self.track_history_columns.as_deref().unwrap_or(&[]),
            ),
            ("columns", self.columns.as_deref().unwrap_or(&[])),
        ];
        lists
            .into_iter()
            .flat_map(|(key, names)| {
                (names.iter().enumerate()).map(move |(i, c)| (format!("{key}[{i}]"), c.as_str()))
            })
            .collect()
    }

    /// The surrogate key column.
    pub fn sk(&self) -> String {
        self.surrogate_key.clone().unwrap_or_else(|| {
            format!(
                "{}_sk",
                self.name.strip_prefix("dim_").unwrap_or(&self.name)
            )
        })
    }
}

impl TableSpec {
    /// The column that orders changes in gold.
    pub fn sequence_by(&self) -> &str {
        self.gold
            .as_ref()
            .and_then(|g| g.sequence_by.as_deref())
            .unwrap_or(&self.cdc_column)
    }
}

/// Checks one table's gold section; `dims` are the dimensions of the whole file, by name.
pub(super) fn validate(
    t: &TableSpec,
    at: &str,
    dims: &[(&str, &TableSpec)],
    problem: &mut impl FnMut(String, String),
) {
    let Some(g) = &t.gold else { return };
    let at = format!("{at}.gold");
    let mut names: Vec<(String, &str)> = vec![(format!("{at}.name"), &g.name)];
    if let Some(s) = &g.sequence_by {
        names.push((format!("{at}.sequence_by"), s));
    }
    if let Some(s) = &g.surrogate_key {
        names.push((format!("{at}.surrogate_key"), s));
    }
    for (key, c) in g.named_columns() {
        names.push((format!("{at}.{key}"), c));
        if key.starts_with("except_columns")
            && (t.keys.iter().any(|k| k == c) || c == t.sequence_by())
        {
            problem(
                format!("{at}.{key}"),
                format!("{c:?} is a key or the sequence column; gold needs it"),
            );
        }
    }
    // DLT takes one list or its opposite, not both.
    for (include, exclude, given) in [
        (
            "columns",
            "except_columns",
            g.columns.is_some() && !g.except_columns.is_empty(),
        ),
        (
            "track_history_columns",
            "track_history_except",
            g.track_history_columns.is_some() && !g.track_history_except.is_empty(),
        ),
    ] {
        if given {
            problem(
                format!("{at}.{include}"),
                format!(
                    "name either {include} (the columns to take) or {exclude} (the ones to leave out), not both"
                ),
            );
        }
    }
    if g.kind == GoldKind::Fact {
        for (key, set) in [
            ("track_history_columns", g.track_history_columns.is_some()),
            ("ignore_null_updates", g.ignore_null_updates),
        ] {
            if set {
                problem(
                    format!("{at}.{key}"),
                    "applies to dimensions only (a fact keeps no history)".into(),
                );
            }
        }
    }
    for (i, l) in g.lookups.iter().enumerate() {
        names.push((format!("{at}.lookups[{i}].dimension"), &l.dimension));
        for (j, c) in l.on.iter().enumerate() {
            names.push((format!("{at}.lookups[{i}].on[{j}]"), c));
        }
        for (j, c) in l.columns.iter().enumerate() {
            names.push((format!("{at}.lookups[{i}].columns[{j}]"), c));
        }
    }
    for (location, name) in names {
        if let Some(p) = ident::problem(name) {
            problem(location, p);
        }
    }
    if let Some(p) = g
        .apply_as_deletes
        .as_deref()
        .and_then(super::expression_problem)
    {
        problem(format!("{at}.apply_as_deletes"), p);
    }
    if let Some(condition) = &g.apply_as_truncates {
        if let Some(p) = super::expression_problem(condition) {
            problem(format!("{at}.apply_as_truncates"), p);
        } else if g.kind != GoldKind::Dimension || g.scd_type != 1 {
            problem(
                format!("{at}.apply_as_truncates"),
                "truncates apply to SCD type 1 dimensions only (as in DLT)".into(),
            );
        }
    }
    if g.kind == GoldKind::Dimension && !matches!(g.scd_type, 1 | 2) {
        problem(
            format!("{at}.scd_type"),
            format!("must be 1 or 2, not {}", g.scd_type),
        );
    }
    validate_lookups(g, &at, dims, problem);
}

/// Checks a gold section's lookups against the dimensions of the file (`dims`, by name).
fn validate_lookups(
    g: &GoldSpec,
    at: &str,
    dims: &[(&str, &TableSpec)],
    problem: &mut impl FnMut(String, String),
) {
    // A dimension copies attributes of another's current members (the track's artist name):
    // one level, so that the dimensions build in two waves.
    for (i, l) in g
        .lookups
        .iter()
        .enumerate()
        .filter(|_| g.kind == GoldKind::Dimension)
    {
        let at = format!("{at}.lookups[{i}]");
        if l.columns.is_empty() {
            problem(
                format!("{at}.columns"),
                "a dimension's lookup names the columns it copies".into(),
            );
        }
        if l.dimension == g.name {
            problem(
                format!("{at}.dimension"),
                "a dimension cannot look itself up".into(),
            );
        } else if let Some((_, dim)) = dims.iter().find(|(n, _)| *n == l.dimension)
            && dim.gold.as_ref().is_some_and(|d| !d.lookups.is_empty())
        {
            problem(
                format!("{at}.dimension"),
                format!(
                    "{} looks up another dimension itself; a dimension may only look up \
                     one that does not",
                    l.dimension
                ),
            );
        }
    }
    for (i, l) in g.lookups.iter().enumerate() {
        let Some((_, dim)) = dims.iter().find(|(n, _)| *n == l.dimension) else {
            problem(
                format!("{at}.lookups[{i}].dimension"),
                format!(
                    "{:?} is not a gold dimension of this file (they are: {})",
                    l.dimension,
                    dims.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                ),
            );
            continue;
        };
        if l.on.len() != dim.keys.len() {
            problem(
                format!("{at}.lookups[{i}].on"),
                format!(
                    "names {} column(s), but {} has {} key(s): {}",
                    l.on.len(),
                    l.dimension,
                    dim.keys.len(),
                    dim.keys.join(", ")
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surrogate_keys_are_named_after_the_entity() {
        let g: GoldSpec = toml::from_str("name = \"dim_user\"").unwrap();
        assert_eq!(g.sk(), "user_sk");
        assert_eq!(g.scd_type, 2);
        let g: GoldSpec = toml::from_str("name = \"geo\"\nsurrogate_key = \"geo_id\"").unwrap();
        assert_eq!(g.sk(), "geo_id");
        let g: GoldSpec = toml::from_str("name = \"geo\"").unwrap();
        assert_eq!(g.sk(), "geo_sk");
    }
}
