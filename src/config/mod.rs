//! The pipeline file (`pipeline.toml`): parsed, validated with every problem reported at once,
//! and turned into typed specs that the stages read.

pub mod catalog;
pub mod gold;
pub(crate) mod ident;
pub mod ingest;
pub mod maintenance;
pub mod reference;
mod settings;
pub mod silver;
mod snapshot;
pub mod sources;
pub mod templates;

pub use gold::{GoldKind, GoldSpec, Incremental, LookupSpec, ViewSpec};
pub use settings::Settings;
use settings::parse_settings;
pub use templates::Templates;

use std::path::Path;

use serde::Deserialize;

use crate::error::{ConfigProblem, Error, Result};
use crate::lake::layout::silver_columns::SNAPSHOT_AT;

/// The pipeline file shipped at the repository root, built in so that `demo` runs anywhere.
pub const DEFAULT_PIPELINE: &str = include_str!("../../pipeline.toml");

/// One source table (`[[tables]]`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// The table's name in the source, e.g. `DimUser`; also its bronze folder.
    pub name: String,
    /// The source schema (SQL Server); SQLite ignores it.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// The watermark column: integer, date or timestamp, rising with every insert or update.
    /// None: a snapshot table, read whole each run and loaded when its content changed; the
    /// difference from the previous snapshot is its change (inserts, updates, and deletes for
    /// keys that vanished), in sequence by `_snapshot_at` (DLT's AUTO CDC FROM SNAPSHOT).
    #[serde(default)]
    pub cdc_column: String,
    /// The business key columns.
    pub keys: Vec<String>,
    /// The named source (`[sources.<name>]`) the table is read from; none: the default
    /// source (`--source`, `TUNELAKE_SOURCE`).
    pub source: Option<String>,
    /// For the `files:` source: the table's file names relative to the base (default: the
    /// `<name>/` folder, or `<name>.parquet|csv|json`).
    #[serde(default)]
    pub files: Vec<String>,
    /// How far below the watermark each incremental window starts, for rows that commit
    /// late (`"90s"`, `"30m"`, `"2h"`, `"1d"`; an integer for integer watermarks). Silver's
    /// (key, watermark value) dedup makes the re-read rows free. Default: none.
    pub lookback: Option<ingest::LookbackSetting>,
    /// `"detect"`: find keys deleted in the source and write delete markers for them
    /// (see [`ingest::Deletes`]). Default `"none"`.
    #[serde(default)]
    pub deletes: ingest::Deletes,
    /// `"watermark"` (default) or `"change_tracking"` (SQL Server Change Tracking, with
    /// `cdc_column = "SYS_CHANGE_VERSION"`; see [`ingest::CdcMode`]).
    #[serde(default)]
    pub cdc_mode: ingest::CdcMode,
    /// How the table is cleaned into silver (`[tables.silver]`).
    #[serde(default)]
    pub silver: SilverSpec,
    /// How the table is shaped in gold (`[tables.gold]`); none: the table stops at silver.
    pub gold: Option<GoldSpec>,
}

/// Silver rules for one table: transforms as SQL expressions, then expectations.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SilverSpec {
    /// The silver table's name, `silver/<name>/` (default: the source name in snake_case).
    pub name: Option<String>,
    /// Derived or replaced columns, in order: `{ name, expr }`, `expr` a SQL expression
    /// (DataFusion dialect) over the bronze columns. A name that exists replaces that column.
    #[serde(default)]
    pub columns: Vec<ColumnSpec>,
    /// Renames applied after the expressions: `{ from, to }`.
    #[serde(default)]
    pub rename: Vec<RenameSpec>,
    /// Columns removed from silver.
    #[serde(default)]
    pub drop: Vec<String>,
    /// Columns removed from a file's rows when they are NULL in every row of it (the
    /// reference stack's "drop columns" utility); `_rescued_data` is always treated so.
    #[serde(default)]
    pub drop_if_empty: Vec<String>,
    /// What a bronze column silver does not have yet becomes (Auto Loader's
    /// `cloudFiles.schemaEvolutionMode`); see [`silver::SchemaEvolution`].
    #[serde(default)]
    pub schema_evolution: silver::SchemaEvolution,
    /// Column types to take for columns silver does not have yet (Auto Loader's
    /// `cloudFiles.schemaHints`): `{ amount = "DECIMAL(10,2)" }`, Spark SQL type names.
    #[serde(default)]
    pub schema_hints: std::collections::BTreeMap<String, String>,
    /// Quality rules, Delta Live Tables style. A rule that every key is non-NULL is added
    /// unless one named `keys_not_null` is given.
    #[serde(default)]
    pub expect: Vec<Expectation>,
}

/// A derived or replaced column.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// The column, new or replaced.
    pub name: String,
    /// Its SQL expression over the bronze columns (DataFusion dialect).
    pub expr: String,
}

/// A column rename.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameSpec {
    /// The bronze column.
    pub from: String,
    /// Its silver name.
    pub to: String,
}

/// What happens to rows that break a rule.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Count them and keep them.
    Warn,
    /// Quarantine them (with the rule's name) and keep the rest.
    Drop,
    /// Stop the table: nothing of the file is committed.
    Fail,
}

/// A quality rule: a SQL boolean over the transformed row; NULL counts as broken.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// The rule's name, in counts, quarantine and the report.
    pub name: String,
    /// A SQL condition that a good row meets (NULL counts as broken).
    pub rule: String,
    /// What happens to a row that breaks it.
    pub action: Action,
}

impl TableSpec {
    /// The silver table's name.
    pub fn silver_name(&self) -> String {
        self.silver
            .name
            .clone()
            .unwrap_or_else(|| ident::snake_case(&self.name))
    }

    /// The expectations in force: the configured ones, plus non-NULL keys unless overridden.
    pub fn expectations(&self) -> Vec<Expectation> {
        let mut rules = Vec::new();
        if !self.silver.expect.iter().any(|e| e.name == "keys_not_null") {
            rules.push(Expectation {
                name: "keys_not_null".to_string(),
                rule: self
                    .keys
                    .iter()
                    .map(|k| format!("{} IS NOT NULL", ident::quote_ansi(k)))
                    .collect::<Vec<_>>()
                    .join(" AND "),
                action: Action::Drop,
            });
        }
        rules.extend(self.silver.expect.iter().cloned());
        rules
    }
}

/// Why a text is not a single SQL expression, or `None` when it is one.
pub fn expression_problem(text: &str) -> Option<String> {
    use datafusion::sql::sqlparser::{dialect::GenericDialect, parser::Parser, tokenizer::Token};
    let mut parser = match Parser::new(&GenericDialect {}).try_with_sql(text) {
        Ok(p) => p,
        Err(e) => return Some(format!("{text:?} is not SQL: {e}")),
    };
    if let Err(e) = parser.parse_expr() {
        return Some(format!("{text:?} is not a SQL expression: {e}"));
    }
    match parser.peek_token().token {
        Token::EOF => None,
        other => Some(format!(
            "{text:?} must be one SQL expression; it goes on at {other}"
        )),
    }
}

fn default_schema() -> String {
    "dbo".to_string()
}

/// The validated pipeline file.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// Run-wide settings.
    pub settings: Settings,
    /// How the tables are kept healthy over a lifetime of runs.
    pub maintenance: maintenance::Maintenance,
    /// The tables, in the file's order.
    pub tables: Vec<TableSpec>,
    /// Business views (`[[views]]`), materialized in gold after the tables.
    pub views: Vec<ViewSpec>,
    /// Where the views' templates are found.
    pub templates: Templates,
    /// Named sources (`[sources.<name>]`): name → URL, variables expanded.
    pub sources: std::collections::BTreeMap<String, String>,
    /// Where `tunelake catalog publish` registers the tables (`[catalog]`).
    pub catalog: Option<catalog::CatalogSpec>,
}

/// `[[tables]]`, each checked on its own and then for names listed twice.
fn parse_tables(
    raw: Option<&toml::Value>,
    problem: &mut impl FnMut(String, String),
) -> Vec<TableSpec> {
    let raw_tables = match raw {
        Some(toml::Value::Array(a)) => a.clone(),
        Some(_) => {
            problem(
                "tables".into(),
                "must be an array of tables ([[tables]])".into(),
            );
            Vec::new()
        }
        None => Vec::new(),
    };
    if raw_tables.is_empty() {
        problem("tables".into(), "no tables are listed".into());
    }
    let mut tables: Vec<TableSpec> = Vec::new();
    for (i, raw) in raw_tables.into_iter().enumerate() {
        let name = raw
            .get("name")
            .and_then(|v| v.as_str())
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        let at = format!("tables[{i}]{name}");
        match raw.try_into::<TableSpec>() {
            Ok(mut t) => {
                if t.cdc_column.is_empty() {
                    t.cdc_column = SNAPSHOT_AT.to_string();
                    snapshot::validate(&t, &at, problem);
                }
                validate_table(&t, &at, problem);
                tables.push(t);
            }
            Err(e) => problem(at, e.message().to_string()),
        }
    }
    for (i, t) in tables.iter().enumerate() {
        if tables[..i]
            .iter()
            .any(|o| o.name.eq_ignore_ascii_case(&t.name))
        {
            problem(
                format!("tables[{i}] ({})", t.name),
                "this table is listed twice".into(),
            );
        }
    }
    tables
}

/// The checks of one table that need no other table (`at` names it in problems).
fn validate_table(t: &TableSpec, at: &str, problem: &mut impl FnMut(String, String)) {
    for (field, value) in [
        ("name", &t.name),
        ("schema", &t.schema),
        ("cdc_column", &t.cdc_column),
    ] {
        if let Some(p) = ident::problem(value) {
            problem(format!("{at}.{field}"), p);
        }
    }
    if t.keys.is_empty() && !t.is_snapshot() {
        problem(
            format!("{at}.keys"),
            "at least one key column is needed".into(),
        );
    }
    for (k, key) in t.keys.iter().enumerate() {
        if let Some(p) = ident::problem(key) {
            problem(format!("{at}.keys[{k}]"), p);
        } else if t.keys[..k].contains(key) {
            problem(
                format!("{at}.keys[{k}]"),
                format!("{key:?} is listed twice"),
            );
        }
    }
    silver::validate(t, at, problem);
    ingest::validate(t, at, problem);
    for (f, file) in t.files.iter().enumerate() {
        if file.is_empty() || file.split('/').any(|s| s == ".." || s.is_empty()) {
            problem(
                format!("{at}.files[{f}]"),
                format!("{file:?} must be a relative path without '..'"),
            );
        }
    }
}

impl Pipeline {
    /// Reads and validates a pipeline file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse_with(
            &text,
            &path.display().to_string(),
            Templates::new(Some(templates::dir_beside(path))),
        )
    }

    /// Parses and validates pipeline text with the built-in templates; `file` names it in
    /// errors.
    pub fn parse(text: &str, file: &str) -> Result<Self> {
        Self::parse_with(text, file, Templates::default())
    }

    /// Parses and validates pipeline text, finding view templates in `templates`.
    pub fn parse_with(text: &str, file: &str, templates: Templates) -> Result<Self> {
        let fail = |problems: Vec<ConfigProblem>| Error::Config {
            file: file.to_string(),
            problems,
        };
        let doc: toml::Table = toml::from_str(text).map_err(|e| {
            fail(vec![ConfigProblem {
                location: e
                    .span()
                    .map(|s| line_col(text, s.start))
                    .unwrap_or_else(|| "document".to_string()),
                message: e.message().to_string(),
            }])
        })?;
        let mut problems = Vec::new();
        let mut problem =
            |location: String, message: String| problems.push(ConfigProblem { location, message });

        for key in doc.keys() {
            if ![
                "settings",
                "maintenance",
                "sources",
                "tables",
                "views",
                "catalog",
            ]
            .contains(&key.as_str())
            {
                problem(
                    key.clone(),
                    "unknown section (expected [settings], [maintenance], [sources.<name>], \
                     [[tables]], [[views]] or [catalog])"
                        .to_string(),
                );
            }
        }
        let settings = parse_settings(doc.get("settings"), &mut problem);
        let maintenance = match doc.get("maintenance").map(|v| v.clone().try_into()) {
            None => maintenance::Maintenance::default(),
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                problem("maintenance".to_string(), e.message().to_string());
                maintenance::Maintenance::default()
            }
        };
        maintenance::validate(&maintenance, &mut problem);
        let env = |name: &str| std::env::var(name).ok();
        let sources = sources::parse_sources(doc.get("sources"), &env, &mut problem);
        let catalog = catalog::parse_catalog(doc.get("catalog"), &env, &mut problem);
        let tables = parse_tables(doc.get("tables"), &mut problem);
        for (i, t) in tables.iter().enumerate() {
            if let Some(name) = &t.source
                && !sources.contains_key(name)
            {
                let known: Vec<&str> = sources.keys().map(String::as_str).collect();
                problem(
                    format!("tables[{i}] ({}).source", t.name),
                    format!(
                        "{name:?} is not a source of this file (it names: {}); without `source` \
                         a table reads the default source (--source)",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
        }

        let dims: Vec<(&str, &TableSpec)> = tables
            .iter()
            .filter_map(|t| {
                t.gold
                    .as_ref()
                    .filter(|g| g.kind == GoldKind::Dimension)
                    .map(|g| (g.name.as_str(), t))
            })
            .collect();
        for (i, t) in tables.iter().enumerate() {
            gold::validate(t, &format!("tables[{i}] ({})", t.name), &dims, &mut problem);
        }
        let mut gold_names: Vec<&str> = tables
            .iter()
            .filter_map(|t| t.gold.as_ref().map(|g| g.name.as_str()))
            .collect();
        let views = parse_views(doc.get("views"), &templates, &gold_names, &mut problem);
        gold_names.extend(views.iter().map(|v| v.name.as_str()));
        for (i, name) in gold_names.iter().enumerate() {
            if gold_names[..i].contains(name) {
                problem(
                    format!("gold table {name}"),
                    "two tables or views are written to this gold name".into(),
                );
            }
        }

        if problems.is_empty() {
            Ok(Pipeline {
                settings,
                maintenance,
                tables,
                views,
                templates,
                sources,
                catalog,
            })
        } else {
            Err(fail(problems))
        }
    }

    /// Loads `path` if given or if `pipeline.toml` exists here; otherwise the built-in default.
    pub fn load_or_default(path: Option<&Path>) -> Result<Self> {
        match Self::file_in_use(path) {
            Some(p) => Self::load(&p),
            None => Self::parse(DEFAULT_PIPELINE, "built-in pipeline.toml"),
        }
    }

    /// The pipeline file [`Pipeline::load_or_default`] reads: `path`, else `./pipeline.toml`
    /// when it exists; `None` for the built-in one.
    pub fn file_in_use(path: Option<&Path>) -> Option<std::path::PathBuf> {
        match path {
            Some(p) => Some(p.to_path_buf()),
            None if Path::new("pipeline.toml").exists() => Some("pipeline.toml".into()),
            None => None,
        }
    }

    /// The table a bronze object belongs to, from its lake path `bronze/<Table>/<file>` (what
    /// a storage event names); `None` for quarantine, watermark or unknown paths.
    pub fn table_for_bronze_path(&self, path: &str) -> Option<&TableSpec> {
        let mut parts = path.trim_start_matches('/').split('/');
        let (Some("bronze"), Some(table), Some(file), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        if !file.ends_with(".parquet") {
            return None;
        }
        self.tables.iter().find(|t| t.name == table)
    }

    /// The tables named in `only` (case-insensitive), or all of them when `only` is empty.
    pub fn select(&self, only: &[String]) -> Result<Vec<TableSpec>> {
        if only.is_empty() {
            return Ok(self.tables.clone());
        }
        only.iter()
            .map(|name| {
                self.tables
                    .iter()
                    .find(|t| t.name.eq_ignore_ascii_case(name))
                    .cloned()
                    .ok_or_else(|| Error::BadArgument {
                        what: format!("--table {name}"),
                        message: format!(
                            "no such table in the pipeline file (it lists: {})",
                            self.tables
                                .iter()
                                .map(|t| t.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    })
            })
            .collect()
    }
}

/// Reads `[[views]]`, checking names and rendering every template so that template and
/// parameter errors surface before any data moves.
fn parse_views(
    raw: Option<&toml::Value>,
    templates: &Templates,
    gold_tables: &[&str],
    problem: &mut impl FnMut(String, String),
) -> Vec<ViewSpec> {
    let raw = match raw {
        None => return Vec::new(),
        Some(toml::Value::Array(a)) => a.clone(),
        Some(_) => {
            problem(
                "views".into(),
                "must be an array of tables ([[views]])".into(),
            );
            return Vec::new();
        }
    };
    let mut views = Vec::new();
    for (i, v) in raw.into_iter().enumerate() {
        let at = format!("views[{i}]");
        match v.try_into::<ViewSpec>() {
            Ok(view) => {
                let at = format!("{at} ({})", view.name);
                if let Some(p) = ident::problem(&view.name) {
                    problem(format!("{at}.name"), p);
                }
                if let Err(p) = templates.render(&view.template, &view.params) {
                    problem(format!("{at}.template"), p);
                }
                for (key, p) in view.refresh_problems() {
                    problem(format!("{at}.{key}"), p);
                }
                if gold_tables.is_empty() {
                    problem(at, "views need gold tables to read".into());
                }
                views.push(view);
            }
            Err(e) => problem(at, e.message().to_string()),
        }
    }
    views
}

fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |n| offset - n - 1) + 1;
    format!("line {line}, column {col}")
}

#[cfg(test)]
mod tests;
