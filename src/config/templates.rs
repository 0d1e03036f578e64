//! Business-view templates (`templates/*.sql.j2`): found beside the pipeline file or built in,
//! rendered with minijinja from the view's parameters, and checked to be exactly one query.

use std::path::{Path, PathBuf};

use minijinja::{Environment, UndefinedBehavior};

/// The templates shipped in `templates/`, built in so that views work anywhere.
const BUILT_IN: [(&str, &str); 2] = [
    (
        "star_join.sql.j2",
        include_str!("../../templates/star_join.sql.j2"),
    ),
    (
        "top_tracks_per_day.sql.j2",
        include_str!("../../templates/top_tracks_per_day.sql.j2"),
    ),
];

/// Where templates are looked up: a folder first (the pipeline file's `templates/`), then
/// the built-in ones.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Templates {
    dir: Option<PathBuf>,
}

impl Templates {
    /// Templates in `dir` (when it exists) and the built-in ones.
    pub fn new(dir: Option<PathBuf>) -> Self {
        Templates { dir }
    }

    /// The text of template `name` and where it came from.
    fn source(&self, name: &str) -> Result<(String, String), String> {
        if name.contains('/') || name.contains('\\') || name.starts_with('.') {
            return Err(format!(
                "template {name:?} must be a file name in templates/"
            ));
        }
        if let Some(dir) = &self.dir {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => return Ok((text, path.display().to_string())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
        BUILT_IN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(n, text)| (text.to_string(), format!("templates/{n} (built in)")))
            .ok_or_else(|| {
                let mut known: Vec<String> = BUILT_IN.iter().map(|(n, _)| n.to_string()).collect();
                if let Some(dir) = self.dir.as_deref().and_then(|d| std::fs::read_dir(d).ok()) {
                    known.extend(
                        dir.filter_map(|e| e.ok())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .filter(|n| n.ends_with(".sql.j2")),
                    );
                }
                known.sort();
                known.dedup();
                format!(
                    "template {name:?} not found (known templates: {})",
                    known.join(", ")
                )
            })
    }

    /// Every template a view can name, as (file name, text): the folder's `*.sql.j2` files and
    /// the built-in ones the folder does not replace.
    pub fn files(&self) -> Result<Vec<(String, String)>, String> {
        let mut files: Vec<(String, String)> = Vec::new();
        if let Some(dir) = &self.dir
            && dir.is_dir()
        {
            let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            for entry in entries {
                let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
                let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                    continue;
                };
                if name.ends_with(".sql.j2") {
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    files.push((name, text));
                }
            }
        }
        for (name, text) in BUILT_IN {
            if !files.iter().any(|(n, _)| n == name) {
                files.push((name.to_string(), text.to_string()));
            }
        }
        files.sort();
        Ok(files)
    }

    /// Renders template `name` with `params` into one SQL query. Errors name the template,
    /// the line and the text of that line, which shows the parameter at fault.
    pub fn render(&self, name: &str, params: &toml::Table) -> Result<String, String> {
        let (text, origin) = self.source(name)?;
        let mut env = Environment::new();
        // A misspelt parameter must fail, not render as an empty string.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        let at_line = |e: &minijinja::Error| {
            let line = e.line().unwrap_or(0);
            let source_line = text
                .lines()
                .nth(line.saturating_sub(1))
                .map(str::trim)
                .unwrap_or("");
            let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
            format!(
                "{origin} line {line}: {}{detail} (in `{source_line}`)",
                e.kind()
            )
        };
        env.add_template(name, &text).map_err(|e| at_line(&e))?;
        let template = env.get_template(name).map_err(|e| at_line(&e))?;
        let sql = template
            .render(minijinja::value::Serde(params))
            .map_err(|e| at_line(&e))?;
        if let Some(problem) = query_problem(&sql) {
            return Err(format!("{origin} rendered into SQL that {problem}:\n{sql}"));
        }
        Ok(sql)
    }
}

/// The folder of templates that belongs to a pipeline file: `templates/` beside it.
pub fn dir_beside(pipeline_file: &Path) -> PathBuf {
    pipeline_file
        .parent()
        .unwrap_or(Path::new("."))
        .join("templates")
}

/// Why a text is not exactly one read-only query, or `None` when it is one.
pub fn query_problem(sql: &str) -> Option<String> {
    use datafusion::sql::sqlparser::{ast::Statement, dialect::GenericDialect, parser::Parser};
    match Parser::parse_sql(&GenericDialect {}, sql) {
        Err(e) => Some(format!("does not parse: {e}")),
        Ok(statements) => match statements.as_slice() {
            [Statement::Query(_)] => None,
            [] => Some("is empty".to_string()),
            [_] => Some("is not a query (views are SELECT statements)".to_string()),
            more => Some(format!(
                "holds {} statements; a view is exactly one query",
                more.len()
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_star_join_renders_the_reference_select_with_left_joins() {
        let sql = Templates::default()
            .render(
                "star_join.sql.j2",
                &params(
                    r#"tables = [
                      { table = "gold.fact_stream", alias = "f", cols = "f.stream_id" },
                      { table = "gold.dim_user", alias = "u", cols = "u.user_name, u.country", condition = "f.user_sk = u.user_sk" },
                      { table = "gold.dim_track", alias = "t", cols = "t.track_name", condition = "f.track_sk = t.track_sk" },
                    ]"#,
                ),
            )
            .unwrap();
        let words: Vec<&str> = sql.split_whitespace().collect();
        assert_eq!(
            words.join(" "),
            "SELECT f.stream_id, u.user_name, u.country, t.track_name \
             FROM gold.fact_stream AS f \
             LEFT JOIN gold.dim_user AS u ON f.user_sk = u.user_sk \
             LEFT JOIN gold.dim_track AS t ON f.track_sk = t.track_sk"
        );
    }

    #[test]
    fn a_missing_parameter_names_template_line_and_expression() {
        let err = Templates::default()
            .render(
                "star_join.sql.j2",
                &params(r#"tables = [{ table = "gold.fact_stream", alias = "f" }]"#),
            )
            .unwrap_err();
        assert!(err.contains("star_join.sql.j2"), "{err}");
        assert!(err.contains("line 6"), "{err}");
        assert!(err.contains("t.cols"), "{err}");
        assert!(err.contains("undefined"), "{err}");
    }

    #[test]
    fn rendered_text_must_be_one_query() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bad.sql.j2"),
            "SELECT 1; DROP TABLE {{ t }}",
        )
        .unwrap();
        std::fs::write(dir.path().join("syntax.sql.j2"), "SELECT {% if %}").unwrap();
        let templates = Templates::new(Some(dir.path().to_path_buf()));
        let err = templates
            .render("bad.sql.j2", &params("t = \"x\""))
            .unwrap_err();
        assert!(err.contains("2 statements"), "{err}");
        let err = templates
            .render("syntax.sql.j2", &toml::Table::new())
            .unwrap_err();
        assert!(err.contains("syntax.sql.j2 line 1"), "{err}");
        let err = templates
            .render("none.sql.j2", &toml::Table::new())
            .unwrap_err();
        assert!(
            err.contains("bad.sql.j2") && err.contains("star_join.sql.j2"),
            "{err}"
        );
        assert!(templates.render("../x", &toml::Table::new()).is_err());
        assert_eq!(
            query_problem("DELETE FROM t").unwrap(),
            "is not a query (views are SELECT statements)"
        );
    }
}
