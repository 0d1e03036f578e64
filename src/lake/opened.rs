//! The Delta tables a lake has opened, kept so that opening one again reads only the commits
//! since, not its checkpoint and every commit after it once more.
//!
//! One run opens the same tables from several stages and tasks: silver's streams table was
//! loaded in full eight times in an incremental run, dim_user four times, each load reading
//! the log twice. On Blob storage each of those reads is a request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use deltalake::DeltaTable;
use object_store::ObjectStoreExt;

/// The latest table each lake path was opened at.
#[derive(Clone, Default)]
pub(super) struct Opened(Arc<Mutex<HashMap<String, DeltaTable>>>);

impl Opened {
    /// The table kept for `path`, brought up to date; `None` when none is kept, or when the
    /// kept one may not be the table at `path` any more (its last commit's file is gone or
    /// was written again: the table was deleted, and maybe created anew), or cannot be
    /// brought up to date. The caller then loads the table afresh.
    pub(super) async fn reopen(&self, path: &str) -> Option<DeltaTable> {
        let mut table = self.0.lock().ok()?.get(path).cloned()?;
        let version = table.version()?;
        let committed = table.snapshot().ok()?.version_timestamp(version)?;
        let log = table.log_store();
        let commit = log
            .log_path()
            .clone()
            .join(format!("{version:020}.json").as_str());
        let now = log.object_store(None).head(&commit).await.ok()?;
        if now.last_modified.timestamp_millis() != committed {
            return None;
        }
        table.update_incremental(None).await.ok()?;
        self.keep(path, &table);
        Some(table)
    }

    /// Keeps `table` as the one at `path`, when it has a version whose commit its snapshot
    /// lists (what [`Opened::reopen`] checks it by).
    pub(super) fn keep(&self, path: &str, table: &DeltaTable) {
        let listed = table
            .version()
            .zip(table.snapshot().ok())
            .is_some_and(|(v, s)| s.version_timestamp(v).is_some());
        if let Ok(mut opened) = self.0.lock() {
            if listed {
                opened.insert(path.to_string(), table.clone());
            } else {
                opened.remove(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{ArrayRef, Int64Array, RecordBatch};
    use deltalake::protocol::SaveMode;

    use crate::lake::Lake;

    async fn append(table: deltalake::DeltaTable, x: i64) -> deltalake::DeltaTable {
        let column: ArrayRef = std::sync::Arc::new(Int64Array::from(vec![x]));
        let batch = RecordBatch::try_from_iter([("x", column)]).unwrap();
        table
            .write(vec![batch])
            .with_save_mode(SaveMode::Append)
            .await
            .unwrap()
    }

    fn files(table: &deltalake::DeltaTable) -> usize {
        table.get_file_uris().unwrap().count()
    }

    /// A table opened again sees what another handle committed since, and a table deleted
    /// and written anew (as many versions or more) is loaded afresh, not patched onto the
    /// kept one.
    #[tokio::test]
    async fn a_table_opened_again_is_the_table_as_it_is_now() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let mut t = lake.delta_table("silver/t").await.unwrap();
        for x in 0..3 {
            t = append(t, x).await;
        }
        let kept = lake.delta_table("silver/t").await.unwrap();
        assert_eq!((kept.version(), files(&kept)), (Some(2), 3));

        let other = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let t = append(other.delta_table("silver/t").await.unwrap(), 3).await;
        assert_eq!(t.version(), Some(3));
        let again = lake.delta_table("silver/t").await.unwrap();
        assert_eq!((again.version(), files(&again)), (Some(3), 4));

        std::fs::remove_dir_all(dir.path().join("silver/t")).unwrap();
        let mut t = other.delta_table("silver/t").await.unwrap();
        for x in 0..5 {
            t = append(t, x).await;
        }
        // The kept table brought up to date would have applied commit 4 onto its four old
        // files; the table as it is holds only new ones.
        let fresh = lake.delta_table("silver/t").await.unwrap();
        assert_eq!(fresh.version(), Some(4));
        let old: std::collections::HashSet<String> = again.get_file_uris().unwrap().collect();
        let now: Vec<String> = fresh.get_file_uris().unwrap().collect();
        assert_eq!(now.len(), 5);
        assert!(now.iter().all(|f| !old.contains(f)), "{now:?}");
    }
}
