//! Maintenance over many runs: compaction leaves every table's rows as they were and makes
//! gold no work, vacuum deletes only files removed past the retention, and a short retention
//! needs forcing.

use crate::cli::{copy_dir, gold_tables, sorted_rows, tunelake_with};

/// The shipped pipeline, compacting from `min_files` small files on, with `extra` lines in
/// its `[maintenance]`.
fn pipeline(min_files: usize, extra: &str) -> String {
    format!(
        "{}\n[maintenance]\ncompact_min_files = {min_files}\n{extra}\n",
        tunelake::config::DEFAULT_PIPELINE
    )
}

fn tunelake(d: &std::path::Path, args: &[&str]) -> String {
    let (code, out, err) = tunelake_with(d, args, &[]);
    assert_eq!(code, 0, "tunelake {args:?}: {err}\n{out}");
    out
}

/// Live data files of each silver and gold table, by lake path.
async fn live_files(d: &std::path::Path) -> Vec<(String, usize)> {
    let lake = tunelake::lake::Lake::open(d.join("lake").to_str().unwrap()).unwrap();
    let mut counts = Vec::new();
    for area in ["silver", "gold"] {
        let mut names: Vec<String> = std::fs::read_dir(d.join("lake").join(area))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            let path = format!("{area}/{name}");
            let table = lake.delta_table(&path).await.unwrap();
            counts.push((path, table.get_file_uris().unwrap().count()));
        }
    }
    counts
}

fn parquet_on_disk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".parquet")
        })
        .count()
}

/// Five runs of small batches with auto compaction off, then `tunelake maintain`: every table
/// ends with fewer files and the same rows; a gold run after it finds nothing new in silver
/// and rebuilds no view; the removed files stay on disk inside the retention, and go with a forced
/// zero retention, after which every table still reads the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_vacuum_keep_every_row_and_make_gold_no_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("pipeline.toml"),
        pipeline(3, "auto_compact = false\nauto_vacuum = false"),
    )
    .unwrap();
    tunelake(d, &["seed", "--scale", "0.01"]);
    tunelake(d, &["run"]);
    for _ in 0..4 {
        tunelake(d, &["seed", "--incremental"]);
        tunelake(d, &["run"]);
    }
    let before = gold_tables(d, "lake");
    let files_before = live_files(d).await;
    let streams = d.join("lake/silver/streams");
    let on_disk = parquet_on_disk(&streams);

    let out = tunelake(d, &["maintain"]);
    assert!(out.contains("silver/streams"), "{out}");
    let files_after = live_files(d).await;
    for ((table, was), (_, now)) in files_before.iter().zip(&files_after) {
        assert!(now <= was, "{table}: {was} -> {now} files");
    }
    let (_, was) = &files_before[files_before.len() - 1];
    assert!(
        files_before
            .iter()
            .zip(&files_after)
            .any(|((_, w), (_, n))| n < w),
        "nothing was compacted: {files_after:?} (last before: {was})"
    );
    assert_eq!(gold_tables(d, "lake"), before, "compaction changed gold");
    assert!(
        parquet_on_disk(&streams) > on_disk,
        "inside the retention, compaction's removed files stay for readers"
    );

    // Nothing new in the source: gold must not take the compacted silver files for new rows,
    // nor rebuild a view whose inputs only compaction moved.
    let (code, out, err) = tunelake_with(d, &["run", "--stage", "gold"], &[]);
    assert_eq!(code, 0, "{err}");
    let events = tunelake(
        d,
        &[
            "sql",
            "SELECT \"table\", status FROM system.events WHERE stage = 'gold' AND run_id = (SELECT max(run_id) FROM system.events WHERE stage = 'gold') ORDER BY \"table\"",
            "--format",
            "csv",
        ],
    );
    let lines: Vec<&str> = (events.lines())
        .filter(|l| !l.is_empty() && *l != "table,status")
        .collect();
    assert_eq!(lines.len(), 8, "every gold table and view: {events}");
    for line in lines {
        assert!(
            line.ends_with(",empty"),
            "compacted rows taken for new ones, or a view rebuilt: {line}\n{out}"
        );
    }

    std::fs::write(
        d.join("pipeline.toml"),
        pipeline(
            3,
            "deleted_file_retention_hours = 0\nretention_check = false",
        ),
    )
    .unwrap();
    tunelake(d, &["maintain"]);
    let live = live_files(d).await;
    let streams_live = live.iter().find(|(t, _)| t == "silver/streams").unwrap().1;
    assert_eq!(
        parquet_on_disk(&streams),
        streams_live,
        "a zero retention leaves only the live files"
    );
    assert_eq!(gold_tables(d, "lake"), before, "vacuum changed gold");
}

/// A retention below a week is refused with the reason unless forced.
#[test]
fn a_short_retention_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("pipeline.toml"),
        pipeline(50, "deleted_file_retention_hours = 24"),
    )
    .unwrap();
    let (code, _, err) = tunelake_with(d, &["maintain"], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("maintenance.deleted_file_retention_hours") && err.contains("168"),
        "{err}"
    );
}

/// Bronze files under `dir`, recursively, as paths relative to it.
fn bronze_files(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(bronze_files(&path));
        } else if path.extension().is_some_and(|e| e == "parquet") {
            found.push(path.display().to_string());
        }
    }
    found.sort();
    found
}

/// `clean_source = "move"`: once loaded and past the retention, bronze window files go to
/// `bronze/_archive/`; a file silver has not loaded stays, whatever its age, and is loaded by
/// the next run, after which silver and gold hold every source row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bronze_retention_moves_only_loaded_files_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("pipeline.toml"),
        pipeline(50, "clean_source = \"move\""),
    )
    .unwrap();
    tunelake(d, &["seed", "--scale", "0.01"]);
    tunelake(d, &["run"]);
    let streams = d.join("lake/bronze/FactStream");
    let loaded = bronze_files(&streams);
    assert!(!loaded.is_empty());
    // A new batch only ingested, then every bronze file made older than the retention.
    tunelake(d, &["seed", "--incremental"]);
    tunelake(d, &["run", "--stage", "ingest"]);
    let pending: Vec<String> = bronze_files(&streams)
        .into_iter()
        .filter(|f| !loaded.contains(f))
        .collect();
    assert!(!pending.is_empty(), "the batch wrote new bronze files");
    for file in bronze_files(&d.join("lake/bronze")) {
        let touched = std::process::Command::new("touch")
            .args(["-d", "40 days ago", &file])
            .status()
            .unwrap();
        assert!(touched.success());
    }
    let out = tunelake(d, &["maintain"]);
    assert!(
        out.contains("loaded files past clean_source_retention_days"),
        "{out}"
    );
    assert_eq!(
        bronze_files(&streams),
        pending,
        "only the loaded files left"
    );
    let archived = bronze_files(&d.join("lake/bronze/_archive/FactStream"));
    assert_eq!(archived.len(), loaded.len());

    // The next run loads the pending files (and then moves them), and nothing is missing.
    tunelake(d, &["run"]);
    assert!(bronze_files(&streams).is_empty());
    let source = tunelake(
        d,
        &[
            "sql",
            "--format",
            "csv",
            "SELECT COUNT(*) AS n FROM gold.fact_stream",
        ],
    );
    let con = rusqlite_count(&d.join("source.db"));
    assert_eq!(source.lines().nth(1), Some(con.to_string().as_str()));
}

/// Streams in the SQLite source that pass the shipped expectation (`listen_duration >= 0`).
fn rusqlite_count(db: &std::path::Path) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM FactStream WHERE listen_duration >= 0",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

/// Rows of every silver table, sorted, by table.
fn silver_tables(d: &std::path::Path, lake: &str) -> Vec<(String, Vec<String>)> {
    ["users", "artists", "tracks", "dates", "streams"]
        .into_iter()
        .map(|t| {
            let sql = format!("SELECT * EXCEPT (_ingested_at) FROM silver.{t}");
            (t.to_string(), sorted_rows(d, lake, &sql, &[]))
        })
        .collect()
}

/// `tunelake maintain` (about 1.3 s here in a debug build) killed (SIGKILL) at several points
/// of its compaction and vacuum, then
/// run again: every table opens and holds the rows it held, and a run after it finds nothing
/// new and changes no gold row.
#[test]
fn maintenance_killed_mid_way_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = pipeline(
        3,
        "auto_compact = false\nauto_vacuum = false\ndeleted_file_retention_hours = 0\nretention_check = false",
    );
    std::fs::write(d.join("pipeline.toml"), &config).unwrap();
    tunelake(d, &["seed", "--scale", "0.01"]);
    tunelake(d, &["run"]);
    for _ in 0..4 {
        tunelake(d, &["seed", "--incremental"]);
        tunelake(d, &["run"]);
    }
    let gold = gold_tables(d, "lake");
    let silver = silver_tables(d, "lake");
    assert!(silver.iter().all(|(_, rows)| rows.len() > 1));
    for delay_ms in [100, 300, 600, 1000] {
        let lake = format!("killed{delay_ms}");
        copy_dir(&d.join("lake"), &d.join(&lake));
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tunelake"))
            .current_dir(d)
            .args(["--lake", &lake, "-q", "maintain"])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert_eq!(
            silver_tables(d, &lake),
            silver,
            "silver right after a kill at {delay_ms} ms"
        );
        assert_eq!(
            gold_tables(d, &lake),
            gold,
            "gold right after a kill at {delay_ms} ms"
        );
        tunelake(d, &["--lake", &lake, "maintain"]);
        tunelake(d, &["--lake", &lake, "run"]);
        assert_eq!(
            silver_tables(d, &lake),
            silver,
            "silver after a kill at {delay_ms} ms"
        );
        assert_eq!(
            gold_tables(d, &lake),
            gold,
            "gold after a kill at {delay_ms} ms"
        );
    }
}
