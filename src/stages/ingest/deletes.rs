//! Hard deletes (`deletes = "detect"`): the source's keys now, compared with the keys it held
//! at the last ingest, and a delete marker for every key that vanished.
//!
//! The last ingest's keys are kept in `bronze/_keys/<Table>.parquet` in ascending binary
//! order, as the source lists them; the two lists are merged side by side a batch at a time,
//! so memory stays flat whatever the table's size. A marker is a bronze row with the key, the
//! detection time as its watermark (and sequence) value, NULL elsewhere, and
//! `_change_type = 'delete'`. The markers are durable before the new key list replaces the
//! old one: after a crash in between, the same keys are found again, and a second delete of a
//! deleted key changes nothing in gold.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt32Array, new_null_array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::ScalarValue;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::config::TableSpec;
use crate::error::{Error, Result};
use crate::lake::layout::silver_columns::CHANGE_TYPE;
use crate::lake::{Lake, layout};
use crate::source::{BatchStream, Source};
use crate::window::Bound;

/// What one detection found.
#[derive(Debug, Default)]
pub(super) struct Detected {
    /// Keys that vanished since the last ingest (markers written).
    pub deleted: u64,
    /// The markers file, when there were any.
    pub file: Option<String>,
}

/// Compares the source's keys with the last ingest's, writes markers with sequence value
/// `at` for the vanished ones, and keeps the new key list.
pub(super) async fn detect(
    source: &dyn Source,
    lake: &Lake,
    table: &TableSpec,
    schema: &SchemaRef,
    at: Bound,
    batch_rows: usize,
) -> Result<Detected> {
    let key_columns: Vec<usize> = table
        .keys
        .iter()
        .map(|k| schema.index_of(k).map_err(|e| Error::arrow(&table.name, e)))
        .collect::<Result<_>>()?;
    let key_schema = Arc::new(
        schema
            .project(&key_columns)
            .map_err(|e| Error::arrow(&table.name, e))?,
    );
    let arrow_err = |e| Error::arrow(format!("table {}: comparing keys", table.name), e);
    let converter = RowConverter::new(
        key_schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )
    .map_err(arrow_err)?;
    let snapshot = layout::keys(&table.name);
    let mut old = Side::new(previous_keys(lake, &snapshot, &key_schema).await?);
    let mut now = Side::new(Some(
        source.keys(table, key_schema.clone(), batch_rows).await?,
    ));
    let first = old.stream.is_none();
    let next = layout::keys_next(&table.name);
    let mut kept = writer(lake, &next, &key_schema)?;
    let mut markers: Option<AsyncArrowWriter<_>> = None;
    let mut detected = Detected::default();
    let marker_file = layout::delete_markers(&table.name, &at.file_token());
    let mut write_markers = async |batch: &RecordBatch, gone: Vec<u32>| -> Result<()> {
        if gone.is_empty() {
            return Ok(());
        }
        detected.deleted += gone.len() as u64;
        let rows = marker_rows(table, schema, batch, &UInt32Array::from(gone), &at)?;
        if markers.is_none() {
            let name = marker_file.rsplit('/').next().unwrap_or(&marker_file);
            crate::lake::discovery::before_write(lake, &table.name, name).await?;
            markers = Some(writer(lake, &marker_file, &rows.schema())?);
        }
        if let Some(w) = markers.as_mut() {
            w.write(&rows).await.map_err(parquet_err(&marker_file))?;
        }
        Ok(())
    };
    loop {
        if let Some(batch) = now.fill(&converter, &table.name).await? {
            kept.write(&batch).await.map_err(parquet_err(&next))?;
        }
        if let Some((batch, gone)) = old.fill_or_flush(&converter, &table.name).await? {
            write_markers(&batch, gone).await?;
            continue;
        }
        use std::cmp::Ordering;
        let step = match (old.row(), now.row()) {
            (None, None) => None,
            (None, Some(_)) => Some(Ordering::Greater),
            (Some(_), None) => Some(Ordering::Less),
            (Some(o), Some(n)) => Some(o.cmp(&n)),
        };
        match step {
            None => break,
            // A key only the last list has: it vanished.
            Some(Ordering::Less) => old.vanish(),
            Some(Ordering::Equal) => {
                old.pos += 1;
                now.pos += 1;
            }
            // A key only the source has now: a new one.
            Some(Ordering::Greater) => now.pos += 1,
        }
    }
    if let Some((batch, gone)) = old.flush() {
        write_markers(&batch, gone).await?;
    }
    if let Some(mut w) = markers {
        w.finish().await.map_err(parquet_err(&marker_file))?;
        lake.make_durable(&marker_file).await?;
        detected.file = Some(marker_file);
    }
    kept.finish().await.map_err(parquet_err(&next))?;
    lake.make_durable(&next).await?;
    lake.store()
        .rename(&Path::from(next.as_str()), &Path::from(snapshot.as_str()))
        .await
        .map_err(|e| Error::lake(&snapshot, e))?;
    lake.make_durable(&snapshot).await?;
    if first {
        tracing::info!("Kept the source's keys; deletes are detected from the next ingest on.");
    }
    Ok(detected)
}

fn parquet_err(file: &str) -> impl Fn(parquet::errors::ParquetError) -> Error + '_ {
    move |source| Error::Parquet {
        file: file.to_string(),
        source,
    }
}

fn writer(
    lake: &Lake,
    path: &str,
    schema: &SchemaRef,
) -> Result<AsyncArrowWriter<object_store::buffered::BufWriter>> {
    AsyncArrowWriter::try_new(
        lake.parquet_sink(path),
        schema.clone(),
        Some(crate::lake::parquet_properties(schema).build()),
    )
    .map_err(parquet_err(path))
}

/// The last ingest's key list as a stream, `None` before the first detection. The file is
/// read whole (sorted keys compress to a few bytes each) and decoded a batch at a time.
async fn previous_keys(lake: &Lake, path: &str, schema: &SchemaRef) -> Result<Option<BatchStream>> {
    let Some(bytes) = lake.get_opt(path).await? else {
        return Ok(None);
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(parquet_err(path))?;
    let stored = builder.schema().clone();
    let same = stored.fields().len() == schema.fields().len()
        && stored
            .fields()
            .iter()
            .zip(schema.fields())
            .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
    if !same {
        return Err(Error::WatermarkUnreadable {
            file: path.to_string(),
            reason: format!(
                "it holds keys ({}) other than the table's ({}); move it aside to start detecting deletes afresh",
                stored
                    .fields()
                    .iter()
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                schema
                    .fields()
                    .iter()
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        });
    }
    let owned = path.to_string();
    let reader = builder.build().map_err(parquet_err(path))?;
    let batches = reader.map(move |b| b.map_err(|e| Error::arrow(format!("key list {owned}"), e)));
    Ok(Some(Box::pin(futures::stream::iter(batches))))
}

/// One of the two sorted key lists, a batch at a time.
struct Side {
    stream: Option<BatchStream>,
    batch: Option<(RecordBatch, Rows)>,
    pos: usize,
    /// Positions of the current batch whose keys vanished.
    gone: Vec<u32>,
    /// The last key of the batch before, to check the order across batches.
    last: Option<arrow::row::OwnedRow>,
}

impl Side {
    fn new(stream: Option<BatchStream>) -> Self {
        Side {
            stream,
            batch: None,
            pos: 0,
            gone: Vec::new(),
            last: None,
        }
    }

    fn row(&self) -> Option<arrow::row::Row<'_>> {
        self.batch
            .as_ref()
            .filter(|(_, rows)| self.pos < rows.num_rows())
            .map(|(_, rows)| rows.row(self.pos))
    }

    fn vanish(&mut self) {
        self.gone.push(self.pos as u32);
        self.pos += 1;
    }

    /// Loads the next batch when the current one is used up; returns it when loaded.
    async fn fill(&mut self, converter: &RowConverter, table: &str) -> Result<Option<RecordBatch>> {
        if self.row().is_some() {
            return Ok(None);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Ok(None);
        };
        loop {
            let Some(batch) = stream.next().await.transpose()? else {
                self.stream = None;
                self.batch = None;
                return Ok(None);
            };
            if batch.num_rows() == 0 {
                continue;
            }
            let rows = converter
                .convert_columns(batch.columns())
                .map_err(|e| Error::arrow(table, e))?;
            let ascending = (1..rows.num_rows()).all(|i| rows.row(i - 1) < rows.row(i))
                && self.last.as_ref().is_none_or(|l| l.row() < rows.row(0));
            if !ascending {
                return Err(Error::SourceQuery {
                    table: table.to_string(),
                    message: "its keys are not listed in strictly ascending order (a key repeats, \
                              or the source orders text by a collation); deletes cannot be detected"
                        .to_string(),
                });
            }
            self.last = Some(rows.row(rows.num_rows() - 1).owned());
            self.batch = Some((batch.clone(), rows));
            self.pos = 0;
            return Ok(Some(batch));
        }
    }

    /// The used-up batch and its vanished positions, before the next batch is loaded.
    async fn fill_or_flush(
        &mut self,
        converter: &RowConverter,
        table: &str,
    ) -> Result<Option<(RecordBatch, Vec<u32>)>> {
        if self.row().is_some() {
            return Ok(None);
        }
        if let Some(flushed) = self.flush() {
            return Ok(Some(flushed));
        }
        self.fill(converter, table).await?;
        Ok(None)
    }

    fn flush(&mut self) -> Option<(RecordBatch, Vec<u32>)> {
        let (batch, _) = self.batch.take()?;
        Some((batch, std::mem::take(&mut self.gone)))
    }
}

/// Marker rows for the keys at `gone` of `keys`: the table's bronze columns, the keys set,
/// the watermark and sequence columns at `at`, NULL elsewhere, and `_change_type`.
fn marker_rows(
    table: &TableSpec,
    schema: &SchemaRef,
    keys: &RecordBatch,
    gone: &UInt32Array,
    at: &Bound,
) -> Result<RecordBatch> {
    let err = |e| Error::arrow(format!("table {}: writing delete markers", table.name), e);
    let n = gone.len();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len() + 1);
    for field in schema.fields() {
        let column = if let Some(key) = keys.column_by_name(field.name()) {
            arrow::compute::take(key, gone, None).map_err(err)?
        } else if *field.name() == table.cdc_column || field.name() == table.sequence_by() {
            let value = match *at {
                Bound::Integer(v) => ScalarValue::Int64(Some(v)),
                Bound::Date(d) => {
                    ScalarValue::Date32(Some(crate::source::columns::days_since_epoch(d)))
                }
                Bound::Timestamp(us) => ScalarValue::TimestampMicrosecond(Some(us), None),
            };
            let array = value.to_array_of_size(n).map_err(|e| {
                Error::arrow(
                    &table.name,
                    arrow::error::ArrowError::ComputeError(e.to_string()),
                )
            })?;
            arrow::compute::cast(&array, field.data_type()).map_err(err)?
        } else {
            new_null_array(field.data_type(), n)
        };
        columns.push(column);
    }
    columns.push(Arc::new(StringArray::from(vec!["delete"; n])));
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(CHANGE_TYPE, DataType::Utf8, true));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(err)
}
