//! Bronze retention (Auto Loader's `cleanSource`): a bronze file that silver has committed, and
//! that is older than the retention, is deleted or moved to `bronze/_archive/`, so bronze holds
//! only recent files and the catch-up listing follows them, not the whole history.
//!
//! A file counts as committed only when silver's log records it at the file's own
//! last-modified time or later, the same test that makes loading it again a no-op: a file that
//! was never loaded, failed, or was rewritten since is left where it is.

use chrono::{DateTime, Utc};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use tracing::{info, warn};

use crate::config::TableSpec;
use crate::config::maintenance::{CleanSource, Maintenance};
use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::lake::layout;

/// Applies `clean_source` to the bronze files of `table` as of `now`; returns how many files
/// were deleted or moved.
pub async fn clean_source(
    lake: &Lake,
    table: &TableSpec,
    m: &Maintenance,
    now: DateTime<Utc>,
) -> Result<usize> {
    if m.clean_source == CleanSource::Off {
        return Ok(0);
    }
    let silver = lake
        .delta_table(&layout::silver_table(&table.silver_name()))
        .await?;
    if silver.version().is_none() {
        return Ok(0);
    }
    let Some(recorded) = crate::lake::transactions::all(&silver).await else {
        warn!(table = %table.name, "Silver's record of loaded files could not be read; bronze is kept.");
        return Ok(0);
    };
    let retention = chrono::Duration::days(m.clean_source_retention_days as i64);
    let store = lake.store();
    let mut cleaned = 0;
    for meta in lake.list(&layout::bronze_dir(&table.name)).await? {
        let path = meta.location.to_string();
        let loaded = recorded
            .get(&layout::app_id::silver_file(&path))
            .is_some_and(|&v| v >= meta.last_modified.timestamp_millis());
        if !loaded || now - meta.last_modified < retention {
            continue;
        }
        match m.clean_source {
            CleanSource::Move => {
                let to = layout::archived(&table.name, &path);
                store
                    .rename(&meta.location, &Path::from(to.as_str()))
                    .await
                    .map_err(|e| Error::lake(&path, e))?;
            }
            _ => lake.delete(&path).await?,
        }
        cleaned += 1;
    }
    if cleaned > 0 {
        info!(table = %table.name, files = cleaned, action = ?m.clean_source, "Cleaned loaded bronze files past their retention.");
    }
    Ok(cleaned)
}
