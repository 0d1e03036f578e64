//! The `files:` source: a local folder or an `https://` base URL holding CSV, parquet or
//! newline-delimited JSON files per table (the reference stack's "static files" source).
//!
//! A table's files are `<base>/<Table>/*` or `<base>/<Table>.parquet|csv|json`, or those listed
//! in the pipeline file. The watermark filter is the same `(low, high]` as the SQL sources',
//! applied with Arrow kernels; timestamps become microsecond UTC as from the SQL sources.
//! A remote parquet file's schema and high watermark come from its footer by range reads;
//! only an extract downloads it.

use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::compute::kernels::cmp::{gt, lt_eq};
use arrow::compute::{and, cast, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ArrowReaderBuilder;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};

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

    /// The largest watermark value in the table's CSV and JSON files, which have to be read.
    async fn text_max(&self, table: &TableSpec) -> Result<Option<i64>> {
        let max = Arc::new(std::sync::Mutex::new(None::<i64>));
        let seen = max.clone();
        let cdc = table.cdc_column.clone();
        let files = self
            .files(table)
            .await?
            .into_iter()
            .filter(|f| !is_parquet(f))
            .collect();
        self.scan(table, files, 65_536, None, move |file, batch| {
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
        Ok(value)
    }

    /// Reads every file of the table in a blocking task, calling `each` per batch; with a
    /// window, parquet files skip row groups outside it.
    async fn scan(
        &self,
        table: &TableSpec,
        files: Vec<String>,
        batch_rows: usize,
        window: Option<(Option<i64>, i64)>,
        mut each: impl FnMut(&str, RecordBatch) -> Result<bool> + Send + 'static,
    ) -> Result<()> {
        let mut schema = None;
        let pruning = window.map(|(after, up_to)| Pruning {
            column: table.cdc_column.clone(),
            after,
            up_to,
        });
        for name in files {
            let input = self.input(&name).await?;
            let table_schema = schema.clone();
            let pruning = pruning.clone();
            let (next_schema, keep_going, returned) = tokio::task::spawn_blocking(move || {
                let (file_schema, batches) = open_file(&name, input, batch_rows, pruning.as_ref())?;
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

fn is_parquet(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".parquet")
}

/// The watermark window of an extract, `(after, up_to]` as ordinals (see [`ordinal`]), which
/// lets a parquet read skip the row groups whose statistics put them outside it.
#[derive(Clone)]
struct Pruning {
    column: String,
    after: Option<i64>,
    up_to: i64,
}

/// Opens one file by its extension; returns its schema and its batches.
fn open_file(
    name: &str,
    input: Input,
    batch_rows: usize,
    pruning: Option<&Pruning>,
) -> Result<(SchemaRef, Batches)> {
    let ext = name
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let opened = match input {
        Input::Local(path) => {
            let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
            if ext == "parquet" {
                parquet_batches(name, file, batch_rows, pruning)
            } else {
                text_batches(name, &ext, file, batch_rows)
            }
        }
        Input::Remote(bytes) if ext == "parquet" => {
            parquet_batches(name, bytes, batch_rows, pruning)
        }
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
fn watermark_statistics<T>(
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
fn statistics_max<T>(
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
fn batch_max(name: &str, batch: &RecordBatch, column: &str) -> Result<Option<i64>> {
    match batch.column_by_name(column) {
        Some(values) => Ok(arrow::compute::max(&ordinal(values).map_err(wrap(name))?)),
        None => Ok(None),
    }
}

/// The largest watermark value of a parquet file: from the row groups' statistics, reading
/// only the watermark column of the row groups that have none.
fn parquet_max<R: parquet::file::reader::ChunkReader + 'static>(
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
struct Ranged {
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
async fn remote_parquet(
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
async fn remote_parquet_max(
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
        if let Base::Http { url, store } = &self.base
            && is_parquet(&files[0])
        {
            // The footer has the schema: no need to download the file.
            let builder = remote_parquet(&files[0], url, store).await?;
            return Ok(normalized(builder.schema()));
        }
        let input = self.input(&files[0]).await?;
        let name = files[0].clone();
        tokio::task::spawn_blocking(move || {
            open_file(&name, input, 1, None).map(|(s, _)| normalized(&s))
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    }

    async fn high_watermark(&self, table: &TableSpec, kind: BoundKind) -> Result<Option<Bound>> {
        let mut best: Option<i64> = None;
        let mut text_files = false;
        for name in self.files(table).await? {
            if !is_parquet(&name) {
                text_files = true;
                continue;
            }
            // Parquet: the footer's statistics, not the rows (a big file costs a footer read).
            if let Base::Http { url, store } = &self.base {
                let max = remote_parquet_max(&name, url, store, &table.cdc_column).await?;
                best = best.max(max);
                continue;
            }
            let input = self.input(&name).await?;
            let cdc = table.cdc_column.clone();
            let max = tokio::task::spawn_blocking(move || match input {
                Input::Local(path) => {
                    let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
                    parquet_max(&name, file, &cdc)
                }
                Input::Remote(bytes) => parquet_max(&name, bytes, &cdc),
            })
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
            best = best.max(max);
        }
        if text_files {
            best = best.max(self.text_max(table).await?);
        }
        Ok(best.and_then(|v| bound_from_ordinal(kind, v)))
    }

    async fn extract(
        &self,
        table: &TableSpec,
        schema: SchemaRef,
        window: Window,
        batch_rows: usize,
    ) -> Result<BatchStream> {
        let this = self.clone();
        let name = table.name.clone();
        let table = table.clone();
        Ok(super::spawn_reader(&name, move |sender| async move {
            let cdc = table.cdc_column.clone();
            let high = bound_ordinal(&window.high);
            let low = window.low.as_ref().map(bound_ordinal);
            let files = this.files(&table).await?;
            this.scan(
                &table,
                files,
                batch_rows,
                Some((low, high)),
                move |file, batch| {
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
                },
            )
            .await
        }))
    }
}

/// Projects a batch onto the schema the extract promised (the first file's, normalized).
fn batch_with_schema(file: &str, batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema() == *schema {
        return Ok(batch);
    }
    conform(file, batch, schema)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::TimestampNanosecondArray;
    use arrow::datatypes::TimeUnit;
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::{EnabledStatistics, WriterProperties};

    const SECOND_NS: i64 = 1_000_000_000;

    /// 100 rows in row groups of 10, `at` = id seconds (nanoseconds, no zone); every 7th
    /// value null, and statistics as asked.
    fn file(statistics: EnabledStatistics) -> Bytes {
        let ids: Vec<i64> = (0..100).collect();
        let at: Vec<Option<i64>> = ids
            .iter()
            .map(|i| (i % 7 != 3).then_some(i * SECOND_NS))
            .collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("at", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(TimestampNanosecondArray::from(at)),
            ],
        )
        .unwrap();
        let properties = WriterProperties::builder()
            .set_max_row_group_row_count(Some(10))
            .set_statistics_enabled(statistics)
            .build();
        let mut out = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut out, schema, Some(properties)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        Bytes::from(out)
    }

    fn micros(second: i64) -> i64 {
        second * 1_000_000
    }

    fn ids_read(bytes: Bytes, pruning: Option<&Pruning>) -> Vec<i64> {
        let (_, batches) = parquet_batches("f.parquet", bytes, 1_000, pruning).unwrap();
        batches
            .flat_map(|b| {
                let b = b.unwrap();
                let ids = b.column(0).as_primitive::<arrow::datatypes::Int64Type>();
                ids.values().to_vec()
            })
            .collect()
    }

    #[test]
    fn the_largest_watermark_comes_from_statistics_or_the_column_alone() {
        // 99 % 7 == 1, so the largest value is 99 s, in microseconds like every ordinal.
        for statistics in [
            EnabledStatistics::Chunk,
            EnabledStatistics::Page,
            EnabledStatistics::None,
        ] {
            let max = parquet_max("f.parquet", file(statistics), "at").unwrap();
            assert_eq!(max, Some(micros(99)), "{statistics:?}");
        }
        let err = parquet_max("f.parquet", file(EnabledStatistics::Chunk), "missing")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("f.parquet") && err.contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn an_extract_reads_only_the_row_groups_its_window_can_hold() {
        let window = Pruning {
            column: "at".into(),
            after: Some(micros(55)),
            up_to: micros(85),
        };
        // Row groups 50-59 to 80-89 overlap (55 s, 85 s].
        let read = ids_read(file(EnabledStatistics::Chunk), Some(&window));
        assert_eq!(read, (50..90).collect::<Vec<_>>());
        // The first window (no lower bound) stops at its upper one.
        let first = Pruning {
            after: None,
            ..window.clone()
        };
        let read = ids_read(file(EnabledStatistics::Chunk), Some(&first));
        assert_eq!(read, (0..90).collect::<Vec<_>>());
        // Without statistics nothing can be skipped.
        let read = ids_read(file(EnabledStatistics::None), Some(&window));
        assert_eq!(read.len(), 100);
        assert_eq!(ids_read(file(EnabledStatistics::Chunk), None).len(), 100);
    }
}
