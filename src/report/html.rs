//! The report page: one HTML document with its styles and both SVGs inline, so it opens from
//! a file, a mail attachment or a blob with no network.

use std::fmt::Write as _;

use serde_json::Value;

use super::{Report, chart, detail_i64, lineage};
use crate::error::Result;
use crate::lake::events::Event;
use crate::progress::thousands;

/// HTML text or attribute escaping.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn n(v: i64) -> String {
    if v < 0 {
        format!("-{}", thousands(v.unsigned_abs()))
    } else {
        thousands(v as u64)
    }
}

const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #202124; margin: 0; background: #f8f9fa; }
header { background: #202124; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 20px; font-weight: 600; }
header .meta { color: #bdc1c6; font-size: 13px; }
main { padding: 8px 28px 40px; max-width: 1500px; }
section { background: #fff; border: 1px solid #dadce0; border-radius: 8px; margin: 18px 0; padding: 14px 18px; }
h2 { font-size: 16px; margin: 0 0 10px; }
.chips { display: flex; gap: 10px; flex-wrap: wrap; margin-top: 12px; }
.chip { border-radius: 16px; padding: 4px 12px; font-size: 13px; background: #3c4043; }
.chip.failed { background: #d93025; } .chip.ok { background: #188038; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid #eceff1; vertical-align: top; }
th { color: #5f6368; font-weight: 600; background: #f8f9fa; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { background: #fce8e6; } tr.broken td.num.hit { color: #d93025; font-weight: 600; }
.status { border-radius: 10px; padding: 1px 8px; font-size: 12px; }
.status.ok { background: #e6f4ea; color: #137333; } .status.empty { background: #f1f3f4; color: #5f6368; }
.status.failed { background: #fce8e6; color: #c5221f; } .status.not-run { color: #9aa0a6; }
.graph { overflow-x: auto; }
.graph svg { max-width: 100%; height: auto; }
.graph svg text { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif !important; fill: #202124; }
.legend { font-size: 12px; color: #5f6368; margin-top: 6px; }
.legend span { display: inline-block; width: 12px; height: 12px; border-radius: 3px; vertical-align: middle; margin: 0 4px 0 12px; border: 1px solid; }
.error { background: #fce8e6; border-color: #f28b82; }
.error pre { white-space: pre-wrap; margin: 4px 0 10px; font-size: 12px; }
code { font-size: 12px; background: #f1f3f4; padding: 1px 4px; border-radius: 3px; }
.muted { color: #5f6368; }
"#;

/// Clicking a box of the graph shows that table's row below it; the page also records, on
/// `<body>`, how many boxes the browser drew with a real size and any script error, which is
/// what the headless-browser test reads back.
const SCRIPT: &str = r#"<script>
(function () {
  var errors = [];
  window.addEventListener('error', function (e) { errors.push(String(e.message)); });
  var drawn = 0;
  document.querySelectorAll('#lineage g.node').forEach(function (g) {
    var box = g.getBBox();
    if (box.width > 0 && box.height > 0) { drawn += 1; }
    var id = g.getAttribute('data-node');
    var stage = { bronze: 'ingest', silver: 'silver', gold: 'gold', view: 'gold' }[id.split(':')[0]];
    var row = document.querySelector('tr[data-table="' + stage + ':' + id.split(':')[1] + '"]');
    if (row) {
      g.style.cursor = 'pointer';
      g.addEventListener('click', function () {
        row.scrollIntoView({ block: 'center' });
        row.style.outline = '2px solid #1a73e8';
      });
    }
  });
  document.body.setAttribute('data-nodes-drawn', String(drawn));
  document.body.setAttribute('data-errors', String(errors.length));
})();
</script>"#;

/// The whole page.
pub fn page(report: &Report) -> Result<String> {
    let mut html = String::with_capacity(64 * 1024);
    let failed: Vec<&Event> = report
        .events
        .iter()
        .filter(|e| e.status == "failed")
        .collect();
    let count = |status: &str| report.events.iter().filter(|e| e.status == status).count();
    let started = report.events.iter().map(|e| e.started_at).min();
    let ended = report
        .events
        .iter()
        .map(|e| e.started_at + chrono::Duration::milliseconds((e.seconds * 1000.0) as i64))
        .max();
    let wall = match (started, ended) {
        (Some(s), Some(e)) => (e - s).num_milliseconds() as f64 / 1000.0,
        _ => 0.0,
    };
    let mut stages: Vec<&str> = Vec::new();
    for e in &report.events {
        if !stages.contains(&e.stage.as_str()) {
            stages.push(&e.stage);
        }
    }
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>tunelake run {id}</title><style>{STYLE}</style></head><body>\
         <header><h1>tunelake run {id}</h1><div class=\"meta\">lake {lake} · started {start} · \
         {wall:.1} s · stages: {stages}</div><div class=\"chips\">\
         <span class=\"chip {verdict_class}\">{verdict}</span>\
         <span class=\"chip\">{ok} tables wrote data</span><span class=\"chip\">{empty} had nothing new</span>\
         <span class=\"chip\">{ingested} rows ingested</span><span class=\"chip\">{silver} rows into silver</span>\
         <span class=\"chip\">{dropped} rows quarantined by expectations</span></div></header><main>",
        id = escape(&report.run_id),
        lake = escape(&report.lake),
        start = started.map_or_else(String::new, |s| s
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string()),
        stages = escape(&stages.join(" → ")),
        verdict_class = if failed.is_empty() { "ok" } else { "failed" },
        verdict = if failed.is_empty() {
            "succeeded".to_string()
        } else {
            format!("{} table(s) failed", failed.len())
        },
        ok = count("ok"),
        empty = count("empty"),
        ingested = n(stage_sum(report, "ingest", |e| e.rows_out)),
        silver = n(stage_sum(report, "silver", |e| e.rows_out)),
        dropped = n(stage_sum(report, "silver", |e| e.rows_dropped)),
    );

    if !failed.is_empty() {
        html.push_str("<section class=\"error\" id=\"failures\"><h2>What failed</h2>");
        for e in &failed {
            let _ = write!(
                html,
                "<div><b>{} {}</b><pre>{}</pre></div>",
                escape(&e.stage),
                escape(&e.table),
                escape(e.error.as_deref().unwrap_or("no message"))
            );
        }
        html.push_str("<p class=\"muted\">Nothing past a failure was committed: the watermark or silver checkpoint of a failed table did not move, so the next run retries it.</p></section>");
    }

    let _ = write!(
        html,
        "<section id=\"lineage\"><h2>Lineage</h2><div class=\"graph\">{}</div>\
         <div class=\"legend\">status:<span style=\"background:#e6f4ea;border-color:#188038\"></span>wrote data\
         <span style=\"background:#f1f3f4;border-color:#80868b\"></span>nothing new\
         <span style=\"background:#fce8e6;border-color:#d93025\"></span>failed\
         <span style=\"background:#fff;border-color:#bdc1c6\"></span>not in this run\
         · dashed arrows: dimension lookups</div></section>",
        lineage::svg(report)
    );

    quality(&mut html, report);
    dimensions(&mut html, report);

    html.push_str("<section id=\"per-day\"><h2>Streams per day</h2>");
    match &report.per_day {
        Some(per_day) => match chart::svg(&report.run_id, per_day)? {
            Some(svg) => {
                let total: i64 = per_day.days.iter().map(|d| d.1).sum();
                let _ = write!(
                    html,
                    "<p class=\"muted\">gold.{} as it is now: {} rows over {} days.</p>{svg}",
                    escape(&per_day.table),
                    n(total),
                    per_day.days.len()
                );
            }
            None => html.push_str("<p class=\"muted\">The fact table is empty.</p>"),
        },
        None => html.push_str("<p class=\"muted\">Gold has no fact table yet.</p>"),
    }
    html.push_str("</section>");

    watermarks(&mut html, report);
    all_events(&mut html, report);
    recent_runs(&mut html, report);
    html.push_str("</main>");
    html.push_str(SCRIPT);
    html.push_str("</body></html>\n");
    Ok(html)
}

fn stage_sum(report: &Report, stage: &str, f: impl Fn(&Event) -> i64) -> i64 {
    report
        .events
        .iter()
        .filter(|e| e.stage == stage)
        .map(f)
        .sum()
}

fn status(status: &str) -> String {
    let class = if status == "not run" {
        "not-run"
    } else {
        status
    };
    format!(
        "<span class=\"status {}\">{}</span>",
        escape(class),
        escape(status)
    )
}

fn quality(html: &mut String, report: &Report) {
    html.push_str("<section id=\"quality\"><h2>Data quality</h2>");
    if report.quality.is_empty() {
        html.push_str("<p class=\"muted\">Silver did not run in this run.</p></section>");
        return;
    }
    html.push_str(
        "<table><tr><th>silver table</th><th>expectation</th><th>rule</th><th>action</th>\
         <th class=\"num\">rows checked</th><th class=\"num\">rows breaking it</th><th class=\"num\">share</th><th>what happened to them</th></tr>",
    );
    for q in &report.quality {
        let share = if q.rows_in > 0 {
            format!("{:.3}%", q.broken as f64 * 100.0 / q.rows_in as f64)
        } else {
            "–".to_string()
        };
        let outcome = match (q.action.as_str(), q.broken) {
            (_, 0) => "none broke it",
            ("drop", _) => "quarantined, the rest loaded",
            ("warn", _) => "loaded, counted",
            _ => "the file was not loaded",
        };
        let _ = write!(
            html,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td>\
             <td class=\"num\">{}</td><td class=\"num hit\">{}</td><td class=\"num\">{share}</td><td>{outcome}</td></tr>",
            if q.broken > 0 { "broken" } else { "" },
            escape(&q.table),
            escape(&q.rule),
            escape(&q.expression),
            escape(&q.action),
            n(q.rows_in),
            n(q.broken),
        );
    }
    html.push_str("</table>");
    // Beyond the rules: duplicates, rescued values and quarantined files, per table.
    html.push_str(
        "<table style=\"margin-top:12px\"><tr><th>silver table</th><th class=\"num\">files loaded</th>\
         <th class=\"num\">duplicate rows skipped</th><th class=\"num\">rows with rescued values</th><th>quarantined</th></tr>",
    );
    for e in report.events.iter().filter(|e| e.stage == "silver") {
        let list = |key: &str| -> Vec<String> {
            e.details
                .as_ref()
                .and_then(|d| d.get(key))
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .map(|i| match i {
                            Value::String(s) => s.clone(),
                            Value::Array(pair) => pair
                                .iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(": "),
                            other => other.to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut quarantined: Vec<String> = list("quarantined_files")
            .into_iter()
            .map(|f| format!("file {}", escape(&f)))
            .collect();
        quarantined.extend(
            list("quarantined_rows")
                .into_iter()
                .map(|f| format!("rows to <code>{}</code>", escape(&f))),
        );
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            escape(&e.table),
            n(detail_i64(e, "files")),
            n(detail_i64(e, "duplicates")),
            n(e.rows_rescued),
            if quarantined.is_empty() {
                "–".to_string()
            } else {
                quarantined.join("<br>")
            }
        );
    }
    html.push_str("</table></section>");
}

fn dimensions(html: &mut String, report: &Report) {
    html.push_str("<section id=\"dimensions\"><h2>Dimensions</h2>");
    if report.dimensions.is_empty() {
        html.push_str("<p class=\"muted\">Gold did not run in this run.</p></section>");
        return;
    }
    html.push_str(
        "<table><tr><th>dimension</th><th>SCD</th><th class=\"num\">changes read</th>\
         <th class=\"num\">versions added</th><th class=\"num\">versions closed</th>\
         <th class=\"num\">versions removed (late change made them repeats)</th>\
         <th class=\"num\">versions now</th><th class=\"num\">current now</th></tr>",
    );
    for d in &report.dimensions {
        let now = |v: Option<i64>| v.map_or_else(|| "–".to_string(), n);
        let _ = write!(
            html,
            "<tr><td>{}</td><td>type {}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            escape(&d.table),
            d.scd_type,
            n(d.changes_in),
            n(d.inserted),
            n(d.closed),
            n(d.deleted),
            now(d.versions_now),
            now(d.current_now),
        );
    }
    html.push_str("</table></section>");
}

fn watermarks(html: &mut String, report: &Report) {
    html.push_str(
        "<section id=\"watermarks\"><h2>Watermarks</h2><table><tr><th>source table</th><th>column</th>\
         <th>this run read after</th><th>up to</th><th class=\"num\">rows</th><th>stored now</th></tr>",
    );
    for w in &report.watermarks {
        let text = |v: &Option<String>| v.as_deref().map_or_else(|| "–".to_string(), escape);
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            escape(&w.table),
            escape(&w.column),
            if w.window_from.is_none() && w.window_to.is_some() {
                "the beginning".to_string()
            } else {
                text(&w.window_from)
            },
            text(&w.window_to),
            w.rows.map_or_else(|| "–".to_string(), n),
            text(&w.now),
        );
    }
    html.push_str("</table></section>");
}

fn all_events(html: &mut String, report: &Report) {
    html.push_str(
        "<section id=\"events\"><h2>Every table of the run</h2><table><tr><th>stage</th><th>table</th><th>status</th>\
         <th class=\"num\">rows in</th><th class=\"num\">rows out</th><th class=\"num\">dropped</th>\
         <th class=\"num\">rescued</th><th class=\"num\">input version</th><th class=\"num\">output version</th>\
         <th class=\"num\">seconds</th></tr>",
    );
    let version = |v: Option<i64>| v.map_or_else(|| "–".to_string(), |v| v.to_string());
    for e in &report.events {
        let _ = write!(
            html,
            "<tr class=\"{}\" data-table=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{:.2}</td></tr>",
            if e.status == "failed" { "failed" } else { "" },
            escape(&format!("{}:{}", e.stage, e.table)),
            escape(&e.stage),
            escape(&e.table),
            status(&e.status),
            n(e.rows_in),
            n(e.rows_out),
            n(e.rows_dropped),
            n(e.rows_rescued),
            version(e.input_version),
            version(e.output_version),
            e.seconds,
        );
    }
    html.push_str("</table></section>");
}

fn recent_runs(html: &mut String, report: &Report) {
    html.push_str(
        "<section id=\"runs\"><h2>Recent runs of this lake</h2><table><tr><th>run</th><th>started</th>\
         <th>stages</th><th class=\"num\">tables</th><th class=\"num\">wrote data</th><th class=\"num\">failed</th>\
         <th>its report</th></tr>",
    );
    for r in &report.recent {
        let this = r.run_id == report.run_id;
        let _ = write!(
            html,
            "<tr class=\"{}\"{}><td>{}{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td><code>tunelake report --run {}</code></td></tr>",
            if r.failed > 0 { "failed" } else { "" },
            if this {
                " style=\"font-weight:600\""
            } else {
                ""
            },
            escape(&r.run_id),
            if this { " (this report)" } else { "" },
            r.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
            escape(&r.stages.join(" → ")),
            n(r.tables),
            n(r.wrote),
            n(r.failed),
            escape(&r.run_id),
        );
    }
    html.push_str("</table></section>");
}
