//! The object store delta-rs opens a local lake's tables with: object_store's
//! `LocalFileSystem`, except for listing a folder from an offset, which is how delta-rs finds a
//! table's log entries after its last checkpoint. The stock listing walks the folder with a
//! `stat` of every entry (it follows links) before it compares the name with the offset, so
//! each table open cost a `stat` per log entry the table keeps (30 days of them, by default;
//! decision 005 has the measurement). This one reads the folder's names and stats only those
//! past the offset, and its full listing (silver's discovery of a bronze folder) stats each
//! entry once, not three times. The lake's own store for a local lake is this one too.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Once};

use async_trait::async_trait;
use bytes::Bytes;
use deltalake::logstore::{
    ObjectStoreFactory, ObjectStoreRef, StorageConfig, object_store_factories,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

/// Makes delta-rs open `file://` tables through [`LogListing`] (once per process).
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Ok(url) = url::Url::parse("file://") {
            object_store_factories().insert(url, Arc::new(Factory));
        }
    });
}

/// delta-rs's factory for `file://` URLs, as its default one but for the store.
struct Factory;

impl ObjectStoreFactory for Factory {
    fn parse_url_opts(
        &self,
        url: &url::Url,
        config: &StorageConfig,
    ) -> deltalake::DeltaResult<(ObjectStoreRef, Path)> {
        let (_, path) = object_store::parse_url_opts(url, &config.raw)?;
        let mut store: ObjectStoreRef = Arc::new(LogListing {
            inner: LocalFileSystem::new(),
        });
        if let Some(runtime) = &config.runtime {
            store = Arc::new(deltalake::logstore::DeltaIOStorageBackend::new(
                store,
                runtime.clone(),
            ));
        }
        Ok((store, path))
    }
}

/// `LocalFileSystem` with a listing from an offset that stats only what it returns.
#[derive(Debug)]
pub struct LogListing {
    inner: LocalFileSystem,
}

impl LogListing {
    /// The store over the folder `root`.
    pub fn new_with_prefix(root: &std::path::Path) -> object_store::Result<Self> {
        Ok(LogListing {
            inner: LocalFileSystem::new_with_prefix(root)?,
        })
    }
}

impl fmt::Display for LogListing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogListing({})", self.inner)
    }
}

/// The files of `dir` (the folder of `prefix`) whose location sorts after `offset` (all with
/// `None`), with their metadata; `None` when the folder holds a folder or a link (the stock
/// listing recurses and follows links) or cannot be read.
fn files_after(dir: PathBuf, prefix: &Path, offset: Option<&Path>) -> Option<Vec<ObjectMeta>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(found),
        Err(_) => return None,
    };
    // An offset within the folder compares by name alone (a location is the prefix, `/` and
    // the name), so the entries before it are passed over without making a path of each.
    let within = format!("{prefix}/");
    let after = offset.and_then(|o| o.as_ref().strip_prefix(within.as_str()));
    for entry in entries {
        let entry = entry.ok()?;
        let name = entry.file_name().into_string().ok()?;
        if after.is_some_and(|after| name.as_str() <= after) {
            continue;
        }
        let location = Path::parse(format!("{within}{name}")).ok()?;
        if offset.is_some_and(|offset| location <= *offset) {
            continue;
        }
        let metadata = std::fs::symlink_metadata(entry.path()).ok()?;
        if !metadata.is_file() {
            return None;
        }
        // As the stock store: `name#123` is an upload in progress, not an object.
        if name
            .split_once('#')
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        found.push(meta(location, &metadata));
    }
    Some(found)
}

/// The most versions a log listing probes one by one before it reads the folder instead.
const MAX_PROBED_VERSIONS: u64 = 64;

/// A Delta log listed from a version (`_delta_log/<20 digits>`, how delta-rs and its kernel
/// ask) by asking for each version's commit and checkpoint by name, without reading the
/// folder, which keeps every entry of the log retention. `None` (read the folder) unless the
/// answer is the folder's for a reader: the table keeps single-file checkpoints
/// (`_last_checkpoint` names no parts), a listing from the checkpoint it names finds that
/// checkpoint, and the versions asked for are there or just past the newest commit.
fn log_after(dir: &std::path::Path, prefix: &Path, offset: &Path) -> Option<Vec<ObjectMeta>> {
    if prefix.filename() != Some("_delta_log") {
        return None;
    }
    let start = offset.filename().filter(|n| n.len() == 20)?;
    let first: u64 = start
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| start.parse().ok())??;
    let stat = |name: &str| -> Option<Option<ObjectMeta>> {
        match std::fs::symlink_metadata(dir.join(name)) {
            Ok(m) if m.is_file() => Some(Some(meta(prefix.clone().join(name), &m))),
            Ok(_) => None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(None),
            Err(_) => None,
        }
    };
    let hint = stat("_last_checkpoint")?;
    let hinted = match &hint {
        Some(_) => {
            let text = std::fs::read_to_string(dir.join("_last_checkpoint")).ok()?;
            let last: serde_json::Value = serde_json::from_str(&text).ok()?;
            if last.get("parts").is_some() || last.get("v2Checkpoint").is_some() {
                return None;
            }
            Some(last.get("version")?.as_u64()?)
        }
        None => None,
    };
    let mut found = Vec::new();
    for version in first..first + MAX_PROBED_VERSIONS {
        let commit = stat(&format!("{version:020}.json"))?;
        let checkpoint = stat(&format!("{version:020}.checkpoint.parquet"))?;
        if version == first {
            // A reader starting at the checkpoint `_last_checkpoint` names needs that file.
            if hinted == Some(first) && checkpoint.is_none() {
                return None;
            }
            // Nothing at the first version: certain only just past the newest commit.
            if commit.is_none() && checkpoint.is_none() {
                let newest = first > 0 && stat(&format!("{:020}.json", first - 1))?.is_some();
                return newest.then(|| hint.into_iter().collect());
            }
        }
        // A checkpoint without its commit (a log cleaned up to it) still holds the version.
        if commit.is_none() && checkpoint.is_none() {
            found.extend(hint);
            return Some(found);
        }
        found.extend(commit);
        found.extend(checkpoint);
    }
    None
}

/// An object's metadata as the stock store gives it (its e-tag from inode, time and size).
fn meta(location: Path, metadata: &std::fs::Metadata) -> ObjectMeta {
    let modified = metadata
        .modified()
        .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
    let micros = (modified.duration_since(std::time::SystemTime::UNIX_EPOCH))
        .unwrap_or_default()
        .as_micros();
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(metadata);
    #[cfg(not(unix))]
    let inode = 0u64;
    ObjectMeta {
        location,
        last_modified: modified.into(),
        size: metadata.len(),
        e_tag: Some(format!("{inode:x}-{micros:x}-{:x}", metadata.len())),
        version: None,
    }
}

#[async_trait]
impl ObjectStore for LogListing {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let Some(dir) = prefix.and_then(|p| self.inner.path_to_filesystem(p).ok()) else {
            return self.inner.list(prefix);
        };
        let prefix_path = prefix.cloned().unwrap_or_default();
        match files_after(dir, &prefix_path, None) {
            Some(files) => futures::stream::iter(files.into_iter().map(Ok)).boxed(),
            None => self.inner.list(Some(&prefix_path)),
        }
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let Some(dir) = prefix.and_then(|p| self.inner.path_to_filesystem(p).ok()) else {
            return self.inner.list_with_offset(prefix, offset);
        };
        let (prefix_path, offset_path) = (prefix.cloned().unwrap_or_default(), offset.clone());
        if let Some(files) = log_after(&dir, &prefix_path, &offset_path) {
            return futures::stream::iter(files.into_iter().map(Ok)).boxed();
        }
        match files_after(dir, &prefix_path, Some(&offset_path)) {
            Some(files) => futures::stream::iter(files.into_iter().map(Ok)).boxed(),
            None => self
                .inner
                .list_with_offset(Some(&prefix_path), &offset_path),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;

    /// An empty table log in a temporary folder: the folder, the log's path, the stock store
    /// and ours.
    fn log_folder() -> (tempfile::TempDir, Path, LocalFileSystem, LogListing) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("_delta_log")).unwrap();
        let log = Path::from_filesystem_path(dir.path().join("_delta_log")).unwrap();
        let ours = LogListing {
            inner: LocalFileSystem::new(),
        };
        (dir, log, LocalFileSystem::new(), ours)
    }

    /// What a listing of `log` from the name `offset` gives a reader, sorted.
    async fn sorted_from(
        store: &dyn ObjectStore,
        log: &Path,
        offset: &str,
    ) -> Vec<(String, u64, Option<String>)> {
        let mut found: Vec<(String, u64, Option<String>)> = store
            .list_with_offset(Some(log), &log.clone().join(offset))
            .map_ok(|m| (m.location.to_string(), m.size, m.e_tag))
            .try_collect()
            .await
            .unwrap();
        found.sort();
        found
    }

    #[tokio::test]
    async fn a_log_listed_by_version_gives_what_the_folder_gives() {
        let (dir, log, stock, ours) = log_folder();
        let put = |name: String, body: &'static str| {
            let at = log.clone().join(name.as_str());
            let store = &ours;
            async move { store.put(&at, body.into()).await.unwrap() }
        };
        for v in 0..25u32 {
            put(format!("{v:020}.json"), "{}").await;
        }
        for v in [10u32, 20] {
            put(format!("{v:020}.checkpoint.parquet"), "c").await;
        }
        put("_last_checkpoint".into(), r#"{"version":20,"size":3}"#).await;
        let probed = |from: u32| {
            let offset = log.clone().join(format!("{from:020}").as_str());
            let fs = dir.path().join("_delta_log");
            log_after(&fs, &log, &offset).map(|f| f.len())
        };
        // From the checkpoint, from a commit after it, just past the newest, from 0: probed.
        for (from, count) in [(20, 7), (22, 4), (25, 1), (0, 28)] {
            assert_eq!(probed(from), Some(count), "from {from}");
            assert_eq!(
                sorted_from(&stock, &log, &format!("{:020}", from)).await,
                sorted_from(&ours, &log, &format!("{:020}", from)).await,
                "from {from}"
            );
        }
        // A checkpoint whose commit was cleaned up: the versions after it are found too.
        std::fs::remove_file(dir.path().join("_delta_log/00000000000000000010.json")).unwrap();
        assert_eq!(probed(10), Some(17));
        assert_eq!(
            sorted_from(&stock, &log, &format!("{:020}", 10)).await,
            sorted_from(&ours, &log, &format!("{:020}", 10)).await
        );
        // Further past the newest commit: the folder is read (and gives the same).
        assert_eq!(probed(30), None);
        assert_eq!(
            sorted_from(&stock, &log, &format!("{:020}", 30)).await,
            sorted_from(&ours, &log, &format!("{:020}", 30)).await
        );
        // The checkpoint `_last_checkpoint` names is gone: the folder is read.
        std::fs::remove_file(
            dir.path()
                .join("_delta_log/00000000000000000020.checkpoint.parquet"),
        )
        .unwrap();
        assert_eq!(probed(20), None);
        assert_eq!(
            sorted_from(&stock, &log, &format!("{:020}", 20)).await,
            sorted_from(&ours, &log, &format!("{:020}", 20)).await
        );
        // A multi-part checkpoint: the folder is read.
        put(
            "_last_checkpoint".into(),
            r#"{"version":10,"size":3,"parts":2}"#,
        )
        .await;
        assert_eq!(probed(10), None);
        assert_eq!(
            sorted_from(&stock, &log, &format!("{:020}", 10)).await,
            sorted_from(&ours, &log, &format!("{:020}", 10)).await
        );
    }

    #[tokio::test]
    async fn a_listing_from_an_offset_gives_what_the_stock_store_gives() {
        let (dir, log, stock, ours) = log_folder();
        for v in 0..25u32 {
            let name = format!("{v:020}.json");
            ours.put(
                &log.clone().join(name.as_str()),
                PutPayload::from(format!("{v}")),
            )
            .await
            .unwrap();
        }
        ours.put(
            &log.clone().join("00000000000000000020.checkpoint.parquet"),
            "c".into(),
        )
        .await
        .unwrap();
        ours.put(&log.clone().join("_last_checkpoint"), "{}".into())
            .await
            .unwrap();
        for offset in ["00000000000000000020", "00000000000000000000", "zzz", "0"] {
            let (a, b) = (
                sorted_from(&stock, &log, offset).await,
                sorted_from(&ours, &log, offset).await,
            );
            assert_eq!(a, b, "from {offset}");
        }
        // Version 20's commit and checkpoint, 21 to 24, and `_last_checkpoint`.
        assert_eq!(
            sorted_from(&ours, &log, "00000000000000000020").await.len(),
            7
        );
        let all = |store: &dyn ObjectStore| {
            let stream = store.list(Some(&log));
            async move {
                let mut found: Vec<(String, u64)> = stream
                    .map_ok(|m| (m.location.to_string(), m.size))
                    .try_collect()
                    .await
                    .unwrap();
                found.sort();
                found
            }
        };
        assert_eq!(all(&stock).await, all(&ours).await);
        assert_eq!(all(&ours).await.len(), 27);
        // A folder within: the stock listing, which recurses.
        ours.put(&log.clone().join("_commits").join("x.json"), "x".into())
            .await
            .unwrap();
        assert_eq!(all(&stock).await, all(&ours).await);
        assert_eq!(all(&ours).await.len(), 28);
        // A folder that does not exist lists nothing, as the stock store.
        let absent = Path::from_filesystem_path(dir.path())
            .unwrap()
            .clone()
            .join("absent");
        let none: Vec<ObjectMeta> = ours
            .list_with_offset(Some(&absent), &absent.clone().join("0"))
            .try_collect()
            .await
            .unwrap();
        assert!(none.is_empty());
    }
}
