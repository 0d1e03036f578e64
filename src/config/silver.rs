//! Checks of a table's silver section: names are plain identifiers, expressions and rules are
//! one SQL expression each, and keys and the watermark column are kept.

use arrow::datatypes::{DataType, TimeUnit};
use serde::Deserialize;

use super::{TableSpec, expression_problem, ident};

/// What a bronze column that silver does not have yet becomes, after Auto Loader's
/// `cloudFiles.schemaEvolutionMode`. Columns the pipeline names (renamed, dropped, hinted) are
/// never new; the first file of a table defines its columns.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SchemaEvolution {
    /// The column is added to silver (`addNewColumns`).
    #[default]
    AddNewColumns,
    /// Its values go to `_rescued_data` and the schema stays (`rescue`).
    Rescue,
    /// The file is not loaded and the table fails, naming the columns, until the pipeline
    /// file takes them (`failOnNewColumns`); the file stays in bronze and loads then.
    FailOnNewColumns,
    /// The column is ignored (`none`).
    None,
}

/// The Arrow type of a schema hint, written as Spark SQL names a type (`BIGINT`,
/// `DECIMAL(10,2)`, `TIMESTAMP`, ...).
pub fn hint_type(text: &str) -> Result<DataType, String> {
    let upper = text.trim().to_ascii_uppercase();
    let compact: String = upper.chars().filter(|c| !c.is_whitespace()).collect();
    if let Some(args) = compact
        .strip_prefix("DECIMAL(")
        .or_else(|| compact.strip_prefix("NUMERIC("))
        .and_then(|r| r.strip_suffix(')'))
    {
        let (p, s) = args.split_once(',').unwrap_or((args, "0"));
        let (Ok(p), Ok(s)) = (p.parse::<u8>(), s.parse::<i8>()) else {
            return Err(format!(
                "{text:?}: DECIMAL(precision, scale) takes two numbers"
            ));
        };
        if !(1..=38).contains(&p) || s < 0 || s as u8 > p {
            return Err(format!(
                "{text:?}: precision 1 to 38, scale 0 to the precision"
            ));
        }
        return Ok(DataType::Decimal128(p, s));
    }
    Ok(match compact.as_str() {
        "BOOLEAN" | "BOOL" => DataType::Boolean,
        "TINYINT" | "BYTE" => DataType::Int8,
        "SMALLINT" | "SHORT" => DataType::Int16,
        "INT" | "INTEGER" => DataType::Int32,
        "BIGINT" | "LONG" => DataType::Int64,
        "FLOAT" | "REAL" => DataType::Float32,
        "DOUBLE" => DataType::Float64,
        "STRING" | "VARCHAR" | "TEXT" => DataType::Utf8,
        "DATE" => DataType::Date32,
        "TIMESTAMP" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        "BINARY" => DataType::Binary,
        "DECIMAL" => DataType::Decimal128(10, 0),
        _ => {
            return Err(format!(
                "{text:?} is not a type tunelake knows (BOOLEAN, TINYINT, SMALLINT, INT, BIGINT, \
                 FLOAT, DOUBLE, STRING, DATE, TIMESTAMP, BINARY, DECIMAL(p,s))"
            ));
        }
    })
}

pub(super) fn validate(t: &TableSpec, at: &str, problem: &mut impl FnMut(String, String)) {
    let at = format!("{at}.silver");
    if let Some(p) = t.silver.name.as_deref().and_then(ident::problem) {
        problem(format!("{at}.name"), p);
    }
    for (i, c) in t.silver.columns.iter().enumerate() {
        if let Some(p) = ident::problem(&c.name) {
            problem(format!("{at}.columns[{i}].name"), p);
        }
        if let Some(p) = expression_problem(&c.expr) {
            problem(format!("{at}.columns[{i}] ({}).expr", c.name), p);
        }
    }
    for (i, r) in t.silver.rename.iter().enumerate() {
        for (field, name) in [("from", &r.from), ("to", &r.to)] {
            if let Some(p) = ident::problem(name) {
                problem(format!("{at}.rename[{i}].{field}"), p);
            }
        }
        if t.keys.contains(&r.from) || r.from == t.cdc_column {
            problem(
                format!("{at}.rename[{i}].from"),
                format!(
                    "{:?} is a key or the watermark column; silver keeps their names",
                    r.from
                ),
            );
        }
    }
    for (i, d) in t
        .silver
        .drop
        .iter()
        .chain(&t.silver.drop_if_empty)
        .enumerate()
    {
        if let Some(p) = ident::problem(d) {
            problem(format!("{at}.drop[{i}]"), p);
        } else if t.keys.contains(d) || *d == t.cdc_column {
            problem(
                format!("{at}.drop[{i}]"),
                format!("{d:?} is a key or the watermark column; silver needs it"),
            );
        }
    }
    for (column, text) in &t.silver.schema_hints {
        if let Some(p) = ident::problem(column) {
            problem(format!("{at}.schema_hints.{column}"), p);
        }
        if let Err(p) = hint_type(text) {
            problem(format!("{at}.schema_hints.{column}"), p);
        }
    }
    for (i, e) in t.silver.expect.iter().enumerate() {
        if let Some(p) = ident::problem(&e.name) {
            problem(format!("{at}.expect[{i}].name"), p);
        }
        if let Some(p) = expression_problem(&e.rule) {
            problem(format!("{at}.expect[{i}] ({}).rule", e.name), p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_read_spark_type_names_and_refuse_unknown_ones() {
        assert_eq!(hint_type("bigint"), Ok(DataType::Int64));
        assert_eq!(
            hint_type(" Decimal(10, 2) "),
            Ok(DataType::Decimal128(10, 2))
        );
        assert_eq!(
            hint_type("TIMESTAMP"),
            Ok(DataType::Timestamp(
                TimeUnit::Microsecond,
                Some("UTC".into())
            ))
        );
        assert!(
            hint_type("DECIMAL(40,2)")
                .unwrap_err()
                .contains("precision")
        );
        assert!(hint_type("VARCHAR2").unwrap_err().contains("not a type"));
    }
}
