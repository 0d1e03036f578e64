//! A dense index while its versions arrive: a slot per key in the keys' span, versions placed
//! as they are read, and the keys with several versions kept aside until they are sorted.

use arrow::array::UInt32Array;

use super::super::rewrite::SurrogateKeys;
use super::*;

use super::indexer::Span;

/// An empty slot of a dense index (a marker past every run).
pub(super) const EMPTY: Slot = Slot {
    from: MARK,
    sk: u32::MAX,
};

/// While building, the slot of a key whose versions wait in `pending`.
pub(super) const PENDING: Slot = Slot {
    from: MARK,
    sk: u32::MAX - 1,
};

/// A version as it is read: its key, and its row numbered across the rows read.
#[derive(Debug, Clone, Copy)]
pub(super) struct Arrived {
    pub(super) key: i64,
    pub(super) version: Version,
    pub(super) row: u32,
}

impl Arrived {
    /// The index's order: by key, then `valid_from`, then as read.
    pub(super) fn order(&self) -> (i64, i64, u32) {
        (self.key, self.version.from, self.row)
    }
}

/// A dense index while its versions arrive.
pub(super) struct Slots {
    min: i64,
    /// Set by the first version that could go to a slot.
    base: Option<Base>,
    /// The unit of starts (see [`start_unit`]).
    unit: i64,
    pub(super) slots: Vec<Slot>,
    /// The start of each slot's version, once one did not fit a slot (see [`Slots::widen`]).
    starts: Option<Vec<i64>>,
    /// With carried columns, the row of each slot holding its key's one version.
    rows: Option<Vec<u32>>,
    /// The versions of keys with several, or with one that does not fit a slot (closed, or
    /// its offsets too far), as they came.
    pub(super) pending: Vec<Arrived>,
    /// The rows the slots were sized for: keys past them may take at most twice as many
    /// slots, else the versions are sorted instead.
    expected: usize,
}

impl Slots {
    pub(super) fn sized(span: Span, len: usize, with_rows: bool, unit: i64) -> Self {
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
    pub(super) fn place(&mut self, a: Arrived, read: usize) -> bool {
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
            // time, not the doubling `resize` would reserve.
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
    pub(super) fn remove(&mut self, replaced: &SurrogateKeys) {
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
    pub(super) fn listed(self) -> Vec<Arrived> {
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
    pub(super) fn finish(mut self) -> (Keys, UInt32Array) {
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
