//! Watermark files, `bronze/_watermarks/<Table>.json`: the last value extracted per table.
//!
//! A watermark is written only after the window's parquet files are durable, so the file is
//! the proof of what bronze holds; a file that cannot be read stops that table, never resets it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Lake;
use super::layout;
use crate::error::{Error, Result};
use crate::window::{Bound, BoundKind};

/// The stored watermark of one table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watermark {
    /// The watermark column it was taken from.
    pub column: String,
    /// `integer`, `date` or `timestamp`.
    #[serde(rename = "type")]
    pub kind: BoundKind,
    /// The highest value extracted, in canonical text form.
    pub value: String,
    /// The run that wrote it.
    pub run_id: String,
    /// Rows extracted by that run's window.
    pub rows: u64,
    /// When it was written.
    pub at: DateTime<Utc>,
}

impl Watermark {
    /// The typed value.
    pub fn bound(&self) -> Result<Bound> {
        self.kind.parse(&self.value)
    }
}

/// Reads a table's watermark: `None` when the table was never extracted. A file that exists
/// but is unreadable, or is for another column or type, is an error naming the file.
pub async fn read(
    lake: &Lake,
    table: &str,
    column: &str,
    kind: BoundKind,
) -> Result<Option<Watermark>> {
    let file = layout::watermark(table);
    let Some(bytes) = lake.get_opt(&file).await? else {
        return Ok(None);
    };
    let unreadable = |reason: String| Error::WatermarkUnreadable {
        file: format!("{}/{file}", lake.url().trim_end_matches('/')),
        reason,
    };
    let wm: Watermark = serde_json::from_slice(&bytes).map_err(|e| unreadable(e.to_string()))?;
    if wm.column != column || wm.kind != kind {
        return Err(unreadable(format!(
            "it is for column {} ({:?}) but the pipeline file says {column} ({kind:?}); move the file aside to re-extract from the start",
            wm.column, wm.kind
        )));
    }
    wm.bound().map_err(|e| unreadable(e.to_string()))?;
    Ok(Some(wm))
}

/// Writes a table's watermark durably.
pub async fn write(lake: &Lake, table: &str, watermark: &Watermark) -> Result<()> {
    let mut bytes =
        serde_json::to_vec_pretty(watermark).map_err(|e| Error::WatermarkUnreadable {
            file: layout::watermark(table),
            reason: e.to_string(),
        })?;
    bytes.push(b'\n');
    lake.put(&layout::watermark(table), bytes.into()).await
}

/// Every stored watermark, by table name (for `status`).
pub async fn read_all(
    lake: &Lake,
) -> Result<Vec<(String, std::result::Result<Watermark, String>)>> {
    let mut out = Vec::new();
    for meta in lake.list(layout::WATERMARKS).await? {
        let name = meta.location.filename().unwrap_or_default().to_string();
        let Some(table) = name.strip_suffix(".json") else {
            continue;
        };
        let parsed = match lake.get_opt(meta.location.as_ref()).await? {
            Some(bytes) => serde_json::from_slice::<Watermark>(&bytes).map_err(|e| e.to_string()),
            None => Err("vanished while reading".to_string()),
        };
        out.push((table.to_string(), parsed));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Watermark {
        Watermark {
            column: "updated_at".into(),
            kind: BoundKind::Timestamp,
            value: "2024-06-30T12:00:00.000000Z".into(),
            run_id: "r1".into(),
            rows: 10,
            at: DateTime::from_timestamp(1_750_000_000, 0).unwrap(),
        }
    }

    #[tokio::test]
    async fn watermarks_round_trip_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(
            read(&lake, "DimUser", "updated_at", BoundKind::Timestamp)
                .await
                .unwrap(),
            None
        );
        write(&lake, "DimUser", &sample()).await.unwrap();
        let back = read(&lake, "DimUser", "updated_at", BoundKind::Timestamp)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, sample());
        assert_eq!(
            back.bound().unwrap(),
            BoundKind::Timestamp.parse("2024-06-30T12:00:00").unwrap()
        );

        let err = read(&lake, "DimUser", "created_at", BoundKind::Timestamp)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("created_at"), "{err}");

        lake.put(
            &layout::watermark("DimUser"),
            bytes::Bytes::from_static(b"{not json"),
        )
        .await
        .unwrap();
        let err = read(&lake, "DimUser", "updated_at", BoundKind::Timestamp)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("bronze/_watermarks/DimUser.json"), "{err}");
    }
}
