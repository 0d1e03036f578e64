//! What the commands print: each stage's report as a table, and its failures on stderr.

use crate::seed;
use crate::stages::Status;
use crate::stages::gold::GoldReport;
use crate::stages::ingest::IngestReport;
use crate::stages::silver::SilverReport;

pub(super) fn report_gold_errors(report: &GoldReport) -> bool {
    for t in report.tables.iter().filter(|t| t.status == Status::Failed) {
        eprintln!(
            "error: gold {} failed: {}",
            t.table,
            t.error.as_deref().unwrap_or("unknown error")
        );
    }
    !report.failed()
}

pub(super) fn print_gold(report: &GoldReport) {
    out!("gold run {}", report.run_id);
    out!(
        "  {:<18} {:<9} {:<7} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7} {:>7}",
        "table",
        "kind",
        "status",
        "rows in",
        "inserted",
        "updated",
        "closed",
        "dropped",
        "version",
        "seconds"
    );
    for t in &report.tables {
        out!(
            "  {:<18} {:<9} {:<7} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7} {:>7.2}",
            t.table,
            t.kind,
            t.status.to_string(),
            t.rows_in,
            t.inserted,
            t.updated,
            t.closed,
            t.deleted,
            t.version.map_or_else(|| "-".to_string(), |v| v.to_string()),
            t.seconds
        );
        for (sk, n) in t.unknown.iter().filter(|(_, n)| *n > 0) {
            out!(
                "  {:<18}   {n} new row(s) with {sk} = -1 (no version valid at their time)",
                ""
            );
        }
    }
}

pub(super) fn report_silver_errors(report: &SilverReport) -> bool {
    for t in &report.tables {
        if let Some(e) = &t.error {
            eprintln!("error: silver of {} failed: {e}", t.table);
        }
        for (file, reason) in &t.quarantined_files {
            eprintln!(
                "error: {file} is not readable parquet and was moved to bronze/_quarantine/: {reason}"
            );
        }
    }
    !report.failed()
}

pub(super) fn print_silver(report: &SilverReport) {
    out!("silver run {}", report.run_id);
    out!(
        "  {:<10} {:<7} {:>5} {:>10} {:>10} {:>8} {:>8} {:>8} {:>7} {:>7}",
        "table",
        "status",
        "files",
        "rows in",
        "rows out",
        "dropped",
        "dupes",
        "rescued",
        "version",
        "seconds"
    );
    for t in &report.tables {
        out!(
            "  {:<10} {:<7} {:>5} {:>10} {:>10} {:>8} {:>8} {:>8} {:>7} {:>7.2}",
            t.table,
            t.status.to_string(),
            t.files,
            t.counts.rows_in,
            t.counts.rows_out,
            t.counts.rows_dropped,
            t.counts.rows_duplicate,
            t.counts.rows_rescued,
            t.version.map_or_else(|| "-".to_string(), |v| v.to_string()),
            t.seconds
        );
        for (rule, rows) in &t.counts.expectations {
            out!("  {:<10}   expectation {rule}: {rows} row(s) broke it", "");
        }
    }
}

pub(super) fn report_errors(report: &IngestReport) -> bool {
    for t in report.tables.iter().filter(|t| t.status == Status::Failed) {
        eprintln!(
            "error: ingest of {} failed: {}",
            t.table,
            t.error.as_deref().unwrap_or("unknown error")
        );
    }
    !report.failed()
}

pub(super) fn print_seed(report: &seed::SeedReport, source: &str, incremental: bool) {
    out!(
        "{} {source} in {:.1} s",
        if incremental {
            "Applied one change batch to"
        } else {
            "Seeded"
        },
        report.seconds
    );
    out!("  {:<12} {:>10} {:>10}", "table", "inserted", "updated");
    for (table, inserted, updated) in &report.tables {
        out!("  {table:<12} {inserted:>10} {updated:>10}");
    }
}

pub(super) fn print_ingest(report: &IngestReport) {
    out!("ingest run {}", report.run_id);
    out!(
        "  {:<12} {:<7} {:>10} {:>5} {:>8} {:>7}  window (low, high]",
        "table",
        "status",
        "rows",
        "files",
        "MB",
        "seconds"
    );
    for t in &report.tables {
        let mut window = t
            .window
            .as_ref()
            .map(|(low, high)| format!("({}, {high}]", low.as_deref().unwrap_or("start")))
            .unwrap_or_else(|| "-".to_string());
        if t.deleted > 0 {
            window.push_str(&format!("; {} key(s) gone from the source", t.deleted));
        }
        out!(
            "  {:<12} {:<7} {:>10} {:>5} {:>8.1} {:>7.2}  {window}",
            t.table,
            t.status.to_string(),
            t.rows,
            t.files.len(),
            t.bytes as f64 / 1_048_576.0,
            t.seconds
        );
    }
    out!(
        "  {:<12} {:<7} {:>10} {:>5} {:>8.1}",
        "total",
        if report.failed() { "FAILED" } else { "ok" },
        report.rows(),
        report.tables.iter().map(|t| t.files.len()).sum::<usize>(),
        report.tables.iter().map(|t| t.bytes).sum::<u64>() as f64 / 1_048_576.0,
    );
}

/// What `tunelake maintain` did, a line per table.
pub(super) fn maintained(done: &[crate::lake::maintain::Maintained]) {
    out!(
        "{:<28} {:>6} {:>18} {:>9} {:>12}",
        "table",
        "files",
        "compacted",
        "vacuumed",
        "log entries"
    );
    for m in done {
        let compacted = m
            .compacted
            .map_or("-".to_string(), |(from, to)| format!("{from} -> {to}"));
        out!(
            "{:<28} {:>6} {:>18} {:>9} {:>12}",
            m.table,
            m.files,
            compacted,
            m.vacuumed,
            m.log_entries_removed
        );
    }
}
