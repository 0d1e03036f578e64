//! What silver cannot load goes to `bronze/_quarantine/<Table>/`, with the reason: a file
//! that is not parquet is moved there whole, rows that broke `drop` expectations are written
//! there as a parquet file of their own, with the names of the rules they broke.

use arrow::array::RecordBatch;
use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use tracing::{info, warn};

use crate::config::TableSpec;
use crate::error::{Error, Result};
use crate::lake::{Lake, layout};

/// Moves an unreadable bronze file to the quarantine, with a reason file beside it.
pub(super) async fn file(
    lake: &Lake,
    table: &TableSpec,
    path: &str,
    reason: &str,
    run_id: &str,
) -> Result<()> {
    let target = layout::quarantined_file(&table.name, path);
    warn!(file = path, to = %target, reason, "The file is not readable parquet; moving it to quarantine.");
    lake.store()
        .copy(&Path::from(path), &Path::from(target.as_str()))
        .await
        .map_err(|e| Error::lake(path, e))?;
    let record = format!(
        "file: {path}\ntable: {}\nrun: {run_id}\nat: {}\nreason: {reason}\n",
        table.name,
        chrono::Utc::now().to_rfc3339()
    );
    lake.put(&layout::reason_of(&target), Bytes::from(record))
        .await?;
    lake.delete(path).await
}

/// Writes the rows of `file` that broke `drop` rules (a retry replaces them).
pub(super) async fn rows(
    lake: &Lake,
    table: &TableSpec,
    file: &str,
    batch: RecordBatch,
) -> Result<()> {
    let path = layout::quarantined_rows(&table.name, file);
    let parquet_err = |source| Error::Parquet {
        file: path.clone(),
        source,
    };
    let mut buffer = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut buffer, batch.schema(), None)
        .map_err(parquet_err)?;
    writer.write(&batch).map_err(parquet_err)?;
    writer.close().map_err(parquet_err)?;
    info!(rows = batch.num_rows(), to = %path, "Rows broke drop expectations; quarantined.");
    lake.put(&path, Bytes::from(buffer)).await
}
