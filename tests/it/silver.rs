//! Silver over real bronze files and real Delta tables: exactly once, cleaning, schema
//! evolution, rescued data, quarantine, expectations, and concurrent writers.

use std::sync::Arc;

use arrow::array::{Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::prelude::SessionContext;
use tunelake::config::{Action, Expectation, Pipeline, Settings, TableSpec};
use tunelake::lake::Lake;
use tunelake::stages::Status;
use tunelake::stages::silver::{FileStatus, Silver, SilverReport};

use crate::common::*;

fn pipeline() -> Pipeline {
    Pipeline::parse(tunelake::config::DEFAULT_PIPELINE, "pipeline.toml").unwrap()
}

fn spec(name: &str) -> TableSpec {
    pipeline().select(&[name.to_string()]).unwrap().remove(0)
}

async fn silver(fx: &Fixture, tables: &[TableSpec]) -> SilverReport {
    let lake = Lake::open(fx.lake.to_str().unwrap()).unwrap();
    Silver::new(lake, Settings::default(), "test")
        .run(tables)
        .await
}

/// A small seeded source with `table` ingested and loaded into silver.
async fn loaded(table: &str) -> (Fixture, [TableSpec; 1]) {
    let fx = Fixture::seeded(0.005);
    assert!(!fx.ingest(&[table], None).await.failed());
    let tables = [spec(table)];
    assert!(!silver(&fx, &tables).await.failed());
    (fx, tables)
}

/// Runs SQL over a silver table registered as `t`; returns the first column of the first row as text.
async fn query(fx: &Fixture, table: &str, sql: &str) -> String {
    let url =
        url::Url::from_directory_path(fx.lake.join("silver").join(table).canonicalize().unwrap())
            .unwrap();
    let delta = deltalake::DeltaTable::try_from_url(url).await.unwrap();
    let ctx = SessionContext::new();
    delta.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("t", delta.table_provider().await.unwrap())
        .unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let formatter = arrow::util::display::ArrayFormatter::try_new(
        batches[0].column(0).as_ref(),
        &Default::default(),
    )
    .unwrap();
    formatter.value(0).to_string()
}

/// What the blob trigger's entry point does with one bronze file now.
async fn file_status(fx: &Fixture, table: &str, path: &str) -> FileStatus {
    let lake = Lake::open(fx.lake.to_str().unwrap()).unwrap();
    Silver::new(lake, Settings::default(), "t")
        .process_file(&spec(table), path)
        .await
        .unwrap()
        .status
}

fn all() -> Vec<TableSpec> {
    pipeline().tables
}

#[tokio::test]
async fn silver_holds_every_extracted_version_once_and_cleaned() {
    let fx = Fixture::seeded(0.01);
    let names: Vec<&str> = vec!["DimUser", "DimArtist", "DimTrack", "DimDate", "FactStream"];
    assert!(!fx.ingest(&names, None).await.failed());
    let first = silver(&fx, &all()).await;
    assert!(!first.failed(), "{first:?}");
    tunelake::seed::apply_changes(&fx.db, 7).unwrap();
    assert!(!fx.ingest(&names, None).await.failed());
    let second = silver(&fx, &all()).await;
    assert!(!second.failed(), "{second:?}");
    assert_eq!(second.gold_work().len(), 4, "dates had no new file");

    // Streams: append-only, so silver = the source minus the negative durations.
    let expected = fx.count("SELECT COUNT(*) FROM FactStream WHERE listen_duration >= 0");
    assert_eq!(
        query(&fx, "streams", "SELECT count(*) FROM t").await,
        expected.to_string()
    );
    assert_eq!(
        query(&fx, "streams", "SELECT count(*) FROM t WHERE listen_duration_min <> round(listen_duration / 60.0, 2) OR device_type <> lower(trim(device_type))").await,
        "0"
    );
    // Users: one row per (user_id, updated_at) ever extracted: the first versions of the
    // users that changed, plus every current version.
    let bronze_users = rows(&fx.bronze_files("DimUser"));
    assert_eq!(
        query(&fx, "users", "SELECT count(*) FROM t").await,
        bronze_users.to_string()
    );
    assert_eq!(
        query(&fx, "users", "SELECT count(*) - count(DISTINCT concat(CAST(user_id AS VARCHAR), '|', CAST(updated_at AS VARCHAR))) FROM t").await,
        "0"
    );
    assert_eq!(
        query(
            &fx,
            "users",
            "SELECT count(*) FROM t WHERE user_name <> upper(trim(user_name)) OR country IS NULL"
        )
        .await,
        "0"
    );
    assert!(
        query(
            &fx,
            "users",
            "SELECT count(*) FROM t WHERE country = 'UNKNOWN'"
        )
        .await
            != "0"
    );
    assert_eq!(
        query(
            &fx,
            "tracks",
            "SELECT count(*) FROM t WHERE strpos(track_name, '-') > 0"
        )
        .await,
        "0"
    );
    assert_eq!(
        query(&fx, "tracks", "SELECT count(*) FROM t WHERE duration_flag NOT IN ('low', 'medium', 'high') OR (duration_sec < 150) <> (duration_flag = 'low')").await,
        "0"
    );
    let weekend = fx.count("SELECT COUNT(*) FROM DimDate WHERE weekday IN ('Saturday', 'Sunday')");
    assert_eq!(
        query(&fx, "dates", "SELECT count(*) FROM t WHERE is_weekend").await,
        weekend.to_string()
    );
    assert_eq!(
        query(
            &fx,
            "users",
            "SELECT count(*) FROM t WHERE _source_file NOT LIKE 'bronze/DimUser/DimUser_%'"
        )
        .await,
        "0"
    );
    // The dropped streams are quarantined with the rule's name.
    let quarantined = parquet_files(&fx.lake.join("bronze/_quarantine/FactStream/rows"));
    assert_eq!(quarantined.len(), 2);
    let dropped: u64 = rows(&quarantined);
    assert_eq!(
        dropped,
        fx.count("SELECT COUNT(*) FROM FactStream WHERE listen_duration < 0")
    );
    let batch = &read_parquet(&quarantined[0])[0];
    let rules = batch
        .column_by_name("_failed_rules")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert_eq!(rules.value(0), "non_negative_duration");
}

#[tokio::test]
async fn reruns_reprocessed_files_and_overlapping_backfills_add_nothing() {
    let fx = Fixture::seeded(0.01);
    assert!(!fx.ingest(&["FactStream"], None).await.failed());
    let tables = [spec("FactStream")];
    let first = silver(&fx, &tables).await;
    let count = query(&fx, "streams", "SELECT count(*) FROM t").await;
    let version = first.tables[0].version;

    let again = silver(&fx, &tables).await;
    assert_eq!(again.tables[0].status, Status::Empty);
    // The discovery cursor passes the loaded file over without checking it again.
    assert_eq!(again.tables[0].skipped, 0);
    assert_eq!(again.tables[0].version, version, "a rerun made a commit");

    // The library entry point (the blob trigger's) on a loaded file is a no-op.
    let lake = Lake::open(fx.lake.to_str().unwrap()).unwrap();
    let stage = Silver::new(lake.clone(), Settings::default(), "t");
    let file = first.tables[0].source_table.clone();
    let bronze = format!(
        "bronze/{file}/{}",
        fx.bronze_files(&file)[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
    );
    assert_eq!(
        stage
            .process_file(&tables[0], &bronze)
            .await
            .unwrap()
            .status,
        FileStatus::AlreadyLoaded
    );

    // A backfill re-extracts rows silver holds: a new file, nothing new in silver.
    let backfill = fx.ingest(&["FactStream"], Some("2025-03-01")).await;
    assert!(backfill.tables[0].rows > 0);
    let after = silver(&fx, &tables).await;
    assert_eq!(after.tables[0].files, 1);
    assert_eq!(after.tables[0].counts.rows_out, 0);
    assert!(after.tables[0].counts.rows_duplicate > 0);
    assert_eq!(query(&fx, "streams", "SELECT count(*) FROM t").await, count);

    // The same backfill again rewrites its file (newer mtime): processed again, still nothing new.
    std::thread::sleep(std::time::Duration::from_millis(20));
    fx.ingest(&["FactStream"], Some("2025-03-01")).await;
    let again = silver(&fx, &tables).await;
    assert_eq!(again.tables[0].files, 1);
    assert_eq!(again.tables[0].counts.rows_out, 0);
    assert_eq!(query(&fx, "streams", "SELECT count(*) FROM t").await, count);

    // A file that is listed but gone before it is read loads nothing and fails nothing.
    let gone = stage
        .process_file(&tables[0], "bronze/FactStream/FactStream_1_2_00000.parquet")
        .await
        .unwrap();
    assert_eq!(gone.status, FileStatus::Vanished);
}

/// Adds `n` streams after every stream the source holds.
fn add_streams(fx: &Fixture, n: u32) {
    fx.sql()
        .execute(
            "INSERT INTO FactStream SELECT stream_id + (SELECT max(stream_id) FROM FactStream), \
             user_id, track_id, date_key, listen_duration, device_type, \
             (SELECT strftime('%Y-%m-%d %H:%M:%f000', max(stream_timestamp), '+1 minute') \
              FROM FactStream) \
             FROM FactStream ORDER BY stream_id LIMIT ?1",
            [n],
        )
        .unwrap();
}

#[tokio::test]
async fn silver_lists_past_its_cursor_and_in_full_every_backfill_interval() {
    let fx = Fixture::seeded(0.005);
    let tables = [spec("FactStream")];
    assert!(!fx.ingest(&["FactStream"], None).await.failed());
    assert!(!silver(&fx, &tables).await.failed());
    let cursor = fx.lake.join("bronze/_discovery/FactStream.json");
    assert!(cursor.exists(), "no discovery cursor after a load");

    // A new window sorts past the cursor: found and loaded.
    add_streams(&fx, 5);
    assert!(!fx.ingest(&["FactStream"], None).await.failed());
    let next = silver(&fx, &tables).await;
    assert_eq!(
        (next.tables[0].files, next.tables[0].counts.rows_out),
        (1, 5)
    );

    // A file that lands behind the cursor without ingest (a racing writer) is passed over by
    // the listing from the cursor, and found by the next full one.
    add_streams(&fx, 3);
    assert!(!fx.ingest(&["FactStream"], None).await.failed());
    let newest = fx.bronze_files("FactStream").into_iter().max().unwrap();
    let name = newest.file_name().unwrap().to_str().unwrap();
    let behind = newest.with_file_name(name.replacen("FactStream_", "FactStream_0", 1));
    std::fs::rename(&newest, &behind).unwrap();
    let passed = silver(&fx, &tables).await;
    assert_eq!(passed.tables[0].files, 0);
    let lake = Lake::open(fx.lake.to_str().unwrap()).unwrap();
    let full = Settings {
        backfill_interval_hours: 0,
        ..Settings::default()
    };
    let found = Silver::new(lake, full, "t").run(&tables).await;
    assert_eq!(
        (found.tables[0].files, found.tables[0].counts.rows_out),
        (1, 3)
    );

    // Ingest writing behind the cursor (a backfill) removes it: the next listing is full.
    let backfill = fx.ingest(&["FactStream"], Some("2025-03-01")).await;
    assert!(backfill.tables[0].rows > 0);
    assert!(!cursor.exists(), "a backfill left the cursor in place");
    let after = silver(&fx, &tables).await;
    assert_eq!(after.tables[0].files, 1);
    assert_eq!(after.tables[0].counts.rows_out, 0);
    assert!(cursor.exists());
}

#[tokio::test]
async fn a_new_source_column_is_added_and_older_rows_are_null() {
    let (fx, tables) = loaded("DimUser").await;
    let conn = fx.sql();
    conn.execute_batch(
        "ALTER TABLE DimUser ADD COLUMN loyalty_tier NVARCHAR(20);
         UPDATE DimUser SET loyalty_tier = 'gold', updated_at = '2026-01-01 00:00:00.000000' WHERE user_id <= 10;",
    )
    .unwrap();
    assert!(!fx.ingest(&["DimUser"], None).await.failed());
    let report = silver(&fx, &tables).await;
    assert!(!report.failed(), "{report:?}");
    assert_eq!(report.tables[0].counts.rows_out, 10);
    assert_eq!(
        query(
            &fx,
            "users",
            "SELECT count(*) FROM t WHERE loyalty_tier = 'gold'"
        )
        .await,
        "10"
    );
    let total: u64 = query(&fx, "users", "SELECT count(*) FROM t")
        .await
        .parse()
        .unwrap();
    assert_eq!(
        query(
            &fx,
            "users",
            "SELECT count(*) FROM t WHERE loyalty_tier IS NULL"
        )
        .await,
        (total - 10).to_string()
    );
}

fn write_bronze(fx: &Fixture, table: &str, name: &str, batch: &RecordBatch) -> String {
    let dir = fx.lake.join("bronze").join(table);
    std::fs::create_dir_all(&dir).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(dir.join(name)).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
    format!("bronze/{table}/{name}")
}

fn utc() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// A bronze DimTrack batch of ids, names, durations (of any type) and update times (µs).
fn tracks(
    ids: Int32Array,
    names: StringArray,
    durations: arrow::array::ArrayRef,
    updated: Vec<i64>,
) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("track_id", DataType::Int32, true),
        Field::new("track_name", DataType::Utf8, true),
        Field::new("duration_sec", durations.data_type().clone(), true),
        Field::new("updated_at", utc(), true),
    ]));
    let updated = TimestampMicrosecondArray::from(updated).with_timezone("UTC");
    RecordBatch::try_new(
        schema,
        vec![Arc::new(ids), Arc::new(names), durations, Arc::new(updated)],
    )
    .unwrap()
}

#[tokio::test]
async fn a_value_that_no_longer_fits_its_type_is_rescued_not_dropped() {
    let (fx, tables) = loaded("DimTrack").await;
    // The source changed duration_sec from INT to VARCHAR: "200" still fits, "3:20" does not.
    let batch = tracks(
        Int32Array::from(vec![1, 2]),
        StringArray::from(vec!["a-b", "c"]),
        Arc::new(StringArray::from(vec!["200", "3:20"])),
        vec![1_800_000_000_000_000, 1_800_000_000_000_001],
    );
    write_bronze(&fx, "DimTrack", "DimTrack_x_y_00000.parquet", &batch);
    let report = silver(&fx, &tables).await;
    assert!(!report.failed(), "{report:?}");
    assert_eq!(report.tables[0].counts.rows_rescued, 1);
    assert_eq!(report.tables[0].counts.rows_out, 2);
    assert_eq!(
        query(
            &fx,
            "tracks",
            "SELECT duration_sec FROM t WHERE track_id = 1 AND _source_file LIKE '%x_y%'"
        )
        .await,
        "200"
    );
    assert_eq!(
        query(
            &fx,
            "tracks",
            "SELECT _rescued_data FROM t WHERE track_id = 2 AND _source_file LIKE '%x_y%'"
        )
        .await,
        r#"{"duration_sec":"3:20"}"#
    );
    assert_eq!(
        query(
            &fx,
            "tracks",
            "SELECT count(*) FROM t WHERE _rescued_data IS NOT NULL"
        )
        .await,
        "1"
    );
}

/// A big bronze file that brings no new column is written by two writers: both files must
/// land in one commit that records the file, every row once, and a retry must add nothing.
#[tokio::test]
async fn a_big_file_is_written_by_two_writers_in_one_commit_exactly_once() {
    let (fx, tables) = loaded("DimTrack").await;
    let open = || async {
        let url =
            url::Url::from_directory_path(fx.lake.join("silver/tracks").canonicalize().unwrap())
                .unwrap();
        deltalake::DeltaTable::try_from_url(url).await.unwrap()
    };
    let before = open().await;
    let files_before = before.get_file_uris().unwrap().count();

    let rows = 150_000;
    let batch = tracks(
        Int32Array::from_iter_values(1_000_000..1_000_000 + rows),
        StringArray::from_iter_values((0..rows).map(|i| format!("track {i}"))),
        Arc::new(Int32Array::from_iter_values(
            (0..rows).map(|i| 60 + i % 400),
        )),
        (0..rows as i64)
            .map(|i| 1_800_000_000_000_000 + i)
            .collect(),
    );
    let path = write_bronze(&fx, "DimTrack", "DimTrack_big_00000.parquet", &batch);
    let report = silver(&fx, &tables).await;
    assert!(!report.failed(), "{report:?}");
    assert_eq!(report.tables[0].counts.rows_out, rows as u64);

    let after = open().await;
    assert_eq!(
        after.version(),
        before.version().map(|v| v + 1),
        "one commit"
    );
    assert_eq!(
        after.get_file_uris().unwrap().count(),
        files_before + 2,
        "two writers, a file each"
    );
    assert_eq!(
        query(
            &fx,
            "tracks",
            "SELECT count(DISTINCT track_id) = count(*) AND count(*) = 150000 \
             AND min(track_id) = 1000000 AND max(track_id) = 1149999 \
             AND count(*) FILTER (WHERE duration_flag IS NULL) = 0 \
             FROM t WHERE _source_file LIKE '%big%'"
        )
        .await,
        "true"
    );
    assert_eq!(
        file_status(&fx, "DimTrack", &path).await,
        FileStatus::AlreadyLoaded
    );
}

/// A file re-delivering versions silver holds, beside new ones: a few held ones or more
/// than silver holds in memory to probe against (70,000), only the new versions are added.
#[tokio::test]
async fn only_new_versions_are_added_however_many_held_ones_a_file_repeats() {
    let (fx, tables) = loaded("DimTrack").await;
    let at = 1_800_000_000_000_000_i64;
    // ids from..to, updated at `at` (even ids) or a microsecond later (odd ids).
    let file = |name: &str, from: i32, to: i32| {
        let batch = tracks(
            Int32Array::from_iter_values((from..to).map(|i| 2_000_000 + i)),
            StringArray::from_iter_values((from..to).map(|i| format!("track {i}"))),
            Arc::new(Int32Array::from_iter_values(
                (from..to).map(|i| 60 + i % 400),
            )),
            (from..to).map(|i| at + i64::from(i % 2)).collect(),
        );
        write_bronze(&fx, "DimTrack", name, &batch);
    };
    file("DimTrack_a_00000.parquet", 0, 70_000);
    let first = silver(&fx, &tables).await;
    assert_eq!(first.tables[0].counts.rows_out, 70_000, "{first:?}");
    // Every held version again and 10,000 new ones: more than are held to probe against.
    file("DimTrack_b_00000.parquet", 0, 80_000);
    let second = silver(&fx, &tables).await;
    assert_eq!(second.tables[0].counts.rows_out, 10_000, "{second:?}");
    assert_eq!(second.tables[0].counts.rows_duplicate, 70_000);
    // Three held versions and two new ones.
    file("DimTrack_c_00000.parquet", 79_997, 80_002);
    let third = silver(&fx, &tables).await;
    assert_eq!(third.tables[0].counts.rows_out, 2, "{third:?}");
    assert_eq!(
        query(
            &fx,
            "tracks",
            "SELECT count(*) = 80002 AND count(DISTINCT track_id) = 80002 FROM t \
             WHERE track_id >= 2000000"
        )
        .await,
        "true"
    );
}

#[tokio::test]
async fn a_corrupt_file_is_quarantined_with_a_reason_and_the_others_load() {
    let fx = Fixture::seeded(0.005);
    assert!(!fx.ingest(&["DimDate"], None).await.failed());
    let bad = fx.lake.join("bronze/DimDate/DimDate_1_2_00000.parquet");
    std::fs::write(&bad, b"this is not parquet").unwrap();
    let report = silver(&fx, &[spec("DimDate")]).await;
    assert!(report.failed(), "a quarantined file must be reported");
    let t = &report.tables[0];
    assert_eq!(t.files, 1, "the good file loaded");
    assert_eq!(t.quarantined_files.len(), 1);
    assert!(
        t.quarantined_files[0]
            .0
            .ends_with("DimDate_1_2_00000.parquet")
    );
    assert!(!bad.exists());
    let moved = fx
        .lake
        .join("bronze/_quarantine/DimDate/DimDate_1_2_00000.parquet");
    assert_eq!(std::fs::read(&moved).unwrap(), b"this is not parquet");
    let reason = std::fs::read_to_string(
        fx.lake
            .join("bronze/_quarantine/DimDate/DimDate_1_2_00000.parquet.reason.txt"),
    )
    .unwrap();
    assert!(
        reason.contains("table: DimDate") && reason.contains("reason:"),
        "{reason}"
    );
    assert_eq!(query(&fx, "dates", "SELECT count(*) FROM t").await, "1096");
    // The next run is clean.
    assert!(!silver(&fx, &[spec("DimDate")]).await.failed());
}

/// A bronze DimArtist file's columns without genre and country.
fn artist_rows_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("artist_id", DataType::Int32, true),
        Field::new("artist_name", DataType::Utf8, true),
        Field::new("updated_at", utc(), true),
    ]))
}

#[tokio::test]
async fn rows_with_null_keys_are_quarantined_and_the_file_is_recorded() {
    let (fx, _) = loaded("DimArtist").await;
    let schema = artist_rows_schema();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int32Array::from(vec![None, None, None])),
            Arc::new(StringArray::from(vec!["a", "b", "c"])),
            Arc::new(TimestampMicrosecondArray::from(vec![1, 2, 3]).with_timezone("UTC")),
        ],
    )
    .unwrap();
    // A file whose key column is NULL in every row (and that lacks genre and country).
    let path = write_bronze(&fx, "DimArtist", "DimArtist_9_9_00000.parquet", &batch);
    let report = silver(&fx, &[spec("DimArtist")]).await;
    assert!(!report.failed(), "{report:?}");
    let t = &report.tables[0];
    assert_eq!(
        (t.counts.rows_in, t.counts.rows_dropped, t.counts.rows_out),
        (3, 3, 0)
    );
    assert_eq!(t.counts.expectations.get("keys_not_null"), Some(&3));
    assert_eq!(
        rows(&parquet_files(
            &fx.lake.join("bronze/_quarantine/DimArtist/rows")
        )),
        3
    );
    assert_eq!(
        file_status(&fx, "DimArtist", &path).await,
        FileStatus::AlreadyLoaded
    );
    // The same rows, queryable by name as a Delta table, with their rule, file and run.
    let lake = Lake::open(fx.lake.to_str().unwrap()).unwrap();
    let sql = "SELECT count(*) AS n, min(_source_file) AS f, min(_run_id) AS r, \
               min(CAST(_failed_rules AS VARCHAR)) AS rules, min(artist_name) AS a \
               FROM silver.artists_quarantine";
    let text = tunelake::query::render(
        &tunelake::query::run(&lake, sql).await.unwrap(),
        tunelake::query::Format::Csv,
    )
    .unwrap();
    let line = text.lines().nth(1).unwrap();
    assert!(
        line.starts_with(&format!("3,{path},test,"))
            && line.contains("keys_not_null")
            && line.ends_with(",a"),
        "{text}"
    );
    // Loading the lake's files again quarantines nothing twice.
    let again = silver(&fx, &[spec("DimArtist")]).await;
    assert!(!again.failed());
    let n = tunelake::query::run(&lake, "SELECT count(*) AS n FROM silver.artists_quarantine")
        .await
        .unwrap();
    assert_eq!(
        tunelake::query::render(&n, tunelake::query::Format::Csv).unwrap(),
        "n\n3\n"
    );
}

#[tokio::test]
async fn each_file_of_a_run_quarantines_its_rows_once_into_the_kept_table() {
    let (fx, _) = loaded("DimArtist").await;
    let schema = artist_rows_schema();
    // Three files in one run, each with rows of NULL keys beside good ones: the quarantine
    // table, kept open from one file to the next, takes each file's rows once.
    let mut paths = Vec::new();
    for (i, bad) in [(1, 2), (2, 1), (3, 3)] {
        let ids: Vec<Option<i32>> = (0..4)
            .map(|r| (r >= bad).then_some(90_000 + i * 10 + r))
            .collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int32Array::from(ids)),
                Arc::new(StringArray::from(vec!["n"; 4])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![i64::from(i) * 1_000_000; 4])
                        .with_timezone("UTC"),
                ),
            ],
        )
        .unwrap();
        let name = format!("DimArtist_9{i}_9{i}_00000.parquet");
        paths.push((write_bronze(&fx, "DimArtist", &name, &batch), bad));
    }
    let report = silver(&fx, &[spec("DimArtist")]).await;
    assert!(!report.failed(), "{report:?}");
    assert_eq!(report.tables[0].counts.rows_dropped, 6);
    let lake = Lake::open(fx.lake.to_str().unwrap()).unwrap();
    let sql = "SELECT _source_file AS f, count(*) AS n FROM silver.artists_quarantine \
               GROUP BY _source_file ORDER BY _source_file";
    let by_file =
        |text: String| -> Vec<String> { text.lines().skip(1).map(String::from).collect() };
    let expected: Vec<String> = paths.iter().map(|(p, bad)| format!("{p},{bad}")).collect();
    let found = tunelake::query::render(
        &tunelake::query::run(&lake, sql).await.unwrap(),
        tunelake::query::Format::Csv,
    )
    .unwrap();
    assert_eq!(by_file(found), expected);
    // A second run over the same files adds nothing to it.
    assert!(!silver(&fx, &[spec("DimArtist")]).await.failed());
    let again = tunelake::query::render(
        &tunelake::query::run(&lake, sql).await.unwrap(),
        tunelake::query::Format::Csv,
    )
    .unwrap();
    assert_eq!(by_file(again), expected);
}

#[tokio::test]
async fn a_file_is_recorded_only_once_its_dropped_rows_are_kept() {
    let (fx, _) = loaded("DimArtist").await;
    // Enough rows for silver's two writers, which write while the dropped rows are kept.
    let n = 140_000;
    let batch = RecordBatch::try_new(
        artist_rows_schema(),
        vec![
            Arc::new(Int32Array::from_iter(
                (0..n).map(|r| (r >= 2).then_some(200_000 + r)),
            )),
            Arc::new(StringArray::from(vec!["n"; n as usize])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![5_000_000; n as usize]).with_timezone("UTC"),
            ),
        ],
    )
    .unwrap();
    write_bronze(&fx, "DimArtist", "DimArtist_95_95_00000.parquet", &batch);
    let new_rows = "SELECT count(*) FROM t WHERE artist_id >= 200000";
    // A plain file where the quarantine table goes: its rows cannot be kept.
    let blocker = fx.lake.join("silver/artists_quarantine");
    std::fs::write(&blocker, b"not a table").unwrap();
    let report = silver(&fx, &[spec("DimArtist")]).await;
    assert!(report.failed(), "{report:?}");
    assert_eq!(query(&fx, "artists", new_rows).await, "0");
    // Once they can be, the file loads: its rows once, the two dropped ones kept.
    std::fs::remove_file(&blocker).unwrap();
    let report = silver(&fx, &[spec("DimArtist")]).await;
    assert!(!report.failed(), "{report:?}");
    assert_eq!(report.tables[0].counts.rows_dropped, 2);
    assert_eq!(query(&fx, "artists", new_rows).await, (n - 2).to_string());
    let lake = Lake::open(fx.lake.to_str().unwrap()).unwrap();
    let kept = tunelake::query::run(&lake, "SELECT count(*) AS n FROM silver.artists_quarantine");
    let kept = tunelake::query::render(&kept.await.unwrap(), tunelake::query::Format::Csv);
    assert_eq!(kept.unwrap(), "n\n2\n");
}

#[tokio::test]
async fn a_fail_expectation_stops_the_table_and_commits_nothing() {
    let fx = Fixture::seeded(0.005);
    assert!(!fx.ingest(&["FactStream"], None).await.failed());
    let mut table = spec("FactStream");
    table.silver.expect = vec![Expectation {
        name: "no_negative".into(),
        rule: "listen_duration >= 0".into(),
        action: Action::Fail,
    }];
    let report = silver(&fx, &[table]).await;
    assert!(report.failed());
    let err = report.tables[0].error.clone().unwrap();
    assert!(
        err.contains("no_negative")
            && err.contains("FactStream")
            && err.contains("nothing of the file was committed"),
        "{err}"
    );
    assert_eq!(report.tables[0].version, None);
    assert!(
        !fx.lake
            .join("silver/streams/_delta_log/00000000000000000000.json")
            .exists()
    );
}

#[tokio::test]
async fn two_silver_runs_at_once_load_every_file_once() {
    let fx = Fixture::seeded(0.01);
    let names = ["DimUser", "FactStream"];
    assert!(!fx.ingest(&names, None).await.failed());
    tunelake::seed::apply_changes(&fx.db, 7).unwrap();
    assert!(!fx.ingest(&names, None).await.failed());
    let tables = vec![spec("DimUser"), spec("FactStream")];
    let (a, b) = tokio::join!(silver(&fx, &tables), silver(&fx, &tables));
    assert!(!a.failed(), "{a:?}");
    assert!(!b.failed(), "{b:?}");
    let committed: u64 = a.tables.iter().chain(&b.tables).map(|t| t.files).sum();
    assert_eq!(
        committed, 4,
        "each of the 4 files committed by exactly one run"
    );
    let expected = fx.count("SELECT COUNT(*) FROM FactStream WHERE listen_duration >= 0");
    assert_eq!(
        query(&fx, "streams", "SELECT count(*) FROM t").await,
        expected.to_string()
    );
    assert_eq!(
        query(&fx, "users", "SELECT count(*) FROM t").await,
        rows(&fx.bronze_files("DimUser")).to_string()
    );
}

#[tokio::test]
async fn renames_and_drops_hold_across_files() {
    let fx = Fixture::seeded(0.005);
    let mut table = spec("DimArtist");
    table.silver.rename = vec![tunelake::config::RenameSpec {
        from: "genre".into(),
        to: "style".into(),
    }];
    table.silver.drop = vec!["country".into()];
    assert!(!fx.ingest(&["DimArtist"], None).await.failed());
    assert!(!silver(&fx, std::slice::from_ref(&table)).await.failed());
    tunelake::seed::apply_changes(&fx.db, 7).unwrap();
    fx.sql()
        .execute(
            "UPDATE DimArtist SET updated_at = '2027-01-01 00:00:00.000000' WHERE artist_id = 1",
            [],
        )
        .unwrap();
    assert!(!fx.ingest(&["DimArtist"], None).await.failed());
    let second = silver(&fx, std::slice::from_ref(&table)).await;
    assert!(!second.failed(), "{second:?}");
    assert!(second.tables[0].counts.rows_out >= 1);
    assert_eq!(
        query(&fx, "artists", "SELECT count(*) FROM t WHERE style IS NULL").await,
        "0"
    );
    let url = url::Url::from_directory_path(fx.lake.join("silver/artists").canonicalize().unwrap())
        .unwrap();
    let delta = deltalake::DeltaTable::try_from_url(url).await.unwrap();
    let schema = delta.snapshot().unwrap().snapshot().arrow_schema();
    assert!(schema.field_with_name("genre").is_err() && schema.field_with_name("country").is_err());
}

#[tokio::test]
async fn an_empty_bronze_file_is_recorded_without_rows() {
    let (fx, _) = loaded("DimDate").await;
    let schema = Arc::new(Schema::new(vec![
        Field::new("date_key", DataType::Int32, true),
        Field::new("date", DataType::Date32, true),
    ]));
    let path = write_bronze(
        &fx,
        "DimDate",
        "DimDate_5_6_00000.parquet",
        &RecordBatch::new_empty(schema),
    );
    let report = silver(&fx, &[spec("DimDate")]).await;
    assert!(!report.failed(), "{report:?}");
    assert_eq!(
        (report.tables[0].files, report.tables[0].counts.rows_out),
        (1, 0)
    );
    assert_eq!(query(&fx, "dates", "SELECT count(*) FROM t").await, "1096");
    assert_eq!(
        file_status(&fx, "DimDate", &path).await,
        FileStatus::AlreadyLoaded
    );
}

#[tokio::test]
async fn a_table_refusing_new_columns_fails_on_them_and_loads_the_file_once_the_pipeline_takes_them()
 {
    use tunelake::config::silver::SchemaEvolution;
    let (fx, _) = loaded("DimArtist").await;
    let schema = Arc::new(Schema::new(vec![
        Field::new("artist_id", DataType::Int32, true),
        Field::new("artist_name", DataType::Utf8, true),
        Field::new("updated_at", utc(), true),
        Field::new("label", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int32Array::from(vec![90_001, 90_002])),
            Arc::new(StringArray::from(vec!["a", "b"])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![4_000_000_000_000_000, 4_000_000_000_000_001])
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from(vec![Some("indie"), None])),
        ],
    )
    .unwrap();
    let path = write_bronze(&fx, "DimArtist", "DimArtist_8_8_00000.parquet", &batch);
    let mut table = spec("DimArtist");
    table.silver.schema_evolution = SchemaEvolution::FailOnNewColumns;
    let report = silver(&fx, std::slice::from_ref(&table)).await;
    assert!(report.failed());
    let error = report.tables[0].error.clone().unwrap_or_default();
    assert!(
        error.contains("label") && error.contains(&path) && error.contains("fail_on_new_columns"),
        "{error}"
    );
    assert!(fx.lake.join(&path).is_file(), "the file stays in bronze");
    assert_eq!(
        query(
            &fx,
            "artists",
            "SELECT count(*) FROM t WHERE artist_id > 90000"
        )
        .await,
        "0"
    );
    // The pipeline file now rescues new columns: the file loads, the schema stays.
    table.silver.schema_evolution = SchemaEvolution::Rescue;
    let report = silver(&fx, std::slice::from_ref(&table)).await;
    assert!(!report.failed(), "{report:?}");
    assert_eq!(report.tables[0].files, 1);
    assert_eq!(
        query(
            &fx,
            "artists",
            "SELECT count(*) FROM t WHERE artist_id > 90000"
        )
        .await,
        "2"
    );
    assert_eq!(
        query(
            &fx,
            "artists",
            "SELECT _rescued_data FROM t WHERE artist_id = 90001"
        )
        .await,
        r#"{"label":"indie"}"#
    );
    let url = url::Url::from_directory_path(fx.lake.join("silver/artists")).unwrap();
    let delta = deltalake::DeltaTable::try_from_url(url).await.unwrap();
    let columns: Vec<String> = (delta.snapshot().unwrap().schema().fields())
        .map(|f| f.name().to_string())
        .collect();
    assert!(!columns.iter().any(|c| c == "label"), "{columns:?}");
}
