//! Snapshot tables (`[[tables]]` without `cdc_column`): what they need and what does not apply.

use super::TableSpec;
use super::ingest::{CdcMode, Deletes};
use crate::lake::layout::silver_columns::SNAPSHOT_AT;

impl TableSpec {
    /// Whether the table is a snapshot table: no change column; read whole each run.
    pub fn is_snapshot(&self) -> bool {
        self.cdc_column == SNAPSHOT_AT
    }
}

/// The checks of a snapshot table; a missing key is reported as for every table.
pub(super) fn validate(t: &TableSpec, at: &str, problem: &mut impl FnMut(String, String)) {
    if t.keys.is_empty() {
        problem(
            format!("{at}.keys"),
            "a snapshot table (no cdc_column) needs keys: the difference between two snapshots is found by key".into(),
        );
    }
    let not_for = |key: &str| {
        (
            format!("{at}.{key}"),
            "does not apply to a snapshot table (no cdc_column): it is read whole, and keys that \
             vanish are deletes"
                .to_string(),
        )
    };
    if t.lookback.is_some() {
        let (a, m) = not_for("lookback");
        problem(a, m);
    }
    if t.deletes == Deletes::Detect {
        let (a, m) = not_for("deletes");
        problem(a, m);
    }
    if t.cdc_mode == CdcMode::ChangeTracking {
        let (a, m) = not_for("cdc_mode");
        problem(a, m);
    }
}
