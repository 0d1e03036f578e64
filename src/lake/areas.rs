//! A lake spread over one container per area (`bronze`, `silver`, `gold`, and `system` for
//! `_system`), as the infrastructure creates it: the lake URL names the container `{area}`,
//! e.g. `abfss://{area}@account.dfs.core.windows.net/`. This store routes each lake path by its
//! first segment to that area's container, so the rest of tunelake sees one lake.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// The lake's areas and the container each lives in.
pub const AREAS: [(&str, &str); 4] = [
    ("bronze", "bronze"),
    ("silver", "silver"),
    ("gold", "gold"),
    ("_system", "system"),
];

/// The placeholder for the container in an area-per-container lake URL.
pub const PLACEHOLDER: &str = "{area}";

#[derive(Debug)]
struct Area {
    name: String,
    store: Arc<dyn ObjectStore>,
}

/// Routes lake paths to per-area stores.
#[derive(Debug, Clone)]
pub struct AreaStore {
    areas: Arc<Vec<Area>>,
}

impl std::fmt::Display for AreaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AreaStore({} areas)", self.areas.len())
    }
}

fn unknown_area(path: &Path) -> object_store::Error {
    object_store::Error::NotFound {
        path: path.to_string(),
        source: format!(
            "{path} is outside the lake's areas ({})",
            AREAS.map(|(a, _)| a).join(", ")
        )
        .into(),
    }
}

impl AreaStore {
    /// Builds the store from one store per area name.
    pub fn new(stores: Vec<(String, Arc<dyn ObjectStore>)>) -> Self {
        AreaStore {
            areas: Arc::new(
                stores
                    .into_iter()
                    .map(|(name, store)| Area { name, store })
                    .collect(),
            ),
        }
    }

    /// The area of a path and the path inside it.
    fn route(&self, location: &Path) -> Result<(&Area, Path)> {
        let mut parts = location.parts();
        let first = parts.next().ok_or_else(|| unknown_area(location))?;
        let area = self
            .areas
            .iter()
            .find(|a| a.name == first.as_ref())
            .ok_or_else(|| unknown_area(location))?;
        Ok((area, Path::from_iter(parts)))
    }
}

fn within(area: &str, path: &Path) -> Path {
    Path::from_iter(std::iter::once(object_store::path::PathPart::from(area)).chain(path.parts()))
}

fn meta_within(area: &str, meta: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        location: within(area, &meta.location),
        ..meta
    }
}

#[async_trait]
impl ObjectStore for AreaStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let (area, rest) = self.route(location)?;
        area.store.put_opts(&rest, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let (area, rest) = self.route(location)?;
        area.store.put_multipart_opts(&rest, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let (area, rest) = self.route(location)?;
        let mut result = area.store.get_opts(&rest, options).await?;
        result.meta = meta_within(&area.name, result.meta);
        Ok(result)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let (area, rest) = self.route(location)?;
        area.store.get_ranges(&rest, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let this = self.clone();
        locations
            .then(move |location| {
                let this = this.clone();
                async move {
                    let location = location?;
                    let (area, rest) = this.route(&location)?;
                    area.store.delete(&rest).await?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let targets: Vec<(String, Arc<dyn ObjectStore>, Option<Path>)> = match prefix {
            Some(p) if p.parts().next().is_some() => match self.route(p) {
                Ok((area, rest)) => vec![(area.name.clone(), area.store.clone(), Some(rest))],
                Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
            },
            _ => self
                .areas
                .iter()
                .map(|a| (a.name.clone(), a.store.clone(), None))
                .collect(),
        };
        futures::stream::iter(targets)
            .flat_map(|(name, store, rest)| {
                store
                    .list(rest.as_ref())
                    .map_ok(move |meta| meta_within(&name, meta))
            })
            .boxed()
    }

    /// Within one area, the area's own listing from the offset (Azure's `startFrom`), so that
    /// a listing past a cursor does not list the folder's earlier names.
    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let routed = prefix
            .filter(|p| p.parts().next().is_some())
            .and_then(|p| self.route(p).ok())
            .zip(self.route(offset).ok())
            .filter(|((area, _), (offset_area, _))| area.name == offset_area.name);
        match routed {
            Some(((area, rest), (_, rest_offset))) => {
                let name = area.name.clone();
                area.store
                    .list_with_offset(Some(&rest), &rest_offset)
                    .map_ok(move |meta| meta_within(&name, meta))
                    .boxed()
            }
            None => {
                let offset = offset.clone();
                self.list(prefix)
                    .try_filter(move |m| futures::future::ready(m.location > offset))
                    .boxed()
            }
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        match prefix {
            Some(p) if p.parts().next().is_some() => {
                let (area, rest) = self.route(p)?;
                let listed = area.store.list_with_delimiter(Some(&rest)).await?;
                Ok(ListResult {
                    common_prefixes: listed
                        .common_prefixes
                        .iter()
                        .map(|c| within(&area.name, c))
                        .collect(),
                    objects: listed
                        .objects
                        .into_iter()
                        .map(|m| meta_within(&area.name, m))
                        .collect(),
                })
            }
            _ => Ok(ListResult {
                common_prefixes: self
                    .areas
                    .iter()
                    .map(|a| Path::from(a.name.as_str()))
                    .collect(),
                objects: Vec::new(),
            }),
        }
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let (area, from_rest) = self.route(from)?;
        let (to_area, to_rest) = self.route(to)?;
        if area.name != to_area.name {
            let bytes = area.store.get(&from_rest).await?.bytes().await?;
            to_area.store.put(&to_rest, bytes.into()).await?;
            return Ok(());
        }
        area.store.copy_opts(&from_rest, &to_rest, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        let (area, from_rest) = self.route(from)?;
        let (to_area, to_rest) = self.route(to)?;
        if area.name != to_area.name {
            self.copy_opts(from, to, CopyOptions::default()).await?;
            return area.store.delete(&from_rest).await;
        }
        area.store.rename_opts(&from_rest, &to_rest, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    /// An in-memory container that answers a listing from an offset but refuses a full one,
    /// so that a listing past a cursor is seen to reach it.
    #[derive(Debug)]
    struct OffsetOnly(InMemory);

    impl std::fmt::Display for OffsetOnly {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "OffsetOnly")
        }
    }

    #[async_trait]
    impl ObjectStore for OffsetOnly {
        async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> Result<PutResult> {
            self.0.put_opts(l, p, o).await
        }
        async fn put_multipart_opts(
            &self,
            l: &Path,
            o: PutMultipartOptions,
        ) -> Result<Box<dyn MultipartUpload>> {
            self.0.put_multipart_opts(l, o).await
        }
        async fn get_opts(&self, l: &Path, o: GetOptions) -> Result<GetResult> {
            self.0.get_opts(l, o).await
        }
        fn delete_stream(
            &self,
            l: BoxStream<'static, Result<Path>>,
        ) -> BoxStream<'static, Result<Path>> {
            self.0.delete_stream(l)
        }
        fn list(&self, _: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
            let refused = object_store::Error::NotImplemented {
                operation: "a full listing".into(),
                implementer: "OffsetOnly".into(),
            };
            futures::stream::once(async move { Err(refused) }).boxed()
        }
        fn list_with_offset(
            &self,
            p: Option<&Path>,
            o: &Path,
        ) -> BoxStream<'static, Result<ObjectMeta>> {
            self.0.list_with_offset(p, o)
        }
        async fn list_with_delimiter(&self, p: Option<&Path>) -> Result<ListResult> {
            self.0.list_with_delimiter(p).await
        }
        async fn copy_opts(&self, f: &Path, t: &Path, o: CopyOptions) -> Result<()> {
            self.0.copy_opts(f, t, o).await
        }
    }

    async fn put(store: &AreaStore, path: &str, body: &'static [u8]) {
        let bytes = Bytes::from_static(body);
        store.put(&Path::from(path), bytes.into()).await.unwrap();
    }

    #[tokio::test]
    async fn paths_go_to_their_area_and_come_back_whole() {
        let bronze = Arc::new(InMemory::new());
        let system = Arc::new(InMemory::new());
        let store = AreaStore::new(vec![
            ("bronze".into(), bronze.clone() as Arc<dyn ObjectStore>),
            ("_system".into(), system.clone() as Arc<dyn ObjectStore>),
        ]);
        put(&store, "bronze/DimUser/a.parquet", b"x").await;
        put(&store, "_system/outbox/r.json", b"y").await;
        assert!(bronze.head(&Path::from("DimUser/a.parquet")).await.is_ok());
        assert!(system.head(&Path::from("outbox/r.json")).await.is_ok());
        let listed: Vec<String> = store
            .list(Some(&Path::from("bronze")))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(listed, ["bronze/DimUser/a.parquet"]);
        let top = store.list_with_delimiter(None).await.unwrap();
        assert_eq!(top.common_prefixes.len(), 2);
        let got = store
            .get(&Path::from("_system/outbox/r.json"))
            .await
            .unwrap();
        assert_eq!(got.meta.location.to_string(), "_system/outbox/r.json");
        assert!(store.get(&Path::from("platinum/x")).await.is_err());
    }

    #[tokio::test]
    async fn a_listing_from_an_offset_is_the_area_s_own() {
        let store = AreaStore::new(vec![(
            "bronze".into(),
            Arc::new(OffsetOnly(InMemory::new())) as Arc<dyn ObjectStore>,
        )]);
        put(&store, "bronze/DimUser/a.parquet", b"x").await;
        put(&store, "bronze/DimUser/b.parquet", b"z").await;
        let after = |offset: &str| {
            store
                .list_with_offset(Some(&Path::from("bronze/DimUser")), &Path::from(offset))
                .map_ok(|m| m.location.to_string())
                .try_collect::<Vec<String>>()
        };
        assert_eq!(
            after("bronze/DimUser/a.parquet").await.unwrap(),
            ["bronze/DimUser/b.parquet"]
        );
        assert_eq!(after("bronze/DimUser/a").await.unwrap().len(), 2);
        // An offset in another area cannot go to one container: the folder is listed in full
        // (which this container refuses).
        assert!(after("_system/x").await.is_err());
    }
}
