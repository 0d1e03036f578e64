//! The `files:` source: a local folder or an `https://` base URL holding CSV, parquet or
//! newline-delimited JSON files per table (the reference stack's "static files" source).
//!
//! A table's files are `<base>/<Table>/*` or `<base>/<Table>.parquet|csv|json`, or those listed
//! in the pipeline file. The watermark filter is the same `(low, high]` as the SQL sources',
//! applied with Arrow kernels; timestamps become microsecond UTC as from the SQL sources.

use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::compute::kernels::cmp::{gt, lt_eq};
use arrow::compute::{and, cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::columns;
use super::{BatchStream, Source};
use crate::config::TableSpec;
use crate::error::{Error, Result};
use crate::window::{Bound, BoundKind, Window};

const EXTENSIONS: [&str; 4] = ["parquet", "csv", "json", "jsonl"];

#[derive(Clone)]
enum Base {
    Local(PathBuf),
    Http {
        url: String,
        store: Arc<dyn ObjectStore>,
    },
}

/// A folder or web location of table files.
#[derive(Clone)]
pub struct FilesSource {
    base: Base,
}

/// One table file's content, ready for a synchronous reader.
enum Input {
    Local(PathBuf),
    Remote(Bytes),
}

type Batches = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

impl FilesSource {
    /// `location` is a folder path or an `https://` / `http://` base URL.
    pub fn open(location: &str) -> Result<Self> {
        let base = if location.starts_with("https://") || location.starts_with("http://") {
            let url = format!("{}/", location.trim_end_matches('/'));
            let store = object_store::http::HttpBuilder::new()
                .with_url(&url)
                .with_client_options(
                    object_store::ClientOptions::new()
                        .with_allow_http(location.starts_with("http://")),
                )
                .build()
                .map_err(|e| Error::SourceUnreachable {
                    url: format!("files:{location}"),
                    reason: e.to_string(),
                })?;
            Base::Http {
                url,
                store: Arc::new(store),
            }
        } else {
            let path = PathBuf::from(location);
            if !path.is_dir() {
                return Err(Error::SourceUnreachable {
                    url: format!("files:{location}"),
                    reason: "no such folder".to_string(),
                });
            }
            Base::Local(path)
        };
        Ok(FilesSource { base })
    }

    /// The table's file names relative to the base, in read order.
    async fn files(&self, table: &TableSpec) -> Result<Vec<String>> {
        if !table.files.is_empty() {
            return Ok(table.files.clone());
        }
        let known = |name: &str| {
            EXTENSIONS
                .iter()
                .any(|ext| name.to_ascii_lowercase().ends_with(&format!(".{ext}")))
        };
        let found = match &self.base {
            Base::Local(dir) => {
                let folder = dir.join(&table.name);
                if folder.is_dir() {
                    let mut names = Vec::new();
                    for entry in std::fs::read_dir(&folder).map_err(|e| Error::io(&folder, e))? {
                        let entry = entry.map_err(|e| Error::io(&folder, e))?;
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if known(&name) && entry.path().is_file() {
                            names.push(format!("{}/{name}", table.name));
                        }
                    }
                    names.sort();
                    names
                } else {
                    EXTENSIONS
                        .iter()
                        .map(|ext| format!("{}.{ext}", table.name))
                        .find(|name| dir.join(name).is_file())
                        .into_iter()
                        .collect()
                }
            }
            Base::Http { store, .. } => {
                let mut found = Vec::new();
                for ext in EXTENSIONS {
                    let name = format!("{}.{ext}", table.name);
                    if store
                        .head(&object_store::path::Path::from(name.as_str()))
                        .await
                        .is_ok()
                    {
                        found.push(name);
                        break;
                    }
                }
                found
            }
        };
        if found.is_empty() {
            return Err(Error::UnknownTable {
                table: table.name.clone(),
                source_url: self.describe(),
            });
        }
        Ok(found)
    }

    async fn input(&self, name: &str) -> Result<Input> {
        match &self.base {
            Base::Local(dir) => Ok(Input::Local(dir.join(name))),
            Base::Http { url, store } => {
                let path = object_store::path::Path::from(name);
                let fetch = async { store.get(&path).await?.bytes().await };
                fetch
                    .await
                    .map(Input::Remote)
                    .map_err(|e| Error::lake(format!("{url}{name}"), e))
            }
        }
    }

    /// Reads every file of the table in a blocking task, calling `each` per batch.
    async fn scan(
        &self,
        table: &TableSpec,
        batch_rows: usize,
        mut each: impl FnMut(&str, RecordBatch) -> Result<bool> + Send + 'static,
    ) -> Result<()> {
        let files = self.files(table).await?;
        let mut schema = None;
        for name in files {
            let input = self.input(&name).await?;
            let table_schema = schema.clone();
            let (next_schema, keep_going, returned) = tokio::task::spawn_blocking(move || {
                let (file_schema, batches) = open_file(&name, input, batch_rows)?;
                let target = table_schema.unwrap_or_else(|| normalized(&file_schema));
                for batch in batches {
                    let batch = conform(&name, batch?, &target)?;
                    if !each(&name, batch)? {
                        return Ok::<_, Error>((target, false, each));
                    }
                }
                Ok((target, true, each))
            })
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
            each = returned;
            schema = Some(next_schema);
            if !keep_going {
                break;
            }
        }
        Ok(())
    }
}

/// Opens one file by its extension; returns its schema and its batches.
fn open_file(name: &str, input: Input, batch_rows: usize) -> Result<(SchemaRef, Batches)> {
    let ext = name
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let opened = match input {
        Input::Local(path) => {
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            if ext == "parquet" {
                parquet_batches(name, file, batch_rows)
            } else {
                text_batches(name, &ext, file, batch_rows)
            }
        }
        Input::Remote(bytes) if ext == "parquet" => parquet_batches(name, bytes, batch_rows),
        Input::Remote(bytes) => text_batches(name, &ext, Cursor::new(bytes), batch_rows),
    };
    opened.map_err(|e| Error::SourceQuery {
        table: name.to_string(),
        message: format!("file {name}: {e}"),
    })
}

fn wrap(file: &str) -> impl Fn(arrow::error::ArrowError) -> Error + Send + 'static {
    let file = file.to_string();
    move |e| Error::arrow(format!("file {file}"), e)
}

fn parquet_batches<R: parquet::file::reader::ChunkReader + 'static>(
    name: &str,
    reader: R,
    batch_rows: usize,
) -> Result<(SchemaRef, Batches), String> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(reader).map_err(|e| e.to_string())?;
    let schema = builder.schema().clone();
    let batches = builder
        .with_batch_size(batch_rows)
        .build()
        .map_err(|e| e.to_string())?;
    let wrap = wrap(name);
    Ok((schema, Box::new(batches.map(move |b| b.map_err(&wrap)))))
}

fn text_batches<R: Read + Seek + Send + 'static>(
    name: &str,
    ext: &str,
    mut reader: R,
    batch_rows: usize,
) -> Result<(SchemaRef, Batches), String> {
    let wrap = wrap(name);
    match ext {
        "csv" => {
            let (schema, _) = arrow::csv::reader::Format::default()
                .with_header(true)
                .infer_schema(&mut reader, Some(10_000))
                .map_err(|e| e.to_string())?;
            reader.rewind().map_err(|e| e.to_string())?;
            let schema = Arc::new(schema);
            let batches = arrow::csv::ReaderBuilder::new(schema.clone())
                .with_header(true)
                .with_batch_size(batch_rows)
                .build(reader)
                .map_err(|e| e.to_string())?;
            Ok((schema, Box::new(batches.map(move |b| b.map_err(&wrap)))))
        }
        "json" | "jsonl" => {
            let mut buffered = BufReader::new(reader);
            let (schema, _) =
                arrow::json::reader::infer_json_schema_from_seekable(&mut buffered, Some(10_000))
                    .map_err(|e| e.to_string())?;
            let schema = Arc::new(schema);
            let batches = arrow::json::ReaderBuilder::new(schema.clone())
                .with_batch_size(batch_rows)
                .build(buffered)
                .map_err(|e| e.to_string())?;
            Ok((schema, Box::new(batches.map(move |b| b.map_err(&wrap)))))
        }
        other => Err(format!(
            "unknown file type .{other} (use parquet, csv or json)"
        )),
    }
}

/// The table schema for a file schema: timestamps become microsecond UTC, all nullable.
fn normalized(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                let data_type = match f.data_type() {
                    DataType::Timestamp(_, _) => columns::utc_micros(),
                    DataType::Date64 => DataType::Date32,
                    DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
                    other => other.clone(),
                };
                Field::new(f.name(), data_type, true)
            })
            .collect::<Vec<_>>(),
    ))
}

/// Casts a batch to the table schema, naming the file and column when a value does not fit.
fn conform(file: &str, batch: RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    let columns = target
        .fields()
        .iter()
        .map(|field| {
            let Some(column) = batch.column_by_name(field.name()) else {
                return Ok(arrow::array::new_null_array(
                    field.data_type(),
                    batch.num_rows(),
                ));
            };
            let casted = match (column.data_type(), field.data_type()) {
                (DataType::Timestamp(_, _), DataType::Timestamp(_, _)) => to_utc_micros(column),
                _ => cast(column, field.data_type()),
            }
            .map_err(|e| Error::ValueDoesNotFit {
                table: file.to_string(),
                column: field.name().clone(),
                row: "(cast of the file's column)".to_string(),
                value: column.data_type().to_string(),
                expected: format!("{} ({e})", field.data_type()),
            })?;
            if casted.null_count() > column.null_count() {
                return Err(Error::ValueDoesNotFit {
                    table: file.to_string(),
                    column: field.name().clone(),
                    row: "(some rows)".to_string(),
                    value: column.data_type().to_string(),
                    expected: field.data_type().to_string(),
                });
            }
            Ok(casted)
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    RecordBatch::try_new(target.clone(), columns)
        .map_err(|e| Error::arrow(format!("file {file}"), e))
}

/// A timestamp column as microsecond UTC instants. Zone-less values are read as UTC, the
/// same rule as for SQL `datetime2`; zoned values are instants already, so only the unit
/// changes (which needs no time-zone database).
fn to_utc_micros(column: &ArrayRef) -> Result<ArrayRef, arrow::error::ArrowError> {
    let DataType::Timestamp(_, tz) = column.data_type() else {
        return cast(column, &columns::utc_micros());
    };
    let micros = cast(
        column,
        &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, tz.clone()),
    )?;
    Ok(Arc::new(
        micros
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
            .clone()
            .with_timezone("UTC"),
    ))
}

/// The watermark column as comparable i64s (integers, days, or microseconds).
fn ordinal(column: &ArrayRef) -> Result<Int64Array, arrow::error::ArrowError> {
    let as_int = match column.data_type() {
        DataType::Date32 => cast(&cast(column, &DataType::Int32)?, &DataType::Int64)?,
        DataType::Timestamp(_, _) => {
            cast(&cast(column, &columns::utc_micros())?, &DataType::Int64)?
        }
        _ => cast(column, &DataType::Int64)?,
    };
    Ok(as_int
        .as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .unwrap_or_else(|| Int64Array::from(Vec::<i64>::new())))
}

fn bound_ordinal(bound: &Bound) -> i64 {
    match bound {
        Bound::Integer(v) => *v,
        Bound::Date(d) => i64::from(columns::days_since_epoch(*d)),
        Bound::Timestamp(us) => *us,
    }
}

fn bound_from_ordinal(kind: BoundKind, value: i64) -> Option<Bound> {
    Some(match kind {
        BoundKind::Integer => Bound::Integer(value),
        BoundKind::Date => Bound::Date(
            chrono::DateTime::from_timestamp(value.checked_mul(86_400)?, 0)?.date_naive(),
        ),
        BoundKind::Timestamp => Bound::Timestamp(value),
    })
}

#[async_trait::async_trait]
impl Source for FilesSource {
    fn describe(&self) -> String {
        match &self.base {
            Base::Local(p) => format!("files:{}", p.display()),
            Base::Http { url, .. } => format!("files:{url}"),
        }
    }

    async fn schema(&self, table: &TableSpec) -> Result<SchemaRef> {
        let files = self.files(table).await?;
        let input = self.input(&files[0]).await?;
        let name = files[0].clone();
        tokio::task::spawn_blocking(move || open_file(&name, input, 1).map(|(s, _)| normalized(&s)))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    }

    async fn high_watermark(&self, table: &TableSpec, kind: BoundKind) -> Result<Option<Bound>> {
        let max = Arc::new(std::sync::Mutex::new(None::<i64>));
        let seen = max.clone();
        let cdc = table.cdc_column.clone();
        self.scan(table, 65_536, move |file, batch| {
            let column = batch
                .column_by_name(&cdc)
                .ok_or_else(|| Error::SourceQuery {
                    table: file.to_string(),
                    message: format!("no column {cdc}"),
                })?;
            let values = ordinal(column)
                .map_err(|e| Error::arrow(format!("file {file}, column {cdc}"), e))?;
            if let Some(m) = arrow::compute::max(&values) {
                let mut guard = seen.lock().map_err(|e| Error::Task(e.to_string()))?;
                *guard = Some(guard.map_or(m, |g: i64| g.max(m)));
            }
            Ok(true)
        })
        .await?;
        let value = *max.lock().map_err(|e| Error::Task(e.to_string()))?;
        Ok(value.and_then(|v| bound_from_ordinal(kind, v)))
    }

    async fn extract(
        &self,
        table: &TableSpec,
        schema: SchemaRef,
        window: Window,
        batch_rows: usize,
    ) -> Result<BatchStream> {
        let (tx, stream) = super::batch_channel();
        let this = self.clone();
        let table = table.clone();
        tokio::spawn(async move {
            let sender = tx.clone();
            let cdc = table.cdc_column.clone();
            let high = bound_ordinal(&window.high);
            let low = window.low.as_ref().map(bound_ordinal);
            let result = this
                .scan(&table, batch_rows, move |file, batch| {
                    let batch = batch_with_schema(file, batch, &schema)?;
                    let values = batch
                        .column_by_name(&cdc)
                        .map(ordinal)
                        .transpose()
                        .map_err(|e| Error::arrow(format!("file {file}"), e))?
                        .ok_or_else(|| Error::SourceQuery {
                            table: file.to_string(),
                            message: format!("no column {cdc}"),
                        })?;
                    let mut keep = lt_eq(&values, &Int64Array::new_scalar(high))
                        .map_err(|e| Error::arrow(file, e))?;
                    if let Some(low) = low {
                        let above = gt(&values, &Int64Array::new_scalar(low))
                            .map_err(|e| Error::arrow(file, e))?;
                        keep = and(&keep, &above).map_err(|e| Error::arrow(file, e))?;
                    }
                    let kept =
                        filter_record_batch(&batch, &keep).map_err(|e| Error::arrow(file, e))?;
                    if kept.num_rows() == 0 {
                        return Ok(true);
                    }
                    Ok(sender.blocking_send(Ok(kept)).is_ok())
                })
                .await;
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(stream)
    }
}

/// Projects a batch onto the schema the extract promised (the first file's, normalized).
fn batch_with_schema(file: &str, batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema() == *schema {
        return Ok(batch);
    }
    conform(file, batch, schema)
}
