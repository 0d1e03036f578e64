//! Every application transaction a Delta table records (`txn` actions: app id → version), read
//! in one pass over its last checkpoint and the commits after it.
//!
//! Silver records each bronze file it loaded as a transaction; asking delta-rs for one app id
//! replays the log each time, so checking every listed file that way cost a log replay per file
//! ever written. One pass gives the same answers from the same log. Anything this reader does
//! not expect (a multi-part or V2 checkpoint, an unreadable part) gives `None`, and the caller
//! asks file by file as before.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use deltalake::DeltaTable;
use object_store::ObjectStoreExt;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The cache of [`cached`]: by table, version and the version's commit time.
type Cache = std::sync::Mutex<HashMap<(String, u64, i64), Arc<HashMap<String, i64>>>>;

/// [`all`], remembered per table version (what a version records never changes; the commit
/// file's time tells a table deleted and written again apart), so the several questions one
/// run asks of a table read its log once. Not remembered for a version whose commit file its
/// snapshot did not list (a checkpoint's version).
pub async fn cached(table: &DeltaTable) -> Option<Arc<HashMap<String, i64>>> {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let version = table.version()?;
    let committed = table.snapshot().ok()?.version_timestamp(version);
    let key = committed.map(|at| (table.log_store().root_url().to_string(), version, at));
    let cache = CACHE.get_or_init(Default::default);
    if let Some(found) = key
        .as_ref()
        .and_then(|k| cache.lock().ok()?.get(k).cloned())
    {
        return Some(found);
    }
    let found = match key.as_ref().and_then(|k| earlier(table, k, cache)) {
        Some((from, mut found)) => {
            commits(table, from + 1, version, &mut found).await?;
            Arc::new(found)
        }
        None => Arc::new(all(table).await?),
    };
    if let (Some(key), Ok(mut cache)) = (key, cache.lock()) {
        // A long-running process keeps a bounded number of versions.
        if cache.len() >= 512 {
            cache.clear();
        }
        cache.insert(key, found.clone());
    }
    Some(found)
}

/// The latest version before `key`'s that the cache holds for the same table, when the
/// snapshot lists that version's commit with the time the cache has for it (the same table,
/// not one deleted and written again): then only the commits after it are read. A run that
/// commits a table file by file asks after each commit; a whole pass each time read the
/// checkpoint and every commit since, again and again.
fn earlier(
    table: &DeltaTable,
    (root, version, _): &(String, u64, i64),
    cache: &Cache,
) -> Option<(u64, HashMap<String, i64>)> {
    let snapshot = table.snapshot().ok()?;
    let cache = cache.lock().ok()?;
    let ((_, from, _), found) = cache
        .iter()
        .filter(|((r, v, at), _)| {
            r == root && v < version && snapshot.version_timestamp(*v) == Some(*at)
        })
        .max_by_key(|((_, v, _), _)| *v)?;
    Some((*from, found.as_ref().clone()))
}

/// The table's application transactions as of its loaded version; `None` when they cannot be
/// read in one pass.
pub async fn all(table: &DeltaTable) -> Option<HashMap<String, i64>> {
    let version = table.version()?;
    let log_store = table.log_store();
    let store = log_store.object_store(None);
    let log = log_store.log_path().clone();
    let mut found = HashMap::new();
    let checkpoint = match store.get(&log.clone().join("_last_checkpoint")).await {
        Ok(got) => {
            let last: serde_json::Value = serde_json::from_slice(&got.bytes().await.ok()?).ok()?;
            if last.get("parts").is_some() || last.get("v2Checkpoint").is_some() {
                return None;
            }
            let at = last.get("version")?.as_u64()?;
            if at > version {
                return None;
            }
            let name = format!("{at:020}.checkpoint.parquet");
            let bytes = store
                .get(&log.clone().join(name.as_str()))
                .await
                .ok()?
                .bytes()
                .await
                .ok()?;
            read_checkpoint(bytes, &mut found)?;
            Some(at)
        }
        Err(object_store::Error::NotFound { .. }) => None,
        Err(_) => return None,
    };
    let first = checkpoint.map_or(0, |at| at + 1);
    commits(table, first, version, &mut found).await?;
    Some(found)
}

/// Adds the `txn` actions of commits `first..=last` to `found`, later ones winning.
async fn commits(
    table: &DeltaTable,
    first: u64,
    last: u64,
    found: &mut HashMap<String, i64>,
) -> Option<()> {
    let log_store = table.log_store();
    for v in first..=last {
        let bytes = log_store.read_commit_entry(v).await.ok()??;
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let action: serde_json::Value = serde_json::from_slice(line).ok()?;
            if let Some(txn) = action.get("txn") {
                let app = txn.get("appId")?.as_str()?;
                found.insert(app.to_string(), txn.get("version")?.as_i64()?);
            }
        }
    }
    Some(())
}

/// Adds the `txn` rows of a checkpoint file to `found`.
fn read_checkpoint(bytes: bytes::Bytes, found: &mut HashMap<String, i64>) -> Option<()> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).ok()?;
    let txn = builder
        .parquet_schema()
        .root_schema()
        .get_fields()
        .iter()
        .position(|f| f.name() == "txn")?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), [txn]);
    for batch in builder.with_projection(mask).build().ok()? {
        let batch = batch.ok()?;
        let txn = batch.column(0).as_struct_opt()?;
        let apps = txn.column_by_name("appId")?.as_string_opt::<i32>()?;
        let versions = txn
            .column_by_name("version")?
            .as_primitive_opt::<Int64Type>()?;
        for row in (0..batch.num_rows()).filter(|&r| txn.is_valid(r)) {
            found.insert(apps.value(row).to_string(), versions.value(row));
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch};
    use deltalake::kernel::Transaction;
    use deltalake::kernel::transaction::CommitProperties;
    use deltalake::protocol::SaveMode;

    /// 25 commits, each recording a transaction (past two checkpoints, with commits after the
    /// last): the one-pass reader gives what delta-rs gives app id by app id.
    #[tokio::test]
    async fn one_pass_reads_what_delta_rs_reads_app_by_app() {
        let dir = tempfile::tempdir().unwrap();
        let lake = crate::lake::Lake::open(dir.path().to_str().unwrap()).unwrap();
        let mut table = lake.delta_table("silver/t").await.unwrap();
        for i in 0..25i64 {
            let batch = RecordBatch::try_from_iter([(
                "x",
                std::sync::Arc::new(Int64Array::from(vec![i])) as arrow::array::ArrayRef,
            )])
            .unwrap();
            // App ids repeat, so a later version of one must win.
            let txn = Transaction::new(format!("app-{}", i % 7), 100 + i);
            table = table
                .write(vec![batch])
                .with_save_mode(SaveMode::Append)
                .with_configuration(crate::lake::CREATED_WITH)
                .with_commit_properties(
                    CommitProperties::default().with_application_transaction(txn),
                )
                .await
                .unwrap();
            // Asked after each commit, as silver does: from the previous version's answer.
            let cached = cached(&table).await.expect("cached");
            assert_eq!(cached.as_ref(), &all(&table).await.unwrap(), "version {i}");
        }
        assert!(
            dir.path()
                .join("silver/t/_delta_log/_last_checkpoint")
                .exists()
        );
        let all = all(&table).await.expect("read in one pass");
        assert_eq!(all.len(), 7);
        for app in 0..8 {
            let id = format!("app-{app}");
            let expected = table
                .snapshot()
                .unwrap()
                .transaction_version(table.log_store().as_ref(), &id)
                .await
                .unwrap();
            assert_eq!(all.get(&id).copied(), expected, "{id}");
        }
    }
}
