//! A file's rows with the ones to keep, and the query that hands them to a Delta writer with
//! their lineage columns.

use std::sync::Arc;

use crate::lake::layout::silver_columns::{INGESTED_AT, SOURCE_FILE};
use arrow::array::{BooleanArray, RecordBatch, RecordBatchOptions};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::ScalarValue;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{DataFrame, Expr, SessionContext, lit};

/// A file's rows, each batch with the rows to keep (`None`: all of them). Duplicates and
/// dropped rows are taken out only as the rows are written, a slice at a time (see
/// [`with_lineage`]): filtered whole, a file would be copied nearly whole beside the rows it
/// came from (decision 002, "Silver").
#[derive(Debug, Clone, Default)]
pub(super) struct Rows {
    pub(super) batches: Vec<RecordBatch>,
    pub(super) keep: Vec<Option<BooleanArray>>,
}

impl Rows {
    pub(super) fn all(batches: Vec<RecordBatch>) -> Self {
        let keep = vec![None; batches.len()];
        Rows { batches, keep }
    }

    pub(super) fn push(&mut self, batch: RecordBatch, keep: Option<BooleanArray>) {
        self.batches.push(batch);
        self.keep.push(keep);
    }

    /// The rows kept.
    pub(super) fn count(&self) -> usize {
        (self.batches.iter().zip(&self.keep))
            .map(|(b, k)| k.as_ref().map_or(b.num_rows(), |k| k.true_count()))
            .sum()
    }

    /// The rows kept, as batches of their own, each column let go once filtered.
    pub(super) fn filtered(
        self,
    ) -> std::result::Result<Vec<RecordBatch>, arrow::error::ArrowError> {
        (self.batches.into_iter().zip(self.keep))
            .map(|(batch, keep)| {
                let Some(keep) = keep else {
                    return Ok(batch);
                };
                let (schema, columns, _) = batch.into_parts();
                let columns = columns
                    .into_iter()
                    .map(|c| arrow::compute::filter(c.as_ref(), &keep))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let options = RecordBatchOptions::new().with_row_count(Some(keep.true_count()));
                RecordBatch::try_new_with_options(schema, columns, &options)
            })
            .collect()
    }

    /// The kept rows of each `size`-row slice, one slice at a time.
    pub(super) fn slices(
        self,
        size: usize,
    ) -> impl Iterator<Item = std::result::Result<RecordBatch, arrow::error::ArrowError>> {
        (self.batches.into_iter().zip(self.keep)).flat_map(move |(batch, keep)| {
            let rows = batch.num_rows();
            (0..rows).step_by(size).map(move |at| {
                let len = size.min(rows - at);
                let slice = batch.slice(at, len);
                match &keep {
                    Some(keep) => filter_record_batch(&slice, &keep.slice(at, len)),
                    None => Ok(slice),
                }
            })
        })
    }
}

/// One writer's rows as a query's partition: the session's batch size, kept rows only.
#[derive(Debug)]
pub(super) struct Slices {
    schema: SchemaRef,
    rows: Rows,
    size: usize,
}

impl PartitionStream for Slices {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _: Arc<TaskContext>) -> SendableRecordBatchStream {
        let slices = self
            .rows
            .clone()
            .slices(self.size)
            .map(|r| r.map_err(Into::into));
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter(slices),
        ))
    }
}

/// The rows to write, with the lineage columns last: the bronze file's path and the load
/// time. As a query, so the writer makes them one batch at a time (the session's size; a
/// file's rows come as one batch, see [`read_parquet`]): a whole file's worth of the same
/// path, repeated, was half the memory of a fact row in every copy the steps before writing
/// make.
///
/// In the given partitions (each a writer's, when there are two).
pub(super) fn with_lineage(
    ctx: &SessionContext,
    partitions: Vec<Rows>,
    file: &str,
) -> datafusion::error::Result<DataFrame> {
    let now = ScalarValue::TimestampMicrosecond(
        Some(chrono::Utc::now().timestamp_micros()),
        Some("UTC".into()),
    );
    // Nullable like every stored column (a bare literal is not): `CASE` without `ELSE`.
    let nullable = |value: Expr| datafusion::logical_expr::when(lit(true), value).end();
    let schema = partitions
        .iter()
        .flat_map(|p| &p.batches)
        .next()
        .map(|b| b.schema())
        .ok_or_else(|| datafusion::error::DataFusionError::Plan("no rows to write".into()))?;
    let size = ctx.copied_config().batch_size().max(1);
    let partitions = partitions
        .into_iter()
        .map(|rows| {
            let schema = schema.clone();
            Arc::new(Slices { schema, rows, size }) as Arc<dyn PartitionStream>
        })
        .collect();
    ctx.read_table(Arc::new(StreamingTable::try_new(schema, partitions)?))?
        .with_column(SOURCE_FILE, nullable(lit(file.to_string()))?)?
        .with_column(INGESTED_AT, nullable(lit(now))?)
}
