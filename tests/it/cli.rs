//! The binary as a user runs it: exit codes, messages, and the seed → ingest round trip.

use std::process::Command;

fn tunelake(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    tunelake_with(dir, args, &[])
}

/// Runs the binary in `dir` with extra environment variables: (exit code, stdout, stderr).
pub fn tunelake_with(
    dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, String)],
) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tunelake"))
        .current_dir(dir)
        .env_remove("TUNELAKE_SOURCE")
        .env_remove("TUNELAKE_LAKE")
        .env_remove("TUNELAKE_CONFIG")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn seed_run_status_and_incremental_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (code, out, err) = tunelake(
        d,
        &["seed", "--source", "sqlite:src.db", "--scale", "0.002"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("FactStream") && out.contains("2000"), "{out}");
    let (code, out, err) = tunelake(
        d,
        &["--source", "sqlite:src.db", "run", "--stage", "ingest"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("FactStream") && out.contains("ok"), "{out}");
    assert!(d.join("lake/bronze/_watermarks/FactStream.json").is_file());
    let (code, out, _) = tunelake(d, &["seed", "--source", "sqlite:src.db", "--incremental"]);
    assert_eq!(code, 0);
    assert!(out.contains("change batch"), "{out}");
    let (code, out, _) = tunelake(
        d,
        &[
            "ingest",
            "--source",
            "sqlite:src.db",
            "--table",
            "FactStream",
        ],
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("      200 "),
        "the incremental window holds the 10% new streams: {out}"
    );
    let (code, out, _) = tunelake(d, &["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("stream_timestamp") && !out.contains("(never extracted)"),
        "{out}"
    );
    assert!(
        out.contains("latest runs") && out.contains("| ingest") && out.contains("FactStream"),
        "{out}"
    );
}

#[test]
fn a_bad_pipeline_file_reports_every_problem_and_moves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("pipeline.toml"),
        "[[tables]]\nname = \"Users; DROP TABLE x\"\ncdc_column = \"updated_at\"\nkeys = []\n",
    )
    .unwrap();
    tunelake(
        d,
        &["seed", "--source", "sqlite:src.db", "--scale", "0.001"],
    );
    let (code, _, err) = tunelake(d, &["--source", "sqlite:src.db", "run"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("pipeline.toml") && err.contains("2 problem(s)"),
        "{err}"
    );
    assert!(
        err.contains("tables[0] (Users; DROP TABLE x).name")
            && err.contains("tables[0] (Users; DROP TABLE x).keys"),
        "{err}"
    );
    assert!(!d.join("lake/bronze").exists());
}

#[test]
fn a_failed_table_makes_the_exit_code_non_zero_while_the_others_load() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut pipeline = tunelake::config::DEFAULT_PIPELINE.to_string();
    pipeline.push_str("\n[[tables]]\nname = \"DimPodcast\"\ncdc_column = \"updated_at\"\nkeys = [\"podcast_id\"]\n");
    std::fs::write(d.join("pipeline.toml"), pipeline).unwrap();
    tunelake(
        d,
        &["seed", "--source", "sqlite:src.db", "--scale", "0.001"],
    );
    let (code, out, err) = tunelake(d, &["--source", "sqlite:src.db", "run"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("DimPodcast") && err.contains("not found"),
        "{err}"
    );
    assert!(out.contains("FAILED"), "{out}");
    assert!(d.join("lake/bronze/_watermarks/FactStream.json").is_file());
    // The event log remembers the failure, with its error, for status and alerts.
    let (_, out, _) = tunelake(d, &["status"]);
    let line = out
        .lines()
        .find(|l| l.contains("| ingest") && l.contains("DimPodcast"))
        .unwrap_or_default();
    assert!(
        line.contains("failed") && line.contains("not found"),
        "{out}"
    );
    let (code, _, err) = tunelake(
        d,
        &["--source", "sqlite:src.db", "ingest", "--table", "Nope"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("Nope") && err.contains("DimUser"), "{err}");
}

pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every gold table as sorted CSV lines, named.
pub fn gold_tables(dir: &std::path::Path, lake: &str) -> Vec<(String, Vec<String>)> {
    gold_tables_with(dir, lake, &[])
}

/// [`gold_tables`] with extra environment variables (a lake on Azurite).
pub fn gold_tables_with(
    dir: &std::path::Path,
    lake: &str,
    env: &[(&str, String)],
) -> Vec<(String, Vec<String>)> {
    [
        "dim_user",
        "dim_artist",
        "dim_track",
        "dim_date",
        "fact_stream",
        "stream_details",
        "top_tracks_per_day",
    ]
    .iter()
    .map(|t| {
        let sql = format!("SELECT * FROM gold.{t}");
        (t.to_string(), sorted_rows(dir, lake, &sql, env))
    })
    .collect()
}

/// The rows of a query over `lake` as CSV lines, in the query's order, without the header.
pub fn query_rows(dir: &std::path::Path, lake: &str, sql: &str) -> Vec<String> {
    let (code, out, err) =
        tunelake_with(dir, &["--lake", lake, "sql", "--format", "csv", sql], &[]);
    assert_eq!(code, 0, "{sql}: {err}");
    (out.lines().skip(1))
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// The rows of a query over `lake` as CSV lines, sorted.
pub fn sorted_rows(
    dir: &std::path::Path,
    lake: &str,
    sql: &str,
    env: &[(&str, String)],
) -> Vec<String> {
    let args = ["--lake", lake, "sql", sql, "--format", "csv"];
    let (code, out, err) = tunelake_with(dir, &args, env);
    assert_eq!(code, 0, "{sql}: {err}");
    let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

#[test]
fn a_gold_run_killed_mid_way_and_rerun_gives_the_uninterrupted_tables() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |lake: &str, stage: &str| {
        let (code, out, err) = tunelake(
            d,
            &[
                "--source",
                "sqlite:src.db",
                "--lake",
                lake,
                "run",
                "--stage",
                stage,
            ],
        );
        assert_eq!(code, 0, "{out}{err}");
    };
    assert_eq!(
        tunelake(d, &["seed", "--source", "sqlite:src.db", "--scale", "0.01"]).0,
        0
    );
    run("lake", "ingest");
    run("lake", "silver");
    run("lake", "gold");
    assert_eq!(
        tunelake(d, &["seed", "--source", "sqlite:src.db", "--incremental"]).0,
        0
    );
    run("lake", "ingest");
    run("lake", "silver");
    // Before the second gold run: the state every attempt starts from.
    copy_dir(&d.join("lake"), &d.join("reference"));
    run("reference", "gold");
    let expected = gold_tables(d, "reference");
    assert!(expected.iter().all(|(_, rows)| rows.len() > 1));
    for delay_ms in [200, 700, 1500, 2500] {
        let lake = format!("killed{delay_ms}");
        copy_dir(&d.join("lake"), &d.join(&lake));
        let mut child = Command::new(env!("CARGO_BIN_EXE_tunelake"))
            .current_dir(d)
            .args(["--lake", &lake, "-q", "run", "--stage", "gold"])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        run(&lake, "gold");
        for ((table, want), (_, got)) in expected.iter().zip(gold_tables(d, &lake)) {
            let first_difference = want.iter().zip(&got).find(|(w, g)| w != g);
            assert!(
                got.len() == want.len() && first_difference.is_none(),
                "{table} after a kill at {delay_ms} ms: {} rows, {} expected; first difference {first_difference:?}",
                got.len(),
                want.len()
            );
        }
    }
}

#[test]
fn gold_written_in_small_chunks_equals_gold_written_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Bronze parts of 1,500 rows, so silver has many files, fact chunks of 4,000 rows and
    // dimension ranges of 300 keys: surrogate keys and all must come out the same.
    let chunked = tunelake::config::DEFAULT_PIPELINE
        .replace("batch_rows = 65536", "batch_rows = 500")
        .replace("chunk_rows = 400000", "chunk_rows = 4000")
        .replace(
            "dimension_chunk_keys = 125000",
            "dimension_chunk_keys = 300",
        )
        .replace("max_file_rows = 300000", "max_file_rows = 1500");
    assert_ne!(chunked, tunelake::config::DEFAULT_PIPELINE);
    // Each replacement must have found its default: one that misses runs unchunked.
    for set in [
        "batch_rows = 500",
        "chunk_rows = 4000",
        "dimension_chunk_keys = 300",
        "max_file_rows = 1500",
    ] {
        let found = chunked
            .lines()
            .any(|l| l.split('#').next().map(str::trim) == Some(set));
        assert!(found, "the default pipeline changed: {set}");
    }
    std::fs::write(d.join("chunked.toml"), chunked).unwrap();
    let run = |lake: &str, config: Option<&str>| {
        let mut args = vec!["--source", "sqlite:src.db", "--lake", lake];
        if let Some(c) = config {
            args.extend(["--config", c]);
        }
        args.push("run");
        let (code, out, err) = tunelake(d, &args);
        assert_eq!(code, 0, "{out}{err}");
        out
    };
    assert_eq!(
        tunelake(d, &["seed", "--source", "sqlite:src.db", "--scale", "0.01"]).0,
        0
    );
    run("whole", None);
    run("chunks", Some("chunked.toml"));
    assert_eq!(
        tunelake(d, &["seed", "--source", "sqlite:src.db", "--incremental"]).0,
        0
    );
    run("whole", None);
    let out = run("chunks", Some("chunked.toml"));
    assert!(out.contains("fact_stream"), "{out}");
    let silver_files = std::fs::read_dir(d.join("chunks/silver/streams"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "parquet")
        })
        .count();
    assert!(silver_files >= 8, "many silver files: {silver_files}");
    for ((table, want), (_, got)) in gold_tables(d, "whole").iter().zip(gold_tables(d, "chunks")) {
        let first_difference = want.iter().zip(&got).find(|(w, g)| w != g);
        assert!(
            got.len() == want.len() && first_difference.is_none(),
            "{table}: {} rows, {} expected; first difference {first_difference:?}",
            got.len(),
            want.len()
        );
    }
}

#[test]
fn the_whole_pipeline_as_one_run_equals_the_stages_run_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // One table at a time per stage, and the fact listed first: its gold must wait for the
    // dimensions it looks up without taking a place they need.
    let pipeline = tunelake::config::DEFAULT_PIPELINE;
    let fact_at = pipeline.find("[[tables]]\nname = \"FactStream\"").unwrap();
    let views_at = pipeline.find("[[views]]").unwrap();
    let first_table = pipeline.find("[[tables]]").unwrap();
    let reordered = format!(
        "{}{}{}{}",
        &pipeline[..first_table],
        &pipeline[fact_at..views_at],
        &pipeline[first_table..fact_at],
        &pipeline[views_at..]
    )
    .replace("max_concurrency = 4", "max_concurrency = 1");
    assert!(reordered.contains("max_concurrency = 1"));
    std::fs::write(d.join("reordered.toml"), reordered).unwrap();
    let run = |args: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tunelake"))
            .current_dir(d)
            .env_remove("TUNELAKE_SOURCE")
            .env_remove("TUNELAKE_LAKE")
            .env_remove("TUNELAKE_CONFIG")
            .args(["--source", "sqlite:src.db"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "{args:?}: {status}");
                return;
            }
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{args:?} did not finish in 5 minutes: a stage waits for itself");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let seed = |extra: &[&str]| {
        let mut args = vec!["seed", "--source", "sqlite:src.db"];
        args.extend(extra);
        assert_eq!(tunelake(d, &args).0, 0);
    };
    seed(&["--scale", "0.01"]);
    for round in 0..2 {
        if round == 1 {
            seed(&["--incremental"]);
        }
        run(&["--lake", "flow", "--config", "reordered.toml", "run"]);
        for stage in ["ingest", "silver", "gold"] {
            run(&["--lake", "staged", "run", "--stage", stage]);
        }
        for silver in ["users", "artists", "tracks", "dates", "streams"] {
            let count = |lake: &str| {
                let sql = format!("SELECT count(*) AS n FROM silver.{silver}");
                let (code, out, err) =
                    tunelake(d, &["--lake", lake, "sql", &sql, "--format", "csv"]);
                assert_eq!(code, 0, "{err}");
                out
            };
            assert_eq!(
                count("flow"),
                count("staged"),
                "round {round}, silver.{silver}"
            );
        }
        let (flow, staged) = (gold_tables(d, "flow"), gold_tables(d, "staged"));
        for ((table, want), (_, got)) in staged.iter().zip(&flow) {
            assert!(!want.is_empty(), "{table} is empty");
            let first_difference = want.iter().zip(got).find(|(w, g)| w != g);
            assert!(
                got.len() == want.len() && first_difference.is_none(),
                "round {round}, {table}: {} rows, {} expected; first difference {first_difference:?}",
                got.len(),
                want.len()
            );
        }
    }
}

#[test]
fn config_check_names_every_problem_against_the_sources_and_moves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (code, _, err) = tunelake_with(
        d,
        &["seed", "--source", "sqlite:src.db", "--scale", "0.002"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, err) =
        tunelake_with(d, &["--source", "sqlite:src.db", "config", "--check"], &[]);
    assert_eq!(code, 0, "the shipped pipeline fits its sources: {out}{err}");
    assert!(out.contains("valid against its sources"), "{out}");
    let pipeline = r#"
[sources.gone]
url = "files:/no/such/folder"

[[tables]]
name = "DimUser"
cdc_column = "modified_at"
keys = ["user_id", "account_id"]
[tables.silver]
columns = [{ name = "tier", expr = "upper(loyalty_tier)" }]

[[tables]]
name = "DimArtist"
cdc_column = "updated_at"
keys = ["artist_id"]
[tables.gold]
name = "dim_artist"
columns = ["artist_name", "label"]

[[tables]]
name = "Podcasts"
cdc_column = "updated_at"
keys = ["podcast_id"]

[[tables]]
name = "Country"
source = "gone"
cdc_column = "updated_at"
keys = ["country_code"]
"#;
    std::fs::write(d.join("bad.toml"), pipeline).unwrap();
    let (code, out, err) = tunelake_with(
        d,
        &[
            "--config",
            "bad.toml",
            "--source",
            "sqlite:src.db",
            "--lake",
            "lake",
            "config",
            "--check",
        ],
        &[],
    );
    assert_ne!(code, 0, "{out}");
    for expected in [
        "sources.gone",
        "tables[0] (DimUser).cdc_column: \"modified_at\"",
        "tables[0] (DimUser).keys[1]: \"account_id\"",
        "tables[0] (DimUser).silver",
        "loyalty_tier",
        "tables[1] (DimArtist).gold.columns[1]: \"label\"",
        "tables[2] (Podcasts)",
    ] {
        assert!(err.contains(expected), "{expected} missing:\n{err}");
    }
    assert!(!d.join("lake").exists(), "a check moves no data");
    // The reference covers what the loader reads.
    let (code, out, _) = tunelake_with(d, &["config", "--reference"], &[]);
    assert_eq!(code, 0);
    for key in [
        "[sources.<name>]",
        "schema_hints",
        "track_history_columns",
        "query_memory_mb",
    ] {
        assert!(out.contains(key), "{key} missing from the reference");
    }
}

#[test]
fn the_demo_runs_anywhere_with_both_sources_and_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (code, out, err) = tunelake_with(d, &["demo", "--scale", "0.002"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(d.join("tunelake-demo/report.html").is_file());
    assert!(d.join("tunelake-demo/reference/Country.csv").is_file());
    let country = out
        .lines()
        .find(|l| l.trim_start().starts_with("dim_country"))
        .unwrap_or_else(|| panic!("no dim_country line:\n{out}"));
    assert!(
        country.contains(" ok ") && country.contains(" 20 "),
        "{country}"
    );
}
