//! Silver's discovery of new bronze files: a cursor per table, so that a run lists only the
//! files named past the last ones it consumed, not every file the table ever had (Auto
//! Loader's incremental listing, with its `backfillInterval` as `backfill_interval_hours`).
//!
//! Bronze names sort by window within a family: windows (`T_<low>_<high>_<part>`), delete
//! markers (`T_deletes_<time>`), snapshots (`T_snapshot_<time>_<part>`). The cursor keeps, per
//! family, the last name silver consumed; a listing starts past the lowest of them. Its rule:
//! every bronze file a listing from the cursor would pass over has been loaded as it is now.
//! Ingest keeps the rule: before it writes a name the cursor covers (a backfill's older window,
//! a window written again after a crash, an integer watermark's name that sorts low), it
//! removes the cursor, and the next run lists the folder in full. A full listing also runs
//! every `backfill_interval_hours`, which catches a file that a run writing elsewhere raced
//! past the cursor.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use object_store::{ObjectMeta, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::{Lake, layout};
use crate::error::Result;

/// Where silver's discovery of one bronze table stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// Per family (`""` for windows, else its word: `deletes`, `snapshot`), the last name
    /// consumed.
    pub after: BTreeMap<String, String>,
    /// When the folder was last listed in full.
    pub listed_in_full_at: DateTime<Utc>,
}

/// How a table's bronze files were found.
#[derive(Debug, Clone)]
pub enum Listing {
    /// Every file of the folder.
    Full,
    /// The files past this cursor.
    From(Cursor),
}

/// A bronze name's family: `""` for a window (its low token starts with a digit or a sign),
/// else the word after the table's name.
fn family<'a>(table: &str, name: &'a str) -> &'a str {
    let rest = name
        .strip_prefix(table)
        .and_then(|r| r.strip_prefix('_'))
        .unwrap_or(name);
    let word = rest.split('_').next().unwrap_or(rest);
    if word.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
        ""
    } else {
        word
    }
}

impl Cursor {
    /// The name a listing starts past: the lowest family's.
    fn start(&self) -> Option<&str> {
        self.after.values().map(String::as_str).min()
    }

    /// Whether a listing from this cursor passes `name` over (it must then have been loaded).
    pub fn covers(&self, table: &str, name: &str) -> bool {
        let below_start = self.start().is_some_and(|start| name <= start);
        let in_family = self
            .after
            .get(family(table, name))
            .is_some_and(|after| name <= after.as_str());
        below_start || in_family
    }

    /// The cursor past `names` too (names consumed by a run that started from this one, or
    /// listed in full).
    fn advanced<'a>(&self, table: &str, names: impl IntoIterator<Item = &'a str>) -> Cursor {
        let mut next = self.clone();
        for name in names {
            let entry = next
                .after
                .entry(family(table, name).to_string())
                .or_default();
            if name > entry.as_str() {
                *entry = name.to_string();
            }
        }
        next
    }
}

async fn read(lake: &Lake, table: &str) -> Option<Cursor> {
    let path = layout::discovery_cursor(table);
    match lake.get_opt(&path).await {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes)
            .inspect_err(|e| warn!(file = path, error = %e, "The discovery cursor cannot be read; listing in full."))
            .ok(),
        Ok(None) => None,
        Err(e) => {
            warn!(file = path, error = %e, "The discovery cursor cannot be read; listing in full.");
            None
        }
    }
}

/// The table's bronze files that silver may not have loaded: those past its cursor, or every
/// one when there is no cursor or the last full listing is older than `backfill_hours`
/// (0: always). Parquet files only, in name order.
pub async fn candidates(
    lake: &Lake,
    table: &str,
    backfill_hours: u64,
) -> Result<(Vec<ObjectMeta>, Listing)> {
    let dir = layout::bronze_dir(table);
    let due = |c: &Cursor| {
        let interval =
            chrono::Duration::hours(i64::try_from(backfill_hours).unwrap_or(i64::MAX / 3_600_000));
        backfill_hours == 0 || Utc::now() - c.listed_in_full_at >= interval
    };
    let cursor = read(lake, table).await.filter(|c| !due(c));
    let (mut listed, listing) = match cursor.as_ref().and_then(|c| c.start().map(|s| (c, s))) {
        Some((c, start)) => {
            let mut listed = lake.list_after(&dir, start).await?;
            listed.retain(|m| m.location.filename().is_some_and(|n| !c.covers(table, n)));
            (listed, Listing::From(c.clone()))
        }
        None => (lake.list(&dir).await?, Listing::Full),
    };
    listed.retain(|m| m.location.as_ref().ends_with(".parquet"));
    listed.sort_by(|a, b| a.location.cmp(&b.location));
    debug!(
        table,
        files = listed.len(),
        full = matches!(listing, Listing::Full),
        "Listed bronze."
    );
    Ok((listed, listing))
}

/// Moves the cursor past `consumed` (every file [`candidates`] gave, each loaded now or
/// before). Written only when it moves; a failure to write costs a longer listing next run.
pub async fn advance(lake: &Lake, table: &str, listing: Listing, consumed: &[ObjectMeta]) {
    let names = consumed.iter().filter_map(|m| m.location.filename());
    let (previous, next) = match listing {
        Listing::Full => {
            let empty = Cursor {
                after: BTreeMap::new(),
                listed_in_full_at: Utc::now(),
            };
            (None, empty.advanced(table, names))
        }
        Listing::From(c) => {
            let next = c.advanced(table, names);
            (Some(c), next)
        }
    };
    if previous.as_ref() == Some(&next) || next.after.is_empty() {
        return;
    }
    let path = layout::discovery_cursor(table);
    // Not made durable: a cursor lost in a crash leaves the one before it (the put replaces it
    // whole), which covers less, or none, and either costs only a longer listing.
    let written = match serde_json::to_vec(&next) {
        Ok(bytes) => (lake.store())
            .put(&path.as_str().into(), bytes.into())
            .await
            .map(|_| ())
            .map_err(|e| crate::error::Error::lake(&path, e)),
        Err(e) => Err(crate::error::Error::Task(e.to_string())),
    };
    if let Err(e) = written {
        warn!(file = path, error = %e, "The discovery cursor was not written; the next run lists more.");
    }
}

/// Before ingest writes the bronze file `name` of `table`: removes the cursor if a listing
/// from it would pass the file over, so that silver finds it.
pub async fn before_write(lake: &Lake, table: &str, name: &str) -> Result<()> {
    if let Some(cursor) = read(lake, table).await
        && cursor.covers(table, name)
    {
        debug!(
            table,
            file = name,
            "A bronze file sorts before the discovery cursor; removing it."
        );
        forget(lake, table).await?;
    }
    Ok(())
}

/// Removes the table's cursor: its next run lists the folder in full.
pub async fn forget(lake: &Lake, table: &str) -> Result<()> {
    lake.delete(&layout::discovery_cursor(table)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(after: &[(&str, &str)]) -> Cursor {
        Cursor {
            after: after
                .iter()
                .map(|(f, n)| (f.to_string(), n.to_string()))
                .collect(),
            listed_in_full_at: Utc::now(),
        }
    }

    #[test]
    fn names_fall_into_families() {
        assert_eq!(
            family(
                "T",
                "T_20250101T000000000000_20250102T000000000000_00000.parquet"
            ),
            ""
        );
        assert_eq!(family("T", "T_0_20250102T000000000000_00000.parquet"), "");
        assert_eq!(family("T", "T_-5_7_00000.parquet"), "");
        assert_eq!(
            family("T", "T_deletes_20250101T000000000000.parquet"),
            "deletes"
        );
        assert_eq!(
            family("T", "T_snapshot_00000000000000000001_00000.parquet"),
            "snapshot"
        );
    }

    #[test]
    fn a_cursor_covers_what_sorts_before_it_in_each_family() {
        let c = cursor(&[
            (
                "",
                "T_20250105T000000000000_20250106T000000000000_00000.parquet",
            ),
            ("deletes", "T_deletes_20250103T000000000000.parquet"),
        ]);
        // Windows: the consumed one and earlier ones are covered, later ones not.
        assert!(c.covers(
            "T",
            "T_20250105T000000000000_20250106T000000000000_00000.parquet"
        ));
        assert!(c.covers(
            "T",
            "T_20250101T000000000000_20250102T000000000000_00000.parquet"
        ));
        assert!(!c.covers(
            "T",
            "T_20250105T000000000000_20250106T000000000000_00001.parquet"
        ));
        assert!(!c.covers(
            "T",
            "T_20250106T000000000000_20250107T000000000000_00000.parquet"
        ));
        // Delete markers sort after every window but keep their own place.
        assert!(c.covers("T", "T_deletes_20250102T000000000000.parquet"));
        assert!(!c.covers("T", "T_deletes_20250104T000000000000.parquet"));
        // A family the cursor has not met is covered only below its start.
        assert!(!c.covers("T", "T_snapshot_00000000000000000001_00000.parquet"));
        assert!(c.covers("T", "T_0_20250102T000000000000_00000.parquet"));
    }

    #[test]
    fn a_cursor_moves_forward_only() {
        let c = cursor(&[(
            "",
            "T_20250105T000000000000_20250106T000000000000_00000.parquet",
        )]);
        let next = c.advanced(
            "T",
            [
                "T_20250101T000000000000_20250102T000000000000_00000.parquet",
                "T_20250106T000000000000_20250107T000000000000_00000.parquet",
                "T_deletes_20250107T000000000000.parquet",
            ],
        );
        assert_eq!(
            next.after[""],
            "T_20250106T000000000000_20250107T000000000000_00000.parquet"
        );
        assert_eq!(
            next.after["deletes"],
            "T_deletes_20250107T000000000000.parquet"
        );
        assert_eq!(next.listed_in_full_at, c.listed_in_full_at);
    }
}
