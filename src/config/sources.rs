//! `[sources.<name>]`: the sources a pipeline reads besides the default one (`--source`,
//! `TUNELAKE_SOURCE`), each a URL as `--source` takes it. `${VAR}` in a URL is taken from the
//! environment when the file is loaded (so secrets stay out of the file), `${VAR:-default}`
//! with a default; a variable that is not set is a problem before any data moves.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One named source as the file writes it.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    /// `sqlite:PATH`, `files:DIR`, `files:https://...`, or an ADO connection string.
    url: String,
}

/// `[sources]`: name → URL with its variables expanded.
pub(super) fn parse_sources(
    raw: Option<&toml::Value>,
    var: &dyn Fn(&str) -> Option<String>,
    problem: &mut impl FnMut(String, String),
) -> BTreeMap<String, String> {
    let mut sources = BTreeMap::new();
    let Some(raw) = raw else { return sources };
    let Some(table) = raw.as_table() else {
        problem(
            "sources".into(),
            "must be a table of named sources ([sources.<name>] url = ...)".into(),
        );
        return sources;
    };
    for (name, value) in table {
        let at = format!("sources.{name}");
        if let Some(p) = super::ident::problem(name) {
            problem(at.clone(), p);
        }
        match value.clone().try_into::<RawSource>() {
            Ok(source) => match expand(&source.url, var) {
                Ok(url) if url.trim().is_empty() => {
                    problem(format!("{at}.url"), "is empty".into());
                }
                Ok(url) => {
                    sources.insert(name.clone(), url);
                }
                Err(p) => problem(format!("{at}.url"), p),
            },
            Err(e) => problem(at, e.message().to_string()),
        }
    }
    sources
}

/// `text` with every `${VAR}` (or `${VAR:-default}`) replaced by the variable's value.
pub fn expand(text: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("`${{` at byte {start} is not closed with `}}`"))?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "${{{inner}}} does not name an environment variable"
            ));
        }
        match (var(name).filter(|v| !v.is_empty()), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(format!(
                    "${{{name}}} is not set in the environment (set it, or write ${{{name}:-default}})"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.example".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn variables_expand_with_defaults_and_unset_ones_are_named() {
        assert_eq!(
            expand("Server=tcp:${HOST},1433;Database=d", &env).unwrap(),
            "Server=tcp:db.example,1433;Database=d"
        );
        assert_eq!(
            expand("${REF:-files:reference}", &env).unwrap(),
            "files:reference"
        );
        assert_eq!(expand("${EMPTY:-x}", &env).unwrap(), "x");
        assert_eq!(expand("no variables", &env).unwrap(), "no variables");
        let err = expand("sqlite:${DB_PATH}", &env).unwrap_err();
        assert!(err.contains("DB_PATH") && err.contains("not set"), "{err}");
        assert!(expand("${HOST", &env).unwrap_err().contains("not closed"));
        assert!(
            expand("${a b}", &env)
                .unwrap_err()
                .contains("does not name")
        );
    }

    #[test]
    fn every_bad_source_is_a_problem_naming_its_key() {
        let raw: toml::Value = toml::from_str(
            "[a]\nurl = \"sqlite:${NOPE}\"\n[b]\nurl = \"\"\n[c]\nuri = \"x\"\n[d]\nurl = \"files:${HOST}\"",
        )
        .unwrap();
        let mut problems = Vec::new();
        let sources = parse_sources(Some(&raw), &env, &mut |at, p| {
            problems.push(format!("{at}: {p}"))
        });
        assert_eq!(sources.len(), 1);
        assert_eq!(sources["d"], "files:db.example");
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("sources.a.url") && problems[0].contains("NOPE"));
        assert!(problems[1].starts_with("sources.b.url"));
        assert!(problems[2].starts_with("sources.c") && problems[2].contains("uri"));
    }
}
