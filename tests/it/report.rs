//! Progress output and the run report, as a user gets them from the binary; the report is
//! also opened in headless Chromium, as a user would open it.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::cli::tunelake_with;

fn tunelake(dir: &Path, args: &[&str]) -> (i32, String, String) {
    tunelake_with(dir, args, &[])
}

/// The default pipeline plus a table the source does not have, so one table fails.
fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut pipeline = tunelake::config::DEFAULT_PIPELINE.to_string();
    pipeline.push_str(
        "\n[[tables]]\nname = \"DimPodcast\"\ncdc_column = \"updated_at\"\nkeys = [\"podcast_id\"]\n",
    );
    std::fs::write(d.join("pipeline.toml"), pipeline).unwrap();
    let (code, out, err) = tunelake(
        d,
        &["seed", "--source", "sqlite:src.db", "--scale", "0.005"],
    );
    assert_eq!(code, 0, "{out}{err}");
    dir
}

fn sql(d: &Path, query: &str) -> String {
    let (code, out, err) = tunelake(d, &["sql", "--format", "csv", query]);
    assert_eq!(code, 0, "{query}: {err}");
    out.lines().nth(1).unwrap_or_default().to_string()
}

#[test]
fn progress_is_a_line_per_table_off_a_terminal_json_for_machines_and_nothing_when_quiet() {
    let dir = setup();
    let d = dir.path();
    let (code, out, err) = tunelake(d, &["--source", "sqlite:src.db", "run"]);
    assert_eq!(code, 1, "DimPodcast fails: {out}{err}");
    // stdout is a pipe here: plain lines, one per stage and table, with rows and rate.
    let line = |stage: &str, table: &str| {
        out.lines()
            .find(|l| {
                let mut words = l.split_whitespace();
                words.next() == Some(stage) && words.next() == Some(table)
            })
            .unwrap_or_else(|| panic!("no progress line for {stage} {table}:\n{out}"))
            .to_string()
    };
    let streams = line("ingest", "FactStream");
    assert!(
        streams.contains(" ok ") && streams.contains("5,000 rows") && streams.contains("rows/s"),
        "{streams}"
    );
    assert!(line("ingest", "DimPodcast").contains("failed"));
    assert!(line("silver", "users").contains(" ok "));
    assert!(line("gold", "dim_user").contains(" ok "));
    assert!(line("gold", "stream_details").contains(" ok "));
    assert!(
        !out.contains('\u{1b}'),
        "no terminal escapes off a terminal"
    );

    let (_, out, err) = tunelake(
        d,
        &["--source", "sqlite:src.db", "--log-format", "json", "run"],
    );
    let progress: Vec<serde_json::Value> = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "tunelake::progress")
        .collect();
    let fact = progress
        .iter()
        .find(|v| v["fields"]["stage"] == "ingest" && v["fields"]["table"] == "FactStream")
        .unwrap_or_else(|| panic!("no JSON progress for ingest FactStream:\n{err}"));
    assert_eq!(
        fact["fields"]["status"], "empty",
        "nothing new on the second run"
    );
    assert_eq!(fact["fields"]["rows"], 0);
    assert!(progress.iter().any(|v| v["fields"]["status"] == "failed"));
    assert!(
        !out.contains("rows/s"),
        "JSON mode prints no plain progress lines: {out}"
    );

    let (_, out, _) = tunelake(d, &["--source", "sqlite:src.db", "--quiet", "run"]);
    assert!(
        out.trim().is_empty(),
        "--quiet prints nothing but errors: {out}"
    );
}

#[test]
fn the_report_shows_every_table_of_the_run_its_failure_and_its_quality_results() {
    let dir = setup();
    let d = dir.path();
    let (_, first, _) = tunelake(d, &["--source", "sqlite:src.db", "run"]);
    let first_run = first
        .lines()
        .find_map(|l| l.strip_prefix("ingest run "))
        .unwrap()
        .trim()
        .to_string();
    tunelake(d, &["seed", "--source", "sqlite:src.db", "--incremental"]);
    tunelake(d, &["--source", "sqlite:src.db", "run"]);

    // The first run: quality results agree with the event log and the quarantine.
    let (code, out, err) = tunelake(d, &["report", "--run", &first_run, "--out", "first.html"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&first_run), "{out}");
    let page = std::fs::read_to_string(d.join("first.html")).unwrap();
    let dropped = sql(
        d,
        &format!(
            "SELECT rows_dropped FROM system.events WHERE run_id = '{first_run}' AND stage = 'silver' AND \"table\" = 'streams'"
        ),
    );
    assert!(
        dropped.parse::<i64>().unwrap() > 0,
        "the seed has negative durations"
    );
    let rule = page.find(">non_negative_duration<").unwrap();
    let row = &page[rule..rule + page[rule..].find("</tr>").unwrap()];
    assert!(row.contains(&format!(">{dropped}<")), "{row} vs {dropped}");

    // The latest run, by default: every table, the failed one marked, versions as gold has them.
    let (code, out, err) = tunelake(d, &["report", "--out", "latest.html"]);
    assert_eq!(code, 0, "{out}{err}");
    let path = d.join("latest.html");
    let page = std::fs::read_to_string(&path).unwrap();
    let pipeline = tunelake::config::Pipeline::load(&d.join("pipeline.toml")).unwrap();
    let mut expected = Vec::new();
    for t in &pipeline.tables {
        expected.push(format!("bronze:{}", t.name));
        expected.push(format!("silver:{}", t.silver_name()));
        if let Some(g) = &t.gold {
            expected.push(format!("gold:{}", g.name));
        }
    }
    expected.extend(pipeline.views.iter().map(|v| format!("view:{}", v.name)));
    for node in &expected {
        assert!(
            page.contains(&format!("data-node=\"{node}\"")),
            "{node} missing"
        );
    }
    assert!(page.contains("class=\"node failed\" data-node=\"bronze:DimPodcast\""));
    assert!(page.contains("id=\"failures\"") && page.contains("DimPodcast"));
    let versions = sql(d, "SELECT count(*) FROM gold.dim_user WHERE user_sk <> -1");
    let dims = &page[page.find("id=\"dimensions\"").unwrap()..];
    let dim_user = &dims[dims.find(">dim_user<").unwrap()..];
    let dim_user = &dim_user[..dim_user.find("</tr>").unwrap()];
    let thousands = tunelake::progress::thousands(versions.parse().unwrap());
    assert!(
        dim_user.contains(&format!(">{thousands}<")),
        "{dim_user} vs {versions}"
    );
    let watermark =
        std::fs::read_to_string(d.join("lake/bronze/_watermarks/FactStream.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&watermark).unwrap();
    assert!(page.contains(value["value"].as_str().unwrap()));

    // The recent runs, the first one among them, each with the command for its report.
    let runs = &page[page.find("id=\"runs\"").unwrap()..];
    assert!(
        runs.contains(&format!("tunelake report --run {first_run}")),
        "{runs}"
    );
    assert!(runs.contains("(this report)"));

    let (code, _, err) = tunelake(d, &["report", "--run", "nope", "--out", "x.html"]);
    assert_eq!(code, 1);
    assert!(err.contains("no run nope"), "{err}");

    if let Some(chromium) = chromium() {
        let dom = render(&chromium, &path);
        for node in &expected {
            assert!(
                dom.contains(&format!("data-node=\"{node}\"")),
                "{node} not in the DOM"
            );
        }
        let drawn = format!(
            "data-nodes-drawn=\"{}\"",
            expected.len() + pipeline.tables.len()
        );
        assert!(
            dom.contains(&drawn),
            "every box laid out by the browser ({drawn})"
        );
        assert!(dom.contains("data-errors=\"0\""), "no script error");
    }
}

/// The browser to render with: `TUNELAKE_CHROMIUM` (CI sets it, so there the check is never
/// skipped), else Debian's if installed.
fn chromium() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("TUNELAKE_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let debian = PathBuf::from("/usr/bin/chromium");
    if debian.is_file() {
        return Some(debian);
    }
    eprintln!("chromium not installed: the browser rendering check is skipped");
    None
}

/// The page's DOM after load, as headless Chromium built it. Network is off, so a page that
/// needed anything from outside would show it.
fn render(chromium: &Path, page: &Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}
