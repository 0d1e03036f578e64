//! What silver cannot load goes to `bronze/_quarantine/<Table>/`, with the reason: a file
//! that is not parquet is moved there whole, rows that broke `drop` expectations are written
//! there as a parquet file of their own, with the names of the rules they broke. Those rows
//! also go to the Delta table `silver/<name>_quarantine` (with their file, run and time), so
//! `tunelake sql` and the query function can look at them, as DLT users query expectations.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{Field, Schema};
use bytes::Bytes;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use tracing::{Instrument, info, warn};

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

/// The rows of `file` (at `version`) that broke `drop` rules, quarantined on a task of their
/// own: as a parquet file under `bronze/_quarantine` and in `silver/<name>_quarantine`. Their
/// writes take the time silver's write of the kept rows takes; the file's silver commit
/// waits for them ([`Pending::settle`]), so a file is never recorded as loaded before its
/// dropped rows are durably kept.
pub(super) fn spawn(
    lake: &Lake,
    table: &TableSpec,
    (file, version): (&str, i64),
    run_id: &str,
    dropped: RecordBatch,
) -> Pending {
    let (lake, table, file, run_id) = (
        lake.clone(),
        table.clone(),
        file.to_string(),
        run_id.to_string(),
    );
    let task = async move {
        rows(&lake, &table, &file, dropped.clone()).await?;
        rows_to_table(&lake, &table, &file, version, &run_id, dropped).await
    };
    Pending(Some(tokio::spawn(task.in_current_span())))
}

/// A file's dropped rows being quarantined (see [`spawn`]); `Pending::default()` when it has
/// none.
#[derive(Default)]
pub(super) struct Pending(Option<tokio::task::JoinHandle<Result<()>>>);

impl Pending {
    /// Waits until the rows are kept, or says why they could not be.
    pub(super) async fn settle(self) -> Result<()> {
        match self.0 {
            Some(task) => task
                .await
                .map_err(|e| Error::Task(format!("quarantining rows: {e}")))?,
            None => Ok(()),
        }
    }
}

/// Appends the rows of `file` (at `version`, its last-modified time) that broke `drop` rules
/// to `silver/<name>_quarantine`, with `_source_file`, `_run_id` and `_quarantined_at`. The
/// commit records the file as silver's does, so a retry of the file adds nothing twice.
pub(super) async fn rows_to_table(
    lake: &Lake,
    table: &TableSpec,
    file: &str,
    version: i64,
    run_id: &str,
    batch: RecordBatch,
) -> Result<()> {
    let path = layout::quarantine_table(&table.silver_name());
    // The lake keeps the table between the files of a run (`lake/opened.rs`).
    let delta = lake.delta_table(&path).await?;
    if delta.version().is_some() && super::loaded(&delta, table, file, version).await? {
        return Ok(());
    }
    let rows = batch.num_rows();
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    let at = chrono::Utc::now().timestamp_micros();
    for (name, column) in [
        (
            "_source_file",
            Arc::new(StringArray::from(vec![file; rows])) as ArrayRef,
        ),
        ("_run_id", Arc::new(StringArray::from(vec![run_id; rows]))),
        (
            "_quarantined_at",
            Arc::new(TimestampMicrosecondArray::from(vec![at; rows]).with_timezone("UTC")),
        ),
    ] {
        if let Some(i) = fields.iter().position(|f| f.name() == name) {
            fields.remove(i);
            columns.remove(i);
        }
        fields.push(Field::new(name, column.data_type().clone(), true));
        columns.push(column);
    }
    // Every column nullable: a later file may lack one.
    let fields: Vec<Field> = fields.into_iter().map(|f| f.with_nullable(true)).collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| Error::arrow(&path, e))?;
    let txn = Transaction::new(layout::app_id::silver_file(file), version);
    delta
        .write(vec![batch])
        .with_save_mode(SaveMode::Append)
        .with_schema_mode(SchemaMode::Merge)
        .with_configuration(crate::lake::CREATED_WITH)
        .with_commit_properties(CommitProperties::default().with_application_transaction(txn))
        .await
        .map_err(crate::error::delta_err(path.clone()))?;
    info!(rows, table = %path, "Quarantined rows are queryable.");
    Ok(())
}
