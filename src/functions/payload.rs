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

    fn metadata_text(&self, key: &str) -> Option<String> {
        match decode(self.metadata.get(key)?) {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The lake path of the triggering blob, `bronze/<Table>/<file>`: from `Metadata.Uri`
    /// (from its `bronze/` segment on) or `Metadata.name` (relative to the trigger's
    /// `.../bronze/` path).
    pub fn blob_path(&self) -> Option<String> {
        if let Some(uri) = self.metadata_text("Uri")
            && let Ok(url) = url::Url::parse(&uri)
        {
            let path = percent_decode(url.path());
            if let Some(i) = path.rfind(&format!("/{}/", crate::lake::layout::BRONZE)) {
                return Some(path[i + 1..].to_string());
            }
            return Some(path.trim_start_matches('/').to_string());
        }
        let name = self.metadata_text("name")?;
        Some(crate::lake::layout::in_bronze(&name))
    }

    /// The queue message bound as `binding`, as `T`: JSON, JSON inside a JSON string, or
    /// base64 of either.
    pub fn queue_item<T: DeserializeOwned>(&self, binding: &str) -> Result<T, String> {
        let field = format!("Data.{binding}");
        let raw = self
            .data
            .get(binding)
            .ok_or_else(|| format!("payload field {field} is missing"))?;
        let mut value = decode(raw);
        if let Value::String(text) = &value
            && let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text.trim())
            && let Ok(inner) = serde_json::from_slice::<Value>(&bytes)
        {
            value = decode(&inner);
        }
        serde_json::from_value(value).map_err(|e| format!("payload field {field}: {e}"))
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

    #[test]
    fn blob_paths_come_from_the_uri_or_the_name() {
        let inv = Invocation::parse(
            br#"{"Data":{},"Metadata":{"Uri":"\"https://acct.blob.core.windows.net/lake/demo/bronze/DimUser/DimUser_a%20b.parquet\"","name":"\"x\""}}"#,
        )
        .unwrap();
        assert_eq!(
            inv.blob_path().unwrap(),
            "bronze/DimUser/DimUser_a b.parquet"
        );
        let inv = Invocation::parse(br#"{"Data":{},"Metadata":{"name":"\"DimUser/f.parquet\""}}"#)
            .unwrap();
        assert_eq!(inv.blob_path().unwrap(), "bronze/DimUser/f.parquet");
        let inv = Invocation::parse(br#"{"Data":{},"Metadata":{}}"#).unwrap();
        assert_eq!(inv.blob_path(), None);
    }
}
