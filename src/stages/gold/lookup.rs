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
use arrow::buffer::BooleanBuffer;
use arrow::compute::{concat, take};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::exec_err;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use super::rewrite::SurrogateKeys;
use crate::error::{Error, Result};

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

/// A dense index's slot: a key's only version when it is open (its start and surrogate key:
/// 16 bytes, so a probe reads one cache line, and two indexes of a million keys take 32 MB
/// instead of 48), or, with `from` = `SEVERAL` (never a start there: see [`dense_span`]),
/// where the key's versions are in `several`: `sk` = start << 32 | count (0: the dimension
/// does not hold the key).
#[derive(Debug, Clone, Copy)]
struct Slot {
    from: i64,
    sk: i64,
}

const SEVERAL: i64 = i64::MIN;

/// While counting, a slot's `sk` flags a key with a closed version (it goes to `several`).
const CLOSED: i64 = 1 << 62;

/// While placing, the `sk` of a slot that takes its key's one version.
const DIRECT: i64 = -2;

/// The slot of a key with `count` versions from `start` on in `several` (none: 0).
fn marker(start: usize, count: usize) -> Slot {
    Slot {
        from: SEVERAL,
        sk: ((start as i64) << 32) | count as i64,
    }
}

impl Slot {
    /// Where the key's versions are in `several`, for a marker.
    fn several(&self) -> Option<Range<usize>> {
        (self.from == SEVERAL).then(|| {
            let start = (self.sk >> 32) as usize;
            start..start + (self.sk & 0xffff_ffff) as usize
        })
    }
}

/// Where each key's versions are among versions in (key, `valid_from`) order.
type Runs = HashMap<i64, (u32, u32)>;

/// The versions, as probes read them.
enum Keys {
    /// Keys that fill most of their range, each at `slots[k - min]`: its only version when
    /// that is open, or else where its versions are in `several` (in `valid_from` order). A
    /// version's position is its slot, or the number of slots plus its place in `several`.
    Dense {
        min: i64,
        slots: Vec<Slot>,
        several: Vec<Version>,
    },
    /// Other keys: each key's run of `versions`, in (key, `valid_from`) order, which is also
    /// the versions' positions.
    Sparse { runs: Runs, versions: Vec<Version> },
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
            Keys::Dense { slots, several, .. } => slots.len() + several.len(),
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

impl DimensionRows<'_> {
    fn batches(&self) -> impl Iterator<Item = (&RecordBatch, Option<&SurrogateKeys>)> {
        let stored = self.stored.iter().map(|b| (b, self.replaced));
        stored.chain(self.staged.iter().map(|b| (b, None)))
    }
}

impl PointInTime {
    /// The index over a dimension's rows, or `None` when its key or period types need the
    /// join (several key columns, non-integer keys, a period of another type than the fact's
    /// sequence).
    pub(super) fn build(
        dimension: &str,
        schema: &SchemaRef,
        dim_rows: DimensionRows,
        shape: &Shape,
    ) -> Result<Option<Self>> {
        let type_of = |c: &str| {
            schema
                .field_with_name(c)
                .map(|f| f.data_type().clone())
                .ok()
        };
        let Some(key_type) = type_of(shape.key) else {
            return Ok(None);
        };
        if !integer(&key_type) || !integer(shape.fact_key) {
            return Ok(None);
        }
        if let Some(seq) = shape.period {
            let (from, to) = (type_of("valid_from"), type_of("valid_to"));
            if from.as_ref() != Some(seq) || to.as_ref() != Some(seq) || !ordered_as_i64(seq) {
                return Ok(None);
            }
        }
        let fail = |e| Error::arrow(format!("the lookup index of {dimension}"), e);
        // Read batch by batch: concatenating the dimension's rows first held a second copy of
        // them (36 MB for a million SCD2 versions) at the fact's peak.
        let parts = dim_rows
            .batches()
            .map(|(batch, replaced)| {
                let int64 = |c: &str| -> Result<Int64Array> {
                    let column = batch.column_by_name(c).ok_or_else(|| Error::Gold {
                        table: dimension.to_string(),
                        message: format!("its lookup column {c} is missing"),
                    })?;
                    as_i64(column, dimension)
                };
                let sk = int64(shape.sk)?;
                let kept = replaced.map(|gone| {
                    BooleanBuffer::collect_bool(sk.len(), |i| {
                        !(sk.is_valid(i) && gone.contains(&sk.value(i)))
                    })
                });
                Ok(Part {
                    key: int64(shape.key)?,
                    sk,
                    period: match shape.period {
                        Some(_) => Some((int64("valid_from")?, int64("valid_to")?)),
                        None => None,
                    },
                    kept,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let periods = shape.period.is_some();
        let with_rows = !shape.carried.is_empty();
        let (keys, rows) = match dense_span(&parts) {
            Some(span) => {
                let (slots, several, rows) = dense(&parts, span, periods, with_rows);
                let min = span.0;
                (
                    Keys::Dense {
                        min,
                        slots,
                        several,
                    },
                    UInt32Array::from(rows),
                )
            }
            None => {
                let (versions, rows, runs) = ordered(&parts);
                (Keys::Sparse { runs, versions }, UInt32Array::from(rows))
            }
        };
        drop(parts);
        let mut carried = Vec::with_capacity(shape.carried.len());
        for c in shape.carried {
            let columns = dim_rows
                .batches()
                .map(|(b, _)| {
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
            periods,
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
    fn find_dense(
        &self,
        (slots, several): (&[Slot], &[Version]),
        at: Option<usize>,
        seq: Option<i64>,
    ) -> Option<(usize, i64)> {
        let at = at?;
        let slot = slots.get(at)?;
        let Some(range) = slot.several() else {
            // Its one version, open: it holds every sequence value from its start on.
            let found = !self.periods || seq.is_some_and(|s| slot.from <= s);
            return found.then_some((at, slot.sk));
        };
        let start = range.start;
        self.find_in(several.get(range)?, seq)
            .map(|(j, sk)| (slots.len() + start + j, sk))
    }

    #[cfg(test)]
    fn find(&self, key: i64, seq: Option<i64>) -> Option<(usize, i64)> {
        match &self.keys {
            Keys::Dense {
                min,
                slots,
                several,
            } => self.find_dense((slots, several), slot(*min, key), seq),
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
    /// versions a second); sparse keys two, the key's run and then its versions, done in two
    /// passes, every run first. Prefetching took a probe from 80 to 31 ns (20M probes into a
    /// million keys); one slot read instead of offsets and then versions took a third off the
    /// probes' time (a fact's first build at scale 10: 14% less CPU); 16-byte slots (never
    /// across two cache lines, a third less memory) took another 15% off that build's CPU.
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
            Keys::Dense {
                min,
                slots,
                several,
            } => {
                let at = |k: i64| slot(*min, k).filter(|&s| s < slots.len());
                Ok((0..keys.len())
                    .map(|i| {
                        if let Some(slot) = keys.get(i + AHEAD).and_then(|&k| slots.get(at(k)?)) {
                            prefetch(slot);
                        }
                        let at = key.is_valid(i).then(|| at(keys[i])).flatten();
                        matched(self.find_dense((slots, several), at, seq_at(i)))
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
    /// The rows not replaced by a staged commit (all when `None`).
    kept: Option<BooleanBuffer>,
}

impl Part {
    /// The rows a fact can match, with their keys: a key, and with periods a `valid_from`
    /// (the join's equality and `valid_from <=` leave the others out, such as the unknown
    /// member), and not replaced.
    fn matchable(&self) -> impl Iterator<Item = (usize, i64)> + '_ {
        (0..self.key.len())
            .filter(|&i| {
                self.key.is_valid(i)
                    && self
                        .period
                        .as_ref()
                        .is_none_or(|(from, _)| from.is_valid(i))
                    && self.kept.as_ref().is_none_or(|kept| kept.value(i))
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

/// Where each part's rows start when rows are numbered across `parts`.
fn starts(parts: &[Part]) -> Vec<usize> {
    parts
        .iter()
        .scan(0, |next, p| {
            let start = *next;
            *next += p.key.len();
            Some(start)
        })
        .collect()
}

/// The smallest key and the span of the keys a fact can match, when they fill at least half
/// their range (a dense index then costs at most two 16-byte slots a version, less than the
/// sorted layout's hash map) and no version starts at `SEVERAL`.
fn dense_span(parts: &[Part]) -> Option<(i64, usize)> {
    let (mut min, mut max, mut count) = (i64::MAX, i64::MIN, 0usize);
    for part in parts {
        for (i, k) in part.matchable() {
            if part
                .period
                .as_ref()
                .is_some_and(|(from, _)| from.value(i) == SEVERAL)
            {
                return None;
            }
            (min, max, count) = (min.min(k), max.max(k), count + 1);
        }
    }
    let span = max.checked_sub(min).and_then(|s| usize::try_from(s).ok())?;
    // Markers hold a start below 2^31 (rows are numbered in 32 bits anyway).
    (count > 0 && span / 2 <= count && count < 1 << 31).then_some((min, span))
}

/// The dense index over the rows a fact can match (see [`Part::matchable`]): a slot for
/// each key of `min ..= min + span`, placed by counting (no comparison sort and no copy of
/// every version in key order: the index is built on the fact's critical path and at its
/// memory peak), the versions of keys with several in `several`. With `with_rows`, the row
/// of each position (numbered across `parts`; `None` where no version is).
fn dense(
    parts: &[Part],
    (min, span): (i64, usize),
    periods: bool,
    with_rows: bool,
) -> (Vec<Slot>, Vec<Version>, Vec<Option<u32>>) {
    // Counted in the slots' `sk` (with `CLOSED`); a key with several versions, or a closed
    // one, then gets a marker whose start moves on as its versions are placed.
    let mut slots = vec![marker(0, 0); span + 1];
    for part in parts {
        for (i, k) in part.matchable() {
            let slot = &mut slots[(k - min) as usize];
            slot.sk += 1;
            if periods && part.version(i).to != i64::MAX {
                slot.sk |= CLOSED;
            }
        }
    }
    let mut total = 0usize;
    for slot in slots.iter_mut() {
        let count = (slot.sk & !CLOSED) as usize;
        if count == 1 && slot.sk & CLOSED == 0 {
            slot.sk = DIRECT;
        } else if count > 0 {
            *slot = marker(total, count);
            total += count;
        }
    }
    let mut slot_rows: Vec<Option<u32>> = if with_rows {
        vec![None; slots.len()]
    } else {
        Vec::new()
    };
    let placeholder = Version {
        from: SEVERAL,
        to: 0,
        sk: 0,
    };
    let mut several = vec![placeholder; total];
    let mut several_rows = vec![0u32; total];
    for (part, start) in parts.iter().zip(starts(parts)) {
        for (i, k) in part.matchable() {
            let at = (k - min) as usize;
            let row = (start + i) as u32;
            let slot = &mut slots[at];
            let version = part.version(i);
            if slot.from == SEVERAL && slot.sk == DIRECT {
                *slot = Slot {
                    from: version.from,
                    sk: version.sk,
                };
                if let Some(r) = slot_rows.get_mut(at) {
                    *r = Some(row);
                }
            } else {
                let j = (slot.sk >> 32) as usize;
                several[j] = version;
                several_rows[j] = row;
                slot.sk += 1 << 32;
            }
        }
    }
    for slot in slots.iter_mut() {
        let Some(placed) = slot.several().filter(|r| !r.is_empty()) else {
            continue;
        };
        // Its start moved past its versions.
        let count = placed.len();
        let (start, end) = (placed.start - count, placed.start);
        *slot = marker(start, count);
        if periods {
            by_start(&mut several[start..end], &mut several_rows[start..end]);
        }
    }
    if with_rows {
        slot_rows.extend(several_rows.into_iter().map(Some));
    }
    (slots, several, slot_rows)
}

/// The versions of the rows a fact can match (see [`Part::matchable`]) in (key, `valid_from`,
/// row) order, the row of each (numbered across `parts`), and each key's run of them: for
/// keys too spread out to count (see [`dense`]).
fn ordered(parts: &[Part]) -> (Vec<Version>, Vec<u32>, Runs) {
    let starts = starts(parts);
    let mut order: Vec<(i64, i64, u32)> = parts
        .iter()
        .zip(&starts)
        .flat_map(|(part, start)| {
            part.matchable().map(move |(i, k)| {
                let from = part.period.as_ref().map_or(0, |(from, _)| from.value(i));
                (k, from, (start + i) as u32)
            })
        })
        .collect();
    order.sort_unstable();
    let runs = runs(order.iter().map(|&(k, _, _)| k));
    let versions = order
        .iter()
        .map(|&(_, _, row)| {
            let p = starts.partition_point(|&s| s <= row as usize) - 1;
            parts[p].version(row as usize - starts[p])
        })
        .collect();
    (
        versions,
        order.into_iter().map(|(_, _, row)| row).collect(),
        runs,
    )
}

/// Orders one key's versions (and their rows alike) by `valid_from`, stably: versions with
/// the same start stay in row order, as they were placed.
fn by_start(versions: &mut [Version], rows: &mut [u32]) {
    if versions.len() <= 32 {
        for i in 1..versions.len() {
            let mut j = i;
            while j > 0 && versions[j - 1].from > versions[j].from {
                versions.swap(j - 1, j);
                rows.swap(j - 1, j);
                j -= 1;
            }
        }
        return;
    }
    let mut pairs: Vec<(Version, u32)> =
        versions.iter().copied().zip(rows.iter().copied()).collect();
    pairs.sort_by_key(|(v, _)| v.from);
    for (i, (v, row)) in pairs.into_iter().enumerate() {
        versions[i] = v;
        rows[i] = row;
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
            Field::new("valid_from", ts(), true),
            Field::new("valid_to", ts(), true),
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
        assert!(matches!(pit.keys, Keys::Dense { .. }));
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
    fn counting_places_rows_as_sorting_them_does() {
        // Keys repeated up to four times in scrambled order, ties on valid_from, NULLs.
        let mut next = super::super::scrambled(0x2545_f491_4f6c_dd1d_u64);
        let n = 20_000;
        let key =
            Int64Array::from_iter((0..n).map(|_| (next(50) > 0).then(|| 1000 + next(8000) as i64)));
        let from = Int64Array::from_iter((0..n).map(|_| (next(50) > 0).then(|| next(5) as i64)));
        // Some versions closed: a key's only version then goes to `several` too.
        let to = Int64Array::from_iter((0..n).map(|_| (next(7) == 0).then_some(100)));
        // In three batches, as a dimension is read, and numbered across them.
        let part = |at: usize, len: usize| Part {
            key: key.slice(at, len),
            sk: Int64Array::from_iter_values((at..at + len).map(|i| i as i64)),
            period: Some((from.slice(at, len), to.slice(at, len))),
            kept: None,
        };
        let parts = [part(0, 7_000), part(7_000, 1), part(7_001, n - 7_001)];
        let mut sorted: Vec<(i64, i64, u32)> = (0..n)
            .filter(|&i| key.is_valid(i) && from.is_valid(i))
            .map(|i| (key.value(i), from.value(i), i as u32))
            .collect();
        sorted.sort();
        // Counted: each key's version in its slot, or its versions in `several`, are its
        // sorted rows.
        let span = dense_span(&parts).expect("keys filling their range");
        let (slots, several, rows) = dense(&parts, span, true, true);
        assert_eq!(slots.len(), span.1 + 1);
        let mut placed: Vec<(i64, i64, i64, u32)> = Vec::new();
        for (at, slot) in slots.iter().enumerate() {
            let key = span.0 + at as i64;
            if slot.from != SEVERAL {
                let row = rows[at].unwrap();
                assert!(to.is_null(row as usize), "a slot holds an open version");
                placed.push((key, slot.from, slot.sk, row));
                continue;
            }
            assert_eq!(rows[at], None, "a slot without a version has no row");
            for j in slot.several().unwrap() {
                let row = rows[slots.len() + j].unwrap();
                placed.push((key, several[j].from, several[j].sk, row));
            }
        }
        let expected: Vec<(i64, i64, i64, u32)> =
            sorted.iter().map(|r| (r.0, r.1, r.2 as i64, r.2)).collect();
        assert_eq!(placed, expected, "each version is its row's, in order");
        // Keys spread too thin to count take the sort, with the same order.
        let spread = |p: &Part| Part {
            key: Int64Array::from_iter(p.key.iter().map(|k| k.map(|k| k * 1_000_003))),
            sk: p.sk.clone(),
            period: p.period.clone(),
            kept: None,
        };
        let spread: Vec<Part> = parts.iter().map(spread).collect();
        assert_eq!(dense_span(&spread), None);
        let (versions, rows, runs) = ordered(&spread);
        assert_eq!(rows, sorted.iter().map(|r| r.2).collect::<Vec<_>>());
        let versions: Vec<(i64, i64)> = versions.iter().map(|v| (v.from, v.sk)).collect();
        let expected: Vec<(i64, i64)> = sorted.iter().map(|r| (r.1, r.2 as i64)).collect();
        assert_eq!(versions, expected);
        for k in [999, 1000, 4321, 8999, 9000] {
            let expected: Vec<usize> = (0..sorted.len()).filter(|&j| sorted[j].0 == k).collect();
            let run = runs
                .get(&(k * 1_000_003))
                .map_or(0..0, |&(a, b)| a as usize..b as usize);
            assert_eq!(run.collect::<Vec<_>>(), expected, "key {k}");
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
            let dense = matches!(pit.keys, Keys::Dense { .. });
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

    /// A period starting at the slots' marker value keeps the sorted layout, and still matches.
    #[test]
    fn a_version_starting_at_the_earliest_time_is_found() {
        let batch = dimension(&[
            (1, Some(1), Some(SEVERAL), Some(10), "first"),
            (2, Some(1), Some(10), None, "second"),
            (3, Some(2), Some(0), None, "other"),
        ]);
        let pit = index(&batch, true, DataType::Int64).unwrap();
        assert!(matches!(pit.keys, Keys::Sparse { .. }));
        assert_eq!(pit.find(1, Some(SEVERAL)).map(|f| f.1), Some(1));
        assert_eq!(pit.find(1, Some(15)).map(|f| f.1), Some(2));
        assert_eq!(pit.find(2, Some(SEVERAL)), None);
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
