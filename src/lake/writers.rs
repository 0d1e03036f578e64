//! Appending to a Delta table with several writers at once, in one commit.
//!
//! delta-rs 1.1 drains every partition of a write's input through one `DeltaWriter`, so the
//! parquet encoding of a big write (most of its cost) runs on one core. Here each stream of
//! rows has its own writer on its own task, and the files of all of them are committed
//! together with the caller's application transactions: readers see all the rows or none.

use std::num::NonZeroU64;
use std::sync::Arc;

use arrow::array::{RecordBatch, new_null_array};
use arrow::datatypes::SchemaRef;
use datafusion::physical_plan::SendableRecordBatchStream;
use deltalake::DeltaTable;
use deltalake::datafile::writer::{DeltaWriter, WriterConfig};
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::{Action, Add, Transaction};
use deltalake::operations::write::configs::WriterStatsConfig;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt;
use futures::StreamExt;
use tracing::Instrument;

use crate::error::{Error, Result, delta_err};

/// A writer of new data files for `target` (which exists), whose rows have the table's
/// `schema`, closing a file past `file_size` bytes (default: the table's target file size).
/// Its files are committed by the caller.
pub fn delta_writer(
    target: &DeltaTable,
    name: &str,
    schema: &SchemaRef,
    file_size: Option<NonZeroU64>,
) -> Result<DeltaWriter> {
    let snapshot = target.snapshot().map_err(delta_err(name))?.snapshot();
    let stats = WriterStatsConfig::from_config(snapshot.table_configuration());
    let config = WriterConfig::new(
        schema.clone(),
        Vec::new(),
        Some(super::parquet_properties(schema).build()),
        Some(file_size.unwrap_or_else(|| snapshot.table_properties().target_file_size())),
        None,
        stats.num_indexed_cols,
        stats.stats_columns,
    );
    Ok(DeltaWriter::new(
        target.log_store().object_store(None),
        config,
    ))
}

/// `batch` with the columns of `schema`, by name, in its types (a column the batch lacks is
/// NULL).
pub fn fit(
    batch: &RecordBatch,
    schema: &SchemaRef,
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) => arrow::compute::cast(c, f.data_type()),
            None => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns)
}

/// What the writers of [`write_streams`] wrote, together.
pub struct Written {
    pub adds: Vec<Action>,
    pub rows: u64,
    /// The sums of what `count` returned for each batch.
    pub counted: Vec<u64>,
}

/// Writes each stream into new files of `target` (which exists) with its own writer, on its
/// own task, fitting the rows to the table's schema; `count` tallies each batch as it is
/// written (e.g. rows pointing to an unknown member). `from` names what the rows are computed
/// from, for errors. Nothing is committed: see [`commit_append`]. If one writer fails, the
/// others are stopped.
pub async fn write_streams<C>(
    target: &DeltaTable,
    name: &str,
    from: &str,
    streams: Vec<SendableRecordBatchStream>,
    file_size: Option<NonZeroU64>,
    count: C,
) -> Result<Written>
where
    C: Fn(&RecordBatch) -> Vec<u64> + Clone + Send + 'static,
{
    let schema = target
        .snapshot()
        .map_err(delta_err(name))?
        .snapshot()
        .arrow_schema();
    let mut tasks = Vec::with_capacity(streams.len());
    for stream in streams {
        let writer = delta_writer(target, name, &schema, file_size)?;
        let write = write_one(
            stream,
            writer,
            schema.clone(),
            count.clone(),
            (name.to_string(), from.to_string()),
        );
        tasks.push(tokio::spawn(write.in_current_span()));
    }
    let mut all = Written {
        adds: Vec::new(),
        rows: 0,
        counted: Vec::new(),
    };
    for i in 0..tasks.len() {
        let failure = match (&mut tasks[i]).await {
            Ok(Ok((adds, rows, counted))) => {
                all.adds.extend(adds.into_iter().map(Action::Add));
                all.rows += rows;
                add_counts(&mut all.counted, counted);
                continue;
            }
            Ok(Err(e)) => e,
            Err(e) => Error::Task(format!("writing {name}: {e}")),
        };
        // The other writers' files would never be committed: stop them.
        tasks[i + 1..].iter().for_each(|t| t.abort());
        return Err(failure);
    }
    Ok(all)
}

async fn write_one<C>(
    mut stream: SendableRecordBatchStream,
    mut writer: DeltaWriter,
    schema: SchemaRef,
    count: C,
    (name, from): (String, String),
) -> Result<(Vec<Add>, u64, Vec<u64>)>
where
    C: Fn(&RecordBatch) -> Vec<u64>,
{
    let (mut rows, mut counted) = (0u64, Vec::<u64>::new());
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| Error::DataFusion {
            table: name.clone(),
            file: from.clone(),
            context: "computing the rows to write".to_string(),
            source: e,
        })?;
        if batch.num_rows() == 0 {
            continue;
        }
        let batch = fit(&batch, &schema).map_err(|e| Error::arrow(&name, e))?;
        rows += batch.num_rows() as u64;
        add_counts(&mut counted, count(&batch));
        writer.write(&batch).await.map_err(delta_err(&name))?;
    }
    let adds = writer.close().await.map_err(delta_err(&name))?;
    Ok((adds, rows, counted))
}

/// Adds `counts` to `sums`, place by place.
fn add_counts(sums: &mut Vec<u64>, counts: Vec<u64>) {
    if sums.len() < counts.len() {
        sums.resize(counts.len(), 0);
    }
    for (sum, c) in sums.iter_mut().zip(counts) {
        *sum += c;
    }
}

/// Commits `adds` to `target` as one append, with `txns` and no blind retries (a conflict is
/// the caller's to handle), and returns the table at the new version.
pub async fn commit_append(
    target: DeltaTable,
    name: &str,
    adds: Vec<Action>,
    txns: Vec<Transaction>,
) -> Result<DeltaTable> {
    let snapshot = target.snapshot().map_err(delta_err(name))?;
    let properties = deltalake::kernel::transaction::CommitProperties::default()
        .with_application_transactions(txns)
        .with_max_retries(0);
    let commit = CommitBuilder::from(properties)
        .with_actions(adds)
        .build(
            Some(snapshot),
            target.log_store(),
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: None,
                predicate: None,
            },
        )
        .await
        .map_err(delta_err(name))?;
    let mut target = target;
    target
        .update_incremental(Some(commit.version()))
        .await
        .map_err(delta_err(name))?;
    Ok(target)
}
