//! A fact's point-in-time dimension lookups as in-memory indexes, called from SQL as scalar
//! functions: for each fact row, the dimension version whose key equals the row's and whose
//! period holds its sequence value.
//!
//! This is what `dimension RIGHT JOIN facts ON key AND valid_from <= seq AND seq < valid_to`
//! computes, without the join: DataFusion's hash join gathers every version of a key and then
//! filters the pairs, where here a probe reads one slot holding the key's version (or, for a
//! key with several, where they are). At scale 10 the join's probes alone
//! were a fifth of the fact's time. Only single integer keys (and periods of the fact's own
//! sequence type) take this path; other lookups keep the join.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{concat, take};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::exec_err;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use super::rewrite::SurrogateKeys;
use crate::error::{Error, Result};
use crate::lake::layout::gold_columns::{VALID_FROM, VALID_TO};

/// One version of a dimension member: its period (`to` is `i64::MAX` while open) and its
/// surrogate key, together so that a probe touches one place.
#[derive(Debug, Clone, Copy)]
struct Version {
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
/// cache line, and a million keys take 8 MB: with 16-byte slots (the values themselves), the
/// two lookups of the fact at scale 10 held 32 MB, at the peak of an incremental run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    from: i32,
    sk: u32,
}

/// A slot's `from` when it does not hold a version (never an offset: see [`Base::start`]).
const MARK: i32 = i32::MIN;

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
struct Base {
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
fn start_unit(t: Option<&DataType>) -> i64 {
    use arrow::datatypes::TimeUnit;
    match t {
        Some(DataType::Timestamp(TimeUnit::Millisecond, _) | DataType::Date64) => 1_000,
        Some(DataType::Timestamp(TimeUnit::Microsecond, _)) => 1_000_000,
        Some(DataType::Timestamp(TimeUnit::Nanosecond, _)) => 1_000_000_000,
        _ => 1,
    }
}

/// Where each key's versions are among versions in (key, `valid_from`) order.
type Runs = HashMap<i64, (u32, u32)>;

/// The versions, as probes read them.
enum Keys {
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
struct Dense {
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
fn integer(t: &DataType) -> bool {
    use DataType::*;
    matches!(t, Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32)
}

/// Types whose order is that of their `i64` values (same type on both sides).
fn ordered_as_i64(t: &DataType) -> bool {
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
/// surrogate keys, and those a staged commit adds (see `Staged`): read as they are, where
/// copies of the stored rows without the replaced ones were 30 MB of an incremental run's
/// peak at scale 10.
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
    /// and then its versions, done in two passes, every run first. Prefetching took a probe
    /// from 80 to 31 ns (20M probes into a million keys); one slot read instead of offsets and
    /// then versions took a third off the probes' time (a fact's first build at scale 10: 14%
    /// less CPU); 16-byte slots (never across two cache lines, a third less memory) took
    /// another 15% off that build's CPU; 8-byte ones cost no time (an incremental run at scale
    /// 10: 2.00 and 1.98 CPU seconds, 5 pairs) and half the memory.
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
fn slot(min: i64, key: i64) -> Option<usize> {
    key.checked_sub(min).and_then(|s| usize::try_from(s).ok())
}

/// Asks the CPU to bring `value`'s cache line in (a hint: nothing on other architectures).
#[inline]
fn prefetch<T>(value: &T) {
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
fn as_i64(column: &ArrayRef, dimension: &str) -> Result<Int64Array> {
    crate::lake::int_column(column).ok_or_else(|| Error::Gold {
        table: dimension.to_string(),
        message: format!(
            "a lookup value of type {} is not an integer",
            column.data_type()
        ),
    })
}

/// The columns of one batch of a dimension's rows that its index reads, as `i64`.
struct Part {
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
pub(super) struct Span {
    pub min: i64,
    pub max: i64,
    pub rows: usize,
}

impl Span {
    /// How many slots a dense index of these keys has, when the rows would fill at least
    /// half of them (it then costs at most two 8-byte slots a version, less than the sorted
    /// layout's hash map); markers number runs in 32 bits, as rows are.
    fn slots(&self) -> Option<usize> {
        let span = self
            .max
            .checked_sub(self.min)
            .and_then(|s| usize::try_from(s).ok())?;
        (self.rows > 0 && span / 2 <= self.rows && self.rows < 1 << 31).then_some(span + 1)
    }
}

/// An empty slot of a dense index (a marker past every run).
const EMPTY: Slot = Slot {
    from: MARK,
    sk: u32::MAX,
};

/// While building, the slot of a key whose versions wait in `pending`.
const PENDING: Slot = Slot {
    from: MARK,
    sk: u32::MAX - 1,
};

/// A version as it is read: its key, and its row numbered across the rows read.
#[derive(Debug, Clone, Copy)]
struct Arrived {
    key: i64,
    version: Version,
    row: u32,
}

impl Arrived {
    /// The index's order: by key, then `valid_from`, then as read.
    fn order(&self) -> (i64, i64, u32) {
        (self.key, self.version.from, self.row)
    }
}

/// A dense index while its versions arrive.
struct Slots {
    min: i64,
    /// Set by the first version that could go to a slot.
    base: Option<Base>,
    /// The unit of starts (see [`start_unit`]).
    unit: i64,
    slots: Vec<Slot>,
    /// The start of each slot's version, once one did not fit a slot (see [`Slots::widen`]).
    starts: Option<Vec<i64>>,
    /// With carried columns, the row of each slot holding its key's one version.
    rows: Option<Vec<u32>>,
    /// The versions of keys with several, or with one that does not fit a slot (closed, or
    /// its offsets too far), as they came.
    pending: Vec<Arrived>,
    /// The rows the slots were sized for: keys past them may take at most twice as many
    /// slots, else the versions are sorted instead.
    expected: usize,
}

impl Slots {
    fn sized(span: Span, len: usize, with_rows: bool, unit: i64) -> Self {
        Slots {
            min: span.min,
            base: None,
            unit,
            slots: vec![EMPTY; len],
            starts: None,
            rows: with_rows.then(|| vec![0; len]),
            pending: Vec::new(),
            expected: span.rows,
        }
    }

    /// `v` as slot `at`'s, if it fits one: open, and its surrogate key within reach (the
    /// first open version sets the base); a start that does not fit widens the slots.
    fn pack(&mut self, at: usize, v: &Version) -> Option<Slot> {
        if v.to != i64::MAX {
            return None;
        }
        let base = *self.base.get_or_insert_with(|| Base::new(v, self.unit));
        let sk = base.sk(v)?;
        let from = match (self.starts.is_some(), base.start(v)) {
            (false, Some(from)) => from,
            _ => {
                *self.widen().get_mut(at)? = v.from;
                0
            }
        };
        Some(Slot { from, sk })
    }

    /// Keeps the slots' starts beside them, whole, from now on: a start that is not a whole
    /// number of units (seconds, for times) from the base's, or too far from it. Sub-second
    /// change times (the demo source's) then take 16 bytes a key, as before the slots were
    /// narrowed, instead of a place in `several` each.
    fn widen(&mut self) -> &mut Vec<i64> {
        if self.starts.is_none() {
            let starts = (self.slots.iter().enumerate())
                .map(|(at, s)| match self.base {
                    Some(base) if s.holds_version() => base.version(*s, None, at).from,
                    _ => 0,
                })
                .collect();
            self.starts = Some(starts);
        }
        self.starts.get_or_insert_with(Vec::new)
    }

    /// Places `a` (`read`: rows read so far); `false` when it does not fit a dense index.
    fn place(&mut self, a: Arrived, read: usize) -> bool {
        let at = match slot(self.min, a.key).filter(|&at| at < self.slots.len()) {
            Some(at) => at,
            None => match self.grow(a.key, read) {
                Some(at) => at,
                None => return false,
            },
        };
        let held = self.slots[at];
        if let Some(base) = self.base.filter(|_| held.holds_version()) {
            // A second version: both wait to be ordered.
            let row = self.rows.as_ref().map_or(0, |rows| rows[at]);
            let version = base.version(held, self.starts.as_deref(), at);
            self.pending.push(Arrived {
                key: a.key,
                version,
                row,
            });
            self.slots[at] = PENDING;
            self.pending.push(a);
        } else if let Some(packed) = (held == EMPTY).then(|| self.pack(at, &a.version)).flatten() {
            self.slots[at] = packed;
            if let Some(rows) = self.rows.as_mut() {
                rows[at] = a.row;
            }
        } else {
            self.slots[at] = PENDING;
            self.pending.push(a);
        }
        true
    }

    /// Makes room for `key` (rows staged after the table's statistics were read, or
    /// statistics that missed rows), if the keys still fill half their slots.
    fn grow(&mut self, key: i64, read: usize) -> Option<usize> {
        let last = self.min.checked_add(self.slots.len() as i64 - 1)?;
        let span = Span {
            min: self.min.min(key),
            max: last.max(key),
            rows: self.expected.max(read),
        };
        let len = span.slots()?;
        if key < self.min {
            let before = len - self.slots.len();
            self.slots = [vec![EMPTY; before], std::mem::take(&mut self.slots)].concat();
            if let Some(rows) = self.rows.as_mut() {
                *rows = [vec![0; before], std::mem::take(rows)].concat();
            }
            if let Some(starts) = self.starts.as_mut() {
                *starts = [vec![0; before], std::mem::take(starts)].concat();
            }
            self.min = key;
        } else {
            // New keys above the table's come in ascending order: room for an eighth more at a
            // time, not the doubling `resize` would reserve (8 MB more for a million keys).
            let more = (len - self.slots.len()).max(self.slots.len() / 8);
            self.slots.reserve_exact(more);
            self.slots.resize(len, EMPTY);
            if let Some(rows) = self.rows.as_mut() {
                rows.reserve_exact(more);
                rows.resize(len, 0);
            }
            if let Some(starts) = self.starts.as_mut() {
                starts.reserve_exact(more);
                starts.resize(len, 0);
            }
        }
        slot(self.min, key)
    }

    /// The versions of the slots, as the positions they hold.
    fn in_slots(&self) -> impl Iterator<Item = (usize, Version)> + '_ {
        let (base, starts) = (self.base, self.starts.as_deref());
        (self.slots.iter().enumerate())
            .filter(|(_, s)| s.holds_version())
            .filter_map(move |(at, s)| Some((at, base?.version(*s, starts, at))))
    }

    /// Takes out the versions of the `replaced` surrogate keys.
    fn remove(&mut self, replaced: &SurrogateKeys) {
        let gone: Vec<usize> = (self.in_slots())
            .filter(|(_, v)| replaced.contains(&v.sk))
            .map(|(at, _)| at)
            .collect();
        for at in gone {
            self.slots[at] = EMPTY;
        }
        self.pending.retain(|a| !replaced.contains(&a.version.sk));
    }

    /// Every version placed, as they would be listed.
    fn listed(self) -> Vec<Arrived> {
        let mut listed: Vec<Arrived> = (self.in_slots())
            .map(|(at, version)| Arrived {
                key: self.min + at as i64,
                version,
                row: self.rows.as_ref().map_or(0, |rows| rows[at]),
            })
            .collect();
        listed.extend(self.pending);
        listed
    }

    /// The slots, the several versions of keys that have them, and with carried columns the
    /// row of each position (see [`Dense`]). `several` is made in the place of the
    /// pending versions (a version is smaller than its arrival), not beside them.
    fn finish(mut self) -> (Keys, UInt32Array) {
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_unstable_by_key(Arrived::order);
        for s in self.slots.iter_mut().filter(|s| **s == PENDING) {
            *s = EMPTY;
        }
        // Which pending versions stay pending: all but a key's only one, when it fits a slot.
        let mut to_slot = vec![false; pending.len()];
        let mut runs = Vec::new();
        let mut start = 0;
        let mut next = 0;
        for run in pending.chunk_by(|a, b| a.key == b.key) {
            let at = (run[0].key - self.min) as usize;
            let packed = match run {
                [one] => self.pack(at, &one.version),
                _ => None,
            };
            match packed {
                Some(packed) => {
                    self.slots[at] = packed;
                    if let Some(rows) = self.rows.as_mut() {
                        rows[at] = run[0].row;
                    }
                    to_slot[next] = true;
                }
                None => {
                    self.slots[at] = Slot::marker(runs.len());
                    runs.push(start as u32);
                    start += run.len();
                }
            }
            next += run.len();
        }
        runs.push(start as u32);
        let several_rows: Vec<u32> = match self.rows {
            Some(_) => (pending.iter().zip(&to_slot))
                .filter(|(_, slotted)| !**slotted)
                .map(|(a, _)| a.row)
                .collect(),
            None => Vec::new(),
        };
        let mut slotted = to_slot.into_iter();
        let mut several: Vec<Version> = (pending.into_iter())
            .filter(|_| !slotted.next().unwrap_or(false))
            .map(|a| a.version)
            .collect();
        several.shrink_to_fit();
        let rows = match self.rows {
            Some(rows) => (self.slots.iter().zip(rows))
                .map(|(s, row)| s.holds_version().then_some(row))
                .chain(several_rows.into_iter().map(Some))
                .collect(),
            None => UInt32Array::from(Vec::<u32>::new()),
        };
        let keys = Keys::Dense(Dense {
            min: self.min,
            base: self.base.unwrap_or(Base {
                from: 0,
                unit: self.unit,
                sk: 0,
            }),
            slots: self.slots,
            starts: self.starts,
            runs,
            several,
        });
        (keys, rows)
    }
}

/// What an index holds while its versions arrive.
enum Collected {
    Slots(Slots),
    /// Versions to sort: keys too spread out for slots, or whose spread is not known yet.
    Listed(Vec<Arrived>),
}

/// Builds a dimension's index batch by batch, as its rows are read, so that the rows
/// themselves are not held: an incremental run at scale 10 held dim_user's 1.15M rows
/// (34 MB) beside the index made from them at its peak. Given the keys' span up front (see
/// [`Span`]), versions go straight to their key's slot, and only keys with several versions
/// (or a closed one) are sorted at the end; otherwise every version is listed and sorted.
pub(super) struct Indexer {
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
    pub(super) fn new(
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
    fn sized(mut self, span: Option<Span>) -> Self {
        if let Some((span, len)) = span.and_then(|s| Some((s, s.slots()?))) {
            self.collected = Collected::Slots(Slots::sized(span, len, self.with_rows, self.unit));
        }
        self
    }

    /// The span of the keys of `batches` that a fact can match; `None` without any.
    fn span_of<'b>(&self, batches: impl Iterator<Item = &'b RecordBatch>) -> Result<Option<Span>> {
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
    pub(super) fn add(&mut self, batch: &RecordBatch) -> Result<()> {
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
    pub(super) fn remove(&mut self, replaced: &SurrogateKeys) {
        match &mut self.collected {
            Collected::Slots(slots) => slots.remove(replaced),
            Collected::Listed(listed) => listed.retain(|a| !replaced.contains(&a.version.sk)),
        }
    }

    /// The index's keys, and with carried columns the row of each position.
    fn finish(self) -> (Keys, UInt32Array) {
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
    pub(super) fn index(self) -> PointInTime {
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
fn runs(sorted: impl Iterator<Item = i64>) -> Runs {
    let mut map: HashMap<i64, (u32, u32)> = HashMap::new();
    for (i, k) in sorted.enumerate() {
        let end = i as u32 + 1;
        map.entry(k)
            .and_modify(|r| r.1 = end)
            .or_insert((end - 1, end));
    }
    map
}

/// What a lookup function returns: the surrogate key (`-1` where no version matches) or
/// one carried column (NULL there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Output {
    Sk,
    Carried(usize),
}

/// `name(key, seq)` (SCD2) or `name(key)` (SCD1) over one index.
#[derive(Debug)]
struct LookupUdf {
    name: String,
    index: Arc<PointInTime>,
    output: Output,
    returns: DataType,
    signature: Signature,
}

impl PartialEq for LookupUdf {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.output == other.output
            && Arc::ptr_eq(&self.index, &other.index)
    }
}

impl Eq for LookupUdf {}

impl Hash for LookupUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.output.hash(state);
    }
}

impl ScalarUDFImpl for LookupUdf {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(self.returns.clone())
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let Some(key) = arrays.first() else {
            return exec_err!("{} needs the key", self.name);
        };
        let external = |e: Error| datafusion::error::DataFusionError::External(Box::new(e));
        let out: ArrayRef = match self.output {
            Output::Sk => Arc::new(
                self.index
                    .surrogate_keys(key, arrays.get(1))
                    .map_err(external)?,
            ),
            Output::Carried(c) => {
                let positions = self.index.positions(key, arrays.get(1)).map_err(external)?;
                take(&self.index.carried[c], &positions, None)?
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// The name of the function that returns carried column `c` of the index whose surrogate-key
/// function is `prefix`.
pub(super) fn carried_function(prefix: &str, c: usize) -> String {
    format!("{prefix}_{c}")
}

/// The functions of one index: the surrogate key's (`prefix`), then one per carried column
/// (`carried_function`).
pub(super) fn functions(prefix: &str, index: PointInTime) -> Vec<ScalarUDF> {
    let index = Arc::new(index);
    let args = if index.periods { 2 } else { 1 };
    let mut outputs = vec![(prefix.to_string(), Output::Sk, DataType::Int64)];
    for (c, column) in index.carried.iter().enumerate() {
        let name = carried_function(prefix, c);
        outputs.push((name, Output::Carried(c), column.data_type().clone()));
    }
    outputs
        .into_iter()
        .map(|(name, output, returns)| {
            ScalarUDF::new_from_impl(LookupUdf {
                name,
                index: index.clone(),
                output,
                returns,
                signature: Signature::any(args, Volatility::Immutable),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int32Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::Int64Type;
    use arrow::datatypes::{Field, Schema, TimeUnit};

    fn ts() -> DataType {
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    }

    /// (sk, key, valid_from, valid_to, name)
    type Row<'a> = (i64, Option<i32>, Option<i64>, Option<i64>, &'a str);

    /// A dimension of rows, in the order given.
    fn dimension(rows: &[Row]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("sk", DataType::Int64, true),
            Field::new("id", DataType::Int32, true),
            Field::new(VALID_FROM, ts(), true),
            Field::new(VALID_TO, ts(), true),
            Field::new("name", DataType::Utf8, true),
        ]));
        let column = |f: fn(&Row) -> Option<i64>| {
            TimestampMicrosecondArray::from(rows.iter().map(f).collect::<Vec<_>>())
                .with_timezone("UTC")
        };
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int32Array::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
                Arc::new(column(|r| r.2)),
                Arc::new(column(|r| r.3)),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.4))),
            ],
        )
        .unwrap()
    }

    /// The shape of a lookup of the test dimension (`dimension`) by `id`.
    fn shape<'a>(
        period: Option<&'a DataType>,
        carried: &'a [String],
        fact_key: &'a DataType,
    ) -> Shape<'a> {
        Shape {
            key: "id",
            sk: "sk",
            period,
            carried,
            fact_key,
        }
    }

    fn index(batch: &RecordBatch, scd2: bool, fact_key: DataType) -> Option<PointInTime> {
        let carried = ["name".to_string()];
        let seq = ts();
        let shape = shape(scd2.then_some(&seq), &carried, &fact_key);
        let rows = DimensionRows {
            stored: std::slice::from_ref(batch),
            replaced: None,
            staged: &[],
        };
        PointInTime::build("dim", &batch.schema(), rows, &shape).unwrap()
    }

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
        let mut next = super::super::scrambled(0x2545_f491_4f6c_dd1d_u64);
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

    /// `udf(keys, seq)` as a query calls it.
    fn invoke(udf: &ScalarUDF, keys: &ArrayRef, seq: &ArrayRef) -> ArrayRef {
        let args = ScalarFunctionArgs {
            args: vec![
                ColumnarValue::Array(keys.clone()),
                ColumnarValue::Array(seq.clone()),
            ],
            arg_fields: vec![
                Arc::new(Field::new("k", keys.data_type().clone(), true)),
                Arc::new(Field::new("s", ts(), true)),
            ],
            number_rows: keys.len(),
            return_field: Arc::new(Field::new("out", udf.return_type(&[]).unwrap(), true)),
            config_options: Arc::new(Default::default()),
        };
        match udf.invoke_with_args(args).unwrap() {
            ColumnarValue::Array(a) => a,
            ColumnarValue::Scalar(_) => panic!("an array"),
        }
    }

    /// Members of up to four versions (back to back or with gaps, open or closed at the end),
    /// in scrambled order: every probe's surrogate key and carried value, with keys dense and
    /// spread apart, against a scan of the rows.
    #[test]
    fn dense_and_sparse_indexes_find_what_a_scan_finds() {
        let mut next = super::super::scrambled(0x9e37_79b9_7f4a_7c15);
        let mut members: Vec<(i64, i32, i64, Option<i64>, String)> = Vec::new();
        for key in 0..400 {
            let count = next(5);
            let mut at = next(10) as i64;
            for v in 0..count {
                let end = at + 1 + next(20) as i64;
                let open = v + 1 == count && next(2) == 0;
                let sk = members.len() as i64 + 1;
                members.push((sk, key, at, (!open).then_some(end), format!("{key}.{v}")));
                at = end + if next(4) == 0 { next(5) as i64 } else { 0 };
            }
        }
        let mut order: Vec<(u64, usize)> = (0..members.len()).map(|i| (next(1 << 30), i)).collect();
        order.sort();
        for spread in [1, 100_003] {
            let rows: Vec<Row> = order
                .iter()
                .map(|&(_, i)| {
                    let (sk, key, from, to, ref name) = members[i];
                    (sk, Some(key * spread), Some(from), to, name.as_str())
                })
                .collect();
            let batch = dimension(&rows);
            let pit = index(&batch, true, DataType::Int64).unwrap();
            let dense = matches!(pit.keys, Keys::Dense(_));
            assert_eq!(dense, spread == 1, "spread {spread}");
            let probes: Vec<(Option<i64>, Option<i64>)> = (0..5_000)
                .map(|_| {
                    let key = (next(20) > 0).then(|| next(420) as i64 * i64::from(spread));
                    (key, (next(20) > 0).then(|| next(120) as i64))
                })
                .collect();
            let keys: ArrayRef = Arc::new(Int64Array::from(
                probes.iter().map(|p| p.0).collect::<Vec<_>>(),
            ));
            let seq: ArrayRef = Arc::new(
                TimestampMicrosecondArray::from(probes.iter().map(|p| p.1).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            );
            let udfs = functions("__pit_0", pit);
            let sks = invoke(&udfs[0], &keys, &seq);
            let names = invoke(&udfs[1], &keys, &seq);
            let (sks, names) = (sks.as_primitive::<Int64Type>(), names.as_string::<i32>());
            for (i, &(key, seq)) in probes.iter().enumerate() {
                let expected = rows.iter().find(|r| {
                    key.is_some()
                        && r.1.map(i64::from) == key
                        && seq.is_some_and(|s| {
                            r.2.is_some_and(|f| f <= s) && r.3.is_none_or(|t| s < t)
                        })
                });
                assert_eq!(
                    sks.value(i),
                    expected.map_or(-1, |r| r.0),
                    "key {key:?} at {seq:?}, spread {spread}"
                );
                assert_eq!(
                    names.is_valid(i).then(|| names.value(i)),
                    expected.map(|r| r.4),
                    "key {key:?} at {seq:?}, spread {spread}"
                );
            }
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

    #[test]
    fn functions_return_minus_one_and_null_where_nothing_matches() {
        let batch = dimension(&[
            (1, Some(100), Some(0), None, "x"),
            (2, Some(5_000_000), Some(0), None, "y"),
        ]);
        let pit = index(&batch, true, DataType::Int32).unwrap();
        assert!(
            matches!(pit.keys, Keys::Sparse { .. }),
            "two keys far apart"
        );
        let udfs = functions("__pit_0", pit);
        let keys: ArrayRef = Arc::new(Int32Array::from(vec![
            Some(5_000_000),
            None,
            Some(100),
            Some(3),
        ]));
        let seq: ArrayRef = Arc::new(
            TimestampMicrosecondArray::from(vec![Some(1), Some(1), None, Some(1)])
                .with_timezone("UTC"),
        );
        let call = |udf: &ScalarUDF| invoke(udf, &keys, &seq);
        let sk = call(&udfs[0]);
        assert_eq!(
            sk.as_primitive::<Int64Type>().values().to_vec(),
            [2, -1, -1, -1],
            "NULL key, NULL time and a missing key all give the unknown member"
        );
        let name = call(&udfs[1]);
        let name = name.as_string::<i32>();
        assert_eq!(name.value(0), "y");
        assert_eq!(name.null_count(), 3);
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
