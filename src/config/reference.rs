//! `tunelake config --reference`: every key of the pipeline file with its type, default and
//! meaning, read from the JSON schema that schemars derives from the configuration types and
//! their doc comments, so the reference is the code.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Settings, TableSpec, ViewSpec, maintenance::Maintenance, sources::RawSource};

/// The pipeline file (`pipeline.toml`), for its schema only: the loader reads it section by
/// section to report every problem at once.
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
struct PipelineFile {
    /// Run-wide settings.
    settings: Settings,
    /// How the tables are kept healthy over a lifetime of runs (compaction, vacuum, log
    /// cleanup, bronze retention).
    maintenance: Maintenance,
    /// Named sources besides the default one (`--source`, `TUNELAKE_SOURCE`).
    sources: BTreeMap<String, RawSource>,
    /// The source tables, in order.
    tables: Vec<TableSpec>,
    /// Business views, materialized in gold after the tables.
    views: Vec<ViewSpec>,
    /// Where `tunelake catalog publish` registers the tables.
    catalog: Option<super::catalog::CatalogSpec>,
}

/// The reference as text: a section per table of the file, a line per key.
pub fn text() -> String {
    let schema = serde_json::to_value(schemars::schema_for!(PipelineFile)).unwrap_or(Value::Null);
    let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
    let mut out = String::new();
    let Some(top) = schema.get("properties").and_then(Value::as_object) else {
        return out;
    };
    for (key, value) in top {
        let (header, item) = match key.as_str() {
            "sources" => (
                "[sources.<name>]".to_string(),
                value.get("additionalProperties"),
            ),
            "tables" | "views" => (format!("[[{key}]]"), value.get("items")),
            _ => (format!("[{key}]"), Some(value)),
        };
        if let Some(item) = item {
            section(&mut out, &header, key, item, &defs);
        }
    }
    out
}

/// Follows a `$ref` to its definition (through an `Option`'s `anyOf: [T, null]`).
fn resolve<'a>(value: &'a Value, defs: &'a Value) -> &'a Value {
    if let Some(any) = value.get("anyOf").and_then(Value::as_array)
        && any.len() == 2
        && let Some(some) = any
            .iter()
            .find(|v| v.get("type") != Some(&Value::from("null")))
        && some.get("$ref").is_some()
    {
        return resolve(some, defs);
    }
    match value.get("$ref").and_then(Value::as_str) {
        Some(r) => defs.get(r.trim_start_matches("#/$defs/")).unwrap_or(value),
        None => value,
    }
}

/// One object's keys, then the sections of the objects inside it.
fn section(out: &mut String, header: &str, path: &str, value: &Value, defs: &Value) {
    let object = resolve(value, defs);
    let Some(properties) = object.get("properties").and_then(Value::as_object) else {
        return;
    };
    let required: Vec<&str> = (object.get("required").and_then(Value::as_array))
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    out.push_str(&format!("\n{header}\n"));
    if let Some(d) = object.get("description").and_then(Value::as_str) {
        out.push_str(&format!("  {}\n", one_paragraph(d)));
    }
    let mut nested = Vec::new();
    for (key, field) in properties {
        let (kind, inner) = kind(field, defs);
        let default = match field.get("default") {
            Some(d) => format!("default {}", toml_value(d)),
            None if required.contains(&key.as_str()) => "required".to_string(),
            None => "optional".to_string(),
        };
        out.push_str(&format!("  {key:<26} {kind:<28} {default}\n"));
        let meaning = field
            .get("description")
            .or_else(|| resolve(field, defs).get("description"))
            .and_then(Value::as_str)
            .map(one_paragraph)
            .unwrap_or_default();
        if !meaning.is_empty() {
            out.push_str(&format!("      {meaning}\n"));
        }
        if let Some((inner, many)) = inner {
            nested.push((format!("{path}.{key}"), inner, many));
        }
    }
    for (path, inner, many) in nested {
        let header = if many {
            format!("[[{path}]]")
        } else {
            format!("[{path}]")
        };
        section(out, &header, &path, inner, defs);
    }
}

/// A field's type as the file writes it, and the object inside it (with whether it is a list
/// of them), if any.
fn kind<'a>(field: &'a Value, defs: &'a Value) -> (String, Option<(&'a Value, bool)>) {
    // `Option<T>`: `anyOf: [T, null]`.
    if let Some(any) = field.get("anyOf").and_then(Value::as_array)
        && let Some(some) = any
            .iter()
            .find(|v| v.get("type") != Some(&Value::from("null")))
    {
        return kind(some, defs);
    }
    let resolved = resolve(field, defs);
    if let Some(options) = resolved
        .get("oneOf")
        .or_else(|| resolved.get("anyOf"))
        .and_then(Value::as_array)
    {
        let consts: Vec<String> = options
            .iter()
            .filter_map(|o| {
                o.get("const")
                    .or_else(|| o.get("enum").and_then(|e| e.get(0)))
            })
            .map(toml_value)
            .collect();
        if consts.len() == options.len() {
            return (consts.join(" | "), None);
        }
        return ("string or integer".to_string(), None);
    }
    if let Some(values) = resolved.get("enum").and_then(Value::as_array) {
        let names: Vec<String> = values.iter().map(toml_value).collect();
        return (names.join(" | "), None);
    }
    let types: Vec<&str> = match resolved.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => Vec::new(),
    };
    match types.first().copied() {
        Some("array") => {
            let item = resolved.get("items").unwrap_or(&Value::Null);
            let (inner, nested) = kind(item, defs);
            match nested {
                Some((object, _)) => ("list of tables".to_string(), Some((object, true))),
                None => (format!("list of {inner}"), None),
            }
        }
        Some("object") if resolved.get("properties").is_some() => {
            ("table".to_string(), Some((resolved, false)))
        }
        Some("object") => ("table of values".to_string(), None),
        Some("integer") => ("integer".to_string(), None),
        Some("number") => ("number".to_string(), None),
        Some("boolean") => ("boolean".to_string(), None),
        Some("string") => ("string".to_string(), None),
        _ => ("value".to_string(), None),
    }
}

fn toml_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "none".to_string(),
        other => other.to_string(),
    }
}

/// A doc comment's first paragraph, on one line.
fn one_paragraph(text: &str) -> String {
    let first = text.split("\n\n").next().unwrap_or("");
    first.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_lists_every_section_key_default_and_meaning() {
        let text = text();
        for section in [
            "[settings]",
            "[maintenance]",
            "[sources.<name>]",
            "[[tables]]",
            "[tables.silver]",
            "[tables.gold]",
            "[[tables.silver.expect]]",
            "[[tables.gold.lookups]]",
            "[[views]]",
            "[catalog]",
            "[[catalog.grants]]",
        ] {
            assert!(
                text.contains(&format!("\n{section}\n")),
                "{section} missing:\n{text}"
            );
        }
        let line = |key: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(&format!("{key} ")))
                .unwrap_or_else(|| panic!("{key} missing:\n{text}"))
                .to_string()
        };
        // Defaults are the code's.
        let s = Settings::default();
        assert!(line("max_concurrency").ends_with(&format!("default {}", s.max_concurrency)));
        assert!(
            line("query_timeout_seconds")
                .ends_with(&format!("default {}", s.query_timeout_seconds))
        );
        assert!(line("name").ends_with("required"), "{}", line("name"));
        assert!(
            line("schema_evolution").contains("\"add_new_columns\" | \"rescue\""),
            "{}",
            line("schema_evolution")
        );
        assert!(line("ignore_null_updates").contains("boolean"));
        assert!(line("keys").contains("list of string"));
        // Meanings are the doc comments.
        assert!(text.contains("DLT's `ignore_null_updates`"), "{text}");
    }
}
