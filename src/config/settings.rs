//! `[settings]`: run-wide bounds on concurrency, batch and file sizes, and memory, with their
//! defaults and the checks that reject a bad value before any data moves.

use serde::Deserialize;

/// Run-wide settings (`[settings]`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// How many tables a stage works on at once.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Rows per Arrow record batch read from a source; bounds memory per table.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// A bronze parquet file is closed and the next part started past this size.
    #[serde(default = "default_max_file_mb")]
    pub max_file_mb: u64,
    /// A bronze parquet file is also closed past this many rows. Silver loads a bronze file
    /// in one piece (one file, one commit), so this bounds silver's memory per file (about
    /// 200 bytes per row in flight): the rows of a big extract are spread over parts.
    #[serde(default = "default_max_file_rows")]
    pub max_file_rows: u64,
    /// Gold resolves and writes a fact's new rows in chunks of about this many rows (whole
    /// silver files), so its memory does not grow with the size of a load.
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: u64,
    /// Gold computes a dimension's versions in ranges of about this many changed keys, so
    /// its memory does not grow with the size of the dimension.
    #[serde(default = "default_dimension_chunk_keys")]
    pub dimension_chunk_keys: u64,
    /// Silver lists a bronze folder from where its last run stopped; every this many hours
    /// it lists the folder in full instead, to find a file written behind its cursor by a run
    /// racing it (Auto Loader's `backfillInterval`). 0 lists in full every run.
    #[serde(default = "default_backfill_interval_hours")]
    pub backfill_interval_hours: u64,
    /// How long a run waits for another run of the same table and stage to finish (one
    /// writer per table at a time) before it fails the table.
    #[serde(default = "default_lease_wait_seconds")]
    pub lease_wait_seconds: u64,
    /// A view's query holds at most this much memory in its operators: its sorts and
    /// aggregations spill to the temporary directory past it, so a view over the whole fact
    /// stays within a Consumption instance.
    #[serde(default = "default_view_memory_mb")]
    pub view_memory_mb: u64,
    /// The query function's bounds: a query's operators hold at most this much memory
    /// (sorts and aggregations spill past it, anything else fails the query), ...
    #[serde(default = "default_query_memory_mb")]
    pub query_memory_mb: u64,
    /// ... it is stopped after this many seconds, ...
    #[serde(default = "default_query_timeout_seconds")]
    pub query_timeout_seconds: u64,
    /// ... and at most this many run at once per instance (others wait a few seconds, then
    /// get 429), so one query cannot take the app down.
    #[serde(default = "default_query_concurrency")]
    pub query_concurrency: usize,
}

fn default_max_concurrency() -> usize {
    4
}
fn default_batch_rows() -> usize {
    65_536
}
fn default_max_file_mb() -> u64 {
    128
}
// The three bounds below keep a run's memory from growing with the data, so that the largest
// table fits a Consumption instance; smaller bronze files lower silver's share of the peak at
// a cost in time (docs/decisions/002-speed-and-memory.md, "Bounds").
fn default_max_file_rows() -> u64 {
    300_000
}
fn default_chunk_rows() -> u64 {
    400_000
}
fn default_dimension_chunk_keys() -> u64 {
    125_000
}
fn default_backfill_interval_hours() -> u64 {
    24
}
fn default_lease_wait_seconds() -> u64 {
    600
}
fn default_view_memory_mb() -> u64 {
    384
}
fn default_query_memory_mb() -> u64 {
    512
}
fn default_query_timeout_seconds() -> u64 {
    120
}
fn default_query_concurrency() -> usize {
    2
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_concurrency: default_max_concurrency(),
            batch_rows: default_batch_rows(),
            max_file_mb: default_max_file_mb(),
            max_file_rows: default_max_file_rows(),
            chunk_rows: default_chunk_rows(),
            dimension_chunk_keys: default_dimension_chunk_keys(),
            backfill_interval_hours: default_backfill_interval_hours(),
            lease_wait_seconds: default_lease_wait_seconds(),
            view_memory_mb: default_view_memory_mb(),
            query_memory_mb: default_query_memory_mb(),
            query_timeout_seconds: default_query_timeout_seconds(),
            query_concurrency: default_query_concurrency(),
        }
    }
}

/// `[settings]`, defaults where absent; each bad value is a problem.
pub(super) fn parse_settings(
    raw: Option<&toml::Value>,
    problem: &mut impl FnMut(String, String),
) -> Settings {
    let settings = match raw.map(|v| v.clone().try_into::<Settings>()) {
        None => Settings::default(),
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            problem("settings".to_string(), e.message().to_string());
            Settings::default()
        }
    };
    for (key, value) in [
        ("max_concurrency", settings.max_concurrency as u64),
        ("chunk_rows", settings.chunk_rows),
        ("dimension_chunk_keys", settings.dimension_chunk_keys),
        ("max_file_mb", settings.max_file_mb),
        ("view_memory_mb", settings.view_memory_mb),
        ("query_memory_mb", settings.query_memory_mb),
        ("query_timeout_seconds", settings.query_timeout_seconds),
        ("query_concurrency", settings.query_concurrency as u64),
    ] {
        if value == 0 {
            problem(format!("settings.{key}"), "must be at least 1".into());
        }
    }
    if !(1..=1_048_576).contains(&settings.batch_rows) {
        problem(
            "settings.batch_rows".into(),
            "must be between 1 and 1048576".into(),
        );
    }
    if settings.max_file_rows < settings.batch_rows as u64 {
        problem(
            "settings.max_file_rows".into(),
            format!(
                "{} is below batch_rows ({}): a file holds at least one batch",
                settings.max_file_rows, settings.batch_rows
            ),
        );
    }
    settings
}
