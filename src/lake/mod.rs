//! The lake: one object store (local folder, Azure Blob / ADLS Gen2, Azurite) and the layout
//! of DESIGN.md §5. All lake I/O goes through here.

pub(crate) mod areas;
pub(crate) mod azurite;
pub(crate) mod conflict;
pub mod discovery;
pub mod events;
pub mod layout;
pub(crate) mod lease;
pub mod local;
pub mod maintain;
mod opened;
pub mod stats;
pub(crate) mod transactions;
pub mod watermark;
pub(crate) mod writers;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};

use crate::error::{Error, Result};

/// A Delta table as a DataFusion table provider, with its object store registered in the
/// session so the scan can read the files. `name` names the table in errors.
pub async fn delta_provider(
    table: &deltalake::DeltaTable,
    ctx: &datafusion::prelude::SessionContext,
    name: &str,
) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| Error::Delta {
            table: name.to_string(),
            source: e,
        })?;
    table.table_provider().await.map_err(|e| Error::DataFusion {
        table: name.to_string(),
        file: name.to_string(),
        context: "reading the Delta table".to_string(),
        source: e,
    })
}

/// Rows per parquet row group in every file the lake writes. A writer holds the row group it
/// is building, encoded, until the group is complete, and then copies it whole into a buffer
/// that grows by doubling: parquet's default of 1M rows made that grow with the table. 128k
/// rows bound it at no measured cost in time and are still large enough for efficient scans
/// (DuckDB writes 122,880-row groups); see docs/decisions/002-speed-and-memory.md, "Parquet".
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// The configuration tunelake creates its Delta tables with: a checkpoint every 10 commits
/// (delta-rs writes one after each 10th, against its default of 100). Every bronze file's
/// silver commit and every gold build looks up the table's application transactions, and
/// each lookup replays every JSON commit since the last checkpoint (decision 002, "Delta
/// log"). The JSON commits
/// are kept past the 30 days after which delta-rs would remove those a checkpoint covers:
/// gold finds what changed in silver since its last run by reading silver at that version,
/// however long ago the run was.
pub const CREATED_WITH: [(&str, Option<&str>); 2] = [
    ("delta.checkpointInterval", Some("10")),
    ("delta.enableExpiredLogCleanup", Some("false")),
];

/// Parquet settings for every file the lake writes: snappy; dictionaries for text columns;
/// DELTA_BINARY_PACKED, not compressed, for integer, date and timestamp columns; row groups
/// of [`ROW_GROUP_ROWS`].
///
/// Ids, amounts and timestamps are mostly distinct, so interning them into dictionaries was the
/// largest single cost of writing and did not make them smaller. Plain, they were 8 bytes a
/// value for snappy to compress (its largest cost in the profile). Delta-packed, ascending ids
/// and timestamps take a few bits a value, which halved the lake and sped up the whole run
/// (decision 002, "Parquet"). DuckDB, Polars and Spark read the files back (Spark's vectorized
/// reader has the encoding since 3.3).
pub fn parquet_properties(
    schema: &arrow::datatypes::Schema,
) -> parquet::file::properties::WriterPropertiesBuilder {
    use arrow::datatypes::DataType;
    use parquet::file::properties::EnabledStatistics;
    use parquet::schema::types::ColumnPath;
    schema.fields().iter().fold(
        parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .set_created_by(format!("tunelake {}", env!("CARGO_PKG_VERSION")))
            .set_dictionary_enabled(false)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS)),
        |b, f| match f.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                let path = || ColumnPath::from(f.name().as_str());
                let b = b.set_column_dictionary_enabled(path(), true);
                // Lineage and rescue text (`_source_file`, `_rescued_data`) is never filtered
                // on, and its min/max cost two comparisons of a long value per row.
                if f.name().starts_with('_') {
                    b.set_column_statistics_enabled(path(), EnabledStatistics::None)
                } else {
                    b
                }
            }
            DataType::Int32 | DataType::Int64 | DataType::Date32 | DataType::Timestamp(_, _) => {
                let b = b.set_column_encoding(
                    ColumnPath::from(f.name().as_str()),
                    parquet::basic::Encoding::DELTA_BINARY_PACKED,
                );
                // Delta-packed values are what snappy cannot shrink: compressing them and back
                // was CPU for nothing.
                b.set_column_compression(
                    ColumnPath::from(f.name().as_str()),
                    parquet::basic::Compression::UNCOMPRESSED,
                )
            }
            // Measures are often few distinct values (durations in minutes to two decimals):
            // a dictionary stores them in a few bits each, where plain values needed snappy
            // over 8 bytes a row. Many distinct values fall back to plain past the
            // dictionary's page.
            DataType::Float32 | DataType::Float64 => {
                b.set_column_dictionary_enabled(ColumnPath::from(f.name().as_str()), true)
            }
            _ => b,
        },
    )
}

/// A DataFusion session with delta-rs's planner installed, so that a query over the lake can
/// be handed to a Delta write as its input plan and stream into the table's files.
pub fn delta_session(
    config: datafusion::prelude::SessionConfig,
) -> datafusion::prelude::SessionContext {
    delta_session_within(config, None)
}

/// [`delta_session`] whose operators hold at most `memory` bytes: sorts and aggregations
/// spill to the temporary directory past it (a join's build side cannot, and fails instead).
pub fn delta_session_within(
    config: datafusion::prelude::SessionConfig,
    memory: Option<usize>,
) -> datafusion::prelude::SessionContext {
    let mut builder = datafusion::execution::SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_query_planner(deltalake::delta_datafusion::planner::DeltaPlanner::new());
    if let Some(bytes) = memory {
        let pool = datafusion::execution::memory_pool::FairSpillPool::new(bytes);
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(pool))
            .build_arc();
        match runtime {
            Ok(runtime) => builder = builder.with_runtime_env(runtime),
            Err(e) => {
                tracing::warn!(error = %e, "No memory limit: the runtime could not be built.")
            }
        }
    }
    datafusion::prelude::SessionContext::new_with_state(builder.build())
}

/// The query `df` with string views and large strings cast to plain strings, as Delta tables
/// store them (see [`storable`]), keeping only `columns` when given.
pub fn storable_df(
    df: datafusion::prelude::DataFrame,
    columns: Option<&[String]>,
) -> datafusion::error::Result<datafusion::prelude::DataFrame> {
    let schema = df.schema().as_arrow().clone();
    let fields: Vec<&arrow::datatypes::Field> = match columns {
        Some(names) => names
            .iter()
            .filter_map(|c| schema.field_with_name(c).ok())
            .collect(),
        None => schema.fields().iter().map(|f| f.as_ref()).collect(),
    };
    let select: Vec<datafusion::prelude::Expr> = fields
        .into_iter()
        .map(|f| {
            let column = datafusion::prelude::col(datafusion::common::Column::from_name(f.name()));
            let stored = stored_type(f.data_type());
            if &stored == f.data_type() {
                column
            } else {
                datafusion::logical_expr::cast(column, stored)
            }
            .alias(f.name())
        })
        .collect();
    df.select(select)
}

/// The type a column is stored as: string views and large strings as plain strings, which
/// every Delta reader takes; anything else as it is.
fn stored_type(data_type: &arrow::datatypes::DataType) -> arrow::datatypes::DataType {
    use arrow::datatypes::DataType;
    match data_type {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        other => other.clone(),
    }
}

/// A query result column as 64-bit integers, whatever integer type the engine chose (counts
/// and sums come back as Int64 or UInt64).
pub fn int_column(array: &arrow::array::ArrayRef) -> Option<arrow::array::Int64Array> {
    use arrow::array::AsArray;
    let cast = arrow::compute::cast(array, &arrow::datatypes::DataType::Int64).ok()?;
    Some(cast.as_primitive::<arrow::datatypes::Int64Type>().clone())
}

/// The values of a column without NULLs whose type orders as its `i64` values (integers,
/// dates, timestamps), for sorting and matching rows as numbers; `None` for other types, a
/// NULL, or an unsigned value past `i64` (it casts to NULL).
pub fn ordered_i64(array: &arrow::array::ArrayRef) -> Option<arrow::array::Int64Array> {
    use arrow::array::Array;
    use arrow::datatypes::DataType;
    let t = array.data_type();
    let integer_like = t.is_integer()
        || matches!(
            t,
            DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
        );
    if !integer_like || array.null_count() > 0 {
        return None;
    }
    int_column(array).filter(|values| values.null_count() == 0)
}

/// The smallest and largest value of `column` in `df`; `None` when it has no non-NULL value.
pub async fn bounds(
    df: datafusion::prelude::DataFrame,
    column: &str,
) -> datafusion::error::Result<
    Option<(
        datafusion::common::ScalarValue,
        datafusion::common::ScalarValue,
    )>,
> {
    use datafusion::common::{Column, ScalarValue};
    use datafusion::functions_aggregate::min_max::{max, min};
    let c = datafusion::prelude::Expr::Column(Column::new_unqualified(column));
    let batches = df
        .aggregate(vec![], vec![min(c.clone()), max(c)])?
        .collect()
        .await?;
    let Some(b) = batches.iter().find(|b| b.num_rows() == 1) else {
        return Ok(None);
    };
    let lo = ScalarValue::try_from_array(b.column(0), 0)?;
    let hi = ScalarValue::try_from_array(b.column(1), 0)?;
    Ok((!lo.is_null()).then_some((lo, hi)))
}

/// The last segment of a file path or URI: delta-rs names data files uniquely, so it names
/// a table's file in its log, in a scan's file column and in a URI alike.
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The first row's value of `column` in a query's result, if it has a row and it is not NULL.
pub fn first_int(batches: &[arrow::array::RecordBatch], column: usize) -> Option<i64> {
    use arrow::array::Array;
    let batch = batches.iter().find(|b| b.num_rows() > 0)?;
    let values = int_column(batch.column(column))?;
    values.is_valid(0).then(|| values.value(0))
}

/// Makes batches fit for a Delta table that later writes must also fit: every column
/// nullable, string views and large strings as plain strings.
pub fn storable(
    batches: Vec<arrow::array::RecordBatch>,
    schema: arrow::datatypes::SchemaRef,
) -> std::result::Result<
    (arrow::datatypes::SchemaRef, Vec<arrow::array::RecordBatch>),
    arrow::error::ArrowError,
> {
    use arrow::datatypes::{Field, Schema};
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| Field::new(f.name(), stored_type(f.data_type()), true))
        .collect();
    let out = Arc::new(Schema::new(fields));
    let batches = batches
        .into_iter()
        .map(|b| {
            let columns = b
                .columns()
                .iter()
                .zip(out.fields())
                .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            arrow::array::RecordBatch::try_new(out.clone(), columns)
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((out, batches))
}

/// An Azure store for one container URL (with its path as prefix), and the container.
fn azure_store(url: &str) -> std::result::Result<(Arc<dyn ObjectStore>, Option<String>), String> {
    let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let store = object_store::azure::MicrosoftAzureBuilder::from_env()
        .with_url(url)
        .build()
        .map_err(|e| e.to_string())?;
    let prefix = parsed.path().trim_matches('/');
    let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    };
    // az://container/path, or abfss://container@account.dfs.core.windows.net/path.
    let container = if parsed.username().is_empty() {
        parsed.host_str().map(str::to_string)
    } else {
        Some(parsed.username().to_string())
    };
    Ok((store, container))
}

/// A lake root.
#[derive(Clone)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    url: String,
    /// The folder behind a local lake, for fsync (object_store renames but does not sync).
    local_root: Option<PathBuf>,
    /// The containers of an Azure lake.
    containers: Vec<String>,
    /// The Delta tables opened, to open again from where they were (see `opened`).
    opened: opened::Opened,
}

impl std::fmt::Debug for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lake({})", self.url)
    }
}

impl Lake {
    /// Opens a lake: a local path or `file://` URL (created if missing), or
    /// `abfss://container@account.dfs.core.windows.net/path` / `az://container/path`, with the
    /// usual `AZURE_STORAGE_*` settings (including `AZURE_STORAGE_USE_EMULATOR` for Azurite).
    /// With `{area}` as the container (`abfss://{area}@account.dfs.core.windows.net/`), each
    /// area lives in its own container: bronze, silver, gold, and system for `_system`.
    pub fn open(url: &str) -> Result<Self> {
        let bad = |reason: String| Error::LakeUrl {
            url: url.to_string(),
            reason,
        };
        if url.starts_with("abfss://") || url.starts_with("az://") || url.starts_with("abfs://") {
            // delta-rs resolves az:// and abfss:// table URLs through factories registered
            // at run time; without this its Delta tables on ADLS would not open.
            deltalake::azure::register_handlers(None);
            if url.contains(areas::PLACEHOLDER) {
                // One container per area.
                let mut stores = Vec::new();
                let mut containers = Vec::new();
                for (area, container) in areas::AREAS {
                    let (store, _) =
                        azure_store(&url.replace(areas::PLACEHOLDER, container)).map_err(bad)?;
                    stores.push((area.to_string(), store));
                    containers.push(container.to_string());
                }
                return Ok(Lake {
                    store: Arc::new(areas::AreaStore::new(stores)),
                    url: url.to_string(),
                    local_root: None,
                    containers,
                    opened: Default::default(),
                });
            }
            let (store, container) = azure_store(url).map_err(bad)?;
            return Ok(Lake {
                store,
                url: url.to_string(),
                local_root: None,
                containers: container.into_iter().collect(),
                opened: Default::default(),
            });
        }
        if url.contains("://") && !url.starts_with("file://") {
            return Err(bad(
                "use a local path, file://, abfss://container@account.dfs.core.windows.net/path or az://container/path"
                    .to_string(),
            ));
        }
        let root = PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
        std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        let root = root.canonicalize().map_err(|e| Error::io(&root, e))?;
        let store = local::LogListing::new_with_prefix(&root).map_err(|e| bad(e.to_string()))?;
        local::register();
        Ok(Lake {
            store: Arc::new(store),
            url: url.to_string(),
            local_root: Some(root),
            containers: Vec::new(),
            opened: Default::default(),
        })
    }

    /// The URL the lake was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of a Delta table at a lake path, as delta-rs opens it.
    pub fn table_url(&self, path: &str) -> Result<url::Url> {
        let bad = |reason: String| Error::LakeUrl {
            url: format!("{}/{path}", self.url),
            reason,
        };
        match &self.local_root {
            Some(root) => url::Url::from_directory_path(root.join(path))
                .map_err(|_| bad("not an absolute path".to_string())),
            None if self.url.contains(areas::PLACEHOLDER) => {
                let (area, rest) = path.split_once('/').unwrap_or((path, ""));
                let container = areas::AREAS
                    .iter()
                    .find(|(a, _)| *a == area)
                    .map(|(_, c)| *c)
                    .ok_or_else(|| bad(format!("{area} is not an area of the lake")))?;
                let base = self.url.replace(areas::PLACEHOLDER, container);
                url::Url::parse(&format!("{}/{rest}", base.trim_end_matches('/')))
                    .map_err(|e| bad(e.to_string()))
            }
            None => url::Url::parse(&format!("{}/{path}", self.url.trim_end_matches('/')))
                .map_err(|e| bad(e.to_string())),
        }
    }

    /// Whether a Delta table has been created at `path` (its log holds an entry), without
    /// creating anything.
    pub async fn has_table(&self, path: &str) -> Result<bool> {
        // Locally, one name of the log's folder answers; a listing would stat every entry.
        if let Some(dir) = self.local_path(path) {
            let log = dir.join("_delta_log");
            return match std::fs::read_dir(&log) {
                Ok(mut entries) => Ok(entries.next().is_some()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(Error::io(&log, e)),
            };
        }
        let log = Path::from(format!("{}/_delta_log", path.trim_end_matches('/')));
        let mut entries = self.store.list(Some(&log));
        match entries.try_next().await {
            Ok(first) => Ok(first.is_some()),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Error::lake(path, e)),
        }
    }

    /// Opens the Delta table at a lake path, or a handle to create it there (version `None`).
    /// A table this lake opened before is brought up to date from where it was (see
    /// `opened`).
    pub async fn delta_table(&self, path: &str) -> Result<deltalake::DeltaTable> {
        if let Some(table) = self.opened.reopen(path).await {
            return Ok(table);
        }
        // delta-rs refuses a local table location that does not exist yet.
        if let Some(dir) = self.local_path(path) {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        let table = deltalake::DeltaTable::try_from_url(self.table_url(path)?)
            .await
            .map_err(|e| Error::Delta {
                table: path.to_string(),
                source: e,
            })?;
        self.opened.keep(path, &table);
        Ok(table)
    }

    /// Opens a lake and makes it usable: on the storage emulator, its container is created
    /// when missing.
    pub async fn connect(url: &str) -> Result<Self> {
        let lake = Self::open(url)?;
        if azurite::in_use() {
            for container in &lake.containers {
                azurite::ensure_container(container).await?;
            }
        }
        Ok(lake)
    }

    /// The object store, rooted at the lake.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The local folder of a lake path, when the lake is local.
    pub fn local_path(&self, path: &str) -> Option<PathBuf> {
        self.local_root.as_ref().map(|r| r.join(path))
    }

    /// Reads an object, or `None` when it does not exist.
    pub async fn get_opt(&self, path: &str) -> Result<Option<Bytes>> {
        let location = Path::from(path);
        match self.store.get(&location).await {
            Ok(r) => r.bytes().await.map(Some).map_err(|e| Error::lake(path, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::lake(path, e)),
        }
    }

    /// Writes an object whole and makes it durable before returning.
    pub async fn put(&self, path: &str, bytes: Bytes) -> Result<()> {
        self.store
            .put(&Path::from(path), PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| Error::lake(path, e))?;
        self.make_durable(path).await
    }

    /// Lists the objects under a prefix (recursively).
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.store
            .list(Some(&Path::from(prefix)))
            .try_collect()
            .await
            .map_err(|e| Error::lake(prefix, e))
    }

    /// Lists the objects of the folder `dir` whose names sort after `name` (a name within
    /// it), in no set order: a local lake stats only those, a cloud store lists from there.
    pub async fn list_after(&self, dir: &str, name: &str) -> Result<Vec<ObjectMeta>> {
        let dir_path = Path::from(dir);
        let offset = dir_path.clone().join(name);
        self.store
            .list_with_offset(Some(&dir_path), &offset)
            .try_collect()
            .await
            .map_err(|e| Error::lake(dir, e))
    }

    /// The objects of the folder `dir` whose names start with `prefix`: those past the prefix
    /// in name order, without listing the folder's earlier names.
    pub async fn list_prefixed(&self, dir: &str, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut found = self.list_after(dir, prefix).await?;
        found.retain(|m| m.location.filename().is_some_and(|n| n.starts_with(prefix)));
        Ok(found)
    }

    /// Deletes an object; a missing object is not an error.
    pub async fn delete(&self, path: &str) -> Result<()> {
        match self.store.delete(&Path::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::lake(path, e)),
        }
    }

    /// A streaming parquet sink for an object (multipart upload; atomic on completion).
    pub fn parquet_sink(&self, path: &str) -> BufWriter {
        BufWriter::new(self.store.clone(), Path::from(path))
    }

    /// Removes the staging files (`name#n`) that a local upload killed mid-way leaves behind.
    /// They are invisible to listings, so they can never be read as data, but they use disk.
    /// Cloud stores discard uncommitted multipart uploads themselves.
    pub async fn remove_staging_leftovers(&self, dir: &str) -> Result<usize> {
        let Some(folder) = self.local_path(dir) else {
            return Ok(0);
        };
        tokio::task::spawn_blocking(move || {
            let entries = match std::fs::read_dir(&folder) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(Error::io(&folder, e)),
            };
            let mut removed = 0;
            for entry in entries {
                let path = entry.map_err(|e| Error::io(&folder, e))?.path();
                if path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().contains('#'))
                {
                    std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    }

    /// Flushes a completed object and its folder to disk on a local lake, so that a crash or
    /// power loss after this call cannot lose it. Cloud stores are durable on completion.
    pub async fn make_durable(&self, path: &str) -> Result<()> {
        let Some(file) = self.local_path(path) else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || {
            std::fs::File::open(&file)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(&file, e))?;
            if let Some(dir) = file.parent() {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| Error::io(dir, e))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_times_are_delta_packed_text_is_dictionary_encoded_and_values_round_trip() {
        use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
        use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
        use parquet::basic::Encoding;
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("at", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("device", DataType::Utf8, true),
            Field::new("minutes", DataType::Float64, true),
        ]));
        let n = 10_000i64;
        let batch = arrow::record_batch::RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(1..=n)),
                Arc::new(TimestampMicrosecondArray::from_iter((0..n).map(|i| {
                    (i % 7 != 0).then_some(1_700_000_000_000_000 + i * 1_000)
                }))),
                Arc::new(StringArray::from_iter((0..n).map(|i| {
                    (i % 5 != 0).then(|| ["mobile", "web"][(i % 2) as usize])
                }))),
                Arc::new(Float64Array::from_iter_values(
                    (0..n).map(|i| i as f64 / 60.0),
                )),
            ],
        )
        .unwrap();
        let mut file = Vec::new();
        let properties = parquet_properties(&schema).build();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(&mut file, schema, Some(properties)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();

        let file = Bytes::from(file);
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file.clone())
                .unwrap();
        let chunks = reader.metadata().row_group(0).columns().to_vec();
        let encodings = |i: usize| chunks[i].encodings().collect::<Vec<_>>();
        assert!(encodings(0).contains(&Encoding::DELTA_BINARY_PACKED));
        assert!(encodings(1).contains(&Encoding::DELTA_BINARY_PACKED));
        assert!(encodings(2).contains(&Encoding::RLE_DICTIONARY));
        assert!(!encodings(3).contains(&Encoding::DELTA_BINARY_PACKED));
        // Ascending ids pack into a few bits a value: far below the 8 bytes plain would take.
        assert!(
            chunks[0].uncompressed_size() < n * 2,
            "{}",
            chunks[0].uncompressed_size()
        );
        let read: Vec<_> = reader.build().unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(
            arrow::compute::concat_batches(&batch.schema(), &read).unwrap(),
            batch
        );
    }

    #[tokio::test]
    async fn a_local_lake_round_trips_lists_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().join("lake").to_str().unwrap()).unwrap();
        assert_eq!(lake.get_opt("bronze/x.json").await.unwrap(), None);
        lake.put("bronze/x.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(
            lake.get_opt("bronze/x.json").await.unwrap().unwrap(),
            Bytes::from_static(b"{}")
        );
        assert!(dir.path().join("lake/bronze/x.json").is_file());
        let listed = lake.list("bronze").await.unwrap();
        assert_eq!(listed.len(), 1);
        lake.delete("bronze/x.json").await.unwrap();
        lake.delete("bronze/x.json").await.unwrap();
        assert!(lake.list("bronze").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn partial_uploads_are_invisible_and_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        lake.put("bronze/T/a.parquet", Bytes::from_static(b"x"))
            .await
            .unwrap();
        std::fs::write(dir.path().join("bronze/T/b.parquet#7"), b"half").unwrap();
        assert_eq!(lake.list("bronze/T").await.unwrap().len(), 1);
        assert_eq!(lake.remove_staging_leftovers("bronze/T").await.unwrap(), 1);
        assert!(!dir.path().join("bronze/T/b.parquet#7").exists());
        assert!(dir.path().join("bronze/T/a.parquet").exists());
        assert_eq!(
            lake.remove_staging_leftovers("bronze/none").await.unwrap(),
            0
        );
    }

    #[test]
    fn unknown_schemes_are_refused_with_the_supported_ones() {
        let err = Lake::open("s3://bucket/lake").unwrap_err().to_string();
        assert!(
            err.contains("abfss://") && err.contains("s3://bucket/lake"),
            "{err}"
        );
    }
}
