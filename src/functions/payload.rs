//! The host's invocation payload, `{"Data": {...}, "Metadata": {...}}`, decoded tolerantly:
//! hosts serialize strings (and numbers, and URIs) to JSON text a second time, and queue
//! messages may arrive base64-encoded.

use base64::Engine;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::http::Request;

/// One invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    pub data: Map<String, Value>,
    pub metadata: Map<String, Value>,
}

/// A value with JSON text inside strings unwrapped (at most twice: the host's double
/// encoding of a JSON message).
pub fn decode(value: &Value) -> Value {
    let mut current = value.clone();
    for _ in 0..2 {
        match &current {
            Value::String(text) => match serde_json::from_str::<Value>(text) {
                Ok(inner) => current = inner,
                Err(_) => break,
            },
            _ => break,
        }
    }
    current
}

impl Invocation {
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| format!("the invocation payload is not JSON: {e}"))?;
        let Value::Object(mut root) = value else {
            return Err(
                "the invocation payload must be a JSON object {Data, Metadata}".to_string(),
            );
        };
        let data = match root.remove("Data") {
            Some(Value::Object(d)) => d,
            Some(_) => return Err("payload field Data must be an object".to_string()),
            None => return Err("payload field Data is missing".to_string()),
        };
        let metadata = match root.remove("Metadata") {
            Some(Value::Object(m)) => m,
            None | Some(Value::Null) => Map::new(),
            Some(_) => return Err("payload field Metadata must be an object".to_string()),
        };
        Ok(Invocation { data, metadata })
    }

    /// The queue message bound as `binding`, as `T`: JSON, JSON inside a JSON string, or
    /// base64 of either.
    pub fn queue_item<T: DeserializeOwned>(&self, binding: &str) -> Result<T, String> {
        let value = self.queue_value(binding)?;
        serde_json::from_value(value).map_err(|e| format!("payload field Data.{binding}: {e}"))
    }

    fn queue_value(&self, binding: &str) -> Result<Value, String> {
        let raw = self
            .data
            .get(binding)
            .ok_or_else(|| format!("payload field Data.{binding} is missing"))?;
        let mut value = decode(raw);
        if let Value::String(text) = &value
            && let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text.trim())
            && let Ok(inner) = serde_json::from_slice::<Value>(&bytes)
        {
            value = decode(&inner);
        }
        Ok(value)
    }

    /// The storage events of a queue message bound as `binding`: one Event Grid event (its
    /// own schema or CloudEvents), or an array of them.
    pub fn blob_events(&self, binding: &str) -> Result<Vec<BlobEvent>, String> {
        let events = match self.queue_value(binding)? {
            Value::Array(events) => events,
            event => vec![event],
        };
        events
            .iter()
            .enumerate()
            .map(|(i, event)| {
                BlobEvent::parse(event)
                    .map_err(|e| format!("payload field Data.{binding}, event {i}: {e}"))
            })
            .collect()
    }

    /// The HTTP request of an HTTP trigger sent without forwarding (`Data.req`).
    pub fn http_request(&self) -> Request {
        let req = self.data.get("req").map(decode).unwrap_or(Value::Null);
        let text = |key: &str| match req.get(key).map(decode) {
            Some(Value::String(s)) => s,
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        let query = match req.get("Query").map(decode) {
            Some(Value::Object(q)) => q
                .into_iter()
                .map(|(k, v)| {
                    let v = match decode(&v) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, v)
                })
                .collect(),
            _ => Vec::new(),
        };
        let url_path = url::Url::parse(&text("Url"))
            .map(|u| u.path().to_string())
            .unwrap_or_default();
        Request {
            method: text("Method"),
            path: url_path,
            query,
            headers: Vec::new(),
            body: Bytes::from(text("Body")),
        }
    }
}

/// One storage event, as Event Grid delivers it to the `bronze-events` queue.
#[derive(Debug, Clone, PartialEq)]
pub struct BlobEvent {
    /// `Microsoft.Storage.BlobCreated`, ...
    pub event_type: String,
    /// The storage operation (`PutBlob`, `PutBlockList`, `CreateFile`, `FlushWithClose`...).
    pub api: Option<String>,
    /// The blob's path from its container on (`bronze/DimUser/...parquet`), decoded.
    pub path: String,
}

impl BlobEvent {
    fn parse(event: &Value) -> Result<Self, String> {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(String::from);
        let event_type = text(event.get("eventType"))
            .or_else(|| text(event.get("type")))
            .ok_or("no eventType (or CloudEvents type)")?;
        let data = event.get("data");
        let api = text(data.and_then(|d| d.get("api")));
        let path = if let Some(url) = text(data.and_then(|d| d.get("url"))) {
            let url = url::Url::parse(&url).map_err(|e| format!("data.url {url:?}: {e}"))?;
            percent_decode(url.path())
        } else if let Some(subject) = text(event.get("subject")) {
            // `/blobServices/default/containers/<container>/blobs/<name>`
            let rest = subject
                .strip_prefix("/blobServices/default/containers/")
                .ok_or_else(|| format!("subject {subject:?} does not name a blob"))?;
            let (container, name) = rest
                .split_once("/blobs/")
                .ok_or_else(|| format!("subject {subject:?} does not name a blob"))?;
            format!("/{container}/{name}")
        } else {
            return Err("neither data.url nor subject".to_string());
        };
        Ok(BlobEvent {
            event_type,
            api,
            path: from_area(&path, crate::lake::layout::BRONZE),
        })
    }

    /// Whether the event says a whole new blob is there: created by a single put or a block
    /// list, or (on a hierarchical namespace) flushed and closed; `CreateFile` announces an
    /// empty file that a `FlushWithClose` completes.
    pub fn is_complete_blob(&self) -> bool {
        let created = matches!(
            self.event_type.as_str(),
            "Microsoft.Storage.BlobCreated" | "BlobCreated"
        );
        created
            && self.api.as_deref().is_none_or(|api| {
                matches!(
                    api,
                    "PutBlob" | "PutBlockList" | "FlushWithClose" | "CopyBlob" | "PutBlockFromURL"
                )
            })
    }
}

/// `path` (a URL path) from its `area` segment on: `bronze/<Table>/<file>` from
/// `/bronze/<Table>/<file>` (a container per area) or `/lake/prefix/bronze/...` (one
/// container); a path without the segment comes back as it is, without the leading `/`.
fn from_area(path: &str, area: &str) -> String {
    match path.find(&format!("/{area}/")) {
        Some(i) => path[i + 1..].to_string(),
        None => path.trim_start_matches('/').to_string(),
    }
}

fn percent_decode(path: &str) -> String {
    form_urlencoded::parse(format!("p={}", path.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::silver::GoldWorkItem;

    #[test]
    fn doubly_encoded_and_base64_queue_messages_decode_to_the_same_item() {
        let want = GoldWorkItem {
            table: "users".into(),
            version: 3,
        };
        let plain = r#"{"table":"users","version":3}"#;
        let b64 = base64::engine::general_purpose::STANDARD.encode(plain);
        for data in [
            serde_json::json!({ "work": { "table": "users", "version": 3 } }),
            serde_json::json!({ "work": plain }),
            serde_json::json!({ "work": serde_json::to_string(plain).unwrap() }),
            serde_json::json!({ "work": b64 }),
            serde_json::json!({ "work": serde_json::to_string(&b64).unwrap() }),
        ] {
            let body = serde_json::json!({ "Data": data, "Metadata": {} }).to_string();
            let inv = Invocation::parse(body.as_bytes()).unwrap();
            assert_eq!(
                inv.queue_item::<GoldWorkItem>("work").unwrap(),
                want,
                "{body}"
            );
        }
    }

    #[test]
    fn malformed_payloads_name_the_field() {
        assert!(Invocation::parse(b"[]").unwrap_err().contains("object"));
        assert!(Invocation::parse(b"{}").unwrap_err().contains("Data"));
        let inv = Invocation::parse(br#"{"Data":{"work":"{\"table\":1}"}}"#).unwrap();
        let err = inv.queue_item::<GoldWorkItem>("work").unwrap_err();
        assert!(err.contains("Data.work"), "{err}");
        assert!(
            inv.queue_item::<GoldWorkItem>("other")
                .unwrap_err()
                .contains("Data.other")
        );
    }

    fn event(value: serde_json::Value) -> Result<Vec<BlobEvent>, String> {
        let body = serde_json::json!({ "Data": { "event": value }, "Metadata": {} }).to_string();
        Invocation::parse(body.as_bytes())
            .unwrap()
            .blob_events("event")
    }

    #[test]
    fn storage_events_give_the_bronze_path_in_every_encoding_and_schema() {
        let grid = serde_json::json!({
            "topic": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/storageAccounts/a",
            "subject": "/blobServices/default/containers/bronze/blobs/DimUser/DimUser_1_2_00000.parquet",
            "eventType": "Microsoft.Storage.BlobCreated",
            "id": "1", "eventTime": "2026-12-07T10:00:00Z",
            "data": { "api": "PutBlockList",
                      "url": "https://a.blob.core.windows.net/bronze/DimUser/DimUser_1_2_00000.parquet",
                      "contentLength": 1234, "blobType": "BlockBlob" },
            "dataVersion": "", "metadataVersion": "1"
        });
        let want = BlobEvent {
            event_type: "Microsoft.Storage.BlobCreated".into(),
            api: Some("PutBlockList".into()),
            path: "bronze/DimUser/DimUser_1_2_00000.parquet".into(),
        };
        let text = grid.to_string();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&text);
        for message in [
            grid.clone(),
            serde_json::json!(text),
            serde_json::json!(serde_json::to_string(&text).unwrap()),
            serde_json::json!(b64),
            serde_json::json!([grid.clone()]),
        ] {
            assert_eq!(
                event(message.clone()).unwrap(),
                vec![want.clone()],
                "{message}"
            );
        }
        // The subject alone; a CloudEvent; a single-container lake; an escaped name.
        let mut no_url = grid.clone();
        no_url["data"].as_object_mut().unwrap().remove("url");
        assert_eq!(event(no_url).unwrap()[0].path, want.path);
        let cloud = serde_json::json!({ "type": "Microsoft.Storage.BlobCreated", "subject": grid["subject"], "data": { "api": "PutBlob" } });
        assert_eq!(event(cloud).unwrap()[0].path, want.path);
        let mut prefixed = grid.clone();
        prefixed["data"]["url"] = serde_json::json!(
            "https://a.blob.core.windows.net/lake/demo/bronze/DimUser/a%20b.parquet"
        );
        assert_eq!(
            event(prefixed).unwrap()[0].path,
            "bronze/DimUser/a b.parquet"
        );
    }

    #[test]
    fn only_complete_new_blobs_are_loaded_and_bad_events_name_the_field() {
        let of = |kind: &str, api: &str| {
            event(serde_json::json!({ "eventType": kind, "subject": "/blobServices/default/containers/bronze/blobs/T/f.parquet", "data": { "api": api } }))
                .unwrap()[0]
                .is_complete_blob()
        };
        assert!(of("Microsoft.Storage.BlobCreated", "PutBlob"));
        assert!(of("Microsoft.Storage.BlobCreated", "FlushWithClose"));
        assert!(!of("Microsoft.Storage.BlobCreated", "CreateFile"));
        assert!(!of("Microsoft.Storage.BlobDeleted", "DeleteBlob"));
        let err = event(serde_json::json!({ "subject": "x" })).unwrap_err();
        assert!(
            err.contains("Data.event") && err.contains("eventType"),
            "{err}"
        );
        let err = event(serde_json::json!({ "eventType": "Microsoft.Storage.BlobCreated", "subject": "/elsewhere" })).unwrap_err();
        assert!(err.contains("subject"), "{err}");
        let body = br#"{"Data":{},"Metadata":{}}"#;
        let err = Invocation::parse(body)
            .unwrap()
            .blob_events("event")
            .unwrap_err();
        assert!(err.contains("Data.event"), "{err}");
    }
}
