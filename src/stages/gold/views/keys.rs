//! The keys an incremental refresh replaces: the values of the view's key that the changes
//! reach, in groups of about `chunk_rows`, each written as the predicate of a Delta
//! `replaceWhere`.

use std::collections::BTreeSet;

use deltalake::DeltaTable;

/// A predicate names at most this many ranges of integer keys: nearer ranges are merged
/// (replacing a few rows that did not change) to keep the commit's predicate short.
const MAX_RANGES: usize = 64;

/// Past this many ranges, integer keys (at most [`MAX_LISTED_INTS`] of them) are listed within
/// their overall bounds instead: a list costs one hash lookup a row, where each range costs two
/// comparisons of every row the query scans (decision 006, "Predicates").
const LIST_PAST_RANGES: usize = 4;

/// The most integer keys a predicate lists.
const MAX_LISTED_INTS: usize = 1_024;

/// Past this many distinct text keys, a rebuild is simpler than a predicate listing them.
const MAX_TEXT_KEYS: usize = 10_000;

/// Key values of the view's rows that changes reach.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Keys {
    Ints(BTreeSet<i64>),
    Text(BTreeSet<String>),
}

impl Keys {
    pub(super) fn is_empty(&self) -> bool {
        match self {
            Keys::Ints(k) => k.is_empty(),
            Keys::Text(k) => k.is_empty(),
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Keys::Ints(k) => k.len(),
            Keys::Text(k) => k.len(),
        }
    }

    /// Whether [`predicate`] names only these keys (and values no file of the view holds),
    /// for any subset of them too: ranges are merged over other keys only past
    /// [`MAX_LISTED_INTS`] integers.
    pub(super) fn named_exactly(&self) -> bool {
        match self {
            Keys::Ints(k) => k.len() <= MAX_LISTED_INTS,
            Keys::Text(_) => true,
        }
    }

    /// Moves `other`'s keys into these; `false` when they are of another kind.
    pub(super) fn absorb(&mut self, other: Keys) -> bool {
        match (self, other) {
            (Keys::Ints(all), Keys::Ints(mut some)) => all.append(&mut some),
            (Keys::Text(all), Keys::Text(mut some)) => all.append(&mut some),
            _ => return false,
        }
        true
    }

    /// These keys without `other`'s.
    pub(super) fn without(&self, other: &Keys) -> Keys {
        match (self, other) {
            (Keys::Ints(a), Keys::Ints(b)) => Keys::Ints(a.difference(b).copied().collect()),
            (Keys::Text(a), Keys::Text(b)) => Keys::Text(a.difference(b).cloned().collect()),
            (keys, _) => keys.clone(),
        }
    }
}

/// `keys` in groups of at most `size` consecutive values (text keys stay one group).
pub(super) fn groups(keys: &Keys, size: usize) -> Vec<Keys> {
    match keys {
        Keys::Ints(set) if set.len() > size.max(1) => {
            let values: Vec<i64> = set.iter().copied().collect();
            values
                .chunks(size.max(1))
                .map(|c| Keys::Ints(c.iter().copied().collect()))
                .collect()
        }
        Keys::Ints(set) => vec![Keys::Ints(set.clone())],
        Keys::Text(set) => vec![Keys::Text(set.clone())],
    }
}

/// The ranges of integer `key` values the view's files hold, from the log's statistics: a
/// gap between reached keys that none of them overlaps holds no row of the view, so one
/// range can cover it and the predicate stays short (each range is a test on every row
/// read and written). One range over everything when a file's statistics do not say.
pub(super) fn occupied(view: &DeltaTable, key: &str) -> Vec<(i64, i64)> {
    let everything = vec![(i64::MIN, i64::MAX)];
    let Ok(snapshot) = view.snapshot() else {
        return everything;
    };
    let mut held = Vec::new();
    for file in snapshot.log_data().iter() {
        let stats = file
            .stats()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
        let bound = |side: &str| stats.as_ref()?.get(side)?.get(key)?.as_i64();
        match (bound("minValues"), bound("maxValues")) {
            (Some(lo), Some(hi)) => held.push((lo, hi)),
            _ => return everything,
        }
    }
    held
}

/// The predicate that selects the rows of `keys`: ranges of integers (runs joined across gaps
/// that no range of `occupied` meets, then at most [`MAX_RANGES`], nearer ones merged), or,
/// past [`LIST_PAST_RANGES`] of them, a list of the integers within their bounds (which prune
/// files), or a list of text values; `None` past [`MAX_TEXT_KEYS`] of them.
pub(super) fn predicate(key: &str, keys: &Keys, occupied: &[(i64, i64)]) -> Option<String> {
    let column = format!("\"{key}\"");
    match keys {
        Keys::Ints(set) => {
            let ranges = ranges(set, MAX_RANGES, occupied);
            if ranges.len() > LIST_PAST_RANGES
                && set.len() <= MAX_LISTED_INTS
                && let (Some(lo), Some(hi)) = (set.first(), set.last())
            {
                let values: Vec<String> = set.iter().map(i64::to_string).collect();
                return Some(format!(
                    "{column} BETWEEN {lo} AND {hi} AND {column} IN ({})",
                    values.join(", ")
                ));
            }
            let terms: Vec<String> = ranges
                .into_iter()
                .map(|(lo, hi)| match lo == hi {
                    true => format!("{column} = {lo}"),
                    false => format!("{column} BETWEEN {lo} AND {hi}"),
                })
                .collect();
            Some(terms.join(" OR "))
        }
        Keys::Text(set) if set.len() <= MAX_TEXT_KEYS => {
            let values: Vec<String> = set
                .iter()
                .map(|v| format!("'{}'", v.replace('\'', "''")))
                .collect();
            Some(format!("{column} IN ({})", values.join(", ")))
        }
        Keys::Text(_) => None,
    }
}

/// Runs of consecutive values as (first, last), joined across the gaps that no range of
/// `occupied` meets, then merged across the smallest gaps until at most `max` remain.
fn ranges(values: &BTreeSet<i64>, max: usize, occupied: &[(i64, i64)]) -> Vec<(i64, i64)> {
    // Whether no occupied range meets the keys strictly between a and b.
    let free = |a: i64, b: i64| !occupied.iter().any(|&(lo, hi)| lo < b && hi > a);
    let mut runs: Vec<(i64, i64)> = Vec::new();
    for &v in values {
        match runs.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(v) || free(*hi, v) => *hi = v,
            _ => runs.push((v, v)),
        }
    }
    if runs.len() <= max.max(1) {
        return runs;
    }
    // Keep the max - 1 widest gaps as the boundaries between ranges.
    let mut gaps: Vec<(i128, usize)> = runs
        .windows(2)
        .enumerate()
        .map(|(i, w)| (i128::from(w[1].0) - i128::from(w[0].1), i))
        .collect();
    gaps.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut splits: Vec<usize> = gaps.iter().take(max.max(1) - 1).map(|g| g.1).collect();
    splits.sort_unstable();
    let mut merged = Vec::with_capacity(max);
    let mut start = 0;
    for split in splits.into_iter().chain(std::iter::once(runs.len() - 1)) {
        merged.push((runs[start].0, runs[split].1));
        start = split + 1;
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(values: &[i64]) -> BTreeSet<i64> {
        values.iter().copied().collect()
    }

    /// A view whose files may hold any key.
    const ALL: &[(i64, i64)] = &[(i64::MIN, i64::MAX)];

    #[test]
    fn gaps_that_no_file_of_the_view_meets_join_the_ranges_around_them() {
        // The view holds keys 1-100 and 200-300; new keys 101-150 with holes, 180, 250, 400.
        let held = [(1, 100), (200, 300)];
        let mut keys: Vec<i64> = (101..=150).filter(|k| k % 7 != 0).collect();
        keys.extend([180, 250, 400]);
        assert_eq!(
            ranges(&ints(&keys), 64, &held),
            [(101, 180), (250, 250), (400, 400)]
        );
        // A key just past a held range: the gap (100, 102) holds nothing; (99, 102) holds 100.
        assert_eq!(ranges(&ints(&[102, 104]), 64, &held), [(102, 104)]);
        assert_eq!(ranges(&ints(&[99, 102]), 64, &held), [(99, 99), (102, 102)]);
        assert_eq!(
            ranges(&ints(&[101, 150]), 64, ALL),
            [(101, 101), (150, 150)]
        );
    }

    #[test]
    fn consecutive_keys_make_one_range_and_far_ones_stay_apart() {
        assert_eq!(
            ranges(&ints(&[1, 2, 3, 7, 9, 10]), 64, ALL),
            [(1, 3), (7, 7), (9, 10)]
        );
        assert_eq!(ranges(&ints(&[]), 64, ALL), []);
        assert_eq!(
            ranges(&ints(&[i64::MAX - 1, i64::MAX]), 2, ALL),
            [(i64::MAX - 1, i64::MAX)]
        );
    }

    #[test]
    fn past_the_limit_the_nearest_ranges_merge_and_every_key_stays_covered() {
        let values = ints(&[1, 2, 5, 100, 102, 1000, 1001, 5000]);
        let merged = ranges(&values, 3, ALL);
        assert_eq!(merged, [(1, 102), (1000, 1001), (5000, 5000)]);
        let mut next = crate::stages::gold::scrambled(7);
        let many: BTreeSet<i64> = (0..5000).map(|_| next(1_000_000) as i64).collect();
        let merged = ranges(&many, 64, ALL);
        assert!(merged.len() <= 64);
        assert!(
            many.iter()
                .all(|v| merged.iter().any(|(lo, hi)| lo <= v && v <= hi))
        );
        assert!(merged.windows(2).all(|w| w[0].1 < w[1].0), "{merged:?}");
    }

    #[test]
    fn keys_split_into_groups_of_consecutive_values() {
        let keys = Keys::Ints(ints(&[5, 1, 9, 3, 7]));
        assert_eq!(
            groups(&keys, 2),
            [
                Keys::Ints(ints(&[1, 3])),
                Keys::Ints(ints(&[5, 7])),
                Keys::Ints(ints(&[9]))
            ]
        );
        assert_eq!(groups(&keys, 10), [Keys::Ints(ints(&[1, 3, 5, 7, 9]))]);
    }

    #[test]
    fn past_the_listed_ints_a_predicate_can_name_keys_it_was_not_given() {
        let spread: BTreeSet<i64> = (0..=MAX_LISTED_INTS as i64).map(|i| i * 3).collect();
        let within = Keys::Ints(spread.iter().copied().skip(1).collect());
        assert!(within.named_exactly());
        let listed = predicate("k", &within, ALL).unwrap();
        assert!(listed.contains(" IN ("), "{listed}");
        let past = Keys::Ints(spread);
        assert!(!past.named_exactly());
        let merged = predicate("k", &past, ALL).unwrap();
        // At most 64 ranges of keys three apart: one covers values that are no keys.
        let terms = merged.split(" OR ").count();
        assert!(
            terms <= MAX_RANGES && merged.contains(" BETWEEN "),
            "{merged}"
        );
    }

    #[test]
    fn predicates_name_ranges_or_quoted_values() {
        assert_eq!(
            predicate(
                "date_key",
                &Keys::Ints(ints(&[20240101, 20240102, 20240105])),
                ALL
            ),
            Some("\"date_key\" BETWEEN 20240101 AND 20240102 OR \"date_key\" = 20240105".into())
        );
        // Scattered keys past a few ranges are listed, within their bounds.
        assert_eq!(
            predicate("d", &Keys::Ints(ints(&[1, 3, 5, 7, 9, 11])), ALL),
            Some("\"d\" BETWEEN 1 AND 11 AND \"d\" IN (1, 3, 5, 7, 9, 11)".into())
        );
        let text = Keys::Text(["a'b".to_string(), "c".to_string()].into());
        assert_eq!(
            predicate("k", &text, ALL),
            Some("\"k\" IN ('a''b', 'c')".into())
        );
        let many = Keys::Text((0..=MAX_TEXT_KEYS).map(|i| i.to_string()).collect());
        assert_eq!(predicate("k", &many, ALL), None);
    }
}
