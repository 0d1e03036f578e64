//! Ingest over a real SQLite source: full, incremental, empty, backfill, crash and rerun,
//! per-table failure isolation, and bad input.

use tunelake::config::{Settings, TableSpec};
use tunelake::stages::Status;

use crate::common::*;

const ALL: [&str; 5] = ["DimUser", "DimArtist", "DimTrack", "DimDate", "FactStream"];
const KEYS: [(&str, &str, &str); 5] = [
    ("DimUser", "user_id", "updated_at"),
    ("DimArtist", "artist_id", "updated_at"),
    ("DimTrack", "track_id", "updated_at"),
    ("DimDate", "date_key", "date"),
    ("FactStream", "stream_id", "stream_timestamp"),
];

#[tokio::test]
async fn a_full_run_copies_every_source_row_exactly_once() {
    let fx = Fixture::seeded(0.01);
    let report = fx.ingest(&ALL, None).await;
    assert!(!report.failed(), "{report:?}");
    for (table, key, cdc) in KEYS {
        let files = fx.bronze_files(table);
        assert_eq!(files.len(), 1, "{table}");
        let counts = key_counts(&files, key);
        assert_eq!(
            counts.len() as u64,
            fx.count(&format!("SELECT COUNT(*) FROM {table}")),
            "{table}"
        );
        assert!(
            counts.values().all(|&c| c == 1),
            "{table} has a duplicate key"
        );
        let t = report.tables.iter().find(|t| t.table == table).unwrap();
        assert_eq!(t.status, Status::Ok);
        assert_eq!(t.rows, counts.len() as u64);
        // The watermark is the source's maximum, read before the copy.
        let wm = fx.watermark(table).unwrap();
        let max = fx.scalar(&format!("SELECT MAX({cdc}) FROM {table}"));
        let stored = wm["value"]
            .as_str()
            .unwrap()
            .replace('T', " ")
            .trim_end_matches('Z')
            .to_string();
        assert_eq!(stored, max, "{table}");
        assert_eq!(wm["column"], cdc);
        assert_eq!(wm["rows"], t.rows);
        // Min/max statistics for the watermark column alone (nothing reads bronze by another).
        let file = std::fs::File::open(&files[0]).unwrap();
        let reader = parquet::file::reader::SerializedFileReader::new(file).unwrap();
        let group = parquet::file::reader::FileReader::metadata(&reader).row_group(0);
        for column in group.columns() {
            let name = column.column_path().string();
            let has = column
                .statistics()
                .is_some_and(|s| s.min_bytes_opt().is_some());
            assert_eq!(has, name == cdc, "{table}.{name} statistics");
        }
    }
    // Dirty values arrive as they are: NULL countries, negative durations, unknown users.
    let users = fx.bronze_files("DimUser");
    assert_eq!(
        null_count(&users, "country") as u64,
        fx.count("SELECT COUNT(*) FROM DimUser WHERE country IS NULL")
    );
    assert!(fx.count("SELECT COUNT(*) FROM FactStream WHERE listen_duration < 0") > 0);
}

#[tokio::test]
async fn an_incremental_run_copies_exactly_the_rows_past_the_watermark() {
    let fx = Fixture::seeded(0.01);
    assert!(!fx.ingest(&ALL, None).await.failed());
    let before: Vec<_> = KEYS
        .iter()
        .map(|(t, _, cdc)| fx.scalar(&format!("SELECT MAX({cdc}) FROM {t}")))
        .collect();
    tunelake::seed::apply_changes(&fx.db, 7).unwrap();
    let report = fx.ingest(&ALL, None).await;
    assert!(!report.failed(), "{report:?}");
    for ((table, key, cdc), old_max) in KEYS.iter().zip(&before) {
        let expected = fx.count(&format!(
            "SELECT COUNT(*) FROM {table} WHERE {cdc} > '{old_max}'"
        ));
        let t = report.tables.iter().find(|t| &t.table == table).unwrap();
        assert_eq!(t.rows, expected, "{table}: rows in the window");
        let files = fx.bronze_files(table);
        if expected == 0 {
            assert_eq!(t.status, Status::Empty, "{table}");
            assert_eq!(files.len(), 1, "{table}: an empty window writes no file");
        } else {
            assert_eq!(files.len(), 2, "{table}");
            let new_files: Vec<_> = files
                .iter()
                .filter(|f| !f.to_str().unwrap().contains("_0_"))
                .cloned()
                .collect();
            let counts = key_counts(&new_files, key);
            assert_eq!(counts.len() as u64, expected, "{table}");
        }
    }
    // Streams only grow: bronze holds every stream exactly once.
    let streams = key_counts(&fx.bronze_files("FactStream"), "stream_id");
    assert_eq!(
        streams.len() as u64,
        fx.count("SELECT COUNT(*) FROM FactStream")
    );
    assert!(streams.values().all(|&c| c == 1));
    // Users changed: bronze has the old and the new version of each updated user.
    let users = key_counts(&fx.bronze_files("DimUser"), "user_id");
    assert_eq!(users.len() as u64, fx.count("SELECT COUNT(*) FROM DimUser"));
    assert!(users.values().any(|&c| c == 2));
}

#[tokio::test]
async fn a_run_with_nothing_new_writes_no_file_and_keeps_the_watermark() {
    let fx = Fixture::seeded(0.005);
    assert!(!fx.ingest(&ALL, None).await.failed());
    let wm_file = fx.lake.join("bronze/_watermarks/FactStream.json");
    let wm_before = std::fs::read(&wm_file).unwrap();
    let report = fx.ingest(&ALL, None).await;
    assert!(!report.failed());
    assert!(
        report
            .tables
            .iter()
            .all(|t| t.status == Status::Empty && t.rows == 0 && t.files.is_empty())
    );
    assert_eq!(
        std::fs::read(&wm_file).unwrap(),
        wm_before,
        "the watermark file was rewritten"
    );
    for table in ALL {
        assert_eq!(fx.bronze_files(table).len(), 1, "{table}");
    }
}

#[tokio::test]
async fn a_backfill_reextracts_from_a_date_and_never_moves_the_watermark_back() {
    let fx = Fixture::seeded(0.01);
    assert!(!fx.ingest(&ALL, None).await.failed());
    let wm = fx.watermark("FactStream").unwrap();
    let report = fx.ingest(&["FactStream"], Some("2025-03-01")).await;
    assert!(!report.failed(), "{report:?}");
    let expected = fx.count(
        "SELECT COUNT(*) FROM FactStream WHERE stream_timestamp > '2025-03-01 00:00:00.000000'",
    );
    assert!(expected > 0);
    assert_eq!(report.tables[0].rows, expected);
    let backfill = window_files(
        &fx.bronze_files("FactStream"),
        "FactStream",
        "20250301T000000000000",
    );
    assert_eq!(backfill.len(), 1);
    assert_eq!(rows(&backfill), expected);
    assert_eq!(
        fx.watermark("FactStream").unwrap()["value"],
        wm["value"],
        "the watermark moved"
    );
    // A backfill from before the start of the data and one from past its end.
    let all = fx.ingest(&["FactStream"], Some("2020-01-01")).await;
    assert_eq!(
        all.tables[0].rows,
        fx.count("SELECT COUNT(*) FROM FactStream")
    );
    let none = fx.ingest(&["FactStream"], Some("2030-01-01")).await;
    assert_eq!(none.tables[0].status, Status::Empty);
    // Running the same backfill again replaces its file instead of adding one.
    let files = fx.bronze_files("FactStream").len();
    fx.ingest(&["FactStream"], Some("2025-03-01")).await;
    assert_eq!(fx.bronze_files("FactStream").len(), files);
}

#[tokio::test]
async fn a_rerun_after_a_crash_before_the_watermark_replaces_instead_of_duplicating() {
    let fx = Fixture::seeded(0.01);
    assert!(!fx.ingest(&["FactStream"], None).await.failed());
    let first = fx.bronze_files("FactStream");
    // The crash: the file was written, the watermark was not.
    std::fs::remove_file(fx.lake.join("bronze/_watermarks/FactStream.json")).unwrap();
    // Same window again: the same file name is overwritten.
    assert!(!fx.ingest(&["FactStream"], None).await.failed());
    assert_eq!(fx.bronze_files("FactStream"), first);

    // Crash again, and new rows arrive before the rerun: the rerun's window is wider, and the
    // dead run's file must go, or bronze would hold those rows twice.
    std::fs::remove_file(fx.lake.join("bronze/_watermarks/FactStream.json")).unwrap();
    tunelake::seed::apply_changes(&fx.db, 7).unwrap();
    assert!(!fx.ingest(&["FactStream"], None).await.failed());
    let files = fx.bronze_files("FactStream");
    assert_eq!(files.len(), 1, "{files:?}");
    assert_ne!(files, first);
    let counts = key_counts(&files, "stream_id");
    assert_eq!(
        counts.len() as u64,
        fx.count("SELECT COUNT(*) FROM FactStream")
    );
    assert!(counts.values().all(|&c| c == 1));
}

#[tokio::test]
async fn parts_hold_at_most_max_file_rows_rows_each() {
    let fx = Fixture::seeded(0.05);
    let settings = Settings {
        max_file_rows: 12_000,
        batch_rows: 8192,
        ..Settings::default()
    };
    let report = fx.ingest_with(&["FactStream"], None, settings).await;
    assert!(!report.failed(), "{report:?}");
    let files = fx.bronze_files("FactStream");
    let sizes: Vec<u64> = files
        .iter()
        .map(|f| rows(std::slice::from_ref(f)))
        .collect();
    let total = fx.count("SELECT COUNT(*) FROM FactStream");
    assert_eq!(sizes.iter().sum::<u64>(), total);
    // Every part is full but the last: batches are split at the limit, not rounded to it.
    let (last, full) = sizes.split_last().unwrap();
    assert!(full.iter().all(|&n| n == 12_000), "{sizes:?}");
    assert!(*last > 0 && *last <= 12_000, "{sizes:?}");
    assert_eq!(key_counts(&files, "stream_id").len() as u64, total);
}

#[tokio::test]
async fn big_windows_are_split_into_parts_and_a_smaller_rerun_removes_the_surplus() {
    let fx = Fixture::seeded(0.1);
    let settings = Settings {
        max_file_mb: 1,
        batch_rows: 8192,
        ..Settings::default()
    };
    let report = fx
        .ingest_with(&["FactStream"], None, settings.clone())
        .await;
    assert!(!report.failed(), "{report:?}");
    let files = fx.bronze_files("FactStream");
    assert!(files.len() >= 2, "expected several parts, got {files:?}");
    let names: Vec<_> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    for (i, name) in names.iter().enumerate() {
        assert!(name.ends_with(&format!("_{i:05}.parquet")), "{name}");
    }
    let counts = key_counts(&files, "stream_id");
    assert_eq!(
        counts.len() as u64,
        fx.count("SELECT COUNT(*) FROM FactStream")
    );
    assert!(counts.values().all(|&c| c == 1));

    // The same window rerun with bigger parts (after a crash before the watermark) leaves no stale part.
    std::fs::remove_file(fx.lake.join("bronze/_watermarks/FactStream.json")).unwrap();
    let report = fx
        .ingest_with(&["FactStream"], None, Settings::default())
        .await;
    assert!(!report.failed());
    let files = fx.bronze_files("FactStream");
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(rows(&files), fx.count("SELECT COUNT(*) FROM FactStream"));
}

fn spec(name: &str, cdc: &str, key: &str) -> TableSpec {
    TableSpec {
        name: name.into(),
        schema: "dbo".into(),
        cdc_column: cdc.into(),
        keys: vec![key.into()],
        files: vec![],
        silver: Default::default(),
        gold: None,
        ..Default::default()
    }
}

#[tokio::test]
async fn one_failing_table_does_not_stop_the_others_and_is_named() {
    let fx = Fixture::seeded(0.005);
    let specs = [
        spec("DimUser", "updated_at", "user_id"),
        spec("NoSuchTable", "updated_at", "id"),
        spec("DimArtist", "modified_at", "artist_id"),
        spec("DimTrack", "track_name", "track_id"),
    ];
    let report = fx.ingest_specs(&specs, None, Settings::default()).await;
    assert!(report.failed());
    let status: Vec<_> = report.tables.iter().map(|t| t.status).collect();
    assert_eq!(
        status,
        [Status::Ok, Status::Failed, Status::Failed, Status::Failed]
    );
    let err = |i: usize| report.tables[i].error.clone().unwrap();
    assert!(
        err(1).contains("NoSuchTable") && err(1).contains("not found"),
        "{}",
        err(1)
    );
    assert!(
        err(2).contains("DimArtist")
            && err(2).contains("modified_at")
            && err(2).contains("updated_at"),
        "{}",
        err(2)
    );
    assert!(
        err(3).contains("track_name") && err(3).contains("integer, a date or a timestamp"),
        "{}",
        err(3)
    );
    assert!(fx.watermark("DimUser").is_some());
    for t in ["NoSuchTable", "DimArtist", "DimTrack"] {
        assert!(fx.watermark(t).is_none(), "{t}");
        assert!(fx.bronze_files(t).is_empty(), "{t}");
    }
}

#[tokio::test]
async fn a_value_that_does_not_fit_its_type_names_table_column_and_row_and_moves_nothing() {
    let fx = Fixture::seeded(0.005);
    assert!(!fx.ingest(&["DimUser"], None).await.failed());
    let wm = fx.watermark("DimUser").unwrap();
    // SQLite lets a text value into an INT column; a SQL Server source never would.
    fx.sql()
        .execute(
            "INSERT INTO DimUser VALUES ('u-77', 'x', 'US', 'free', '2025-01-01', NULL, '2026-01-01 00:00:00.000000')",
            [],
        )
        .unwrap();
    fx.sql()
        .execute(
            "INSERT INTO DimUser VALUES (900001, 'y', 'US', 'free', '2025-01-01', NULL, '2026-01-02 00:00:00.000000')",
            [],
        )
        .unwrap();
    let report = fx.ingest(&["DimUser"], None).await;
    assert!(report.failed());
    let err = report.tables[0].error.clone().unwrap();
    assert!(
        err.contains("DimUser")
            && err.contains("user_id")
            && err.contains("\"u-77\"")
            && err.contains("row"),
        "{err}"
    );
    assert_eq!(fx.watermark("DimUser").unwrap(), wm, "the watermark moved");
    // Fix the source, and the next run picks up the window it could not load.
    fx.sql()
        .execute(
            "UPDATE DimUser SET user_id = 900000 WHERE user_id = 'u-77'",
            [],
        )
        .unwrap();
    let report = fx.ingest(&["DimUser"], None).await;
    assert!(!report.failed(), "{report:?}");
    assert_eq!(report.tables[0].rows, 2);
}

#[tokio::test]
async fn an_unreadable_watermark_stops_its_table_and_is_left_as_it_is() {
    let fx = Fixture::seeded(0.005);
    assert!(!fx.ingest(&["DimDate", "DimArtist"], None).await.failed());
    let path = fx.lake.join("bronze/_watermarks/DimDate.json");
    std::fs::write(&path, b"{\"column\": \"date\", \"value\": ").unwrap();
    let report = fx.ingest(&["DimDate", "DimArtist"], None).await;
    let err = report.tables[0].error.clone().unwrap();
    assert!(err.contains("bronze/_watermarks/DimDate.json"), "{err}");
    assert_eq!(
        report.tables[1].status,
        Status::Empty,
        "the other table still ran"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"{\"column\": \"date\", \"value\": "
    );
    assert_eq!(fx.bronze_files("DimDate").len(), 1);
}

#[tokio::test]
async fn an_unreachable_source_is_a_clear_error() {
    let err = tunelake::source::open("sqlite:/nonexistent/x.db")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("/nonexistent/x.db") && err.contains("cannot be reached"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let not_db = dir.path().join("notes.txt");
    std::fs::write(
        &not_db,
        "hello, this is not a database at all, but long enough to look like one",
    )
    .unwrap();
    let err = tunelake::source::open(&format!("sqlite:{}", not_db.display()))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("notes.txt"), "{err}");
    let err = tunelake::source::open("postgres://x")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("sqlite:PATH"), "{err}");
}
