//! Where SCD2 is decided: a key's whole silver history, sorted, becomes its versions
//! ([`versions`]), the same whatever order or batches the changes arrived in.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::prelude::SessionContext;
use tracing::debug;

use super::columns::{DimColumns, join_on, list};
use super::write::collected;
use crate::config::ident::quote_ansi as q;
use crate::error::{Error, Result};
use crate::lake::layout::gold_columns::{VALID_FROM, VALID_TO};

/// The SQL that reads the whole silver history of every key in `changes` (`whole`: of every
/// key in silver), with (`tiebreak`) the columns that order rows with the same key and
/// sequence value. Unordered: [`history_order`] sorts it.
pub(super) fn history_sql(c: &DimColumns, whole: bool, tiebreak: bool) -> String {
    let s = q(&c.seq);
    let tiebreak: String = c
        .tiebreak
        .iter()
        .filter(|_| tiebreak)
        .map(|t| format!(", s.{}", q(t)))
        .collect();
    let attrs: String = c.attrs.iter().map(|a| format!(", s.{}", q(a))).collect();
    // Deletes are flagged over the silver row alone, before the join could make a column
    // of the condition ambiguous.
    let (silver, deletes) = match &c.delete {
        Some(condition) => (
            format!("(SELECT *, COALESCE(({condition}), false) AS __delete FROM silver)"),
            ", s.__delete",
        ),
        None => ("silver".to_string(), ""),
    };
    // When every silver row is a change (nothing consumed yet), the join with the changed
    // keys only drops NULL keys: a filter does that without hashing every key twice.
    let source = if whole {
        let not_null: String = c
            .keys
            .iter()
            .map(|k| format!(" AND s.{} IS NOT NULL", q(k)))
            .collect();
        format!("{silver} AS s WHERE s.{s} IS NOT NULL{not_null}")
    } else {
        format!(
            "{silver} AS s JOIN (SELECT DISTINCT {k} FROM changes) AS c ON {on} \
             WHERE s.{s} IS NOT NULL",
            k = list("", &c.keys),
            on = join_on("s", "c", &c.keys),
        )
    };
    format!(
        "SELECT {sk}, s.{s} AS __seq{attrs}{deletes}{tiebreak} FROM {source}",
        sk = list("s.", &c.keys),
    )
}

/// The order of a history's rows (from [`history_sql`]): by key, sequence value and, with
/// `tiebreak`, the preferred row first (latest `_ingested_at`, then `_source_file`,
/// descending). Sorting positions here instead of the rows in the query spares DataFusion's
/// sort and merge of every column (decision 002, "Gold dimensions"). A single integer-like key with no tiebreak sorts as integer pairs.
pub(super) fn history_order(
    c: &DimColumns,
    history: &RecordBatch,
    tiebreak: bool,
) -> std::result::Result<Vec<u32>, arrow::error::ArrowError> {
    use crate::lake::ordered_i64;
    use arrow::compute::{SortColumn, SortOptions, lexsort_to_indices};
    let column = |name: &str| history_column(history, name);
    let seq = column("__seq")?;
    if let ([key], false) = (c.keys.as_slice(), tiebreak)
        && let (Some(key), Some(seq)) = (ordered_i64(&column(key)?), ordered_i64(&seq))
    {
        let mut rows: Vec<(i64, i64, u32)> = (key.values().iter().zip(seq.values()))
            .zip(0u32..)
            .map(|((k, s), i)| (*k, *s, i))
            .collect();
        rows.sort_unstable();
        return Ok(rows.into_iter().map(|(_, _, i)| i).collect());
    }
    let ascending = Some(SortOptions {
        descending: false,
        nulls_first: false,
    });
    let mut by = c
        .keys
        .iter()
        .map(|k| {
            Ok(SortColumn {
                values: column(k)?,
                options: ascending,
            })
        })
        .collect::<std::result::Result<Vec<_>, arrow::error::ArrowError>>()?;
    by.push(SortColumn {
        values: seq,
        options: ascending,
    });
    for t in c.tiebreak.iter().filter(|_| tiebreak) {
        by.push(SortColumn {
            values: column(t)?,
            options: Some(SortOptions {
                descending: true,
                nulls_first: true,
            }),
        });
    }
    Ok(lexsort_to_indices(&by, None)?.values().to_vec())
}

pub(super) fn history_column(
    history: &RecordBatch,
    name: &str,
) -> std::result::Result<ArrayRef, arrow::error::ArrowError> {
    history
        .column_by_name(name)
        .cloned()
        .ok_or_else(|| arrow::error::ArrowError::SchemaError(format!("no column {name}")))
}

/// The versions of a history (see [`history_sql`]) taken in `order` (see [`history_order`]),
/// in one pass: for SCD2, every row
/// whose tracked values differ from the row before it of the same key starts a version that
/// ends where the next one starts; for SCD1, the latest row of each key. Rows repeating a
/// (key, sequence value) count once, the first (preferred) one. A delete (`__delete`, DLT's
/// `apply_as_deletes`) ends the key's open SCD2 version at its sequence value and starts
/// none, so the next change of the key opens a new version whatever its values; for SCD1 a
/// key whose latest row is a delete has no row. Returns the table `n`: keys,
/// attributes and, for SCD2, `valid_from` and `valid_to`, in key and sequence order; and
/// whether some (key, sequence value) repeats (then which row comes first matters).
pub(super) fn versions(
    c: &DimColumns,
    history: &RecordBatch,
    order: &[u32],
) -> std::result::Result<(RecordBatch, bool), arrow::error::ArrowError> {
    use arrow::array::{UInt32Array, make_comparator};
    use arrow::compute::SortOptions;
    use std::cmp::Ordering;
    let column = |name: &str| history_column(history, name);
    // Compared where needed, value by value: nulls equal nulls and floats compare by their
    // total order, as the row format did; most rows are a key's only one, so encoding every
    // tracked value (what that cost) is not needed.
    let same = |names: &[String]| {
        names
            .iter()
            .map(|n| {
                let a = column(n)?;
                make_comparator(a.as_ref(), a.as_ref(), SortOptions::default())
            })
            .collect::<std::result::Result<Vec<_>, arrow::error::ArrowError>>()
    };
    let keys = same(&c.keys)?;
    let seq = same(&["__seq".to_string()])?;
    let tracked = same(&c.tracked)?;
    let equal = |cmps: &[arrow::array::DynComparator], p: u32, i: u32| {
        cmps.iter()
            .all(|cmp| cmp(p as usize, i as usize) == Ordering::Equal)
    };
    // No tracked column: all rows of a key are equal, so only its first change makes a
    // version.
    let differs = |p: u32, i: u32| !equal(&tracked, p, i);
    let deletes = match history.column_by_name("__delete") {
        Some(d) => Some(
            d.as_boolean_opt()
                .cloned()
                .ok_or_else(|| arrow::error::ArrowError::SchemaError("__delete".into()))?,
        ),
        None => None,
    };
    let is_delete = |i: u32| deletes.as_ref().is_some_and(|d| d.value(i as usize));
    // The first row of each (key, sequence value): the only ones that count.
    let counted: Vec<u32> = order
        .iter()
        .enumerate()
        .filter(|&(j, &i)| {
            j == 0 || {
                let p = order[j - 1];
                !equal(&keys, p, i) || !equal(&seq, p, i)
            }
        })
        .map(|(_, &i)| i)
        .collect();
    let mut starts: Vec<u32> = Vec::new();
    let mut ends: Vec<Option<u32>> = Vec::new();
    let mut previous: Option<u32> = None;
    for &i in &counted {
        let same_key = previous.is_some_and(|p| equal(&keys, p, i));
        // Whether the key has an open version to end or compare with.
        let open = same_key && previous.is_some_and(|p| !is_delete(p));
        if c.scd2 {
            let changed = open && previous.is_some_and(|p| differs(p, i));
            if (is_delete(i) || changed)
                && let Some(end) = ends.last_mut().filter(|_| open)
            {
                *end = Some(i);
            }
            if !is_delete(i) && (!open || changed) {
                starts.push(i);
                ends.push(None);
            }
        } else if same_key {
            if let Some(last) = starts.last_mut() {
                *last = i;
            }
        } else {
            starts.push(i);
        }
        previous = Some(i);
    }
    if !c.scd2 {
        starts.retain(|&i| !is_delete(i));
    }
    let take_rows = UInt32Array::from(starts);
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for name in c.keys.iter().chain(&c.attrs) {
        let a = column(name)?;
        fields.push(arrow::datatypes::Field::new(
            name,
            a.data_type().clone(),
            true,
        ));
        arrays.push(arrow::compute::take(&a, &take_rows, None)?);
    }
    if c.scd2 {
        let seq = column("__seq")?;
        fields.push(arrow::datatypes::Field::new(
            VALID_FROM,
            seq.data_type().clone(),
            true,
        ));
        arrays.push(arrow::compute::take(&seq, &take_rows, None)?);
        fields.push(arrow::datatypes::Field::new(
            VALID_TO,
            seq.data_type().clone(),
            true,
        ));
        arrays.push(arrow::compute::take(&seq, &UInt32Array::from(ends), None)?);
    }
    let repeats = counted.len() < order.len();
    Ok((
        RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), arrays)?,
        repeats,
    ))
}

/// The versions of the keys registered as `changes` (see [`versions`]), from their history
/// in `silver` (`whole`: every silver row is a change). Silver holds each (key, sequence
/// value) once, so the history is read without the columns that order repeats (the lineage
/// text cost most of the sort), and again with them only if one repeats after all.
/// DLT's `ignore_null_updates`: in each key's history (taken in `order`), an attribute's NULL
/// takes the value the key last had, so a change never overwrites a value with NULL and a
/// change that only brings NULLs makes no new version. A delete starts the key afresh.
pub(super) fn fill_nulls(
    c: &DimColumns,
    history: &RecordBatch,
    order: &[u32],
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    use arrow::array::{UInt32Array, make_comparator};
    use arrow::compute::SortOptions;
    let keys = (c.keys.iter())
        .map(|k| {
            let a = history_column(history, k)?;
            make_comparator(a.as_ref(), a.as_ref(), SortOptions::default())
        })
        .collect::<std::result::Result<Vec<_>, arrow::error::ArrowError>>()?;
    let same_key = |p: u32, i: u32| {
        keys.iter()
            .all(|cmp| cmp(p as usize, i as usize) == std::cmp::Ordering::Equal)
    };
    let deletes = history
        .column_by_name("__delete")
        .and_then(|d| d.as_boolean_opt().cloned());
    let is_delete = |i: u32| deletes.as_ref().is_some_and(|d| d.value(i as usize));
    let schema = history.schema();
    let mut columns = history.columns().to_vec();
    for attr in &c.attrs {
        let Ok(at) = schema.index_of(attr) else {
            continue;
        };
        let values = columns[at].clone();
        if values.null_count() == 0 {
            continue;
        }
        let mut take: Vec<u32> = (0..history.num_rows() as u32).collect();
        let (mut last, mut previous): (Option<u32>, Option<u32>) = (None, None);
        for &i in order {
            if previous.is_none_or(|p| !same_key(p, i) || is_delete(p)) {
                last = None;
            }
            match (values.is_null(i as usize), last) {
                (true, Some(l)) => take[i as usize] = l,
                (true, None) => {}
                (false, _) => last = Some(i),
            }
            previous = Some(i);
        }
        columns[at] = arrow::compute::take(values.as_ref(), &UInt32Array::from(take), None)?;
    }
    RecordBatch::try_new(schema, columns)
}

pub(super) async fn read_versions(
    ctx: &SessionContext,
    columns: &DimColumns,
    whole: bool,
    name: &str,
) -> Result<RecordBatch> {
    let mut tiebreak = columns.tiebreak.is_empty();
    loop {
        let (schema, history) = collected(
            ctx,
            &history_sql(columns, whole, tiebreak),
            (name, "reading the history of the changed keys"),
        )
        .await?;
        let history =
            arrow::compute::concat_batches(&schema, &history).map_err(|e| Error::arrow(name, e))?;
        let order =
            history_order(columns, &history, tiebreak).map_err(|e| Error::arrow(name, e))?;
        let history = match columns.ignore_null_updates {
            true => fill_nulls(columns, &history, &order).map_err(|e| Error::arrow(name, e))?,
            false => history,
        };
        let (versions, repeats) =
            versions(columns, &history, &order).map_err(|e| Error::arrow(name, e))?;
        if repeats && !tiebreak {
            debug!("A key repeats a sequence value; reading again in order.");
            tiebreak = true;
            continue;
        }
        debug!(
            history = history.num_rows(),
            "Read the history of the changed keys."
        );
        return Ok(versions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::Field;
    use arrow::datatypes::{DataType, Schema};

    use super::super::testing::users;

    #[test]
    fn with_ignore_null_updates_a_null_keeps_the_value_and_makes_no_version() {
        let (table, schema) = users();
        let mut gold = table.gold.clone().unwrap();
        // user 1: named, then a change with only NULLs, then a real rename with a NULL
        // country; user 2: NULL country from the start (nothing to keep).
        let history = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("user_id", DataType::Int32, true),
                Field::new("__seq", DataType::Int64, true),
                Field::new("user_name", DataType::Utf8, true),
                Field::new("country", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(arrow::array::Int32Array::from(vec![1, 1, 1, 2])),
                Arc::new(Int64Array::from(vec![10, 20, 30, 10])),
                Arc::new(StringArray::from(vec![
                    Some("A"),
                    None,
                    Some("B"),
                    Some("C"),
                ])),
                Arc::new(StringArray::from(vec![Some("SE"), None, None, None])),
            ],
        )
        .unwrap();
        let run = |gold: &crate::config::GoldSpec| {
            let c = DimColumns::new(&table, gold, &schema).unwrap();
            let order = history_order(&c, &history, false).unwrap();
            let h = match c.ignore_null_updates {
                true => fill_nulls(&c, &history, &order).unwrap(),
                false => history.clone(),
            };
            let (v, _) = versions(&c, &h, &order).unwrap();
            let text = |name: &str| {
                let a = v.column_by_name(name).unwrap().as_string::<i32>().clone();
                (0..a.len())
                    .map(|i| a.is_valid(i).then(|| a.value(i).to_string()))
                    .collect::<Vec<_>>()
            };
            (text("user_name"), text("country"))
        };
        // Without the option: every change is a version, NULLs included.
        let (names, countries) = run(&gold);
        assert_eq!(
            names,
            [Some("A".into()), None, Some("B".into()), Some("C".into())]
        );
        assert_eq!(countries, [Some("SE".into()), None, None, None]);
        // With it: the all-NULL change is no version, the rename keeps the country.
        gold.ignore_null_updates = true;
        let (names, countries) = run(&gold);
        assert_eq!(
            names,
            [Some("A".into()), Some("B".into()), Some("C".into())]
        );
        assert_eq!(countries, [Some("SE".into()), Some("SE".into()), None]);
    }

    #[test]
    fn a_history_is_ordered_by_key_sequence_and_preferred_row() {
        let (table, schema) = users();
        let c = DimColumns::new(&table, &table.gold.clone().unwrap(), &schema).unwrap();
        // Pseudo-random rows with few keys, sequence values and lineage, so all of them tie.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % m) as i64
        };
        let rows: Vec<(i64, i64, i64, i64)> = (0..400)
            .map(|_| (next(20) - 5, next(6), next(3), next(3)))
            .collect();
        let text = |v: i64| format!("t{v}");
        let history = |key: ArrayRef| {
            RecordBatch::try_new(
                Arc::new(Schema::new(vec![
                    Field::new("user_id", key.data_type().clone(), true),
                    Field::new("__seq", DataType::Int64, true),
                    Field::new("_ingested_at", DataType::Utf8, true),
                    Field::new("_source_file", DataType::Utf8, true),
                ])),
                vec![
                    key,
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                    Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|r| text(r.2)),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|r| text(r.3)),
                    )),
                ],
            )
            .unwrap()
        };
        let integers = history(Arc::new(arrow::array::Int32Array::from_iter_values(
            rows.iter().map(|r| r.0 as i32),
        )));
        // Text keys order as text: "-1" < "-5" < "0" < "10" < "2".
        let texts = history(Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.0.to_string()),
        )));
        let check = |h: &RecordBatch, tiebreak: bool, key: &dyn Fn(i64) -> String| {
            let order = history_order(&c, h, tiebreak).unwrap();
            let mut sorted: Vec<usize> = order.iter().map(|&i| i as usize).collect();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..rows.len()).collect::<Vec<_>>(), "a permutation");
            let sort_key = |i: u32| {
                let r = rows[i as usize];
                let preferred = if tiebreak { (-r.2, -r.3) } else { (0, 0) };
                (key(r.0), r.1, preferred)
            };
            for pair in order.windows(2) {
                assert!(
                    sort_key(pair[0]) <= sort_key(pair[1]),
                    "rows {pair:?} out of order (tiebreak {tiebreak})"
                );
            }
        };
        let numeric = |k: i64| format!("{:020}", k + 1_000_000);
        check(&integers, false, &numeric);
        check(&integers, true, &numeric);
        check(&texts, false, &|k| k.to_string());
        check(&texts, true, &|k| k.to_string());
    }
}
