//! The run report (`tunelake report`, and the end of `demo`): one self-contained HTML file about
//! one run, built from the event log, the pipeline file and what gold holds now. This module
//! gathers the facts; `lineage` draws the graph, `chart` the streams per day, `html` the page.

mod chart;
mod html;
mod lineage;

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use serde_json::Value;

use crate::config::{Action, Pipeline, gold::GoldKind};
use crate::error::{Error, Result};
use crate::lake::events::{self, Event};
use crate::lake::{Lake, watermark};

/// Everything the page shows.
#[derive(Debug, Clone)]
pub struct Report {
    pub run_id: String,
    pub lake: String,
    /// The run's events, in the order they were written.
    pub events: Vec<Event>,
    pub quality: Vec<QualityRow>,
    pub dimensions: Vec<DimensionRow>,
    /// Days and streams per day of the first fact table, as gold holds it now.
    pub per_day: Option<PerDay>,
    pub watermarks: Vec<WatermarkRow>,
    /// The latest runs of the lake, newest first (this one among them).
    pub recent: Vec<events::RunSummary>,
    /// The lineage: one node per table and stage, edges from each to the next.
    pub nodes: Vec<Node>,
    pub edges: Vec<(usize, usize)>,
}

/// One box of the lineage graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// `source`, `bronze`, `silver`, `gold` or `view`.
    pub layer: &'static str,
    pub name: String,
    /// This run's event for it, if the run touched it.
    pub event: Option<Event>,
}

impl Node {
    /// `ok`, `empty`, `failed`, or `not run` when this run had no event for it.
    pub fn status(&self) -> &str {
        self.event.as_ref().map_or("not run", |e| e.status.as_str())
    }

    /// A stable id, also the node's `data-node` attribute in the page.
    pub fn id(&self) -> String {
        format!("{}:{}", self.layer, self.name)
    }
}

/// One expectation of one silver table in this run.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityRow {
    pub table: String,
    pub rule: String,
    pub expression: String,
    pub action: String,
    pub rows_in: i64,
    pub broken: i64,
}

/// What this run did to one dimension, and what it holds now.
#[derive(Debug, Clone, PartialEq)]
pub struct DimensionRow {
    pub table: String,
    pub scd_type: u8,
    pub changes_in: i64,
    pub inserted: i64,
    pub closed: i64,
    pub deleted: i64,
    pub versions_now: Option<i64>,
    pub current_now: Option<i64>,
}

/// Streams per day of a fact table.
#[derive(Debug, Clone, PartialEq)]
pub struct PerDay {
    pub table: String,
    pub days: Vec<(chrono::NaiveDate, i64)>,
}

/// The watermark of one source table: the window this run read, and the stored value now.
#[derive(Debug, Clone, PartialEq)]
pub struct WatermarkRow {
    pub table: String,
    pub column: String,
    pub window_from: Option<String>,
    pub window_to: Option<String>,
    pub rows: Option<i64>,
    pub now: Option<String>,
}

/// Gathers the report of run `run_id`, or of the latest run.
pub async fn build(lake: &Lake, pipeline: &Pipeline, run_id: Option<&str>) -> Result<Report> {
    let Some((run_id, events)) = events::of_run(lake, run_id).await? else {
        return Err(Error::BadArgument {
            what: "--run".into(),
            message: match run_id {
                Some(id) => format!("the event log of {} has no run {id}", lake.url()),
                None => format!("the event log of {} is empty: nothing ran yet", lake.url()),
            },
        });
    };
    let (nodes, edges) = lineage_of(pipeline, &events);
    let mut report = Report {
        run_id,
        lake: lake.url().to_string(),
        quality: quality_of(pipeline, &events),
        dimensions: Vec::new(),
        per_day: None,
        watermarks: Vec::new(),
        recent: Vec::new(),
        nodes,
        edges,
        events,
    };
    report.recent = events::recent_runs(lake, 10).await?;
    report.dimensions = dimensions_of(lake, pipeline, &report.events).await;
    report.per_day = per_day(lake, pipeline).await;
    report.watermarks = watermarks_of(lake, pipeline, &report.events).await?;
    Ok(report)
}

/// Renders the report as one HTML page with everything inline.
pub fn render(report: &Report) -> Result<String> {
    html::page(report)
}

fn event<'a>(events: &'a [Event], stage: &str, table: &str) -> Option<&'a Event> {
    events
        .iter()
        .rev()
        .find(|e| e.stage == stage && e.table == table)
}

fn detail_i64(event: &Event, key: &str) -> i64 {
    event
        .details
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// Source → bronze → silver → gold per table, dimensions → facts by lookup, gold → views
/// by the tables each view's query names.
fn lineage_of(pipeline: &Pipeline, events: &[Event]) -> (Vec<Node>, Vec<(usize, usize)>) {
    let mut nodes = Vec::new();
    let mut edges = Vec::new();
    let mut gold_index = BTreeMap::new();
    let push = |nodes: &mut Vec<Node>, layer, name: String, stage: Option<&str>| {
        let event = stage.and_then(|s| event(events, s, &name)).cloned();
        nodes.push(Node { layer, name, event });
        nodes.len() - 1
    };
    for table in &pipeline.tables {
        // A named source's tables are shown under its name (`reference:Country`).
        let source_name = match &table.source {
            Some(name) => format!("{name}:{}", table.name),
            None => format!("{}.{}", table.schema, table.name),
        };
        let source = push(&mut nodes, "source", source_name, None);
        let bronze = push(&mut nodes, "bronze", table.name.clone(), Some("ingest"));
        let silver = push(&mut nodes, "silver", table.silver_name(), Some("silver"));
        edges.extend([(source, bronze), (bronze, silver)]);
        if let Some(gold) = &table.gold {
            let node = push(&mut nodes, "gold", gold.name.clone(), Some("gold"));
            edges.push((silver, node));
            gold_index.insert(gold.name.clone(), node);
        }
    }
    for table in &pipeline.tables {
        let Some(gold) = table.gold.as_ref() else {
            continue;
        };
        // A fact's lookups, and the dimensions another dimension copies columns from.
        for lookup in &gold.lookups {
            if let (Some(&dim), Some(&fact)) = (
                gold_index.get(&lookup.dimension),
                gold_index.get(&gold.name),
            ) {
                edges.push((dim, fact));
            }
        }
    }
    for view in &pipeline.views {
        let node = push(&mut nodes, "view", view.name.clone(), Some("gold"));
        let sql = pipeline
            .templates
            .render(&view.template, &view.params)
            .unwrap_or_default();
        for (name, &index) in &gold_index {
            if names_table(&sql, &format!("gold.{name}")) {
                edges.push((index, node));
            }
        }
    }
    (nodes, edges)
}

/// Whether `sql` mentions `table` as a whole name (`gold.dim_user`, not `gold.dim_users`).
fn names_table(sql: &str, table: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    lower.match_indices(table).any(|(at, _)| {
        let next = lower[at + table.len()..].chars().next();
        !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Every expectation of every silver table this run touched, with the rows that broke it.
fn quality_of(pipeline: &Pipeline, events: &[Event]) -> Vec<QualityRow> {
    let mut rows = Vec::new();
    for table in &pipeline.tables {
        let name = table.silver_name();
        let Some(e) = event(events, "silver", &name) else {
            continue;
        };
        let broken = e
            .details
            .as_ref()
            .and_then(|d| d.get("expectations"))
            .and_then(Value::as_object);
        for rule in table.expectations() {
            rows.push(QualityRow {
                table: name.clone(),
                expression: rule.rule.clone(),
                action: match rule.action {
                    Action::Warn => "warn",
                    Action::Drop => "drop",
                    Action::Fail => "fail",
                }
                .to_string(),
                rows_in: e.rows_in,
                broken: broken
                    .and_then(|b| b.get(&rule.name))
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
                rule: rule.name,
            });
        }
    }
    rows
}

async fn dimensions_of(lake: &Lake, pipeline: &Pipeline, events: &[Event]) -> Vec<DimensionRow> {
    let mut rows = Vec::new();
    for gold in pipeline.tables.iter().filter_map(|t| t.gold.as_ref()) {
        if gold.kind != GoldKind::Dimension {
            continue;
        }
        let Some(e) = event(events, "gold", &gold.name) else {
            continue;
        };
        // The unknown member (sk -1) is not a version of anything.
        let known = format!(
            "FROM gold.{} WHERE {} <> -1",
            gold.name,
            crate::config::ident::quote_ansi(&gold.sk())
        );
        let sql = if gold.scd_type == 2 {
            format!(
                "SELECT count(*) AS versions, sum(CASE WHEN is_current THEN 1 ELSE 0 END) AS current {known}"
            )
        } else {
            format!("SELECT count(*) AS versions, count(*) AS current {known}")
        };
        let now = crate::query::run(lake, &sql).await.ok();
        let at = |column| {
            now.as_deref()
                .and_then(|b| crate::lake::first_int(b, column))
        };
        rows.push(DimensionRow {
            table: gold.name.clone(),
            scd_type: gold.scd_type,
            changes_in: e.rows_in,
            inserted: detail_i64(e, "inserted"),
            closed: detail_i64(e, "closed"),
            deleted: detail_i64(e, "deleted"),
            versions_now: at(0),
            current_now: at(1),
        });
    }
    rows
}

/// Streams per day of the first fact table, by the day of its sequence column; none when
/// gold has no fact yet.
async fn per_day(lake: &Lake, pipeline: &Pipeline) -> Option<PerDay> {
    let gold = pipeline
        .tables
        .iter()
        .filter_map(|t| t.gold.as_ref().map(|g| (t, g)))
        .find(|(_, g)| g.kind == GoldKind::Fact);
    let (table, gold) = gold?;
    let column = crate::config::ident::quote_ansi(table.sequence_by());
    let sql = format!(
        "SELECT CAST(CAST({column} AS DATE) AS VARCHAR) AS day, count(*) AS streams \
         FROM gold.{} GROUP BY 1 ORDER BY 1",
        gold.name
    );
    let batches = crate::query::run(lake, &sql).await.ok()?;
    let mut days = Vec::new();
    for batch in &batches {
        let day = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8).ok()?;
        let day = day.as_string::<i32>();
        let n = crate::lake::int_column(batch.column(1))?;
        for i in 0..batch.num_rows() {
            if let Ok(d) = chrono::NaiveDate::parse_from_str(day.value(i), "%Y-%m-%d")
                && day.is_valid(i)
            {
                days.push((d, n.value(i)));
            }
        }
    }
    Some(PerDay {
        table: gold.name.clone(),
        days,
    })
}

async fn watermarks_of(
    lake: &Lake,
    pipeline: &Pipeline,
    events: &[Event],
) -> Result<Vec<WatermarkRow>> {
    let stored: BTreeMap<String, Option<String>> = watermark::read_all(lake)
        .await?
        .into_iter()
        .map(|(table, w)| (table, w.ok().map(|w| w.value)))
        .collect();
    Ok(pipeline
        .tables
        .iter()
        .map(|table| {
            let e = event(events, "ingest", &table.name);
            let text = |key: &str| {
                e.and_then(|e| e.details.as_ref())
                    .and_then(|d| d.get(key))
                    .and_then(Value::as_str)
                    .map(String::from)
            };
            WatermarkRow {
                table: table.name.clone(),
                column: table.cdc_column.clone(),
                window_from: text("window_from"),
                window_to: text("window_to"),
                rows: e.map(|e| e.rows_out),
                now: stored.get(&table.name).cloned().flatten(),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(stage: &str, table: &str, status: &str, error: Option<&str>) -> Event {
        Event {
            run_id: "r1".into(),
            stage: stage.into(),
            table: table.into(),
            status: status.into(),
            rows_in: 1000,
            rows_out: 990,
            rows_dropped: 7,
            rows_rescued: 2,
            input_version: None,
            output_version: Some(1),
            started_at: chrono::DateTime::from_timestamp(1_750_000_000, 0).unwrap(),
            seconds: 0.25,
            error: error.map(String::from),
            details: Some(serde_json::json!({
                "expectations": {"non_negative_duration": 7, "keys_not_null": 0},
                "inserted": 12, "closed": 5, "deleted": 1, "files": 2, "duplicates": 3,
                "quarantined_rows": ["_quarantine/silver/streams/x.parquet"],
            })),
        }
    }

    fn report(events: Vec<Event>) -> Report {
        let pipeline = Pipeline::parse(crate::config::DEFAULT_PIPELINE, "pipeline.toml").unwrap();
        let (nodes, edges) = lineage_of(&pipeline, &events);
        Report {
            run_id: "r1".into(),
            lake: "lake".into(),
            quality: quality_of(&pipeline, &events),
            dimensions: Vec::new(),
            per_day: Some(PerDay {
                table: "fact_stream".into(),
                days: vec![
                    (chrono::NaiveDate::from_ymd_opt(2025, 1, 1).unwrap(), 10),
                    (chrono::NaiveDate::from_ymd_opt(2025, 1, 2).unwrap(), 30),
                ],
            }),
            watermarks: Vec::new(),
            recent: vec![events::RunSummary {
                run_id: "r1".into(),
                started_at: chrono::DateTime::from_timestamp(1_750_000_000, 0).unwrap(),
                stages: vec!["ingest".into(), "silver".into()],
                tables: 2,
                failed: 1,
                wrote: 1,
            }],
            nodes,
            edges,
            events,
        }
    }

    #[test]
    fn lineage_links_each_stage_the_lookups_and_the_tables_a_view_reads() {
        let r = report(vec![event("silver", "streams", "ok", None)]);
        let id = |wanted: &str| r.nodes.iter().position(|n| n.id() == wanted).unwrap();
        assert_eq!(r.nodes.len(), 6 * 4 + 2);
        let has = |a: &str, b: &str| r.edges.contains(&(id(a), id(b)));
        assert!(has("source:dbo.FactStream", "bronze:FactStream"));
        assert!(has("source:reference:Country", "bronze:Country"));
        assert!(has("gold:dim_country", "view:stream_details"));
        assert!(has("bronze:FactStream", "silver:streams"));
        assert!(has("silver:streams", "gold:fact_stream"));
        assert!(has("gold:dim_user", "gold:fact_stream"));
        assert!(has("gold:dim_artist", "gold:fact_stream"));
        assert!(has("gold:dim_user", "view:stream_details"));
        // top_tracks_per_day reads the fact, tracks and artists, not users or dates.
        assert!(has("gold:dim_track", "view:top_tracks_per_day"));
        assert!(!has("gold:dim_user", "view:top_tracks_per_day"));
        assert!(!has("gold:dim_date", "view:top_tracks_per_day"));
        assert_eq!(r.nodes[id("silver:streams")].status(), "ok");
        assert_eq!(r.nodes[id("gold:fact_stream")].status(), "not run");
    }

    #[test]
    fn the_page_marks_the_failed_table_and_counts_broken_rules() {
        let r = report(vec![
            event(
                "ingest",
                "DimUser",
                "failed",
                Some("table DimUser: <boom> & more"),
            ),
            event("silver", "streams", "ok", None),
        ]);
        let page = render(&r).unwrap();
        assert!(
            page.contains("class=\"node failed\" data-node=\"bronze:DimUser\""),
            "the failed box is marked"
        );
        assert!(page.contains("class=\"node ok\" data-node=\"silver:streams\""));
        assert!(page.contains("class=\"node not-run\" data-node=\"gold:dim_user\""));
        assert!(
            page.contains("table DimUser: &lt;boom&gt; &amp; more"),
            "escaped error"
        );
        assert!(page.contains("1 table(s) failed"));
        assert!(page.contains("r1 (this report)") && page.contains("tunelake report --run r1"));
        // The drop rule broke 7 of 1,000 rows, and they were quarantined.
        let rule = page.find("non_negative_duration").unwrap();
        let row = &page[rule..rule + page[rule..].find("</tr>").unwrap()];
        assert!(
            row.contains(">7<") && row.contains("0.700%") && row.contains("quarantined"),
            "{row}"
        );
        assert!(
            page.contains("<svg"),
            "the chart and the graph are inline SVG"
        );
        assert!(!page.contains("<?xml"));
        for external in ["src=\"http", "href=\"http", "@import", "url(http"] {
            assert!(
                !page.contains(external),
                "the page loads nothing: {external}"
            );
        }
    }

    #[test]
    fn a_table_is_named_only_as_a_whole_word() {
        assert!(names_table("FROM gold.dim_user AS u", "gold.dim_user"));
        assert!(names_table("JOIN GOLD.DIM_USER\n", "gold.dim_user"));
        assert!(!names_table("FROM gold.dim_users", "gold.dim_user"));
        assert!(!names_table("FROM silver.dim_user", "gold.dim_user"));
    }
}
