//! Parquet files of a files source, local or over HTTP (read by range): their rows past a
//! watermark, and the watermark column's maximum from the footer statistics where they have it.

use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ArrowReaderBuilder;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};

use super::text::ordinal;
use super::{Batches, wrap};
use crate::error::{Error, Result};

/// The watermark window of an extract, `(after, up_to]` as ordinals (see [`ordinal`]), which
/// lets a parquet read skip the row groups whose statistics put them outside it.
#[derive(Clone)]
pub(super) struct Pruning {
    pub(super) column: String,
    pub(super) after: Option<i64>,
    pub(super) up_to: i64,
}

pub(super) fn parquet_batches<R: parquet::file::reader::ChunkReader + 'static>(
    name: &str,
    reader: R,
    batch_rows: usize,
    pruning: Option<&Pruning>,
) -> Result<(SchemaRef, Batches), String> {
    let mut builder =
        ParquetRecordBatchReaderBuilder::try_new(reader).map_err(|e| e.to_string())?;
    let schema = builder.schema().clone();
    if let Some(p) = pruning
        && let Some((mins, maxes)) = watermark_statistics(&builder, &p.column)
    {
        // Only rows in (after, up_to] are extracted, so a row group whose values all lie
        // outside cannot contribute; one without statistics (null min or max) is read.
        let keep: Vec<usize> = (0..mins.len())
            .filter(|&i| {
                let before = p
                    .after
                    .is_some_and(|a| maxes.is_valid(i) && maxes.value(i) <= a);
                let past = mins.is_valid(i) && mins.value(i) > p.up_to;
                !(before || past)
            })
            .collect();
        builder = builder.with_row_groups(keep);
    }
    let batches = builder
        .with_batch_size(batch_rows)
        .build()
        .map_err(|e| e.to_string())?;
    let wrap = wrap(name);
    Ok((schema, Box::new(batches.map(move |b| b.map_err(&wrap)))))
}

/// The minimum and maximum watermark value of every row group of a parquet file, from its
/// statistics, as ordinals; `None` when the file has no such column or its type has no
/// ordinal. A row group without statistics has nulls.
pub(super) fn watermark_statistics<T>(
    builder: &ArrowReaderBuilder<T>,
    column: &str,
) -> Option<(Int64Array, Int64Array)> {
    let groups = builder.metadata().row_groups();
    let converter =
        StatisticsConverter::try_new(column, builder.schema(), builder.parquet_schema()).ok()?;
    let mins = ordinal(&converter.row_group_mins(groups).ok()?).ok()?;
    let maxes = ordinal(&converter.row_group_maxes(groups).ok()?).ok()?;
    (mins.len() == groups.len() && maxes.len() == groups.len()).then_some((mins, maxes))
}

/// The largest watermark value the row groups' statistics of a parquet file give, and the
/// row groups (with rows) that have none, whose watermark column must be read.
pub(super) fn statistics_max<T>(
    name: &str,
    builder: &ArrowReaderBuilder<T>,
    column: &str,
) -> Result<(Option<i64>, Vec<usize>)> {
    if builder.schema().column_with_name(column).is_none() {
        return Err(Error::SourceQuery {
            table: name.to_string(),
            message: format!("file {name}: no column {column}"),
        });
    }
    let groups = builder.metadata().row_groups();
    let mut best: Option<i64> = None;
    let mut unread = Vec::new();
    match watermark_statistics(builder, column) {
        Some((_, maxes)) => {
            for (i, group) in groups.iter().enumerate() {
                if maxes.is_valid(i) {
                    best = best.max(Some(maxes.value(i)));
                } else if group.num_rows() > 0 {
                    unread.push(i);
                }
            }
        }
        None => unread = (0..groups.len()).collect(),
    }
    Ok((best, unread))
}

/// The largest watermark value of a batch read for [`statistics_max`]'s unread row groups.
pub(super) fn batch_max(name: &str, batch: &RecordBatch, column: &str) -> Result<Option<i64>> {
    match batch.column_by_name(column) {
        Some(values) => Ok(arrow::compute::max(&ordinal(values).map_err(wrap(name))?)),
        None => Ok(None),
    }
}

/// The largest watermark value of a parquet file: from the row groups' statistics, reading
/// only the watermark column of the row groups that have none.
pub(super) fn parquet_max<R: parquet::file::reader::ChunkReader + 'static>(
    name: &str,
    reader: R,
    column: &str,
) -> Result<Option<i64>> {
    let fail = |e: String| Error::SourceQuery {
        table: name.to_string(),
        message: format!("file {name}: {e}"),
    };
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(reader).map_err(|e| fail(e.to_string()))?;
    let (mut best, unread) = statistics_max(name, &builder, column)?;
    if unread.is_empty() {
        return Ok(best);
    }
    let mask = ProjectionMask::columns(builder.parquet_schema(), [column]);
    let batches = builder
        .with_row_groups(unread)
        .with_projection(mask)
        .with_batch_size(65_536)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    for batch in batches {
        best = best.max(batch_max(name, &batch.map_err(wrap(name))?, column)?);
    }
    Ok(best)
}

/// A file on a web server, read by byte ranges (a parquet footer, some column chunks).
pub(super) struct Ranged {
    store: Arc<dyn ObjectStore>,
    path: object_store::path::Path,
    size: u64,
}

impl AsyncFileReader for Ranged {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<Bytes>> {
        Box::pin(async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        })
    }

    fn get_metadata<'a>(
        &'a mut self,
        _: Option<&'a parquet::arrow::arrow_reader::ArrowReaderOptions>,
    ) -> futures::future::BoxFuture<
        'a,
        parquet::errors::Result<Arc<parquet::file::metadata::ParquetMetaData>>,
    > {
        Box::pin(async move {
            let size = self.size;
            let metadata = parquet::file::metadata::ParquetMetaDataReader::new()
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        })
    }
}

/// A parquet file on a web server, opened from its footer (a HEAD and range reads).
pub(super) async fn remote_parquet(
    name: &str,
    url: &str,
    store: &Arc<dyn ObjectStore>,
) -> Result<ParquetRecordBatchStreamBuilder<Ranged>> {
    let path = object_store::path::Path::from(name);
    let size = store
        .head(&path)
        .await
        .map_err(|e| Error::lake(format!("{url}{name}"), e))?
        .size;
    let reader = Ranged {
        store: store.clone(),
        path,
        size,
    };
    ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| Error::SourceQuery {
            table: name.to_string(),
            message: format!("file {url}{name}: {e}"),
        })
}

/// [`parquet_max`] of a file on a web server, by ranges: its footer, and only the watermark
/// column of row groups without statistics, never the whole file.
pub(super) async fn remote_parquet_max(
    name: &str,
    url: &str,
    store: &Arc<dyn ObjectStore>,
    column: &str,
) -> Result<Option<i64>> {
    let fail = |e: String| Error::SourceQuery {
        table: name.to_string(),
        message: format!("file {url}{name}: {e}"),
    };
    let builder = remote_parquet(name, url, store).await?;
    let (mut best, unread) = statistics_max(name, &builder, column)?;
    if unread.is_empty() {
        return Ok(best);
    }
    let mask = ProjectionMask::columns(builder.parquet_schema(), [column]);
    let mut batches = builder
        .with_row_groups(unread)
        .with_projection(mask)
        .with_batch_size(65_536)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    while let Some(batch) = batches.next().await {
        best = best.max(batch_max(
            name,
            &batch.map_err(|e| fail(e.to_string()))?,
            column,
        )?);
    }
    Ok(best)
}
