//! Leases: one writer per table and stage at a time, across processes and hosts.
//!
//! Ingest reads a watermark, cleans up what a crashed run left and writes a new window; two
//! runs of one table at once (two timer instances, the CLI beside the Function App) could
//! remove each other's files or move the watermark twice. A lease serializes them: the
//! second run waits for the first to finish, then finds its window already extracted.
//!
//! On a local lake the lease is an advisory lock (`flock`) on `_system/leases/<stage>/<table>.lock`,
//! which the kernel releases when its process dies, even by `kill -9`. On object stores it is
//! an object created only if absent (`PutMode::Create`) holding an expiry, renewed while the
//! work goes on and taken over, by a conditional update on its ETag, once it has expired.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::Lake;
use super::layout::{self, Stage};
use crate::error::{Error, Result};

/// How long an object-store lease lives without renewal: long enough to ride out a slow
/// store, short enough that a host that died frees its tables soon.
const TTL: Duration = Duration::from_secs(120);
/// How often a waiting run looks again.
const POLL: Duration = Duration::from_millis(200);

/// Who holds a lease, as written into it (for the error a waiting run gives up with).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Holder {
    run_id: String,
    pid: u32,
    since: DateTime<Utc>,
    expires: DateTime<Utc>,
}

impl Holder {
    fn new(run_id: &str) -> Self {
        let now = Utc::now();
        Holder {
            run_id: run_id.to_string(),
            pid: std::process::id(),
            since: now,
            expires: now + TTL,
        }
    }

    fn describe(text: &[u8]) -> String {
        serde_json::from_slice::<Holder>(text)
            .map(|h| format!("run {} (process {}, since {})", h.run_id, h.pid, h.since))
            .unwrap_or_else(|_| "another run".to_string())
    }
}

/// A held lease; dropping it releases it.
pub struct Lease {
    kind: Kind,
}

enum Kind {
    /// The open, locked file: closing it unlocks.
    Local(#[expect(dead_code, reason = "held for its lock")] std::fs::File),
    Object {
        store: Arc<dyn ObjectStore>,
        path: String,
        renewal: JoinHandle<()>,
    },
    Released,
}

impl Lease {
    /// Takes the lease of `table` in `stage`, waiting up to `wait` for another holder to
    /// finish; past that, an error naming the table and the holder.
    pub async fn acquire(
        lake: &Lake,
        stage: Stage,
        table: &str,
        run_id: &str,
        wait: Duration,
    ) -> Result<Lease> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut announced = false;
        loop {
            let attempt = match lake.local_path(&layout::lease(stage, table)) {
                Some(file) => try_local(file.with_extension("lock"), run_id).await?,
                None => {
                    let path = format!("{}.json", layout::lease(stage, table));
                    try_object(lake.store(), &path, run_id).await?
                }
            };
            let holder = match attempt {
                Ok(kind) => return Ok(Lease { kind }),
                Err(holder) => holder,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Busy {
                    table: table.to_string(),
                    stage: stage.to_string(),
                    holder,
                    waited: wait.as_secs(),
                });
            }
            if !announced {
                info!(%holder, "Waiting for another run of this table to finish.");
                announced = true;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Releases the lease now (dropping it does the same, in the background on object stores).
    pub async fn release(mut self) {
        if let Kind::Object {
            store,
            path,
            renewal,
        } = std::mem::replace(&mut self.kind, Kind::Released)
        {
            renewal.abort();
            if let Err(e) = store.delete(&Path::from(path.as_str())).await {
                warn!(error = %e, "The lease could not be removed; it expires by itself.");
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Kind::Object {
            store,
            path,
            renewal,
        } = std::mem::replace(&mut self.kind, Kind::Released)
        {
            renewal.abort();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { store.delete(&Path::from(path.as_str())).await });
            }
        }
    }
}

/// Locks the file, or says who holds it.
async fn try_local(
    file: std::path::PathBuf,
    run_id: &str,
) -> Result<std::result::Result<Kind, String>> {
    let run_id = run_id.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, Write};
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut handle = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&file)
            .map_err(|e| Error::io(&file, e))?;
        match handle.try_lock() {
            Ok(()) => {
                let text = serde_json::to_vec(&Holder::new(&run_id)).unwrap_or_default();
                handle
                    .set_len(0)
                    .and_then(|()| handle.rewind())
                    .and_then(|()| handle.write_all(&text))
                    .map_err(|e| Error::io(&file, e))?;
                Ok(Ok(Kind::Local(handle)))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = Vec::new();
                handle
                    .read_to_end(&mut text)
                    .map_err(|e| Error::io(&file, e))?;
                Ok(Err(Holder::describe(&text)))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&file, e)),
        }
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))?
}

/// Creates the lease object, or takes over an expired one; otherwise says who holds it.
async fn try_object(
    store: Arc<dyn ObjectStore>,
    path: &str,
    run_id: &str,
) -> Result<std::result::Result<Kind, String>> {
    let location = Path::from(path);
    let body = || {
        PutPayload::from_bytes(Bytes::from(
            serde_json::to_vec(&Holder::new(run_id)).unwrap_or_default(),
        ))
    };
    let created = store
        .put_opts(&location, body(), PutMode::Create.into())
        .await;
    let taken = match created {
        Ok(result) => result,
        Err(object_store::Error::AlreadyExists { .. }) => {
            let current = match store.get(&location).await {
                Ok(current) => current,
                // Released between the two calls: try again at once.
                Err(object_store::Error::NotFound { .. }) => {
                    return Ok(Err("a run that just finished".to_string()));
                }
                Err(e) => return Err(Error::lake(path, e)),
            };
            let version = UpdateVersion {
                e_tag: current.meta.e_tag.clone(),
                version: current.meta.version.clone(),
            };
            let text = current.bytes().await.map_err(|e| Error::lake(path, e))?;
            let expired = serde_json::from_slice::<Holder>(&text)
                .map(|h| h.expires < Utc::now())
                .unwrap_or(true);
            if !expired {
                return Ok(Err(Holder::describe(&text)));
            }
            warn!(holder = %Holder::describe(&text), "Taking over an expired lease.");
            match store
                .put_opts(&location, body(), PutMode::Update(version).into())
                .await
            {
                Ok(result) => result,
                Err(object_store::Error::Precondition { .. }) => {
                    return Ok(Err("a run that took the expired lease first".to_string()));
                }
                Err(e) => return Err(Error::lake(path, e)),
            }
        }
        Err(e) => return Err(Error::lake(path, e)),
    };
    let renewal = tokio::spawn(renew(
        store.clone(),
        path.to_string(),
        run_id.to_string(),
        UpdateVersion {
            e_tag: taken.e_tag,
            version: taken.version,
        },
    ));
    Ok(Ok(Kind::Object {
        store,
        path: path.to_string(),
        renewal,
    }))
}

/// Moves the lease's expiry forward while its work goes on.
async fn renew(
    store: Arc<dyn ObjectStore>,
    path: String,
    run_id: String,
    mut version: UpdateVersion,
) {
    let location = Path::from(path.as_str());
    loop {
        tokio::time::sleep(TTL / 3).await;
        let body = PutPayload::from_bytes(Bytes::from(
            serde_json::to_vec(&Holder::new(&run_id)).unwrap_or_default(),
        ));
        let options = PutOptions::from(PutMode::Update(version.clone()));
        match store.put_opts(&location, body, options).await {
            Ok(result) => {
                version = UpdateVersion {
                    e_tag: result.e_tag,
                    version: result.version,
                }
            }
            Err(e) => {
                warn!(lease = %path, error = %e, "The lease could not be renewed.");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_holder_waits_and_gives_up_naming_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let first = Lease::acquire(&lake, Stage::Ingest, "DimUser", "run-a", Duration::ZERO)
            .await
            .unwrap();
        let err = Lease::acquire(
            &lake,
            Stage::Ingest,
            "DimUser",
            "run-b",
            Duration::from_millis(300),
        )
        .await
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("DimUser") && err.contains("run-a") && err.contains("ingest"),
            "{err}"
        );
        // Another table is free.
        Lease::acquire(&lake, Stage::Ingest, "DimTrack", "run-b", Duration::ZERO)
            .await
            .unwrap()
            .release()
            .await;
        // Once released, the waiting run gets it.
        let waiting = tokio::spawn({
            let lake = lake.clone();
            async move {
                Lease::acquire(
                    &lake,
                    Stage::Ingest,
                    "DimUser",
                    "run-b",
                    Duration::from_secs(10),
                )
                .await
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished());
        first.release().await;
        assert!(waiting.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn an_object_lease_is_created_once_refused_while_held_and_taken_over_when_expired() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let path = "_system/leases/gold/dim_user.json";
        let held = try_object(store.clone(), path, "run-a").await.unwrap();
        let Ok(first) = held else {
            panic!("the first run gets it")
        };
        let refused = try_object(store.clone(), path, "run-b").await.unwrap();
        assert!(
            matches!(&refused, Err(holder) if holder.contains("run-a")),
            "{:?}",
            refused.err()
        );
        drop(Lease { kind: first });
        // Released: the next run creates it afresh.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Ok(second) = try_object(store.clone(), path, "run-b").await.unwrap() else {
            panic!("released")
        };
        // A holder that died leaves an expired lease: it is taken over by a conditional write.
        std::mem::forget(Lease { kind: second });
        let dead = Holder {
            run_id: "run-dead".into(),
            pid: 1,
            since: Utc::now() - TTL * 3,
            expires: Utc::now() - TTL,
        };
        store
            .put(
                &Path::from(path),
                PutPayload::from(serde_json::to_vec(&dead).unwrap()),
            )
            .await
            .unwrap();
        let Ok(taken) = try_object(store.clone(), path, "run-c").await.unwrap() else {
            panic!("an expired lease is taken over")
        };
        let now: Holder = serde_json::from_slice(
            &store
                .get(&Path::from(path))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(now.run_id, "run-c");
        Lease { kind: taken }.release().await;
        assert!(store.head(&Path::from(path)).await.is_err(), "released");
    }
}
