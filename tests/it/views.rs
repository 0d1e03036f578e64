//! Views refreshed incrementally: after in-order, out-of-order and re-resolved facts and
//! dimension changes, each refresh replaces only what the changes reach and leaves the view
//! equal to a rebuild of it.

use std::sync::Arc;

use arrow::array::{Int32Array, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::DataType;
use futures::StreamExt;
use tunelake::config::{Pipeline, Templates};

use crate::gold::{Lakehouse, report, utc};

const PIPELINE: &str = r#"
[[tables]]
name = "DimUser"
cdc_column = "updated_at"
keys = ["user_id"]
[tables.silver]
name = "users"
[tables.gold]
name = "dim_user"
track_history_except = ["note"]

[[tables]]
name = "FactStream"
cdc_column = "stream_timestamp"
keys = ["stream_id"]
[tables.silver]
name = "streams"
[tables.gold]
name = "fact_stream"
kind = "fact"
lookups = [{ dimension = "dim_user", on = ["user_id"] }]

[[views]]
name = "details"
template = "details.sql.j2"
incremental_strategy = "merge"
unique_key = "stream_id"

[[views]]
name = "top_users"
template = "top_users.sql.j2"
incremental_strategy = "insert_overwrite"
partition_by = "date_key"
"#;

/// Each stream with its user as of the stream (a star join on the surrogate key).
const DETAILS: &str = "SELECT f.stream_id, f.date_key, f.secs, u.user_id, u.country, u.note \
    FROM gold.fact_stream AS f LEFT JOIN gold.dim_user AS u ON f.user_sk = u.user_sk";

/// The two most active users of each day, with their country as it is now.
const TOP_USERS: &str = "WITH plays AS ( \
      SELECT f.date_key, f.user_id, COUNT(*) AS streams, SUM(f.secs) AS secs \
      FROM gold.fact_stream AS f GROUP BY f.date_key, f.user_id \
    ), ranked AS ( \
      SELECT p.date_key, p.user_id, p.streams, p.secs, ROW_NUMBER() OVER ( \
        PARTITION BY p.date_key ORDER BY p.streams DESC, p.secs DESC, p.user_id) AS position \
      FROM plays AS p \
    ) \
    SELECT r.date_key, r.position, r.user_id, u.country, r.streams, r.secs FROM ranked AS r \
    LEFT JOIN gold.dim_user AS u ON u.user_id = r.user_id AND u.is_current \
    WHERE r.position <= 2";

fn lakehouse() -> Lakehouse {
    lakehouse_of(PIPELINE)
}

fn lakehouse_of(pipeline: &str) -> Lakehouse {
    let tables = &pipeline[..pipeline.find("[[views]]").unwrap()];
    let mut h = Lakehouse::new(tables);
    let templates = h.dir.path().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(templates.join("details.sql.j2"), DETAILS).unwrap();
    std::fs::write(templates.join("top_users.sql.j2"), TOP_USERS).unwrap();
    h.pipeline =
        Pipeline::parse_with(pipeline, "views pipeline", Templates::new(Some(templates))).unwrap();
    h
}

/// Microseconds of 2024-01-`day` at `time`.
fn at(day: u32, time: &str) -> i64 {
    let t = chrono::NaiveDateTime::parse_from_str(
        &format!("2024-01-{day:02} {time}"),
        "%Y-%m-%d %H:%M",
    )
    .unwrap();
    t.and_utc().timestamp_micros()
}

fn stamps(values: impl Iterator<Item = i64>) -> arrow::array::ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter_values(values).with_timezone("UTC"))
}

/// Appends user versions: (user_id, country, day, time), noted "n".
async fn users(h: &Lakehouse, rows: &[(i32, &str, u32, &str)]) {
    let noted: Vec<(i32, &str, &str, u32, &str)> =
        rows.iter().map(|r| (r.0, r.1, "n", r.2, r.3)).collect();
    noted_users(h, &noted).await;
}

/// Appends user versions: (user_id, country, note, day, time).
async fn noted_users(h: &Lakehouse, rows: &[(i32, &str, &str, u32, &str)]) {
    h.append(
        "users",
        vec![
            (
                "user_id",
                DataType::Int32,
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.0))),
            ),
            (
                "country",
                DataType::Utf8,
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            ),
            (
                "note",
                DataType::Utf8,
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
            ),
            (
                "updated_at",
                utc(),
                stamps(rows.iter().map(|r| at(r.3, r.4))),
            ),
        ],
    )
    .await;
}

/// Appends streams: ids `ids`, user `id % users + 1`, on day `day(id)` at a time set by the id.
async fn streams(h: &Lakehouse, ids: std::ops::Range<i64>, users: i64, day: impl Fn(i64) -> u32) {
    let ids: Vec<i64> = ids.collect();
    let time = |id: i64| format!("{:02}:{:02}", id % 24, (id * 7) % 60);
    h.append(
        "streams",
        vec![
            (
                "stream_id",
                DataType::Int64,
                Arc::new(Int64Array::from_iter_values(ids.iter().copied())),
            ),
            (
                "user_id",
                DataType::Int32,
                Arc::new(Int32Array::from_iter_values(
                    ids.iter().map(|i| (i % users + 1) as i32),
                )),
            ),
            (
                "date_key",
                DataType::Int32,
                Arc::new(Int32Array::from_iter_values(
                    ids.iter().map(|i| 20240100 + day(*i) as i32),
                )),
            ),
            (
                "secs",
                DataType::Int64,
                Arc::new(Int64Array::from_iter_values(
                    ids.iter().map(|i| i * 13 % 300),
                )),
            ),
            (
                "stream_timestamp",
                utc(),
                stamps(ids.iter().map(|i| at(day(*i), &time(*i)))),
            ),
        ],
    )
    .await;
}

/// Checks that each view holds exactly what its query gives now, and returns, per view,
/// whether its last commit replaced rows by a predicate (an incremental refresh).
async fn check_views(h: &Lakehouse, step: &str) -> [bool; 2] {
    let mut incremental = [false; 2];
    for (i, view) in ["details", "top_users"].into_iter().enumerate() {
        let template = h.dir.path().join(format!("templates/{view}.sql.j2"));
        let sql = std::fs::read_to_string(template).unwrap();
        let rebuilt = h
            .csv(&format!("SELECT * FROM ({sql}) AS v ORDER BY 1, 2, 3"))
            .await;
        let held = h
            .csv(&format!("SELECT * FROM gold.{view} ORDER BY 1, 2, 3"))
            .await;
        assert!(!rebuilt.is_empty(), "{step}: {view} is empty");
        assert_eq!(held, rebuilt, "{step}: {view} differs from a rebuild");
        let table = h.lake.delta_table(&format!("gold/{view}")).await.unwrap();
        let commit = table.history(Some(1)).next().await.unwrap().unwrap();
        incremental[i] = commit
            .operation_parameters
            .unwrap_or_default()
            .get("predicate")
            .is_some_and(|p| !p.is_null());
    }
    incremental
}

#[tokio::test]
async fn incremental_refreshes_equal_a_rebuild_after_late_and_re_resolved_facts() {
    let h = lakehouse();
    users(
        &h,
        &[
            (1, "SE", 1, "00:00"),
            (2, "NO", 1, "00:00"),
            (3, "DK", 1, "00:00"),
            (4, "FI", 1, "00:00"),
        ],
    )
    .await;
    streams(&h, 1..41, 4, |id| 2 + (id % 4) as u32).await;
    h.gold().await;
    assert_eq!(check_views(&h, "first build").await, [false, false]);
    let total = h.csv("SELECT COUNT(*) FROM gold.details").await;
    assert_eq!(total, ["40"]);

    // In order: new days, and user 2 moves (a new version only the new streams point to).
    users(&h, &[(2, "IS", 6, "00:00")]).await;
    streams(&h, 41..61, 4, |id| 6 + (id % 2) as u32).await;
    let run = h.gold().await;
    assert_eq!(check_views(&h, "new days").await, [true, true]);
    assert_eq!(
        report(&run, "details").inserted,
        20,
        "only the new streams are written"
    );

    // Out of order: streams of days already built, and a version of user 3 from before
    // the newest streams, which re-resolves user 3's streams after 2024-01-06 12:00 to it.
    // (They lie in the second run's file only: a refresh after a change that rewrote most
    // of the fact is a rebuild.)
    users(&h, &[(3, "GL", 6, "12:00")]).await;
    streams(&h, 61..71, 4, |_| 3).await;
    let run = h.gold().await;
    assert_eq!(
        check_views(&h, "late facts and a late version").await,
        [true, true]
    );
    let moved = h
        .csv("SELECT COUNT(*) FROM gold.details WHERE country = 'GL'")
        .await;
    assert_ne!(
        moved,
        ["0"],
        "user 3's later streams now show the late version"
    );
    let written = report(&run, "details").inserted;
    assert!(
        (10..70).contains(&written),
        "the late streams and the re-resolved ones, not the whole view: {written}"
    );

    // A compaction between two refreshes moves rows and changes none: the next refresh still
    // replaces only what the new streams reach.
    let m = tunelake::config::maintenance::Maintenance::default();
    for table in ["gold/fact_stream", "gold/dim_user"] {
        let due = tunelake::lake::maintain::Due::Forced;
        let done = tunelake::lake::maintain::table(&h.lake, table, &m, due)
            .await
            .unwrap();
        assert!(
            done.compacted.is_some(),
            "{table} was not compacted: {done:?}"
        );
    }
    streams(&h, 71..76, 4, |_| 8).await;
    let run = h.gold().await;
    assert_eq!(check_views(&h, "after a compaction").await, [true, true]);
    assert_eq!(report(&run, "details").inserted, 5);

    // A correction that moves most streams (every user has a version from 2024-01-02 on):
    // for details, which reads the streams' user_sk, finding the reached rows would cost more
    // than a rebuild, so it is rebuilt; top_users reads no column the re-resolution changed,
    // so it replaces only the days the dimension's change reaches.
    users(
        &h,
        &[
            (1, "AX", 2, "00:00"),
            (2, "AX", 2, "00:00"),
            (3, "AX", 2, "00:00"),
            (4, "AX", 2, "00:00"),
        ],
    )
    .await;
    h.gold().await;
    assert_eq!(check_views(&h, "a correction").await, [false, true]);

    // Nothing new: neither view gets a commit.
    let versions = |h: &Lakehouse| {
        let lake = h.lake.clone();
        async move {
            let mut v = Vec::new();
            for view in ["details", "top_users"] {
                v.push(
                    lake.delta_table(&format!("gold/{view}"))
                        .await
                        .unwrap()
                        .version(),
                );
            }
            v
        }
    };
    let before = versions(&h).await;
    h.gold().await;
    assert_eq!(versions(&h).await, before);

    // A view's table is checkpointed every ten commits, as every lake table: opening it reads
    // a bounded log however often it refreshes.
    let table = h.lake.delta_table("gold/details").await.unwrap();
    let snapshot = table.snapshot().unwrap();
    let interval = snapshot
        .metadata()
        .configuration()
        .get("delta.checkpointInterval");
    assert_eq!(interval.map(String::as_str), Some("10"));

    // An edited definition is rebuilt, not patched.
    let template = h.dir.path().join("templates/top_users.sql.j2");
    std::fs::write(
        &template,
        TOP_USERS.replace("position <= 2", "position <= 1"),
    )
    .unwrap();
    h.gold().await;
    assert_eq!(
        check_views_top(&h).await,
        ["1"],
        "the edited view was rebuilt whole"
    );
}

async fn check_views_top(h: &Lakehouse) -> Vec<String> {
    h.csv("SELECT MAX(position) FROM gold.top_users").await
}

/// An SCD1 dimension updates a row in place and keeps its surrogate key: the streams that
/// point to it, written long before, are reached and show the new values.
#[tokio::test]
async fn an_in_place_dimension_update_reaches_the_facts_that_point_to_it() {
    let h = lakehouse_of(&PIPELINE.replace("track_history_except = [\"note\"]", "scd_type = 1"));
    let top = h.dir.path().join("templates/top_users.sql.j2");
    std::fs::write(&top, TOP_USERS.replace(" AND u.is_current", "")).unwrap();
    users(&h, &[(1, "SE", 1, "00:00"), (2, "NO", 1, "00:00")]).await;
    streams(&h, 1..21, 2, |id| 2 + (id % 3) as u32).await;
    h.gold().await;
    check_views(&h, "first build").await;
    noted_users(&h, &[(2, "IS", "moved", 9, "00:00")]).await;
    h.gold().await;
    assert_eq!(check_views(&h, "in place").await, [true, true]);
    let moved = h
        .csv("SELECT COUNT(*) FROM gold.details WHERE note = 'moved' AND country = 'IS'")
        .await;
    assert_eq!(moved, ["10"], "every stream of user 2");
}
