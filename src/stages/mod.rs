//! The pipeline's stages. Each takes validated specs, a source or lake, and a run id, and
//! returns a per-table report; a table's failure is in its report, never a panic of the run.

pub mod ingest;
pub mod silver;

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
