//! A fact's point-in-time dimension lookups as in-memory indexes, called from SQL as scalar
//! functions: for each fact row, the dimension version whose key equals the row's and whose
//! period holds its sequence value.
//!
//! This is what `dimension RIGHT JOIN facts ON key AND valid_from <= seq AND seq < valid_to`
//! computes, without the join: DataFusion's hash join gathers every version of a key and then
//! filters the pairs, where here a probe reads one slot holding the key's version (or, for a
//! key with several, where they are); the join's probes were a large share of the fact's time
//! (docs/decisions/002-speed-and-memory.md, "Lookups"). Only single integer keys (and periods of the fact's own
//! sequence type) take this path; other lookups keep the join.
//!
//! Here: the index and its probe; `indexer` builds one as a dimension's rows are read, and
//! `udf` exposes it to SQL.

mod indexer;
mod slots;
#[cfg(test)]
mod testing;
mod udf;

pub(super) use indexer::{Indexer, Span};
pub(super) use udf::{carried_function, functions};

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{concat, take};
use arrow::datatypes::{DataType, SchemaRef};

use super::rewrite::SurrogateKeys;
use crate::error::{Error, Result};

/// One version of a dimension member: its period (`to` is `i64::MAX` while open) and its
/// surrogate key, together so that a probe touches one place.
#[derive(Debug, Clone, Copy)]
pub(super) struct Version {
    from: i64,
    to: i64,
    sk: i64,
}

impl Version {
    fn holds(&self, seq: i64) -> bool {
        self.from <= seq && seq < self.to
    }
}

/// A dense index's slot, 8 bytes: a key's only version when it is open, as offsets from the
/// index's [`Base`] (its start, in whole units of the period's type, and its surrogate key),
/// or, with `from` = `MARK`, a marker: run `sk` of the versions in `several` (`EMPTY`: the
/// dimension does not hold the key). Once the index keeps its starts beside the slots (see
/// [`Slots::widen`]), a version's `from` is 0 and its start is there. Eight slots share a
/// cache line, and a slot is half the size of one holding the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    from: i32,
    sk: u32,
}

/// A slot's `from` when it does not hold a version (never an offset: see [`Base::start`]).
pub(super) const MARK: i32 = i32::MIN;

impl Slot {
    fn holds_version(&self) -> bool {
        self.from != MARK
    }

    /// A marker to run `run` of `several`.
    fn marker(run: usize) -> Slot {
        Slot {
            from: MARK,
            sk: run as u32,
        }
    }
}

/// What a dense index's slots count from: the first version placed (its start, and its
/// surrogate key less 2^31, so that keys on both sides of it fit), and the unit of starts.
#[derive(Debug, Clone, Copy)]
pub(super) struct Base {
    from: i64,
    unit: i64,
    sk: i64,
}

impl Base {
    fn new(first: &Version, unit: i64) -> Self {
        Base {
            from: first.from,
            unit,
            sk: first.sk.saturating_sub(1 << 31),
        }
    }

    /// An open version's start as a slot's, if it is a whole number of units within 2^31 of
    /// the base's.
    fn start(&self, v: &Version) -> Option<i32> {
        let from = v.from.checked_sub(self.from)?;
        if from % self.unit != 0 {
            return None;
        }
        i32::try_from(from / self.unit).ok().filter(|&f| f != MARK)
    }

    /// A version's surrogate key as a slot's, if it is within 2^31 of the base's.
    fn sk(&self, v: &Version) -> Option<u32> {
        u32::try_from(v.sk.checked_sub(self.sk)?).ok()
    }

    /// The version a slot holds (see [`Slot::holds_version`]); its start is `starts[at]`
    /// when the index keeps them (see [`Slots::widen`]).
    fn version(&self, slot: Slot, starts: Option<&[i64]>, at: usize) -> Version {
        let from = match starts {
            Some(starts) => starts[at],
            None => self.from + i64::from(slot.from) * self.unit,
        };
        Version {
            from,
            to: i64::MAX,
            sk: self.sk + i64::from(slot.sk),
        }
    }
}

/// The unit of a dense index's starts for a period of type `t`: whole seconds for times, one
/// for dates and numbers. Change times finer than that (the demo source's are microseconds)
/// widen the slots (see [`Slots::widen`]).
pub(super) fn start_unit(t: Option<&DataType>) -> i64 {
    use arrow::datatypes::TimeUnit;
    match t {
        Some(DataType::Timestamp(TimeUnit::Millisecond, _) | DataType::Date64) => 1_000,
        Some(DataType::Timestamp(TimeUnit::Microsecond, _)) => 1_000_000,
        Some(DataType::Timestamp(TimeUnit::Nanosecond, _)) => 1_000_000_000,
        _ => 1,
    }
}

/// Where each key's versions are among versions in (key, `valid_from`) order.
pub(super) type Runs = HashMap<i64, (u32, u32)>;

/// The versions, as probes read them.
pub(super) enum Keys {
    /// Keys that fill most of their range (see [`Dense`]).
    Dense(Dense),
    /// Other keys: each key's run of `versions`, in (key, `valid_from`) order, which is also
    /// the versions' positions.
    Sparse { runs: Runs, versions: Vec<Version> },
}

/// Keys that fill most of their range, each at `slots[k - min]`: its only version when that
/// is open (and fits a slot), or else a marker to its run of versions in `several` (in
/// `valid_from` order; run `r` is `several[runs[r]..runs[r + 1]]`). A version's position is
/// its slot, or the number of slots plus its place in `several`. `starts` holds the slots'
/// starts when they do not all fit 32 bits (see [`Slots::widen`]).
pub(super) struct Dense {
    min: i64,
    base: Base,
    slots: Vec<Slot>,
    starts: Option<Vec<i64>>,
    runs: Vec<u32>,
    several: Vec<Version>,
}

/// One dimension's versions, by key.
pub(super) struct PointInTime {
    dimension: String,
    /// Whether versions have periods (SCD2); an SCD1 member has one row.
    periods: bool,
    keys: Keys,
    /// The carried columns, by version position (NULL at an empty slot).
    carried: Vec<ArrayRef>,
}

impl std::fmt::Debug for PointInTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Positions: a dense index's slots (empty ones too) and its keys' several versions.
        let positions = match &self.keys {
            Keys::Dense(d) => d.slots.len() + d.several.len(),
            Keys::Sparse { versions, .. } => versions.len(),
        };
        f.debug_struct("PointInTime")
            .field("dimension", &self.dimension)
            .field("positions", &positions)
            .finish()
    }
}

/// Types whose values compare as the `i64` they cast to.
pub(super) fn integer(t: &DataType) -> bool {
    use DataType::*;
    matches!(t, Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32)
}

/// Types whose order is that of their `i64` values (same type on both sides).
pub(super) fn ordered_as_i64(t: &DataType) -> bool {
    integer(t)
        || matches!(
            t,
            DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)
        )
}

/// What one lookup needs from the dimension's cached rows.
pub(super) struct Shape<'a> {
    pub key: &'a str,
    pub sk: &'a str,
    /// `Some(fact sequence type)` for SCD2 dimensions.
    pub period: Option<&'a DataType>,
    pub carried: &'a [String],
    /// The type of the fact's value matched to the key.
    pub fact_key: &'a DataType,
}

/// A dimension's rows for its index: those it stores but the rows of the `replaced`
/// surrogate keys, and those a staged commit adds (see `Staged`): read as they are, not
/// copied without the replaced ones.
pub(super) struct DimensionRows<'a> {
    pub stored: &'a [RecordBatch],
    pub replaced: Option<&'a SurrogateKeys>,
    pub staged: &'a [RecordBatch],
}

impl PointInTime {
    /// The index over a dimension's rows held in memory, or `None` when its key or period
    /// types need the join (see [`Indexer::new`]). A lookup without carried columns is better
    /// indexed as its rows are read (see [`Indexer`]).
    pub(super) fn build(
        dimension: &str,
        schema: &SchemaRef,
        dim_rows: DimensionRows,
        shape: &Shape,
    ) -> Result<Option<Self>> {
        let Some(indexer) = Indexer::new(dimension, schema, shape, None) else {
            return Ok(None);
        };
        let all = || dim_rows.stored.iter().chain(dim_rows.staged);
        let span = indexer.span_of(all())?;
        let mut indexer = indexer.sized(span);
        for batch in dim_rows.stored {
            indexer.add(batch)?;
        }
        if let Some(replaced) = dim_rows.replaced {
            indexer.remove(replaced);
        }
        for batch in dim_rows.staged {
            indexer.add(batch)?;
        }
        let (keys, rows) = indexer.finish();
        let fail = |e| Error::arrow(format!("the lookup index of {dimension}"), e);
        let mut carried = Vec::with_capacity(shape.carried.len());
        for c in shape.carried {
            let columns = all()
                .map(|b| {
                    b.column_by_name(c).cloned().ok_or_else(|| Error::Gold {
                        table: dimension.to_string(),
                        message: format!("its carried column {c} is missing"),
                    })
                })
                .collect::<Result<Vec<ArrayRef>>>()?;
            let column = match columns.as_slice() {
                [one] => Arc::clone(one),
                _ => {
                    concat(&columns.iter().map(|a| a.as_ref()).collect::<Vec<_>>()).map_err(fail)?
                }
            };
            carried.push(take(&column, &rows, None).map_err(fail)?);
        }
        Ok(Some(PointInTime {
            dimension: dimension.to_string(),
            periods: shape.period.is_some(),
            keys,
            carried,
        }))
    }

    /// The version a row matches among `versions` (one key's, in `valid_from` order): the
    /// latest one whose period holds `seq` (periods of one member do not overlap; if they did,
    /// the join would have repeated the fact row), or for SCD1 the member's first row. Its
    /// place in `versions`, and its surrogate key.
    fn find_in(&self, versions: &[Version], seq: Option<i64>) -> Option<(usize, i64)> {
        if !self.periods {
            return versions.first().map(|v| (0, v.sk));
        }
        let seq = seq?;
        versions
            .iter()
            .rposition(|v| v.holds(seq))
            .map(|j| (j, versions[j].sk))
    }

    /// The version the key of slot `at` matches at `seq` in a dense index: its position and
    /// surrogate key.
    fn find_dense(&self, d: &Dense, at: Option<usize>, seq: Option<i64>) -> Option<(usize, i64)> {
        let at = at?;
        let slot = *d.slots.get(at)?;
        if slot.holds_version() {
            // Its one version, open: it holds every sequence value from its start on.
            let version = d.base.version(slot, d.starts.as_deref(), at);
            let found = !self.periods || seq.is_some_and(|s| version.from <= s);
            return found.then_some((at, version.sk));
        }
        // EMPTY's run is past the last.
        let run = slot.sk as usize;
        let (start, end) = (*d.runs.get(run)? as usize, *d.runs.get(run + 1)? as usize);
        self.find_in(d.several.get(start..end)?, seq)
            .map(|(j, sk)| (d.slots.len() + start + j, sk))
    }

    #[cfg(test)]
    fn find(&self, key: i64, seq: Option<i64>) -> Option<(usize, i64)> {
        match &self.keys {
            Keys::Dense(d) => self.find_dense(d, slot(d.min, key), seq),
            Keys::Sparse { runs, versions } => {
                let (a, b) = runs.get(&key).copied()?;
                let (a, b) = (a as usize, b as usize);
                self.find_in(&versions[a..b], seq)
                    .map(|(j, sk)| (a + j, sk))
            }
        }
    }

    /// For each row of `keys` (and `seq`), its version's position, NULL where none matches.
    fn positions(&self, key: &ArrayRef, seq: Option<&ArrayRef>) -> Result<UInt32Array> {
        Ok(self
            .probe(key, seq, |found| found.map(|(p, _)| p as u32))?
            .into_iter()
            .collect())
    }

    /// For each row, its version's surrogate key, `-1` where none matches: read in the probe,
    /// while the version is in cache, instead of from positions in a second pass.
    fn surrogate_keys(&self, key: &ArrayRef, seq: Option<&ArrayRef>) -> Result<Int64Array> {
        Ok(Int64Array::from(
            self.probe(key, seq, |found| found.map_or(-1, |(_, sk)| sk))?,
        ))
    }

    /// `matched(position and surrogate key of the version found)` for each row of `keys` (and
    /// `seq`).
    ///
    /// A probe reads memory at a random place of a table bigger than the caches, which costs
    /// a memory latency; each read is requested `AHEAD` rows before it is needed, so that many
    /// are in flight at once. Dense keys take one read, their slot (a key with several
    /// versions two more, its run's bounds and its versions); sparse keys two, the key's run
    /// and then its versions, done in two passes, every run first. What prefetching and the
    /// slot layout each saved is in decision 002, "Lookups".
    fn probe<T>(
        &self,
        key: &ArrayRef,
        seq: Option<&ArrayRef>,
        matched: impl Fn(Option<(usize, i64)>) -> T,
    ) -> Result<Vec<T>> {
        const AHEAD: usize = 16;
        let key = as_i64(key, &self.dimension)?;
        let seq = seq.map(|s| as_i64(s, &self.dimension)).transpose()?;
        let seq_at = |i: usize| seq.as_ref().and_then(|s| s.is_valid(i).then(|| s.value(i)));
        let keys = key.values();
        match &self.keys {
            Keys::Dense(d) => {
                let at = |k: i64| slot(d.min, k).filter(|&s| s < d.slots.len());
                Ok((0..keys.len())
                    .map(|i| {
                        if let Some(ahead) = keys.get(i + AHEAD).and_then(|&k| at(k)) {
                            prefetch(&d.slots[ahead]);
                            if let Some(start) = d.starts.as_ref().and_then(|s| s.get(ahead)) {
                                prefetch(start);
                            }
                        }
                        let at = key.is_valid(i).then(|| at(keys[i])).flatten();
                        matched(self.find_dense(d, at, seq_at(i)))
                    })
                    .collect())
            }
            Keys::Sparse { runs, versions } => {
                let ranges: Vec<Range<usize>> = (0..keys.len())
                    .map(|i| match runs.get(&keys[i]) {
                        Some(&(a, b)) if key.is_valid(i) => a as usize..b as usize,
                        _ => 0..0,
                    })
                    .collect();
                Ok((0..keys.len())
                    .map(|i| {
                        let ahead = ranges.get(i + AHEAD).and_then(|r| r.end.checked_sub(1));
                        if let Some(version) = ahead.and_then(|j| versions.get(j)) {
                            prefetch(version);
                        }
                        let range = ranges[i].clone();
                        let start = range.start;
                        matched(
                            self.find_in(&versions[range], seq_at(i))
                                .map(|(j, sk)| (start + j, sk)),
                        )
                    })
                    .collect())
            }
        }
    }
}

/// A key's slot among dense slots starting at `min`, if it is not below them.
pub(super) fn slot(min: i64, key: i64) -> Option<usize> {
    key.checked_sub(min).and_then(|s| usize::try_from(s).ok())
}

/// Asks the CPU to bring `value`'s cache line in (a hint: nothing on other architectures).
#[inline]
pub(super) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: a prefetch reads nothing the program sees and cannot fault; the address is that
    // of a live reference.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// `column` as `i64` values (integers, dates and timestamps, as `build` admits them).
pub(super) fn as_i64(column: &ArrayRef, dimension: &str) -> Result<Int64Array> {
    crate::lake::int_column(column).ok_or_else(|| Error::Gold {
        table: dimension.to_string(),
        message: format!(
            "a lookup value of type {} is not an integer",
            column.data_type()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::TimeUnit;

    use super::testing::*;

    /// Every probe against a brute-force scan of the rows with the join's rule.
    #[test]
    fn finds_the_version_valid_at_each_time_as_the_join_would() {
        let rows = [
            (-1, None, None, None, "Unknown"),
            (12, Some(2), Some(30), None, "b2"),
            (10, Some(1), Some(10), Some(20), "a1"),
            (11, Some(2), Some(10), Some(30), "b1"),
            (13, Some(1), Some(20), None, "a2"),
            (14, Some(7), None, None, "no start"),
            (15, Some(9), Some(50), Some(60), "i1"),
        ];
        let batch = dimension(&rows);
        let pit = index(&batch, true, DataType::Int64).unwrap();
        assert!(matches!(pit.keys, Keys::Dense(_)));
        for key in [None, Some(0), Some(1), Some(2), Some(7), Some(9), Some(10)] {
            for seq in [
                None,
                Some(5),
                Some(10),
                Some(19),
                Some(20),
                Some(29),
                Some(30),
                Some(55),
                Some(60),
            ] {
                let expected = rows
                    .iter()
                    .find(|r| {
                        key.is_some()
                            && r.1.map(i64::from) == key
                            && matches!((r.2, seq), (Some(f), Some(s)) if f <= s)
                            && match (r.3, seq) {
                                (None, Some(_)) => true,
                                (Some(t), Some(s)) => s < t,
                                _ => false,
                            }
                    })
                    .map(|r| r.0);
                let found = pit
                    .find(key.unwrap_or(0), seq)
                    .filter(|_| key.is_some())
                    .map(|(_, sk)| sk);
                assert_eq!(found, expected, "key {key:?} at {seq:?}");
            }
        }
    }

    #[test]
    fn scd1_matches_by_key_alone_and_other_types_keep_the_join() {
        let batch = dimension(&[(3, Some(4), None, None, "only")]);
        let pit = index(&batch, false, DataType::Int64).unwrap();
        assert_eq!(pit.find(4, None), Some((0, 3)));
        assert_eq!(pit.find(5, None), None);
        assert!(
            index(&batch, true, DataType::Utf8).is_none(),
            "a text fact key"
        );
        let other = DataType::Timestamp(TimeUnit::Millisecond, None);
        let carried = [];
        let shape = shape(Some(&other), &carried, &DataType::Int64);
        let built = PointInTime::build(
            "dim",
            &batch.schema(),
            DimensionRows {
                stored: std::slice::from_ref(&batch),
                replaced: None,
                staged: &[],
            },
            &shape,
        )
        .unwrap();
        assert!(
            built.is_none(),
            "a fact sequence of another type than the periods"
        );
    }
}
