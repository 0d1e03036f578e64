//! Building an index as a dimension's rows are read: versions placed in slots by key as they
//! arrive, the staged commit's changes applied, and the slots sealed into a `PointInTime`.

use std::collections::HashMap;

use arrow::array::{Array, Int64Array, RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;

use super::super::rewrite::SurrogateKeys;
use super::slots::{Arrived, PENDING, Slots};
use super::*;
use crate::error::{Error, Result};
use crate::lake::layout::gold_columns::{VALID_FROM, VALID_TO};

/// The columns of one batch of a dimension's rows that its index reads, as `i64`.
pub(super) struct Part {
    key: Int64Array,
    sk: Int64Array,
    /// `valid_from` and `valid_to`, for SCD2.
    period: Option<(Int64Array, Int64Array)>,
}

impl Part {
    /// The rows a fact can match, with their keys: a key, and with periods a `valid_from`
    /// (the join's equality and `valid_from <=` leave the others out, such as the unknown
    /// member).
    fn matchable(&self) -> impl Iterator<Item = (usize, i64)> + '_ {
        (0..self.key.len())
            .filter(|&i| {
                self.key.is_valid(i)
                    && self
                        .period
                        .as_ref()
                        .is_none_or(|(from, _)| from.is_valid(i))
            })
            .map(|i| (i, self.key.value(i)))
    }

    fn version(&self, i: usize) -> Version {
        let (from, to) = self.period.as_ref().map_or((0, i64::MAX), |(from, to)| {
            let end = if to.is_valid(i) {
                to.value(i)
            } else {
                i64::MAX
            };
            (from.value(i), end)
        });
        let sk = if self.sk.is_valid(i) {
            self.sk.value(i)
        } else {
            -1
        };
        Version { from, to, sk }
    }
}

/// The keys a dimension's rows are expected to hold, before they are read: the smallest,
/// the largest and how many rows (from the rows themselves, or a table log's statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::stages::gold) struct Span {
    pub min: i64,
    pub max: i64,
    pub rows: usize,
}

impl Span {
    /// How many slots a dense index of these keys has, when the rows would fill at least
    /// half of them (it then costs at most two 8-byte slots a version, less than the sorted
    /// layout's hash map); markers number runs in 32 bits, as rows are.
    pub(super) fn slots(&self) -> Option<usize> {
        let span = self
            .max
            .checked_sub(self.min)
            .and_then(|s| usize::try_from(s).ok())?;
        (self.rows > 0 && span / 2 <= self.rows && self.rows < 1 << 31).then_some(span + 1)
    }
}

/// What an index holds while its versions arrive.
pub(super) enum Collected {
    Slots(Slots),
    /// Versions to sort: keys too spread out for slots, or whose spread is not known yet.
    Listed(Vec<Arrived>),
}

/// Builds a dimension's index batch by batch, as its rows are read, so that the rows
/// themselves are not held beside the index made from them. Given the keys' span up front (see
/// [`Span`]), versions go straight to their key's slot, and only keys with several versions
/// (or a closed one) are sorted at the end; otherwise every version is listed and sorted.
pub(in crate::stages::gold) struct Indexer {
    dimension: String,
    key: String,
    sk: String,
    periods: bool,
    /// The unit of starts (see [`start_unit`]).
    unit: i64,
    with_rows: bool,
    /// The rows added so far (matchable or not: they number the rows).
    read: usize,
    collected: Collected,
}

impl Indexer {
    /// An index of `schema`'s rows for a lookup of `shape`, expecting `span`; `None` when
    /// its key or period types need the join (several key columns, non-integer keys, a
    /// period of another type than the fact's sequence).
    pub(in crate::stages::gold) fn new(
        dimension: &str,
        schema: &SchemaRef,
        shape: &Shape,
        span: Option<Span>,
    ) -> Option<Self> {
        let type_of = |c: &str| {
            schema
                .field_with_name(c)
                .map(|f| f.data_type().clone())
                .ok()
        };
        let key_type = type_of(shape.key)?;
        if !integer(&key_type) || !integer(shape.fact_key) {
            return None;
        }
        if let Some(seq) = shape.period {
            let (from, to) = (type_of(VALID_FROM), type_of(VALID_TO));
            if from.as_ref() != Some(seq) || to.as_ref() != Some(seq) || !ordered_as_i64(seq) {
                return None;
            }
        }
        let indexer = Indexer {
            dimension: dimension.to_string(),
            key: shape.key.to_string(),
            sk: shape.sk.to_string(),
            periods: shape.period.is_some(),
            unit: start_unit(shape.period),
            with_rows: !shape.carried.is_empty(),
            read: 0,
            collected: Collected::Listed(Vec::new()),
        };
        Some(indexer.sized(span))
    }

    /// Expects the keys of `span` (before any row is added).
    pub(super) fn sized(mut self, span: Option<Span>) -> Self {
        if let Some((span, len)) = span.and_then(|s| Some((s, s.slots()?))) {
            self.collected = Collected::Slots(Slots::sized(span, len, self.with_rows, self.unit));
        }
        self
    }

    /// The span of the keys of `batches` that a fact can match; `None` without any.
    pub(super) fn span_of<'b>(
        &self,
        batches: impl Iterator<Item = &'b RecordBatch>,
    ) -> Result<Option<Span>> {
        let (mut min, mut max, mut rows) = (i64::MAX, i64::MIN, 0usize);
        for batch in batches {
            let part = self.part(batch)?;
            for (_, k) in part.matchable() {
                (min, max, rows) = (min.min(k), max.max(k), rows + 1);
            }
        }
        Ok((rows > 0).then_some(Span { min, max, rows }))
    }

    fn part(&self, batch: &RecordBatch) -> Result<Part> {
        let int64 = |c: &str| -> Result<Int64Array> {
            let column = batch.column_by_name(c).ok_or_else(|| Error::Gold {
                table: self.dimension.clone(),
                message: format!("its lookup column {c} is missing"),
            })?;
            as_i64(column, &self.dimension)
        };
        Ok(Part {
            key: int64(&self.key)?,
            sk: int64(&self.sk)?,
            period: match self.periods {
                true => Some((int64(VALID_FROM)?, int64(VALID_TO)?)),
                false => None,
            },
        })
    }

    /// Adds a batch of the dimension's rows, numbered on from those added before.
    pub(in crate::stages::gold) fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        let part = self.part(batch)?;
        let start = self.read;
        self.read += batch.num_rows();
        for (i, key) in part.matchable() {
            let version = part.version(i);
            let row = (start + i) as u32;
            self.push(Arrived { key, version, row });
        }
        Ok(())
    }

    fn push(&mut self, a: Arrived) {
        let placed = match &mut self.collected {
            Collected::Slots(slots) => slots.place(a, self.read),
            Collected::Listed(listed) => {
                listed.push(a);
                true
            }
        };
        if !placed {
            let mut listed = match std::mem::replace(&mut self.collected, Collected::Listed(vec![]))
            {
                Collected::Slots(slots) => slots.listed(),
                Collected::Listed(listed) => listed,
            };
            listed.push(a);
            self.collected = Collected::Listed(listed);
        }
    }

    /// Takes out the versions of the `replaced` surrogate keys (a staged commit's rows then
    /// stand in for them).
    pub(in crate::stages::gold) fn remove(&mut self, replaced: &SurrogateKeys) {
        match &mut self.collected {
            Collected::Slots(slots) => slots.remove(replaced),
            Collected::Listed(listed) => listed.retain(|a| !replaced.contains(&a.version.sk)),
        }
    }

    /// The index's keys, and with carried columns the row of each position.
    pub(super) fn finish(self) -> (Keys, UInt32Array) {
        let mut listed = match self.collected {
            Collected::Slots(slots) => return slots.finish(),
            Collected::Listed(listed) => listed,
        };
        listed.sort_unstable_by_key(Arrived::order);
        let span = match (listed.first(), listed.last()) {
            (Some(first), Some(last)) => Span {
                min: first.key,
                max: last.key,
                rows: listed.len(),
            },
            _ => {
                let rows = UInt32Array::from(Vec::<u32>::new());
                let keys = Keys::Sparse {
                    runs: Runs::new(),
                    versions: Vec::new(),
                };
                return (keys, rows);
            }
        };
        if let Some(len) = span.slots() {
            let mut slots = Slots::sized(span, len, self.with_rows, self.unit);
            slots.slots.fill(PENDING);
            slots.pending = listed;
            return slots.finish();
        }
        let runs = runs(listed.iter().map(|a| a.key));
        let rows = match self.with_rows {
            true => listed.iter().map(|a| a.row).collect(),
            false => UInt32Array::from(Vec::<u32>::new()),
        };
        let versions = listed.into_iter().map(|a| a.version).collect();
        (Keys::Sparse { runs, versions }, rows)
    }

    /// The index.
    pub(in crate::stages::gold) fn index(self) -> PointInTime {
        let (dimension, periods) = (self.dimension.clone(), self.periods);
        let (keys, _) = self.finish();
        PointInTime {
            dimension,
            periods,
            keys,
            carried: Vec::new(),
        }
    }
}

/// Where each key's run of `sorted` keys is.
pub(super) fn runs(sorted: impl Iterator<Item = i64>) -> Runs {
    let mut map: HashMap<i64, (u32, u32)> = HashMap::new();
    for (i, k) in sorted.enumerate() {
        let end = i as u32 + 1;
        map.entry(k)
            .and_modify(|r| r.1 = end)
            .or_insert((end - 1, end));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::super::slots::EMPTY;
    use super::*;
    use arrow::array::{AsArray, TimestampMicrosecondArray};
    use arrow::datatypes::Int64Type;
    use arrow::datatypes::{Field, Schema};

    use super::super::testing::*;

    /// The versions an index holds, walked slot by slot (or in sorted order): (key,
    /// `valid_from`, surrogate key, row).
    fn placed(keys: &Keys, rows: &UInt32Array) -> Vec<(i64, i64, i64, u32)> {
        let mut placed = Vec::new();
        match keys {
            Keys::Dense(Dense {
                min,
                base,
                slots,
                starts,
                runs,
                several,
            }) => {
                for (at, &slot) in slots.iter().enumerate() {
                    let key = min + at as i64;
                    if slot.holds_version() {
                        let v = base.version(slot, starts.as_deref(), at);
                        placed.push((key, v.from, v.sk, rows.value(at)));
                        continue;
                    }
                    assert!(rows.is_null(at), "a slot without a version has no row");
                    if slot == EMPTY {
                        continue;
                    }
                    let run = slot.sk as usize;
                    let (a, b) = (runs[run] as usize, runs[run + 1] as usize);
                    for (j, v) in several.iter().enumerate().take(b).skip(a) {
                        placed.push((key, v.from, v.sk, rows.value(slots.len() + j)));
                    }
                }
            }
            Keys::Sparse { runs, versions } => {
                let mut runs: Vec<(i64, (u32, u32))> = runs.iter().map(|(&k, &r)| (k, r)).collect();
                runs.sort();
                for (key, (a, b)) in runs {
                    for (j, v) in versions
                        .iter()
                        .enumerate()
                        .take(b as usize)
                        .skip(a as usize)
                    {
                        placed.push((key, v.from, v.sk, rows.value(j)));
                    }
                }
            }
        }
        placed
    }

    #[test]
    fn slots_and_sorting_place_versions_alike() {
        // Keys repeated up to four times in scrambled order, ties on valid_from, NULLs.
        let mut next = crate::stages::gold::scrambled(0x2545_f491_4f6c_dd1d_u64);
        let n = 20_000;
        let key: Vec<Option<i64>> = (0..n)
            .map(|_| (next(50) > 0).then(|| 1000 + next(8000) as i64))
            .collect();
        let from: Vec<Option<i64>> = (0..n)
            .map(|_| (next(50) > 0).then(|| next(5) as i64))
            .collect();
        // Some versions closed: a key's only version then goes to `several` too.
        let to: Vec<Option<i64>> = (0..n).map(|_| (next(7) == 0).then_some(100)).collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("sk", DataType::Int64, true),
            Field::new("id", DataType::Int64, true),
            Field::new(VALID_FROM, DataType::Int64, true),
            Field::new(VALID_TO, DataType::Int64, true),
        ]));
        // In three batches, as a dimension is read, and numbered across them.
        let batches = |spread: i64| -> Vec<RecordBatch> {
            [(0, 7_000), (7_000, 1), (7_001, n - 7_001)]
                .into_iter()
                .map(|(at, len)| {
                    let column = |values: &[Option<i64>]| -> ArrayRef {
                        Arc::new(Int64Array::from(values[at..at + len].to_vec()))
                    };
                    let spread: Vec<Option<i64>> =
                        key.iter().map(|k| k.map(|k| k * spread)).collect();
                    RecordBatch::try_new(
                        Arc::clone(&schema),
                        vec![
                            Arc::new(Int64Array::from_iter_values(
                                (at..at + len).map(|i| i as i64),
                            )),
                            column(&spread),
                            column(&from),
                            column(&to),
                        ],
                    )
                    .unwrap()
                })
                .collect()
        };
        let carried = ["sk".to_string()];
        let shape = shape(Some(&DataType::Int64), &carried, &DataType::Int64);
        let built = |spread: i64, span: Option<Span>| {
            let mut indexer = Indexer::new("dim", &schema, &shape, span).unwrap();
            for batch in batches(spread) {
                indexer.add(&batch).unwrap();
            }
            indexer.finish()
        };
        let mut sorted: Vec<(i64, i64, u32)> = (0..n)
            .filter_map(|i| Some((key[i]?, from[i]?, i as u32)))
            .collect();
        sorted.sort();
        let expected: Vec<(i64, i64, i64, u32)> =
            sorted.iter().map(|r| (r.0, r.1, r.2 as i64, r.2)).collect();
        // Sized by the keys' span, by a narrower one (slots added below and above), or
        // listed and sorted: each key's version in its slot, or its versions in `several`,
        // are its sorted rows.
        let probe = Indexer::new("dim", &schema, &shape, None).unwrap();
        let span = probe.span_of(batches(1).iter()).unwrap().unwrap();
        assert_eq!((span.min, span.max), (1000, 8999));
        let narrow = Span {
            min: 3000,
            max: 6000,
            rows: n,
        };
        for span in [Some(span), Some(narrow), None] {
            let (keys, rows) = built(1, span);
            let Keys::Dense(Dense {
                min,
                ref slots,
                ref starts,
                ..
            }) = keys
            else {
                panic!("dense keys, sized by {span:?}");
            };
            assert!(starts.is_none(), "whole starts stay in the slots");
            assert_eq!((min, slots.len()), (1000, 8000), "sized by {span:?}");
            for (at, s) in slots.iter().enumerate() {
                assert!(*s != PENDING, "no slot left pending");
                if s.holds_version() {
                    assert!(
                        to[rows.value(at) as usize].is_none(),
                        "a slot holds an open version"
                    );
                }
            }
            assert_eq!(placed(&keys, &rows), expected, "sized by {span:?}");
        }
        // Keys spread too thin for slots are sorted, also when slots were expected.
        let spread: Vec<(i64, i64, i64, u32)> = expected
            .iter()
            .map(|&(k, f, sk, row)| (k * 1_000_003, f, sk, row))
            .collect();
        for span in [None, Some(span)] {
            let (keys, rows) = built(1_000_003, span);
            assert!(matches!(keys, Keys::Sparse { .. }), "sized by {span:?}");
            assert_eq!(placed(&keys, &rows), spread, "sized by {span:?}");
        }
    }

    /// A staged commit's rows stand in for the stored rows of the surrogate keys it replaces:
    /// an update in place (same surrogate key), a version closed, a member deleted.
    #[test]
    fn replaced_stored_rows_give_way_to_the_staged_ones() {
        for spread in [1, 1_000_003] {
            let k = |key: i32| Some(key * spread);
            let stored = dimension(&[
                (1, k(1), Some(0), None, "a"),
                (2, k(2), Some(0), None, "b"),
                (3, k(3), Some(0), None, "c"),
                (5, k(4), Some(0), None, "d"),
            ]);
            let staged = dimension(&[
                (1, k(1), Some(0), None, "a updated"),
                (2, k(2), Some(0), Some(10), "b"),
                (4, k(2), Some(10), None, "b2"),
                (3, k(3), Some(0), Some(20), "c"),
            ]);
            let replaced: SurrogateKeys = [1, 2, 3].into_iter().collect();
            let carried = ["name".to_string()];
            let seq = ts();
            let shape = shape(Some(&seq), &carried, &DataType::Int64);
            let rows = DimensionRows {
                stored: std::slice::from_ref(&stored),
                replaced: Some(&replaced),
                staged: std::slice::from_ref(&staged),
            };
            let pit = PointInTime::build("dim", &stored.schema(), rows, &shape)
                .unwrap()
                .unwrap();
            let udfs = functions("__pit_0", pit);
            let probes = [(1, 5), (2, 5), (2, 15), (3, 5), (3, 25), (4, 25)];
            let keys: ArrayRef = Arc::new(Int64Array::from_iter_values(
                probes.iter().map(|p| p.0 * i64::from(spread)),
            ));
            let seq: ArrayRef = Arc::new(
                TimestampMicrosecondArray::from_iter_values(probes.iter().map(|p| p.1))
                    .with_timezone("UTC"),
            );
            let sks = invoke(&udfs[0], &keys, &seq);
            assert_eq!(
                sks.as_primitive::<Int64Type>().values().to_vec(),
                [1, 2, 4, 3, -1, 5],
                "spread {spread}"
            );
            let names = invoke(&udfs[1], &keys, &seq);
            let names: Vec<Option<&str>> = names.as_string::<i32>().iter().collect();
            assert_eq!(
                names,
                [
                    Some("a updated"),
                    Some("b"),
                    Some("b2"),
                    Some("c"),
                    None,
                    Some("d")
                ],
                "spread {spread}"
            );
        }
    }

    /// Versions that do not fit a slot (closed, or a surrogate key far from the others) wait
    /// in `several`; a start at the earliest time or within a second widens the slots (their
    /// starts kept whole beside them). All still match.
    #[test]
    fn versions_that_do_not_fit_a_slot_are_found() {
        let far = 1 << 40;
        let batch = dimension(&[
            (1, Some(1), Some(i64::MIN), Some(10), "first"),
            (2, Some(1), Some(10), None, "second"),
            (3, Some(2), Some(0), None, "other"),
            (4, Some(3), Some(1_500_000), None, "within a second"),
            (far, Some(4), Some(0), None, "far"),
        ]);
        let pit = index(&batch, true, DataType::Int64).unwrap();
        let Keys::Dense(Dense {
            ref slots,
            ref starts,
            ..
        }) = pit.keys
        else {
            panic!("dense keys");
        };
        let held: Vec<bool> = slots.iter().map(Slot::holds_version).collect();
        assert_eq!(held, [false, true, true, false]);
        assert_eq!(
            starts.as_ref().map(|s| s[1..3].to_vec()),
            Some(vec![0, 1_500_000])
        );
        assert_eq!(pit.find(1, Some(i64::MIN)).map(|f| f.1), Some(1));
        assert_eq!(pit.find(1, Some(15)).map(|f| f.1), Some(2));
        assert_eq!(pit.find(2, Some(i64::MIN)), None);
        assert_eq!(pit.find(2, Some(0)).map(|f| f.1), Some(3));
        assert_eq!(pit.find(3, Some(1_499_999)), None);
        assert_eq!(pit.find(3, Some(1_500_000)).map(|f| f.1), Some(4));
        assert_eq!(pit.find(4, Some(7)).map(|f| f.1), Some(far));
        let position = |key| pit.find(key, Some(i64::MAX - 1)).map(|f| f.0 as u32);
        let positions = UInt32Array::from(vec![position(4), position(3), position(2)]);
        let names = take(&pit.carried[0], &positions, None).unwrap();
        let names: Vec<&str> = names.as_string::<i32>().iter().flatten().collect();
        assert_eq!(names, ["far", "within a second", "other"]);
    }
}
