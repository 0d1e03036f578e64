//! Re-resolution's cost follows the facts a dimension change moves: only the fact files that
//! hold one are rewritten, each once, and each copy keeps its file's keys together.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;

use crate::common::read_parquet;
use crate::gold::{Lakehouse, PIPELINE, report};

/// The fact's live files, each with the stream ids it holds.
async fn fact_files(h: &Lakehouse) -> BTreeMap<String, BTreeSet<i64>> {
    let table = h.lake.delta_table("gold/fact_stream").await.unwrap();
    let folder = h.dir.path().join("lake/gold/fact_stream");
    let snapshot = table.snapshot().unwrap();
    let mut files = BTreeMap::new();
    for file in snapshot.log_data().iter() {
        let path = file.path().to_string();
        let mut ids = BTreeSet::new();
        for batch in read_parquet(&folder.join(&path)) {
            let column = batch.column_by_name("stream_id").unwrap();
            let column = column.as_primitive::<Int64Type>();
            ids.extend((0..column.len()).map(|i| column.value(i)));
        }
        files.insert(path, ids);
    }
    files
}

#[tokio::test]
async fn a_late_change_rewrites_only_the_fact_files_holding_a_moved_fact() {
    // A group of files per fact file: each copy is then one file's rows.
    let h = Lakehouse::new(&format!("[settings]\nchunk_rows = 1\n{PIPELINE}"));
    h.users(&[
        (1, "US", "a", "09:00"),
        (2, "FR", "x", "09:00"),
        (3, "PT", "p", "09:00"),
    ])
    .await;
    // Three runs: three sets of fact files, whose keys do not overlap.
    let runs: [BTreeSet<i64>; 3] = [(1..=3).collect(), (4..=6).collect(), (7..=9).collect()];
    for (run, at) in runs.iter().zip(["10:00", "11:00", "12:00"]) {
        let rows: Vec<(i64, i32, &str)> = run
            .iter()
            .map(|&id| (id, (id - 1) as i32 % 3 + 1, at))
            .collect();
        h.streams(&rows).await;
        h.gold().await;
    }
    let before = fact_files(&h).await;

    // User 2 changes at 10:30: streams 5 (11:00) and 8 (12:00) move, stream 2 (10:00) does not.
    h.users(&[(2, "ES", "e", "10:30")]).await;
    let second = h.gold().await;
    assert_eq!(report(&second, "fact_stream").updated, 2);
    let after = fact_files(&h).await;

    let moved = BTreeSet::from([5, 8]);
    for (path, ids) in &before {
        let touched = !ids.is_disjoint(&moved);
        assert_eq!(
            after.contains_key(path),
            !touched,
            "{path} ({ids:?}) was kept or rewritten wrongly"
        );
    }
    let new: Vec<&BTreeSet<i64>> = (after.iter())
        .filter(|(path, _)| !before.contains_key(*path))
        .map(|(_, ids)| ids)
        .collect();
    assert!(!new.is_empty(), "no file was rewritten");
    for ids in &new {
        assert!(
            runs.iter().any(|run| ids.is_subset(run)),
            "a rewritten file mixes the keys of several files: {ids:?}"
        );
    }
    let all: BTreeSet<i64> = after.values().flatten().copied().collect();
    assert_eq!(all, (1..=9).collect(), "every fact once");
    assert_eq!(after.values().map(BTreeSet::len).sum::<usize>(), 9);
    assert_eq!(
        h.csv(
            "SELECT f.stream_id, u.country FROM gold.fact_stream f JOIN gold.dim_user u \
               ON f.user_sk = u.user_sk WHERE f.user_id = 2 ORDER BY f.stream_id"
        )
        .await,
        ["2,FR", "5,ES", "8,ES"]
    );
}

/// A correction that moves most facts (every user's country changed as of a past day),
/// killed (SIGKILL) while gold re-resolves them in many groups, then rerun: the same gold
/// tables as the uninterrupted run.
#[test]
fn a_correction_killed_while_facts_are_re_resolved_gives_the_uninterrupted_tables_on_rerun() {
    use crate::cli::{copy_dir, gold_tables, tunelake_with};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Groups of few facts: many commits to be killed between.
    let small =
        tunelake::config::DEFAULT_PIPELINE.replace("chunk_rows = 400000", "chunk_rows = 1000");
    assert_ne!(small, tunelake::config::DEFAULT_PIPELINE);
    std::fs::write(d.join("small.toml"), small).unwrap();
    let tl = |lake: &str, args: &[&str]| {
        let mut all = vec![
            "--config",
            "small.toml",
            "--source",
            "sqlite:src.db",
            "--lake",
            lake,
        ];
        all.extend(args);
        let (code, out, err) = tunelake_with(d, &all, &[]);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
    };
    tl("lake", &["seed", "--scale", "0.01"]);
    tl("lake", &["-q", "run"]);
    // A second batch: more fact files, so more groups (one commit each) to be killed between.
    tl("lake", &["seed", "--incremental"]);
    tl("lake", &["-q", "run"]);
    back_fill_a_correction(d, |args| {
        tl("lake", args);
    });
    tl("lake", &["-q", "run", "--stage", "silver"]);
    copy_dir(&d.join("lake"), &d.join("reference"));
    tl("reference", &["-q", "run", "--stage", "gold"]);
    let expected = gold_tables(d, "reference");
    for delay_ms in [400, 1200, 2500] {
        let lake = format!("killed{delay_ms}");
        copy_dir(&d.join("lake"), &d.join(&lake));
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tunelake"))
            .current_dir(d)
            .env_remove("TUNELAKE_SOURCE")
            .args([
                "--config",
                "small.toml",
                "--lake",
                &lake,
                "-q",
                "run",
                "--stage",
                "gold",
            ])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        tl(&lake, &["-q", "run", "--stage", "gold"]);
        for ((table, want), (_, got)) in expected.iter().zip(gold_tables(d, &lake)) {
            assert!(
                got == *want,
                "{table} after a kill at {delay_ms} ms: {} rows, {} expected",
                got.len(),
                want.len()
            );
        }
    }
}

/// A run with no new facts and no dimension change has nothing to resolve, and reads no
/// dimension rows: it still succeeds with dim_user's data files gone from disk.
#[tokio::test]
async fn a_quiet_run_reads_no_dimension_rows() {
    let h = Lakehouse::new(PIPELINE);
    h.users(&[(1, "US", "a", "09:00"), (2, "FR", "x", "09:00")])
        .await;
    h.streams(&[(1, 1, "10:00"), (2, 2, "10:00")]).await;
    h.gold().await;
    let version = h
        .lake
        .delta_table("gold/fact_stream")
        .await
        .unwrap()
        .version();

    let folder = h.dir.path().join("lake/gold/dim_user");
    let aside = h.dir.path().join("aside");
    std::fs::create_dir(&aside).unwrap();
    let data: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert!(!data.is_empty());
    for path in &data {
        std::fs::rename(path, aside.join(path.file_name().unwrap())).unwrap();
    }
    let quiet = h.gold().await;
    let fact = report(&quiet, "fact_stream");
    assert_eq!((fact.rows_in, fact.inserted, fact.updated), (0, 0, 0));
    let table = h.lake.delta_table("gold/fact_stream").await.unwrap();
    assert_eq!(table.version(), version);

    // With the files back, a dimension change alone still moves the facts it concerns.
    for path in &data {
        std::fs::rename(aside.join(path.file_name().unwrap()), path).unwrap();
    }
    h.users(&[(2, "ES", "e", "09:30")]).await;
    assert_eq!(report(&h.gold().await, "fact_stream").updated, 1);
}

/// A whole-pipeline run in which only a dimension changes (a correction back-filled into
/// bronze, no new streams) re-resolves the facts it moves, as silver then gold run apart do:
/// the fact, with no new rows, waits for the dimension built in the same run instead of
/// finding it unchanged before silver committed its changes.
#[test]
fn a_run_that_changes_only_a_dimension_moves_its_facts() {
    use crate::cli::{copy_dir, gold_tables, tunelake_with};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tl = |lake: &str, args: &[&str]| {
        let mut all = vec!["--source", "sqlite:src.db", "--lake", lake];
        all.extend(args);
        let (code, out, err) = tunelake_with(d, &all, &[]);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        out
    };
    tl("lake", &["seed", "--scale", "0.01"]);
    tl("lake", &["-q", "run"]);
    back_fill_a_correction(d, |args| {
        tl("lake", args);
    });
    copy_dir(&d.join("lake"), &d.join("apart"));
    tl("apart", &["-q", "run", "--stage", "silver"]);
    tl("apart", &["-q", "run", "--stage", "gold"]);
    tl("lake", &["-q", "run"]);
    let moved = "SELECT count(*) FROM gold.fact_stream f JOIN gold.dim_user u \
                 ON f.user_sk = u.user_sk WHERE u.country LIKE 'X%'";
    let count = |lake: &str| tl(lake, &["-q", "sql", "--format", "csv", moved]);
    assert_ne!(
        count("apart").trim().lines().last(),
        Some("0"),
        "nothing moved"
    );
    assert_eq!(count("lake"), count("apart"));
    assert_eq!(gold_tables(d, "lake"), gold_tables(d, "apart"));
}

/// Every user's country changed in the source as of 2024-09-01, and back-filled into bronze
/// by `ingest` (given the arguments): a correction that moves every later fact.
fn back_fill_a_correction(d: &std::path::Path, ingest: impl Fn(&[&str])) {
    let db = rusqlite::Connection::open(d.join("src.db")).unwrap();
    db.execute(
        "UPDATE DimUser SET country = 'X' || country, updated_at = '2024-09-01 00:00:00.000000'",
        [],
    )
    .unwrap();
    drop(db);
    ingest(&["-q", "ingest", "--table", "DimUser", "--from", "2024-08-31"]);
}
