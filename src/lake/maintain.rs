//! Table maintenance over a lifetime of runs (`[maintenance]`): compaction of small files,
//! vacuum of files removed past their retention, and cleanup of log entries past theirs.
//!
//! Compaction is delta-rs's `optimize`: its commit adds and removes files with
//! `dataChange = false`, so readers of the change (gold, see `stages::gold::silver_changes`)
//! pass it over, and it never conflicts with an append. It never retries: a compaction that
//! meets another writer's commit to the same files gives up, and the next run tries again.
//! Vacuum deletes only files the log removed longer ago than the retention (`lite` mode, no
//! listing), and the log is cleaned only up to a checkpoint older than its retention, so every
//! version inside the retention can still be read.

use std::num::NonZeroU64;

use chrono::{DateTime, Utc};
use deltalake::DeltaTable;
use deltalake::kernel::transaction::CommitProperties;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::{Lake, layout};
use crate::config::maintenance::Maintenance;
use crate::error::{Result, delta_err};

/// What maintenance did to one table.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Maintained {
    /// The table's lake path.
    pub table: String,
    /// Live data files before.
    pub files: usize,
    /// Files compaction replaced, and the files it wrote instead.
    pub compacted: Option<(u64, u64)>,
    /// Files vacuum deleted.
    pub vacuumed: usize,
    /// Log entries cleaned.
    pub log_entries_removed: usize,
}

/// What maintenance may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Compact when the table holds enough small files (after a run's commits).
    Compaction,
    /// That, and vacuum and log cleanup once `vacuum_interval_hours` have passed since the
    /// table's last (the end of a run).
    Everything,
    /// Compaction of any two small files or more, vacuum and log cleanup now (`tunelake
    /// maintain`).
    Forced,
}

/// When a table was last vacuumed, kept in `_system/maintenance/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    vacuumed_at: DateTime<Utc>,
}

/// Maintains the Delta table at `path` as `due` allows; a table that does not exist yet is
/// left alone.
pub async fn table(lake: &Lake, path: &str, m: &Maintenance, due: Due) -> Result<Maintained> {
    let mut done = Maintained {
        table: path.to_string(),
        ..Maintained::default()
    };
    // A table no run has created yet (a quarantine table with nothing in it) stays absent:
    // opening it would leave an empty folder in a local lake. In the cloud the open itself
    // answers, without the extra listing.
    if lake.local_path(path).is_some() && !lake.has_table(path).await? {
        return Ok(done);
    }
    let mut delta = lake.delta_table(path).await?;
    if delta.version().is_none() {
        return Ok(done);
    }
    let target = m.target_file_size_mb.max(1) << 20;
    let sizes: Vec<u64> = delta
        .snapshot()
        .map_err(delta_err(path))?
        .log_data()
        .iter()
        .map(|f| f.size().max(0) as u64)
        .collect();
    done.files = sizes.len();
    let small = sizes.iter().filter(|&&s| s < target).count();
    let wanted = match due {
        Due::Forced => small >= 2,
        _ => m.auto_compact && small >= m.compact_min_files,
    };
    if wanted {
        let (table, compacted) = compact(delta, path, target).await?;
        delta = table;
        done.compacted = compacted;
    }
    let vacuum_now = match due {
        Due::Compaction => false,
        Due::Everything => m.auto_vacuum && vacuum_due(lake, path, m).await,
        Due::Forced => true,
    };
    if vacuum_now {
        done.vacuumed = vacuum(delta.clone(), path, m).await?;
        done.log_entries_removed = clean_log(&delta, path, m).await?;
        let record = Record {
            vacuumed_at: Utc::now(),
        };
        let bytes = serde_json::to_vec(&record).unwrap_or_default();
        lake.put(&layout::maintenance_record(path), bytes.into())
            .await?;
    }
    if done.compacted.is_some() || done.vacuumed > 0 || done.log_entries_removed > 0 {
        info!(
            table = path,
            files = done.files,
            compacted = ?done.compacted,
            vacuumed = done.vacuumed,
            log_entries = done.log_entries_removed,
            "Maintained the table."
        );
    }
    Ok(done)
}

/// Bin-packs the table's small files into files of about `target` bytes, in one commit.
/// `None` when another writer's commit got in the way (the next run tries again).
async fn compact(
    delta: DeltaTable,
    path: &str,
    target: u64,
) -> Result<(DeltaTable, Option<(u64, u64)>)> {
    let schema = delta
        .snapshot()
        .map_err(delta_err(path))?
        .snapshot()
        .arrow_schema();
    let properties = super::parquet_properties(&schema).build();
    let before = delta.clone();
    let compacted = delta
        .optimize()
        .with_target_size(NonZeroU64::new(target).unwrap_or(NonZeroU64::MIN))
        .with_writer_properties(properties)
        // One file in flight: compaction's memory is one target-sized file, not one per core.
        .with_max_concurrent_tasks(1)
        .with_commit_properties(CommitProperties::default().with_max_retries(0))
        .await;
    match compacted {
        Ok((table, metrics)) => {
            debug!(table = path, ?metrics, "Compacted.");
            let counts = (metrics.num_files_removed, metrics.num_files_added);
            Ok((table, (counts.0 > 0).then_some(counts)))
        }
        Err(e) if super::conflict::is_conflict(&e) => {
            info!(table = path, error = %e, "Another writer committed first; compaction waits for the next run.");
            Ok((before, None))
        }
        Err(e) => Err(delta_err(path)(e)),
    }
}

/// Deletes the files the log removed longer ago than the retention.
async fn vacuum(delta: DeltaTable, path: &str, m: &Maintenance) -> Result<usize> {
    let hours = i64::try_from(m.deleted_file_retention_hours).unwrap_or(i64::MAX / 3_600_000);
    let (_, metrics) = delta
        .vacuum()
        .with_retention_period(chrono::Duration::hours(hours))
        .with_enforce_retention_duration(m.retention_check)
        .with_mode(deltalake::operations::vacuum::VacuumMode::Lite)
        .await
        .map_err(delta_err(path))?;
    Ok(metrics.files_deleted.len())
}

/// Removes log entries older than the log retention, up to the newest checkpoint before it.
async fn clean_log(delta: &DeltaTable, path: &str, m: &Maintenance) -> Result<usize> {
    let Some(version) = delta.version() else {
        return Ok(0);
    };
    let days = i64::try_from(m.log_retention_days).unwrap_or(i64::MAX / 86_400_000);
    let cutoff = (Utc::now() - chrono::Duration::days(days)).timestamp_millis();
    deltalake::protocol::checkpoints::cleanup_expired_logs_for(
        version,
        delta.log_store().as_ref(),
        cutoff,
        None,
    )
    .await
    .map_err(delta_err(path))
}

/// Whether the table's last vacuum is older than the interval (or never happened).
async fn vacuum_due(lake: &Lake, path: &str, m: &Maintenance) -> bool {
    let last = match lake.get_opt(&layout::maintenance_record(path)).await {
        Ok(Some(bytes)) => serde_json::from_slice::<Record>(&bytes).ok(),
        Ok(None) => None,
        Err(e) => {
            warn!(table = path, error = %e, "The maintenance record cannot be read; vacuuming.");
            None
        }
    };
    let interval = chrono::Duration::hours(i64::try_from(m.vacuum_interval_hours).unwrap_or(24));
    last.is_none_or(|r| Utc::now() - r.vacuumed_at >= interval)
}
