//! The column roles of a dimension (surrogate key, keys, sequence, attributes, what is
//! tracked, what is copied from other dimensions) and its unknown member.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, new_null_array};
use arrow::datatypes::{DataType, Schema, SchemaRef};

use crate::config::ident::quote_ansi as q;
use crate::config::{GoldSpec, TableSpec};
use crate::error::{Error, Result};
use crate::lake::layout::gold_columns::{self, IS_CURRENT};
use crate::lake::layout::silver_columns::{INGESTED_AT, SOURCE_FILE};

/// Columns a gold table never takes from silver: lineage and rescue columns.
pub(in crate::stages::gold) fn is_lineage(name: &str) -> bool {
    name.starts_with('_')
}

/// The column roles of one dimension.
#[derive(Debug, Clone, PartialEq)]
pub(in crate::stages::gold) struct DimColumns {
    pub sk: String,
    pub keys: Vec<String>,
    pub seq: String,
    /// Every non-key column kept in gold (for SCD1 this includes the sequence column).
    pub attrs: Vec<String>,
    /// The attributes whose changes make a new SCD2 version.
    pub tracked: Vec<String>,
    /// Silver columns that order two rows with the same key and sequence value.
    pub tiebreak: Vec<String>,
    /// Columns copied from other dimensions (`lookups`, see `outrigger`).
    pub copied: Vec<String>,
    pub scd2: bool,
    /// The SQL condition over silver columns that makes a row a delete (see
    /// [`super::super::delete_condition`]), if any row can be one.
    pub delete: Option<String>,
    /// DLT's `ignore_null_updates`: a NULL attribute in a change keeps the key's value.
    pub ignore_null_updates: bool,
}

impl DimColumns {
    pub(super) fn new(table: &TableSpec, gold: &GoldSpec, silver: &Schema) -> Result<Self> {
        let names: Vec<&str> = silver.fields().iter().map(|f| f.name().as_str()).collect();
        let seq = table.sequence_by().to_string();
        super::super::check_named_columns(table, gold, &names)?;
        for column in table.keys.iter().chain(std::iter::once(&seq)) {
            if !names.contains(&column.as_str()) {
                return Err(Error::UnknownColumn {
                    table: format!("{} (for gold.{})", table.silver_name(), gold.name),
                    column: column.clone(),
                    available: names.join(", "),
                });
            }
        }
        let scd2 = gold.scd_type == 2;
        let attrs: Vec<String> = names
            .iter()
            .filter(|n| !is_lineage(n))
            .filter(|n| !table.keys.iter().any(|k| k == *n))
            .filter(|n| !(scd2 && **n == seq))
            .filter(|n| **n == seq || gold.keeps(n))
            .map(|n| n.to_string())
            .collect();
        let tracked = attrs
            .iter()
            .filter(|a| **a != seq && gold.tracks(a))
            .cloned()
            .collect();
        let copied: Vec<String> = gold
            .lookups
            .iter()
            .flat_map(|l| l.columns.iter().cloned())
            .collect();
        if let Some(c) = copied
            .iter()
            .find(|c| names.contains(&c.as_str()) || copied.iter().filter(|d| d == c).count() > 1)
        {
            return Err(Error::Gold {
                table: gold.name.clone(),
                message: format!(
                    "its lookups copy a column {c}, which it already has (from silver.{} or another lookup)",
                    table.silver_name()
                ),
            });
        }
        let tiebreak = [INGESTED_AT, SOURCE_FILE]
            .iter()
            .filter(|c| names.contains(c))
            .map(|c| c.to_string())
            .collect();
        Ok(DimColumns {
            sk: gold.sk(),
            keys: table.keys.clone(),
            seq,
            attrs,
            tracked,
            tiebreak,
            copied,
            scd2,
            delete: super::super::deletes::condition(table, silver),
            ignore_null_updates: gold.ignore_null_updates,
        })
    }

    /// The gold table's columns, in order.
    pub(super) fn output(&self) -> Vec<String> {
        let mut out = vec![self.sk.clone()];
        out.extend(self.keys.iter().cloned());
        out.extend(self.attrs.iter().cloned());
        out.extend(self.copied.iter().cloned());
        if self.scd2 {
            out.extend(gold_columns::SCD2.map(String::from));
        }
        out
    }
}

pub(super) fn list(prefix: &str, names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{prefix}{}", q(n)))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn join_on(a: &str, b: &str, keys: &[String]) -> String {
    keys.iter()
        .map(|k| format!("{a}.{k} = {b}.{k}", k = q(k)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The unknown member: surrogate key -1, NULL business keys, "Unknown" for text
/// attributes, current.
pub(super) fn unknown_member(schema: &SchemaRef, c: &DimColumns) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| -> ArrayRef {
            let name = f.name();
            if *name == c.sk {
                Arc::new(Int64Array::from(vec![-1]))
            } else if c.scd2 && name == IS_CURRENT {
                Arc::new(BooleanArray::from(vec![true]))
            } else if (c.attrs.contains(name) || c.copied.contains(name))
                && matches!(
                    f.data_type(),
                    DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
                )
            {
                let text: ArrayRef = Arc::new(StringArray::from(vec!["Unknown"]));
                arrow::compute::cast(&text, f.data_type())
                    .unwrap_or_else(|_| new_null_array(f.data_type(), 1))
            } else {
                new_null_array(f.data_type(), 1)
            }
        })
        .collect();
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| Error::arrow("the unknown member", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::layout::gold_columns::{VALID_FROM, VALID_TO};

    use super::super::testing::users;

    #[test]
    fn roles_leave_out_lineage_and_the_sequence_column() {
        let (table, schema) = users();
        let gold = table.gold.clone().unwrap();
        let c = DimColumns::new(&table, &gold, &schema).unwrap();
        assert_eq!(c.sk, "user_sk");
        assert_eq!(c.attrs, ["user_name", "country"]);
        assert_eq!(c.tracked, ["user_name", "country"]);
        assert_eq!(c.tiebreak, ["_ingested_at", "_source_file"]);
        assert_eq!(
            c.output(),
            [
                "user_sk",
                "user_id",
                "user_name",
                "country",
                VALID_FROM,
                VALID_TO,
                IS_CURRENT
            ]
        );
        let mut gold1 = gold.clone();
        gold1.scd_type = 1;
        gold1.track_history_except = vec!["country".into()];
        let c1 = DimColumns::new(&table, &gold1, &schema).unwrap();
        assert_eq!(c1.attrs, ["user_name", "country", "updated_at"]);
        assert_eq!(c1.tracked, ["user_name"]);
    }

    #[test]
    fn include_lists_take_only_their_columns() {
        let (table, schema) = users();
        let mut gold = table.gold.clone().unwrap();
        gold.columns = Some(vec!["country".into()]);
        gold.track_history_columns = Some(vec![]);
        let c = DimColumns::new(&table, &gold, &schema).unwrap();
        assert_eq!(c.attrs, ["country"]);
        assert!(c.tracked.is_empty());
        gold.columns = None;
        gold.track_history_columns = Some(vec!["country".into()]);
        let c = DimColumns::new(&table, &gold, &schema).unwrap();
        assert_eq!(c.attrs, ["user_name", "country"]);
        assert_eq!(c.tracked, ["country"]);
        // A column the list names and silver lacks: the key is named.
        gold.columns = Some(vec!["user_name".into(), "tier".into()]);
        let err = DimColumns::new(&table, &gold, &schema)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gold.columns[1]") && err.contains("tier"),
            "{err}"
        );
    }

    #[test]
    fn unknown_columns_are_named_with_the_ones_there() {
        let (table, schema) = users();
        let mut gold = table.gold.clone().unwrap();
        gold.track_history_except = vec!["subscription".into()];
        let err = DimColumns::new(&table, &gold, &schema)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("subscription") && err.contains("user_name"),
            "{err}"
        );
    }
}
