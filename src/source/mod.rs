//! SQL and file sources: each yields a table's rows as a stream of Arrow record batches.
//!
//! A source answers three questions per table: its schema (as Arrow types), the current maximum
//! of its watermark column, and the rows of one `(low, high]` window. Rows are produced in
//! bounded batches through a bounded channel, so memory does not grow with the table.

pub mod columns;
pub mod files;
pub mod mssql;
pub mod sqlite;

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

/// A sender/stream pair: a blocking or async reader pushes batches, the writer pulls them.
/// The bounded channel is the backpressure that keeps memory flat.
pub fn batch_channel() -> (mpsc::Sender<Result<RecordBatch>>, BatchStream) {
    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (tx, Box::pin(stream))
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
