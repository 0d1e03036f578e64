//! Where gold stands, read without building: each table's version and the silver version it
//! consumed (`tunelake status`), and whether a gold work item is already covered.

use serde::Serialize;

use super::{recorded, report_for};
use crate::config::Pipeline;
use crate::error::Result;
use crate::lake::{Lake, layout};

/// Where one gold table stands: its version, and the silver version it has consumed.
#[derive(Debug, Clone, Serialize)]
pub struct TableState {
    /// The gold table or view.
    pub table: String,
    /// `dimension`, `fact` or `view`.
    pub kind: String,
    /// Its Delta version.
    pub version: Option<u64>,
    /// The silver table it is built from (none for views).
    pub source: Option<String>,
    /// The silver version it has consumed.
    pub consumed: Option<i64>,
}

/// The state of every gold table and view of the pipeline, for `tunelake status`.
pub async fn state(lake: &Lake, pipeline: &Pipeline) -> Result<Vec<TableState>> {
    let mut out = Vec::new();
    for t in &pipeline.tables {
        let Some(g) = &t.gold else { continue };
        let table = lake.delta_table(&layout::gold_table(&g.name)).await?;
        let silver = t.silver_name();
        out.push(TableState {
            table: g.name.clone(),
            kind: report_for(t).kind,
            version: table.version(),
            consumed: recorded(&table, &layout::app_id::gold_consumed(&silver), &g.name).await?,
            source: Some(silver),
        });
    }
    for v in &pipeline.views {
        let table = lake.delta_table(&layout::gold_table(&v.name)).await?;
        out.push(TableState {
            table: v.name.clone(),
            kind: "view".to_string(),
            version: table.version(),
            source: None,
            consumed: None,
        });
    }
    Ok(out)
}

/// Whether gold already holds silver table `silver` at `version`: its gold table consumed that
/// version or a later one, and every view recorded reading that gold table as it stands now.
/// A work item it covers needs no build (a redelivery, or one of a burst of commits the first
/// build took in); anything unsure answers `false` and the item builds as usual.
pub async fn covers(lake: &Lake, pipeline: &Pipeline, silver: &str, version: u64) -> Result<bool> {
    let Some(g) = (pipeline.tables.iter())
        .find(|t| t.silver_name() == silver)
        .and_then(|t| t.gold.as_ref())
    else {
        return Ok(false);
    };
    let table = lake.delta_table(&layout::gold_table(&g.name)).await?;
    let (Some(current), Some(consumed)) = (
        table.version(),
        recorded(&table, &layout::app_id::gold_consumed(silver), &g.name).await?,
    ) else {
        return Ok(false);
    };
    if consumed < version as i64 {
        return Ok(false);
    }
    let input = layout::app_id::view_input(&format!("gold.{}", g.name));
    for view in &pipeline.views {
        let target = lake.delta_table(&layout::gold_table(&view.name)).await?;
        if target.version().is_none() {
            return Ok(false);
        }
        let all = crate::lake::transactions::cached(&target).await;
        let read = match all {
            Some(all) => all.get(&input).copied(),
            None => recorded(&target, &input, &view.name).await?,
        };
        if read.is_some_and(|r| r < current as i64) {
            return Ok(false);
        }
    }
    Ok(true)
}
