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
