//! Deletes: soft deletes by `apply_as_deletes`, delete markers from `deletes = "detect"`, in
//! SCD2 and SCD1 dimensions and in the fact, against a one-by-one oracle and end to end.

use std::sync::Arc;

use arrow::array::{Int32Array, Int64Array, StringArray};
use arrow::datatypes::DataType;
use tunelake::config::Pipeline;
use tunelake::lake::Lake;

use crate::gold::{Lakehouse, Rng, report, times};

const SOFT: &str = r#"
[[tables]]
name = "DimUser"
cdc_column = "updated_at"
keys = ["user_id"]
[tables.silver]
name = "users"
[tables.gold]
name = "dim_user"
apply_as_deletes = "is_deleted = 1"
except_columns = ["is_deleted"]

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
"#;

type Column<'a> = (&'a str, DataType, arrow::array::ArrayRef);

fn int32s(name: &str, values: impl Iterator<Item = i32>) -> Column<'_> {
    (
        name,
        DataType::Int32,
        Arc::new(Int32Array::from_iter_values(values)),
    )
}

fn texts<'a>(name: &'a str, values: impl Iterator<Item = Option<&'a str>>) -> Column<'a> {
    (
        name,
        DataType::Utf8,
        Arc::new(StringArray::from_iter(values)),
    )
}

/// Appends user changes: (user_id, country, is_deleted, time of day).
async fn users(h: &Lakehouse, rows: &[(i32, &str, i32, &str)]) {
    h.append(
        "users",
        vec![
            int32s("user_id", rows.iter().map(|r| r.0)),
            texts("country", rows.iter().map(|r| Some(r.1))),
            int32s("is_deleted", rows.iter().map(|r| r.2)),
            times("updated_at", rows.iter().map(|r| r.3)),
        ],
    )
    .await;
}

/// Appends streams: (stream_id, user_id, time of day, `_change_type`).
async fn streams(h: &Lakehouse, rows: &[(i64, i32, &str, Option<&str>)]) {
    h.append(
        "streams",
        vec![
            (
                "stream_id",
                DataType::Int64,
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            ),
            int32s("user_id", rows.iter().map(|r| r.1)),
            times("stream_timestamp", rows.iter().map(|r| r.2)),
            texts("_change_type", rows.iter().map(|r| r.3)),
        ],
    )
    .await;
}

const DIM: &str = "SELECT user_id, country, date_format(valid_from, '%H:%M'), \
    coalesce(date_format(valid_to, '%H:%M'), ''), is_current \
    FROM gold.dim_user WHERE user_sk > 0 ORDER BY user_id, valid_from";

#[tokio::test]
async fn a_soft_delete_ends_the_current_version_where_its_sequence_puts_it() {
    let h = Lakehouse::new(SOFT);
    users(
        &h,
        &[
            (1, "US", 0, "10:00"),
            (1, "CA", 0, "12:00"),
            (2, "FR", 0, "10:00"),
            (3, "A", 0, "10:00"),
            (3, "B", 0, "14:00"),
        ],
    )
    .await;
    streams(
        &h,
        &[
            (10, 1, "12:30", None),
            (11, 1, "13:30", None),
            (12, 3, "12:30", None),
        ],
    )
    .await;
    h.gold().await;
    // User 1 deleted at 13:00; a delete of user 2 older than anything gold holds of it; a
    // delete of user 3 that arrives late, between its two versions.
    users(
        &h,
        &[
            (1, "CA", 1, "13:00"),
            (2, "FR", 1, "09:00"),
            (3, "B", 1, "12:00"),
        ],
    )
    .await;
    let r = h.gold().await;
    assert_eq!(report(&r, "dim_user").closed, 1, "{r:?}");
    assert_eq!(
        h.csv(DIM).await,
        [
            "1,US,10:00,12:00,false",
            "1,CA,12:00,13:00,false",
            "2,FR,10:00,,true",
            "3,A,10:00,12:00,false",
            "3,B,14:00,,true",
        ]
    );
    // The user comes back: a new version, whatever its values.
    users(&h, &[(1, "CA", 0, "15:00")]).await;
    streams(&h, &[(13, 1, "15:30", None)]).await;
    h.gold().await;
    assert_eq!(
        h.csv(DIM).await[..3],
        [
            "1,US,10:00,12:00,false",
            "1,CA,12:00,13:00,false",
            "1,CA,15:00,,true",
        ]
    );
    // Streams carry the version valid at their time: none while user 1 was deleted, and
    // none for user 3 between its late delete and its next version.
    assert_eq!(
        h.csv(
            "SELECT f.stream_id, coalesce(u.country, '-'), coalesce(date_format(u.valid_from, '%H:%M'), '-') \
             FROM gold.fact_stream f JOIN gold.dim_user u ON f.user_sk = u.user_sk ORDER BY 1"
        )
        .await,
        ["10,CA,12:00", "11,Unknown,-", "12,Unknown,-", "13,CA,15:00"]
    );
}

/// The dimension as applying every change one by one in sequence order makes it, deletes
/// included: `(user_id, country, valid_from, valid_to, is_current)` per version.
fn oracle(changes: &[(i32, String, bool, String)]) -> Vec<String> {
    let mut sorted = changes.to_vec();
    sorted.sort_by(|a, b| (a.0, &a.3).cmp(&(b.0, &b.3)));
    // (user, country, from, to)
    let mut versions: Vec<(i32, String, String, Option<String>)> = Vec::new();
    let mut open: Option<(i32, String)> = None;
    for (user, country, deleted, at) in sorted {
        let same_user_open = open.as_ref().is_some_and(|o| o.0 == user);
        let changed = same_user_open && open.as_ref().is_some_and(|o| o.1 != country);
        if (deleted || changed)
            && same_user_open
            && let Some(last) = versions.last_mut()
        {
            last.3 = Some(at.clone());
        }
        if deleted {
            open = None;
        } else if !same_user_open || changed {
            versions.push((user, country.clone(), at, None));
            open = Some((user, country));
        }
    }
    versions
        .into_iter()
        .map(|(user, country, from, to)| {
            let current = to.is_none();
            format!(
                "{user},{country},{from},{},{current}",
                to.unwrap_or_default()
            )
        })
        .collect()
}

const SOFT_DIM_ONLY: &str = r#"
[[tables]]
name = "DimUser"
cdc_column = "updated_at"
keys = ["user_id"]
[tables.silver]
name = "users"
[tables.gold]
name = "dim_user"
apply_as_deletes = "is_deleted = 1"
except_columns = ["is_deleted"]
"#;

#[tokio::test]
async fn any_arrival_order_of_changes_and_deletes_gives_the_one_by_one_dimension() {
    for case in 0..6u64 {
        let mut rng = Rng(case * 104_729 + 3);
        let mut changes: Vec<(i32, String, bool, String)> = Vec::new();
        while changes.len() < 16 {
            let user = 1 + rng.below(3) as i32;
            let at = format!("{:02}:{:02}", 9 + rng.below(4), rng.below(60));
            if changes.iter().any(|c| c.0 == user && c.3 == at) {
                continue;
            }
            let country = ["A", "B"][rng.below(2) as usize].to_string();
            changes.push((user, country, rng.below(4) == 0, at));
        }
        let h = Lakehouse::new(SOFT_DIM_ONLY);
        let mut rest = changes.clone();
        while !rest.is_empty() {
            let take = 1 + rng.below(rest.len().min(5) as u64) as usize;
            let batch: Vec<_> = rest.drain(..take).collect();
            let rows: Vec<(i32, &str, i32, &str)> = batch
                .iter()
                .map(|(u, c, d, t)| (*u, c.as_str(), i32::from(*d), t.as_str()))
                .collect();
            users(&h, &rows).await;
            h.gold().await;
        }
        assert_eq!(
            h.csv(DIM).await,
            oracle(&changes),
            "case {case}: {changes:?}"
        );
    }
}

const MARKERS: &str = r#"
[[tables]]
name = "DimUser"
cdc_column = "updated_at"
keys = ["user_id"]
[tables.silver]
name = "users"
[tables.gold]
name = "dim_user"
scd_type = 1

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
"#;

/// Appends user changes with their `_change_type`: (user_id, country, time, change type).
async fn typed_users(h: &Lakehouse, rows: &[(i32, &str, &str, Option<&str>)]) {
    h.append(
        "users",
        vec![
            int32s("user_id", rows.iter().map(|r| r.0)),
            texts("country", rows.iter().map(|r| Some(r.1))),
            times("updated_at", rows.iter().map(|r| r.2)),
            texts("_change_type", rows.iter().map(|r| r.3)),
        ],
    )
    .await;
}

#[tokio::test]
async fn delete_markers_remove_scd1_rows_and_facts_and_unknown_keys_change_nothing() {
    let h = Lakehouse::new(MARKERS);
    typed_users(&h, &[(1, "US", "10:00", None), (2, "FR", "10:00", None)]).await;
    streams(
        &h,
        &[
            (10, 1, "10:30", None),
            (11, 2, "10:30", None),
            (12, 2, "10:40", None),
        ],
    )
    .await;
    h.gold().await;
    typed_users(
        &h,
        &[
            (2, "", "11:00", Some("delete")),
            (9, "", "11:00", Some("delete")),
        ],
    )
    .await;
    // Stream 11 deleted; stream 99 never existed; stream 12 is deleted and comes back later
    // in the same batch.
    streams(
        &h,
        &[
            (11, 2, "11:00", Some("delete")),
            (99, 1, "11:00", Some("delete")),
            (12, 2, "11:00", Some("delete")),
            (12, 2, "11:30", None),
        ],
    )
    .await;
    let r = h.gold().await;
    assert_eq!(report(&r, "fact_stream").deleted, 1, "{r:?}");
    assert_eq!(
        h.csv("SELECT user_id, country FROM gold.dim_user WHERE user_sk > 0 ORDER BY 1")
            .await,
        ["1,US"]
    );
    assert_eq!(
        h.csv(
            "SELECT stream_id, date_format(stream_timestamp, '%H:%M') FROM gold.fact_stream ORDER BY 1"
        )
        .await,
        ["10,10:30", "12,11:30"]
    );
    // A second marker of a deleted key changes nothing.
    streams(&h, &[(11, 2, "12:00", Some("delete"))]).await;
    let r = h.gold().await;
    assert_eq!(report(&r, "fact_stream").deleted, 0);
    assert_eq!(h.csv("SELECT count(*) FROM gold.fact_stream").await, ["2"]);
}

#[tokio::test]
async fn hard_deletes_in_the_source_close_versions_and_remove_facts_end_to_end() {
    let fx = crate::common::Fixture::seeded(0.01);
    // The shipped pipeline detects deleted users; streams too, here.
    let text = tunelake::config::DEFAULT_PIPELINE.replace(
        "keys = [\"stream_id\"]\n",
        "keys = [\"stream_id\"]\ndeletes = \"detect\"\n",
    );
    let pipeline = Pipeline::parse(&text, "p.toml").unwrap();
    let lake = Lake::open(fx.lake.to_str().unwrap()).unwrap();
    let run = async || {
        let flow = tunelake::runs::flow(
            &tunelake::stages::new_run_id(),
            &fx.source_url(),
            &lake,
            &pipeline,
            &pipeline.tables,
        )
        .await
        .unwrap();
        assert!(!flow.ingest.failed(), "{:?}", flow.ingest);
        assert!(!flow.silver.failed(), "{:?}", flow.silver);
        assert!(!flow.gold.failed(), "{:?}", flow.gold);
        flow
    };
    run().await;
    let deleted_users = "SELECT user_id FROM DimUser ORDER BY user_id LIMIT 5";
    let gone: Vec<i64> = {
        let conn = fx.sql();
        let mut stmt = conn.prepare(deleted_users).unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    };
    fx.sql()
        .execute(
            &format!("DELETE FROM DimUser WHERE user_id IN ({deleted_users})"),
            [],
        )
        .unwrap();
    fx.sql()
        .execute(
            "DELETE FROM FactStream WHERE stream_id IN \
             (SELECT stream_id FROM FactStream WHERE listen_duration >= 0 ORDER BY stream_id LIMIT 7)",
            [],
        )
        .unwrap();
    let flow = run().await;
    let deleted = |table: &str| {
        flow.ingest
            .tables
            .iter()
            .find(|t| t.table == table)
            .unwrap()
            .deleted
    };
    assert_eq!((deleted("DimUser"), deleted("FactStream")), (5, 7));
    let query = async |sql: &str| {
        let batches = tunelake::query::run(&lake, sql).await.unwrap();
        tunelake::query::render(&batches, tunelake::query::Format::Csv)
            .unwrap()
            .lines()
            .skip(1)
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let ids = gone
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    // Silver keeps the markers as changes.
    assert_eq!(
        query(&format!(
            "SELECT count(*) FROM silver.users WHERE _change_type = 'delete' AND user_id IN ({ids})"
        ))
        .await,
        ["5"]
    );
    // No deleted user has a current version; each one's last version ended at the marker.
    assert_eq!(
        query(&format!(
            "SELECT count(*), sum(CASE WHEN is_current THEN 1 ELSE 0 END), \
             sum(CASE WHEN valid_to IS NULL THEN 1 ELSE 0 END), count(DISTINCT user_id) \
             FROM gold.dim_user WHERE user_id IN ({ids})"
        ))
        .await[0]
            .split(',')
            .skip(1)
            .collect::<Vec<_>>(),
        ["0", "0", "5"]
    );
    let users = fx.count("SELECT COUNT(*) FROM DimUser");
    assert_eq!(
        query("SELECT count(*), count(DISTINCT user_id) FROM gold.dim_user WHERE is_current AND user_sk > 0")
            .await,
        [format!("{users},{users}")]
    );
    let streams = fx.count("SELECT COUNT(*) FROM FactStream WHERE listen_duration >= 0");
    assert_eq!(
        query("SELECT count(*), count(DISTINCT stream_id) FROM gold.fact_stream").await,
        [format!("{streams},{streams}")]
    );
    // Nothing more vanished: no new markers.
    let flow = run().await;
    assert!(flow.ingest.tables.iter().all(|t| t.deleted == 0));
}

const TRUNCATES: &str = r#"
[[tables]]
name = "DimUser"
cdc_column = "updated_at"
keys = ["user_id"]
[tables.silver]
name = "users"
[tables.gold]
name = "dim_user"
scd_type = 1
apply_as_truncates = "country = 'TRUNCATE'"
"#;

#[tokio::test]
async fn a_truncate_empties_an_scd1_dimension_up_to_its_sequence_value() {
    let h = Lakehouse::new(TRUNCATES);
    let users = "SELECT user_id, country, date_format(updated_at, '%H:%M') FROM gold.dim_user \
                 WHERE user_sk > 0 ORDER BY 1";
    typed_users(
        &h,
        &[
            (1, "US", "10:00", None),
            (2, "FR", "10:00", None),
            (3, "DE", "10:00", None),
        ],
    )
    .await;
    h.gold().await;
    typed_users(
        &h,
        &[(0, "TRUNCATE", "11:00", None), (2, "ES", "12:00", None)],
    )
    .await;
    h.gold().await;
    assert_eq!(h.csv(users).await, ["2,ES,12:00"]);
    // A change older than the truncate stays out; a newer one comes back.
    typed_users(&h, &[(1, "CA", "10:30", None), (3, "AT", "13:00", None)]).await;
    h.gold().await;
    assert_eq!(h.csv(users).await, ["2,ES,12:00", "3,AT,13:00"]);
    // The unknown member stays.
    assert_eq!(
        h.csv("SELECT count(*) FROM gold.dim_user WHERE user_sk = -1")
            .await,
        ["1"]
    );
}

#[test]
fn truncates_are_for_scd1_dimensions_and_bad_conditions_are_named() {
    let scd2 = TRUNCATES.replace("scd_type = 1", "scd_type = 2");
    let err = Pipeline::parse(&scd2, "p.toml").unwrap_err().to_string();
    assert!(
        err.contains("tables[0] (DimUser).gold.apply_as_truncates") && err.contains("SCD type 1"),
        "{err}"
    );
    let bad = TRUNCATES.replace("country = 'TRUNCATE'", "country = ");
    let err = Pipeline::parse(&bad, "p.toml").unwrap_err().to_string();
    assert!(err.contains("apply_as_truncates"), "{err}");
    let bad = SOFT.replace("is_deleted = 1", "is_deleted = = 1");
    let err = Pipeline::parse(&bad, "p.toml").unwrap_err().to_string();
    assert!(
        err.contains("tables[0] (DimUser).gold.apply_as_deletes"),
        "{err}"
    );
}
