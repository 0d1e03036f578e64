//! The `files:` source: a local folder or an `https://` base URL holding CSV, parquet or
//! newline-delimited JSON files per table (the reference stack's "static files" source).
//!
//! A table's files are `<base>/<Table>/*` or `<base>/<Table>.parquet|csv|json`, or those listed
//! in the pipeline file. The watermark filter is the same `(low, high]` as the SQL sources',
//! applied with Arrow kernels; timestamps become microsecond UTC as from the SQL sources.
//! A remote parquet file's schema and high watermark come from its footer by range reads;
//! only an extract downloads it.

mod parquet_file;
mod text;

use parquet_file::*;
use text::*;

use std::fs::File;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::compute::kernels::cmp::{gt, lt_eq};
use arrow::compute::{and, filter_record_batch};
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use object_store::{ObjectStore, ObjectStoreExt};

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

    async fn snapshot(
        &self,
        table: &TableSpec,
        schema: SchemaRef,
        batch_rows: usize,
    ) -> Result<BatchStream> {
        self.read_all(table, schema, batch_rows).await
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

impl FilesSource {
    /// Every row of the table's files, in file order (a snapshot table).
    async fn read_all(
        &self,
        table: &TableSpec,
        schema: SchemaRef,
        batch_rows: usize,
    ) -> Result<BatchStream> {
        let this = self.clone();
        let name = table.name.clone();
        let table = table.clone();
        Ok(super::spawn_reader(&name, move |sender| async move {
            let files = this.files(&table).await?;
            this.scan(&table, files, batch_rows, None, move |file, batch| {
                let batch = batch_with_schema(file, batch, &schema)?;
                Ok(sender.blocking_send(Ok(batch)).is_ok())
            })
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
    use arrow::array::AsArray;
    use arrow::array::TimestampNanosecondArray;
    use arrow::datatypes::TimeUnit;
    use arrow::datatypes::{DataType, Field, Schema};
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
