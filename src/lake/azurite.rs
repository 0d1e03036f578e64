//! Azurite, the storage emulator: creates the lake's container when it is missing, since
//! object_store and delta-rs cannot and a local run should not need another tool first. Only
//! ever used with the emulator's well-known development account; in Azure the containers come
//! from the infrastructure templates.

use base64::Engine;

use crate::error::{Error, Result};

/// The emulator's published development account and key (not a secret).
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const VERSION: &str = "2021-08-06";

/// True when the Azure settings point at the emulator.
pub fn in_use() -> bool {
    std::env::var("AZURE_STORAGE_USE_EMULATOR")
        .is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The emulator's blob endpoint, as object_store finds it.
fn endpoint() -> String {
    std::env::var("AZURITE_BLOB_STORAGE_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:10000".to_string())
        .trim_end_matches('/')
        .to_string()
}

/// The Shared Key signature of a Create Container request.
fn signature(container: &str, date: &str) -> Result<String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(KEY)
        .map_err(|e| Error::Task(format!("emulator key: {e}")))?;
    let to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{VERSION}\n/{ACCOUNT}/{ACCOUNT}/{container}\nrestype:container"
    );
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
        to_sign.as_bytes(),
    );
    Ok(base64::engine::general_purpose::STANDARD.encode(tag.as_ref()))
}

/// Creates `container` on the emulator unless it exists.
pub async fn ensure_container(container: &str) -> Result<()> {
    let date = chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let url = format!("{}/{ACCOUNT}/{container}?restype=container", endpoint());
    let unreachable = |reason: String| Error::LakeUrl {
        url: url.clone(),
        reason,
    };
    let response = reqwest::Client::new()
        .put(&url)
        .header("x-ms-date", &date)
        .header("x-ms-version", VERSION)
        .header("Content-Length", "0")
        .header(
            "Authorization",
            format!("SharedKey {ACCOUNT}:{}", signature(container, &date)?),
        )
        .send()
        .await
        .map_err(|e| unreachable(format!("the storage emulator does not answer: {e}")))?;
    match response.status().as_u16() {
        201 | 409 => Ok(()),
        status => Err(unreachable(format!(
            "the storage emulator refused to create container {container}: HTTP {status}"
        ))),
    }
}
