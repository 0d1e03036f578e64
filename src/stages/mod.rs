//! The pipeline's stages. Each takes validated specs, a source or lake, and a run id, and
//! returns a per-table report; a table's failure is in its report, never a panic of the run.

pub mod check;
pub mod gold;
pub mod ingest;
pub mod refresh;
pub mod silver;

use crate::lake::layout::Stage;

/// A run id: UTC start time plus a random suffix, sortable and unique enough per lake.
pub fn new_run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    format!(
        "{}-{:06x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        h.finish() & 0xff_ffff
    )
}

/// Runs `work` for every table, at most `limit` at once, each in its own task and in a
/// tracing span with the run id, stage and table. Results come back in the tables' order; a
/// task that panics becomes `on_panic(table, message)`, so one table never takes down a run.
pub async fn per_table<R, F, Fut>(
    tables: &[crate::config::TableSpec],
    limit: usize,
    run_id: &str,
    stage: Stage,
    work: F,
    on_panic: impl Fn(&crate::config::TableSpec, String) -> R,
) -> Vec<R>
where
    R: crate::progress::Outcome + Send + 'static,
    F: Fn(crate::config::TableSpec) -> Fut,
    Fut: std::future::Future<Output = R> + Send + 'static,
{
    use tracing::Instrument;
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(limit.max(1)));
    let handles: Vec<_> = tables
        .iter()
        .map(|table| {
            let permits = permits.clone();
            let span = tracing::info_span!("table", run_id = %run_id, stage = stage.as_str(), table = %table.name);
            let task = work(table.clone());
            let label = match (stage, &table.gold) {
                (Stage::Silver, _) => table.silver_name(),
                (Stage::Gold, Some(gold)) => gold.name.clone(),
                _ => table.name.clone(),
            };
            tokio::spawn(
                async move {
                    let _permit = permits.acquire_owned().await;
                    let tracker = crate::progress::Tracker::start(stage.as_str(), &label);
                    let result = crate::progress::scope(tracker.clone(), task).await;
                    tracker.finish(result.status(), result.rows());
                    result
                }
                .instrument(span),
            )
        })
        .collect();
    let mut results = Vec::with_capacity(handles.len());
    for (handle, table) in handles.into_iter().zip(tables) {
        results.push(match handle.await {
            Ok(r) => r,
            Err(e) => on_panic(table, format!("the table's task failed: {e}")),
        });
    }
    results
}

impl Status {
    /// The lower-case name the event log and progress use.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Empty => "empty",
            Status::Failed => "failed",
        }
    }
}

/// How a table ended in a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// New data was written.
    Ok,
    /// Nothing new: no file written, no watermark or checkpoint moved.
    Empty,
    /// The table failed; the others went on.
    Failed,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Empty => "empty",
            Status::Failed => "FAILED",
        })
    }
}
