//! A bronze file's columns fitted to the silver table (Auto Loader's schema handling): each
//! value cast to the table's type, or for a column the table does not have yet to its schema
//! hint; values a cast cannot carry go, as text, to `_rescued_data`; a column the table does
//! not have is added, rescued, ignored or refused as `schema_evolution` says; a column whose
//! name differs from one of the table's only in case is rescued, never merged.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, new_null_array};
use arrow::compute::kernels::cast::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::config::TableSpec;
use crate::config::silver::{SchemaEvolution, hint_type};
use crate::error::{Error, Result};
use crate::lake::layout::silver_columns::{INGESTED_AT, RESCUED, SOURCE_FILE};

/// How one table's new columns are treated.
pub(super) struct Policy {
    table: String,
    evolution: SchemaEvolution,
    hints: BTreeMap<String, DataType>,
    /// Bronze columns the pipeline file names (renamed, dropped, hinted): never new.
    named: Vec<String>,
}

impl Policy {
    pub(super) fn of(table: &TableSpec) -> Self {
        let s = &table.silver;
        let hints = (s.schema_hints.iter())
            .filter_map(|(c, t)| hint_type(t).ok().map(|t| (c.clone(), t)))
            .collect();
        let named = (s.rename.iter().map(|r| &r.from))
            .chain(&s.drop)
            .chain(&s.drop_if_empty)
            .chain(s.schema_hints.keys())
            .cloned()
            .collect();
        Policy {
            table: table.name.clone(),
            evolution: s.schema_evolution,
            hints,
            named,
        }
    }
}

/// What becomes of one bronze column.
enum Fate {
    /// Kept, cast to this type when it differs.
    Keep(Option<DataType>),
    /// Its values go to `_rescued_data`.
    Rescue,
    /// Left out.
    Ignore,
    /// New, and the table refuses new columns.
    Refuse,
}

fn fate(field: &Field, target: Option<&SchemaRef>, kept: &[Field], policy: &Policy) -> Fate {
    let name = field.name();
    let cast_to =
        |wanted: &DataType| (!same_type(wanted, field.data_type())).then(|| wanted.clone());
    // Two columns of one file whose names differ only in case: the second one is rescued.
    if kept.iter().any(|k| k.name().eq_ignore_ascii_case(name)) {
        return Fate::Rescue;
    }
    let Some(target) = target else {
        // The first file defines the table's columns.
        return Fate::Keep(policy.hints.get(name).and_then(cast_to));
    };
    if let Ok(existing) = target.field_with_name(name) {
        return Fate::Keep(cast_to(existing.data_type()));
    }
    if target
        .fields()
        .iter()
        .any(|f| f.name().eq_ignore_ascii_case(name))
    {
        return Fate::Rescue;
    }
    if policy.named.iter().any(|n| n == name) {
        return Fate::Keep(policy.hints.get(name).and_then(cast_to));
    }
    match policy.evolution {
        SchemaEvolution::AddNewColumns => Fate::Keep(None),
        SchemaEvolution::Rescue => Fate::Rescue,
        SchemaEvolution::None => Fate::Ignore,
        SchemaEvolution::FailOnNewColumns => Fate::Refuse,
    }
}

pub(super) fn same_type(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8,
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8,
        ) => true,
        (DataType::Timestamp(u1, _), DataType::Timestamp(u2, _)) => u1 == u2,
        _ => a == b,
    }
}

/// Fits each batch to the table (`target`, `None` before the first file). Columns the table
/// has but the file lacks are NULL (except `computed` ones, made by the silver columns).
/// Returns the batches (always with a `_rescued_data` column) and the rows rescued.
pub(super) fn fit(
    batches: Vec<RecordBatch>,
    target: Option<&SchemaRef>,
    computed: &[&str],
    policy: &Policy,
    file: &str,
) -> Result<(Vec<RecordBatch>, u64)> {
    let mut rescued_rows = 0;
    let mut out = Vec::with_capacity(batches.len());
    let options = CastOptions {
        safe: true,
        format_options: FormatOptions::default(),
    };
    let at = || format!("table {}, file {file}", policy.table);
    for batch in batches {
        let rows = batch.num_rows();
        // Made at the first value to rescue: most files need none.
        let mut rescued: Option<Vec<serde_json::Map<String, serde_json::Value>>> = None;
        let mut keep =
            |column: &ArrayRef, name: &str, only_lost: Option<&ArrayRef>| -> Result<()> {
                let formatter = ArrayFormatter::try_new(column.as_ref(), &FormatOptions::default())
                    .map_err(|e| Error::arrow(at(), e))?;
                let maps = rescued.get_or_insert_with(|| vec![serde_json::Map::new(); rows]);
                for (row, map) in maps.iter_mut().enumerate() {
                    let lost = only_lost.is_none_or(|cast| cast.is_null(row));
                    if column.is_valid(row) && lost {
                        map.insert(
                            name.to_string(),
                            serde_json::Value::String(formatter.value(row).to_string()),
                        );
                    }
                }
                Ok(())
            };
        let mut fields: Vec<Field> = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        let mut refused = Vec::new();
        for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
            if field.name() == RESCUED {
                continue;
            }
            match fate(field, target, &fields, policy) {
                Fate::Keep(None) => {
                    fields.push(Field::new(field.name(), field.data_type().clone(), true));
                    columns.push(column.clone());
                }
                Fate::Keep(Some(wanted)) => {
                    let cast = cast_with_options(column, &wanted, &options)
                        .unwrap_or_else(|_| new_null_array(&wanted, rows));
                    keep(column, field.name(), Some(&cast))?;
                    fields.push(Field::new(field.name(), wanted, true));
                    columns.push(cast);
                }
                Fate::Rescue => keep(column, field.name(), None)?,
                Fate::Ignore => {}
                Fate::Refuse => refused.push(field.name().clone()),
            }
        }
        if !refused.is_empty() {
            return Err(Error::NewColumns {
                table: policy.table.clone(),
                file: file.to_string(),
                columns: refused.join(", "),
            });
        }
        // Columns silver has but this file lacks (dropped at the source, or an older file):
        // NULL, so the transforms see the table's full shape.
        for field in target
            .map(|t| t.fields().iter().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let name = field.name();
            if [RESCUED, SOURCE_FILE, INGESTED_AT].contains(&name.as_str())
                || computed.contains(&name.as_str())
                || fields.iter().any(|f| f.name() == name)
            {
                continue;
            }
            fields.push(Field::new(name, field.data_type().clone(), true));
            columns.push(new_null_array(field.data_type(), rows));
        }
        let texts: ArrayRef = match rescued {
            Some(rescued) => Arc::new(
                rescued
                    .into_iter()
                    .map(|m| {
                        (!m.is_empty()).then(|| {
                            rescued_rows += 1;
                            serde_json::Value::Object(m).to_string()
                        })
                    })
                    .collect::<StringArray>(),
            ),
            None => new_null_array(&DataType::Utf8, rows),
        };
        fields.push(Field::new(RESCUED, DataType::Utf8, true));
        columns.push(texts);
        out.push(
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
                .map_err(|e| Error::arrow(at(), e))?,
        );
    }
    Ok((out, rescued_rows))
}

#[cfg(test)]
mod tests {
    use super::super::testing::batch;
    use super::*;
    use arrow::array::{Int32Array, Int64Array};

    fn policy(evolution: SchemaEvolution, hints: &[(&str, &str)]) -> Policy {
        let mut table = TableSpec {
            name: "T".into(),
            ..TableSpec::default()
        };
        table.silver.schema_evolution = evolution;
        table.silver.schema_hints = hints
            .iter()
            .map(|(c, t)| (c.to_string(), t.to_string()))
            .collect();
        Policy::of(&table)
    }

    fn names(b: &RecordBatch) -> Vec<String> {
        b.schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    #[test]
    fn misfits_are_rescued_missing_columns_filled_and_computed_ones_left_alone() {
        let target = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, true),
            Field::new("amount", DataType::Int32, true),
            Field::new("note", DataType::Utf8, true),
            Field::new("renamed", DataType::Utf8, true),
        ]));
        let input = batch(vec![
            (
                "id",
                Arc::new(Int64Array::from(vec![1, 5_000_000_000])) as ArrayRef,
            ),
            (
                "amount",
                Arc::new(StringArray::from(vec![Some("12"), Some("lots")])),
            ),
        ]);
        let p = policy(SchemaEvolution::AddNewColumns, &[]);
        let (out, rescued) = fit(vec![input], Some(&target), &["renamed"], &p, "f").unwrap();
        assert_eq!(rescued, 1, "rows, not values");
        let b = &out[0];
        assert_eq!(
            names(b),
            ["id", "amount", "note", RESCUED],
            "renamed is computed, not filled"
        );
        let id = b.column(0).as_any().downcast_ref::<Int32Array>().unwrap();
        assert_eq!((id.value(0), id.is_null(1)), (1, true));
        let texts = b.column(3).as_any().downcast_ref::<StringArray>().unwrap();
        assert!(texts.is_null(0), "row 0 fits: nothing rescued");
        assert_eq!(texts.value(1), r#"{"amount":"lots","id":"5000000000"}"#);
        assert_eq!(b.column(2).null_count(), 2);
    }

    #[test]
    fn each_schema_evolution_mode_treats_a_new_column_its_own_way() {
        let target = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, true)]));
        let input = || {
            batch(vec![
                ("id", Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef),
                (
                    "tier",
                    Arc::new(StringArray::from(vec![Some("gold"), None])),
                ),
            ])
        };
        let run = |mode| {
            fit(
                vec![input()],
                Some(&target),
                &[],
                &policy(mode, &[]),
                "f.parquet",
            )
        };
        let (out, rescued) = run(SchemaEvolution::AddNewColumns).unwrap();
        assert_eq!(names(&out[0]), ["id", "tier", RESCUED]);
        assert_eq!(rescued, 0);
        let (out, rescued) = run(SchemaEvolution::Rescue).unwrap();
        assert_eq!(names(&out[0]), ["id", RESCUED]);
        assert_eq!(rescued, 1);
        let texts = out[0]
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(texts.value(0), r#"{"tier":"gold"}"#);
        let (out, rescued) = run(SchemaEvolution::None).unwrap();
        assert_eq!(names(&out[0]), ["id", RESCUED]);
        assert_eq!(rescued, 0);
        let err = run(SchemaEvolution::FailOnNewColumns)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tier") && err.contains("f.parquet") && err.contains("table T"),
            "{err}"
        );
        // A column the pipeline file names (here by a hint) is not new, whatever the mode.
        let hinted = policy(SchemaEvolution::FailOnNewColumns, &[("tier", "STRING")]);
        let (out, _) = fit(vec![input()], Some(&target), &[], &hinted, "f").unwrap();
        assert_eq!(names(&out[0]), ["id", "tier", RESCUED]);
    }

    #[test]
    fn hints_type_new_columns_and_names_differing_in_case_are_rescued() {
        let first = batch(vec![
            (
                "id",
                Arc::new(StringArray::from(vec!["7", "x"])) as ArrayRef,
            ),
            ("ID", Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef),
        ]);
        let p = policy(SchemaEvolution::AddNewColumns, &[("id", "BIGINT")]);
        let (out, rescued) = fit(vec![first], None, &[], &p, "f").unwrap();
        let b = &out[0];
        assert_eq!(names(b), ["id", RESCUED], "ID is rescued, not a second id");
        assert_eq!(b.column(0).data_type(), &DataType::Int64);
        assert_eq!(rescued, 2);
        let texts = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(texts.value(0), r#"{"ID":"1"}"#);
        assert_eq!(texts.value(1), r#"{"ID":"2","id":"x"}"#);
        // Against a table: `Country` beside the table's `country` is rescued too.
        let target = Arc::new(Schema::new(vec![Field::new(
            "country",
            DataType::Utf8,
            true,
        )]));
        let later = batch(vec![(
            "Country",
            Arc::new(StringArray::from(vec!["SE"])) as ArrayRef,
        )]);
        let (out, rescued) = fit(vec![later], Some(&target), &[], &p, "f").unwrap();
        assert_eq!(names(&out[0]), ["country", RESCUED]);
        assert_eq!(rescued, 1);
    }
}
