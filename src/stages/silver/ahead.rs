//! Read-ahead: the next bronze file is read and cleaned while the one before it is written,
//! the two halves of a file's work on two threads. See docs/decisions/002-speed-and-memory.md
//! for what it saves and why a dimension's files are not read ahead.

use deltalake::DeltaTable;

use super::clean::{Prepared, prepare, table_schema};
use super::write::feeds_dimension;
use crate::config::TableSpec;
use crate::error::Result;
use crate::lake::Lake;

/// The file being prepared ahead for one table, if any.
pub(super) struct ReadAhead {
    lake: Lake,
    table: TableSpec,
    /// Off for a dimension's files, which are copied into key order: a second one in flight
    /// costs memory and, on a first run, no time.
    enabled: bool,
    next: Option<Ahead>,
}

impl ReadAhead {
    pub(super) fn new(lake: &Lake, table: &TableSpec) -> Self {
        ReadAhead {
            lake: lake.clone(),
            table: table.clone(),
            enabled: !feeds_dimension(table),
            next: None,
        }
    }

    /// Starts preparing `file` against the table's schema as `latest` has it. Only once the
    /// table exists, whose schema the rows are fitted to (a file that changes the schema has
    /// the next one prepared again in its turn).
    pub(super) fn start(&mut self, file: Option<&String>, latest: Option<&DeltaTable>) {
        let (Some(file), true) = (file, self.enabled) else {
            return;
        };
        let Some(schema) = latest.and_then(table_schema) else {
            return;
        };
        let (lake, table, path) = (self.lake.clone(), self.table.clone(), file.clone());
        self.next = Some(Ahead(tokio::spawn(async move {
            prepare(&lake, &table, &path, Some(schema)).await
        })));
    }

    /// The file prepared ahead, or `None` when none was or preparing failed: the file is
    /// then prepared again in its turn, where the error (a `fail` expectation, say) belongs.
    pub(super) async fn take(&mut self) -> Option<Prepared> {
        let mut next = self.next.take()?;
        (&mut next.0).await.ok().and_then(|r| r.ok())
    }
}

/// The preparation of the next file, on a task of its own; dropped (an error before it is
/// used), it is cancelled: it has written nothing.
struct Ahead(tokio::task::JoinHandle<Result<Prepared>>);

impl Drop for Ahead {
    fn drop(&mut self) {
        self.0.abort();
    }
}
