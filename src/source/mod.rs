//! SQL and file sources: each yields a table's rows as a stream of Arrow record batches.
//!
//! A source answers three questions per table: its schema (as Arrow types), the current maximum
//! of its watermark column, and the rows of one `(low, high]` window. Rows are produced in
//! bounded batches through a bounded channel, so memory does not grow with the table.

pub(crate) mod columns;
pub(crate) mod files;
pub(crate) mod mssql;
pub(crate) mod sqlite;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use futures::stream::BoxStream;
use tokio::sync::mpsc;

use crate::config::TableSpec;
use crate::error::{Error, Result};
use crate::window::{Bound, BoundKind, Window};

/// Record batches of one extract, in source order.
pub type BatchStream = BoxStream<'static, Result<RecordBatch>>;

/// Batches waiting between a source's reader and the parquet writer: enough to overlap the two.
const CHANNEL_BATCHES: usize = 2;

/// A database or file collection that tables are extracted from.
#[async_trait::async_trait]
pub trait Source: Send + Sync {
    /// A printable, secret-free description of the source, e.g. `sqlite:/data/source.db`.
    fn describe(&self) -> String;

    /// The table's columns as Arrow types, in source order.
    async fn schema(&self, table: &TableSpec) -> Result<SchemaRef>;

    /// Whether the source can serve `cdc_mode = "change_tracking"` (SQL Server).
    fn change_tracking(&self) -> bool {
        false
    }

    /// The current maximum of the table's watermark column, read before any copy starts;
    /// `None` when the table is empty.
    async fn high_watermark(&self, table: &TableSpec, kind: BoundKind) -> Result<Option<Bound>>;

    /// Streams the rows with `window.low < cdc_column <= window.high`, with `schema`'s columns.
    async fn extract(
        &self,
        table: &TableSpec,
        schema: SchemaRef,
        window: Window,
        batch_rows: usize,
    ) -> Result<BatchStream>;

    /// Streams every row of a snapshot table (no change column), in key order where the
    /// source can sort, so the same content always reads the same.
    async fn snapshot(
        &self,
        table: &TableSpec,
        schema: SchemaRef,
        batch_rows: usize,
    ) -> Result<BatchStream> {
        let _ = (schema, batch_rows);
        Err(Error::SourceQuery {
            table: table.name.clone(),
            message: format!(
                "a snapshot table (no cdc_column) needs a SQLite or files source; {} cannot be read whole yet",
                self.describe()
            ),
        })
    }

    /// Streams every key of the table (`schema`: the key columns), in ascending binary
    /// order, for `deletes = "detect"`. Sources that cannot list keys say so.
    async fn keys(
        &self,
        table: &TableSpec,
        schema: SchemaRef,
        batch_rows: usize,
    ) -> Result<BatchStream> {
        let _ = (schema, batch_rows);
        Err(Error::SourceQuery {
            table: table.name.clone(),
            message: format!(
                "deletes = \"detect\" needs a SQL source; {} cannot list a table's keys",
                self.describe()
            ),
        })
    }
}

/// Opens the source a URL names: `sqlite:PATH`, an ADO connection string
/// (`Server=tcp:host,1433;...`), or `files:DIR` / `files:https://base/`.
pub async fn open(url: &str) -> Result<Arc<dyn Source>> {
    let url = url.trim();
    if let Some(path) = url.strip_prefix("sqlite:") {
        return Ok(Arc::new(sqlite::SqliteSource::open(path)?));
    }
    if let Some(location) = url.strip_prefix("files:") {
        return Ok(Arc::new(files::FilesSource::open(location)?));
    }
    if mssql::looks_like_ado(url) {
        return Ok(Arc::new(mssql::MssqlSource::connect(url).await?));
    }
    Err(Error::BadArgument {
        what: "source".to_string(),
        message: format!(
            "{:?} is not a source URL: use sqlite:PATH, files:DIR or files:https://..., or an ADO connection string (Server=tcp:host,1433;Database=...)",
            mssql::redact(url)
        ),
    })
}

/// The sources `tables` read, each opened once: `(the tables' source name, or `None` for the
/// default source at `default_url`; the source or why it could not be opened)`, in the
/// order the tables first name them.
pub async fn open_for(
    pipeline: &crate::config::Pipeline,
    default_url: &str,
    tables: &[TableSpec],
) -> Vec<(Option<String>, Result<Arc<dyn Source>>)> {
    let mut names: Vec<Option<String>> = Vec::new();
    for t in tables {
        if !names.contains(&t.source) {
            names.push(t.source.clone());
        }
    }
    let mut opened = Vec::new();
    for name in names {
        let url = match &name {
            None => Ok(default_url),
            Some(n) => {
                pipeline
                    .sources
                    .get(n)
                    .map(String::as_str)
                    .ok_or_else(|| Error::BadArgument {
                        what: format!("source {n:?}"),
                        message: "not in the pipeline file's [sources]".to_string(),
                    })
            }
        };
        let source = match url {
            Ok(url) => open(url).await,
            Err(e) => Err(e),
        };
        opened.push((name, source));
    }
    opened
}

/// Where a reader sends its batches.
pub type BatchSender = mpsc::Sender<Result<RecordBatch>>;

/// Runs an async reader in its own task and streams what it sends. The bounded channel is
/// the backpressure that keeps memory flat. The stream ends with the reader's own result, so
/// a reader that fails or panics ends it with an error naming the table, never with what
/// would look like the end of the window.
pub fn spawn_reader<Fut>(table: &str, read: impl FnOnce(BatchSender) -> Fut) -> BatchStream
where
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    ended_by_reader(table, rx, tokio::spawn(read(tx)))
}

/// [`spawn_reader`] for a reader that blocks (a SQLite cursor), on the blocking pool.
pub fn spawn_blocking_reader(
    table: &str,
    read: impl FnOnce(&BatchSender) -> Result<()> + Send + 'static,
) -> BatchStream {
    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    ended_by_reader(table, rx, tokio::task::spawn_blocking(move || read(&tx)))
}

fn ended_by_reader(
    table: &str,
    rx: mpsc::Receiver<Result<RecordBatch>>,
    reader: tokio::task::JoinHandle<Result<()>>,
) -> BatchStream {
    let table = table.to_string();
    let stream = futures::stream::unfold(Some((rx, reader)), move |state| {
        let table = table.clone();
        async move {
            let (mut rx, reader) = state?;
            if let Some(item) = rx.recv().await {
                return Some((item, Some((rx, reader))));
            }
            // The channel closed: only the reader's result says whether the window is whole.
            match reader.await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some((Err(e), None)),
                Err(join) => Some((
                    Err(Error::ReaderFailed {
                        table,
                        reason: if join.is_panic() {
                            panic_message(join.into_panic())
                        } else {
                            join.to_string()
                        },
                    }),
                    None,
                )),
            }
        }
    });
    Box::pin(stream)
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string());
    format!("it panicked: {text}")
}

/// Checks that the table's watermark and key columns exist, and returns the watermark kind.
pub fn check_columns(table: &TableSpec, schema: &SchemaRef) -> Result<BoundKind> {
    let available = || {
        schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for column in std::iter::once(&table.cdc_column).chain(&table.keys) {
        if schema.field_with_name(column).is_err() {
            return Err(Error::UnknownColumn {
                table: table.name.clone(),
                column: column.clone(),
                available: available(),
            });
        }
    }
    let field = schema
        .field_with_name(&table.cdc_column)
        .map_err(|e| Error::arrow(&table.name, e))?;
    BoundKind::for_type(field.data_type()).ok_or_else(|| Error::BadWatermarkType {
        table: table.name.clone(),
        column: table.cdc_column.clone(),
        data_type: field.data_type().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int32Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use futures::StreamExt;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int32, true)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int32Array::from(vec![1, 2]))]).unwrap()
    }

    async fn outcomes(mut stream: BatchStream) -> Vec<std::result::Result<usize, String>> {
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            out.push(item.map(|b| b.num_rows()).map_err(|e| e.to_string()));
        }
        out
    }

    #[tokio::test]
    async fn a_reader_that_panics_ends_the_stream_with_an_error_naming_the_table() {
        let stream = spawn_blocking_reader("FactStream", |tx| {
            tx.blocking_send(Ok(batch())).ok();
            panic!("injected");
        });
        let out = outcomes(stream).await;
        assert_eq!(out[0], Ok(2));
        let err = out[1].as_ref().unwrap_err();
        assert!(
            err.contains("FactStream") && err.contains("injected"),
            "{err}"
        );
        assert_eq!(out.len(), 2);

        let stream = spawn_reader("DimUser", |tx| async move {
            tx.send(Ok(batch())).await.ok();
            panic!("async injected");
        });
        let out = outcomes(stream).await;
        assert!(out[1].as_ref().unwrap_err().contains("DimUser"), "{out:?}");
    }

    #[tokio::test]
    async fn a_reader_error_is_the_last_item_and_a_clean_end_is_an_end() {
        let stream = spawn_blocking_reader("T", |tx| {
            tx.blocking_send(Ok(batch())).ok();
            Err(Error::SourceQuery {
                table: "T".into(),
                message: "connection reset".into(),
            })
        });
        let out = outcomes(stream).await;
        assert_eq!(out.len(), 2);
        assert!(out[1].as_ref().unwrap_err().contains("connection reset"));
        let stream = spawn_blocking_reader("T", |tx| {
            tx.blocking_send(Ok(batch())).ok();
            Ok(())
        });
        assert_eq!(outcomes(stream).await, vec![Ok(2)]);
    }
}
