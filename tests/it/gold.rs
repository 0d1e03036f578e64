//! Gold: SCD2 rules as whole-table expectations, the point-in-time fact with late dimension
//! changes, a property test against a one-by-one oracle, and the whole pipeline on a seeded
//! source.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use deltalake::protocol::SaveMode;
use tokio::sync::watch;
use tunelake::config::Pipeline;
use tunelake::lake::Lake;
use tunelake::stages::Status;
use tunelake::stages::gold::{Built, Gold, GoldReport, Progress, Staged};

pub(crate) const PIPELINE: &str = r#"
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
"#;

/// A lake whose silver tables the test writes directly, so gold sees exactly the change
/// sequences a test wants.
pub(crate) struct Lakehouse {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) lake: Lake,
    pub(crate) pipeline: Pipeline,
    files: std::cell::Cell<u32>,
}

pub(crate) fn ts(text: &str) -> i64 {
    let t = chrono::NaiveDateTime::parse_from_str(&format!("2024-01-01 {text}"), "%Y-%m-%d %H:%M")
        .unwrap();
    t.and_utc().timestamp_micros()
}

pub(crate) fn utc() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// A UTC timestamp column named `name` of times of day on 2024-01-01.
pub(crate) fn times<'a>(
    name: &'a str,
    times: impl Iterator<Item = &'a str>,
) -> (&'a str, DataType, arrow::array::ArrayRef) {
    (
        name,
        utc(),
        Arc::new(TimestampMicrosecondArray::from_iter_values(times.map(ts)).with_timezone("UTC")),
    )
}

impl Lakehouse {
    pub(crate) fn new(pipeline: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().join("lake").to_str().unwrap()).unwrap();
        Lakehouse {
            dir,
            lake,
            pipeline: Pipeline::parse(pipeline, "test pipeline").unwrap(),
            files: std::cell::Cell::new(0),
        }
    }

    pub(crate) async fn append(
        &self,
        table: &str,
        columns: Vec<(&str, DataType, arrow::array::ArrayRef)>,
    ) {
        let n = columns[0].2.len();
        self.files.set(self.files.get() + 1);
        let file = format!("bronze/T/f{}.parquet", self.files.get());
        let mut fields: Vec<Field> = columns
            .iter()
            .map(|(name, t, _)| Field::new(*name, t.clone(), true))
            .collect();
        fields.push(Field::new("_source_file", DataType::Utf8, true));
        let mut arrays: Vec<arrow::array::ArrayRef> = columns.into_iter().map(|c| c.2).collect();
        arrays.push(Arc::new(StringArray::from(vec![file.as_str(); n])));
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap();
        let table = self
            .lake
            .delta_table(&format!("silver/{table}"))
            .await
            .unwrap();
        table
            .write(vec![batch])
            .with_save_mode(SaveMode::Append)
            .await
            .unwrap();
    }

    /// Appends user changes: (user_id, country, note, time of day on 2024-01-01).
    pub(crate) async fn users(&self, rows: &[(i32, &str, &str, &str)]) {
        self.append(
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
                times("updated_at", rows.iter().map(|r| r.3)),
            ],
        )
        .await;
    }

    /// Appends streams: (stream_id, user_id, time of day on 2024-01-01).
    pub(crate) async fn streams(&self, rows: &[(i64, i32, &str)]) {
        self.append(
            "streams",
            vec![
                (
                    "stream_id",
                    DataType::Int64,
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                ),
                (
                    "user_id",
                    DataType::Int32,
                    Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.1))),
                ),
                times("stream_timestamp", rows.iter().map(|r| r.2)),
            ],
        )
        .await;
    }

    pub(crate) async fn gold(&self) -> GoldReport {
        let report = Gold::new(self.lake.clone(), "test")
            .run(&self.pipeline, &self.pipeline.tables)
            .await;
        for t in &report.tables {
            assert_ne!(t.status, Status::Failed, "{:?}", t.error);
        }
        report
    }

    /// Gold as a whole-pipeline run builds it: the fact waits for dim_user, which hands it
    /// its staged versions before committing them. The dimension's progress reaches the fact
    /// through a relay that holds `Done` back until the fact has taken the staged versions,
    /// and checks meanwhile that the fact has not committed before the dimension.
    async fn gold_handing_over(&self) -> GoldReport {
        let (dim_tx, mut dim_rx) = watch::channel(Progress::Building);
        let dim_tx = Arc::new(dim_tx);
        let (fact_tx, fact_rx) = watch::channel(Progress::Building);
        let mut dim_built = Built::default();
        // As if a fact carried `country`: the staged versions keep it, and no other attribute.
        dim_built.announce("dim_user", dim_tx.clone(), vec!["country".to_string()]);
        let mut fact_built = Built::default();
        fact_built.expect("dim_user", fact_rx);
        let fact_version = self.version("fact_stream").await;
        let gold = Arc::new(Gold::new(self.lake.clone(), "test"));
        let tables = &self.pipeline.tables;
        let fact = gold.tables(&self.pipeline, &tables[1..2], &fact_built);
        let dimension = async {
            let report = gold.tables(&self.pipeline, &tables[..1], &dim_built).await;
            dim_tx.send(Progress::Done).unwrap();
            report
        };
        let relay = async {
            let staged = match &*dim_rx
                .wait_for(|p| !matches!(p, Progress::Building))
                .await
                .unwrap()
            {
                Progress::Staged(staged) => staged.clone(),
                other => panic!("dim_user handed nothing over: {other:?}"),
            };
            for batch in &staged.rows {
                let schema = batch.schema();
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                assert_eq!(
                    names,
                    ["user_id", "user_sk", "valid_from", "valid_to", "country"],
                    "what lookups read"
                );
            }
            fact_tx.send(Progress::Staged(staged.clone())).unwrap();
            dim_rx
                .wait_for(|p| matches!(p, Progress::Done))
                .await
                .unwrap();
            taken(&staged).await;
            assert_eq!(
                self.version("fact_stream").await,
                fact_version,
                "the fact committed first"
            );
            fact_tx.send(Progress::Done).unwrap();
        };
        let (mut report, dim, ()) = tokio::join!(fact, dimension, relay);
        report.splice(0..0, dim);
        for t in &report {
            assert_ne!(t.status, Status::Failed, "{:?}", t.error);
        }
        GoldReport {
            run_id: "test".to_string(),
            tables: report,
        }
    }

    async fn version(&self, table: &str) -> Option<u64> {
        self.lake
            .delta_table(&format!("gold/{table}"))
            .await
            .unwrap()
            .version()
    }

    pub(crate) async fn table(&self, sql: &str) -> String {
        let batches = tunelake::query::run(&self.lake, sql).await.unwrap();
        tunelake::query::render(&batches, tunelake::query::Format::Table).unwrap()
    }

    pub(crate) async fn csv(&self, sql: &str) -> Vec<String> {
        let batches = tunelake::query::run(&self.lake, sql).await.unwrap();
        tunelake::query::render(&batches, tunelake::query::Format::Csv)
            .unwrap()
            .lines()
            .skip(1)
            .map(str::to_string)
            .collect()
    }
}

/// Returns once a fact has resolved against `staged`.
async fn taken(staged: &Staged) {
    for _ in 0..3000 {
        if staged.taken.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no fact resolved against the staged versions in 30 s");
}

pub(crate) fn report<'a>(
    r: &'a GoldReport,
    table: &str,
) -> &'a tunelake::stages::gold::TableReport {
    r.tables.iter().find(|t| t.table == table).unwrap()
}

fn inserted_updated(r: &GoldReport, table: &str) -> (u64, u64) {
    let t = report(r, table);
    (t.inserted, t.updated)
}

const DIM: &str = "SELECT user_sk, user_id, country, note, \
    date_format(valid_from, '%H:%M') AS valid_from, date_format(valid_to, '%H:%M') AS valid_to, is_current \
    FROM gold.dim_user ORDER BY user_id NULLS FIRST, valid_from";

const FACT: &str = "SELECT stream_id, user_sk, user_id, date_format(stream_timestamp, '%H:%M') AS at \
    FROM gold.fact_stream ORDER BY stream_id";

#[tokio::test]
async fn scd2_versions_follow_sequence_order_whatever_order_changes_arrive_in() {
    scd2_scenario(PIPELINE, false).await;
}

/// The same scenario with the second run's fact resolved against dim_user's staged versions
/// (a late change, a split version, a deleted one, facts re-resolved and merged), committed
/// only after the dimension: the same tables and counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fact_resolved_against_a_dimensions_staged_versions_gives_the_same_gold() {
    scd2_scenario(PIPELINE, true).await;
}

/// The same scenario with every silver file its own fact chunk and every key its own
/// dimension range: the chunked writes (appends, merges of chunks whose keys exist, the
/// re-resolution before them) must give the same tables and counts.
#[tokio::test]
async fn the_scd2_scenario_in_the_smallest_chunks_gives_the_same_gold() {
    let chunked = format!("[settings]\nchunk_rows = 1\ndimension_chunk_keys = 1\n{PIPELINE}");
    scd2_scenario(&chunked, false).await;
}

async fn scd2_scenario(pipeline: &str, hand_over: bool) {
    let h = Lakehouse::new(pipeline);
    h.users(&[
        (1, "US", "a", "10:00"),
        (1, "US", "b", "11:00"), // only the excluded column: no version
        (1, "CA", "b", "12:00"),
        (2, "FR", "x", "10:00"),
        (4, "PT", "p", "10:00"),
        (4, "BR", "p", "12:00"),
    ])
    .await;
    h.streams(&[
        (1, 1, "11:45"),
        (2, 2, "09:30"),  // before user 2's first version
        (3, 99, "10:00"), // a user that never exists
        (4, 3, "13:30"),  // user 3 arrives later
        (5, 4, "12:30"),
        (6, 1, "10:30"),
        (7, 2, "10:45"), // two versions of one stream in one file: the later one counts
        (7, 2, "10:15"),
    ])
    .await;
    let first = h.gold().await;
    let dim = report(&first, "dim_user");
    assert_eq!((dim.inserted, dim.updated, dim.deleted), (5, 0, 0));
    assert_eq!(
        h.table(DIM).await,
        "\
+---------+---------+---------+---------+------------+----------+------------+
| user_sk | user_id | country | note    | valid_from | valid_to | is_current |
+---------+---------+---------+---------+------------+----------+------------+
| -1      |         | Unknown | Unknown |            |          | true       |
| 1       | 1       | US      | a       | 10:00      | 12:00    | false      |
| 2       | 1       | CA      | b       | 12:00      |          | true       |
| 3       | 2       | FR      | x       | 10:00      |          | true       |
| 4       | 4       | PT      | p       | 10:00      | 12:00    | false      |
| 5       | 4       | BR      | p       | 12:00      |          | true       |
+---------+---------+---------+---------+------------+----------+------------+"
    );
    assert_eq!(
        h.csv(FACT).await,
        [
            "1,1,1,11:45",
            "2,-1,2,09:30",
            "3,-1,99,10:00",
            "4,-1,3,13:30",
            "5,5,4,12:30",
            "6,1,1,10:30",
            "7,3,2,10:45"
        ]
    );
    let fact = report(&first, "fact_stream");
    assert_eq!(fact.inserted, 7);
    assert_eq!(fact.unknown, [("user_sk".to_string(), 3)]);

    h.users(&[
        (1, "CA", "z", "14:00"), // same tracked values as the current version: no version
        (1, "MX", "m", "11:30"), // out of order: splits US 10:00-12:00
        (2, "ES", "e", "09:00"), // older than user 2's first version
        (3, "DE", "d", "10:00"), // a new key with two changes in one batch
        (3, "AT", "d", "13:00"),
        (4, "BR", "q", "11:00"), // makes BR 12:00 a repeat of itself: that version goes
    ])
    .await;
    h.streams(&[(6, 1, "12:30")]).await; // stream 6 corrected: a later time
    let second = if hand_over {
        h.gold_handing_over().await
    } else {
        h.gold().await
    };
    let dim = report(&second, "dim_user");
    assert_eq!((dim.inserted, dim.updated, dim.deleted), (5, 2, 1));
    assert_eq!(
        h.table(DIM).await,
        "\
+---------+---------+---------+---------+------------+----------+------------+
| user_sk | user_id | country | note    | valid_from | valid_to | is_current |
+---------+---------+---------+---------+------------+----------+------------+
| -1      |         | Unknown | Unknown |            |          | true       |
| 1       | 1       | US      | a       | 10:00      | 11:30    | false      |
| 6       | 1       | MX      | m       | 11:30      | 12:00    | false      |
| 2       | 1       | CA      | b       | 12:00      |          | true       |
| 7       | 2       | ES      | e       | 09:00      | 10:00    | false      |
| 3       | 2       | FR      | x       | 10:00      |          | true       |
| 8       | 3       | DE      | d       | 10:00      | 13:00    | false      |
| 9       | 3       | AT      | d       | 13:00      |          | true       |
| 4       | 4       | PT      | p       | 10:00      | 11:00    | false      |
| 10      | 4       | BR      | q       | 11:00      |          | true       |
+---------+---------+---------+---------+------------+----------+------------+"
    );
    // Every fact points at the version valid at its time, including facts written before
    // the dimension change that made that version.
    assert_eq!(
        h.csv(FACT).await,
        [
            "1,6,1,11:45",
            "2,7,2,09:30",
            "3,-1,99,10:00",
            "4,9,3,13:30",
            "5,10,4,12:30",
            "6,2,1,12:30",
            "7,3,2,10:45"
        ]
    );
    let fact = report(&second, "fact_stream");
    assert_eq!((fact.inserted, fact.updated), (1, 4));

    // Nothing new: nothing written.
    let third = h.gold().await;
    assert!(
        third.tables.iter().all(|t| t.status == Status::Empty),
        "{:?}",
        third.tables
    );
    assert_eq!(report(&third, "dim_user").version, dim.version);
}

/// A dimension that hands over versions and then commits something else (here: nothing):
/// the fact that resolved against them commits none of its rows, and is built again from the
/// dimension as it stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fact_never_commits_rows_resolved_against_versions_its_dimension_did_not_commit() {
    let h = Lakehouse::new(PIPELINE);
    h.users(&[(1, "US", "a", "10:00"), (2, "FR", "x", "10:00")])
        .await;
    h.streams(&[(1, 1, "11:00")]).await;
    h.gold().await;
    h.streams(&[(2, 1, "12:00"), (3, 2, "12:30")]).await;
    let base = h.version("dim_user").await.unwrap();
    let fact_version = h.version("fact_stream").await.unwrap();
    // A version of user 1 replacing both users' rows, which dim_user never commits.
    let rows = RecordBatch::try_from_iter([
        (
            "user_sk",
            Arc::new(Int64Array::from(vec![999])) as arrow::array::ArrayRef,
        ),
        ("user_id", Arc::new(Int32Array::from(vec![1]))),
        (
            "valid_from",
            Arc::new(TimestampMicrosecondArray::from(vec![ts("00:00")]).with_timezone("UTC")),
        ),
        (
            "valid_to",
            Arc::new(TimestampMicrosecondArray::from(vec![None::<i64>]).with_timezone("UTC")),
        ),
    ])
    .unwrap();
    let silver = h.lake.delta_table("silver/users").await.unwrap();
    let staged = Arc::new(Staged {
        base,
        consumed: silver.version().unwrap() as i64,
        rows: vec![rows],
        replaced: [1, 2].into_iter().collect(),
        taken: Default::default(),
    });
    let (fact_tx, fact_rx) = watch::channel(Progress::Staged(staged.clone()));
    let mut built = Built::default();
    built.expect("dim_user", fact_rx);
    let gold = Arc::new(Gold::new(h.lake.clone(), "test"));
    let fact = gold.tables(&h.pipeline, &h.pipeline.tables[1..2], &built);
    let dimension = async {
        taken(&staged).await;
        fact_tx.send(Progress::Done).unwrap();
    };
    let (report, ()) = tokio::join!(fact, dimension);
    assert_eq!(report[0].status, Status::Ok, "{:?}", report[0].error);
    assert_eq!(report[0].inserted, 2);
    assert_eq!(
        h.csv(FACT).await,
        ["1,1,1,11:00", "2,1,1,12:00", "3,2,2,12:30"]
    );
    assert_eq!(h.version("fact_stream").await, Some(fact_version + 1));
}

/// One run's silver files repeat a key, each file's keys unique: the key ends with its newest
/// row, once, whether its files are one chunk, or chunks written apart while a chunk whose
/// key range no other chunk reaches streams with the other such chunks.
#[tokio::test]
async fn a_key_in_two_files_of_one_run_ends_with_its_newest_row() {
    for pipeline in [
        PIPELINE.to_string(),
        format!("[settings]\nchunk_rows = 1\n{PIPELINE}"),
    ] {
        let h = Lakehouse::new(&pipeline);
        h.users(&[(1, "US", "a", "10:00"), (1, "CA", "b", "12:00")])
            .await;
        h.streams(&[(1, 1, "11:00"), (2, 1, "11:30")]).await;
        h.streams(&[(3, 1, "12:30"), (1, 1, "12:15")]).await; // stream 1, corrected
        h.streams(&[(10, 1, "13:00"), (11, 1, "13:10")]).await;
        h.streams(&[(20, 1, "09:00")]).await; // before the user's first version
        let run = h.gold().await;
        assert_eq!(
            h.csv(FACT).await,
            [
                "1,2,1,12:15",
                "2,1,1,11:30",
                "3,2,1,12:30",
                "10,2,1,13:00",
                "11,2,1,13:10",
                "20,-1,1,09:00"
            ],
            "{pipeline}"
        );
        let fact = report(&run, "fact_stream");
        assert_eq!(fact.rows_in, 7, "{pipeline}");
        assert_eq!(fact.unknown, [("user_sk".to_string(), 1)], "{pipeline}");
    }
}

/// Chunks whose keys neither repeat nor reach another's go through one query whose
/// partitions each have their own writer: every row must land once, in one commit, and the
/// counts (taken from the rows as they are written) must be those of the table.
#[tokio::test]
async fn a_fact_written_by_several_writers_holds_every_row_once_in_one_commit() {
    let h = Lakehouse::new(PIPELINE);
    h.users(&[(1, "US", "a", "10:00"), (2, "FR", "x", "10:00")])
        .await;
    // Eight files of disjoint, ascending stream ids; every third stream's user never exists.
    let mut expected_unknown = 0;
    for file in 0..8i64 {
        let rows: Vec<(i64, i32, &str)> = (0..50i64)
            .map(|i| {
                let id = file * 1000 + i;
                let user = if id % 3 == 0 { 99 } else { 1 + (id % 2) as i32 };
                (id, user, "11:00")
            })
            .collect();
        expected_unknown += rows.iter().filter(|r| r.1 == 99).count() as u64;
        h.streams(&rows).await;
    }
    let run = h.gold().await;
    let fact = report(&run, "fact_stream");
    assert_eq!((fact.rows_in, fact.inserted), (400, 400));
    assert_eq!(fact.unknown, [("user_sk".to_string(), expected_unknown)]);
    assert_eq!(
        fact.version,
        Some(1),
        "created, then one commit of every row"
    );
    assert_eq!(
        h.csv(
            "SELECT count(*), count(DISTINCT stream_id), sum(CASE WHEN user_sk = -1 THEN 1 ELSE 0 END) \
             FROM gold.fact_stream"
        )
        .await,
        [format!("400,400,{expected_unknown}")]
    );
    // Each writer names its files part-NNNNN-<writer id>-c000: two ids, two writers.
    let dir = h.dir.path().join("lake/gold/fact_stream");
    let writers: std::collections::BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".parquet"))
        .map(|n| n.split('-').skip(2).take(5).collect::<Vec<_>>().join("-"))
        .collect();
    assert_eq!(writers.len(), 2, "{writers:?}");
}

const SCD1: &str = r#"
[[tables]]
name = "DimUser"
cdc_column = "updated_at"
keys = ["user_id"]
[tables.silver]
name = "users"
[tables.gold]
name = "dim_user"
scd_type = 1
"#;

#[tokio::test]
async fn scd1_keeps_the_latest_change_per_key_and_its_surrogate_key() {
    let h = Lakehouse::new(SCD1);
    h.users(&[
        (1, "US", "a", "10:00"),
        (1, "CA", "b", "12:00"),
        (2, "FR", "x", "10:00"),
    ])
    .await;
    h.gold().await;
    h.users(&[
        (1, "MX", "m", "11:00"),
        (2, "ES", "e", "11:00"),
        (3, "DE", "d", "09:00"),
    ])
    .await;
    let r = h.gold().await;
    assert_eq!(inserted_updated(&r, "dim_user"), (1, 1));
    assert_eq!(
        h.table(
            "SELECT user_sk, user_id, country, note, date_format(updated_at, '%H:%M') AS updated_at \
             FROM gold.dim_user ORDER BY user_sk"
        )
        .await,
        "\
+---------+---------+---------+---------+------------+
| user_sk | user_id | country | note    | updated_at |
+---------+---------+---------+---------+------------+
| -1      |         | Unknown | Unknown |            |
| 1       | 1       | CA      | b       | 12:00      |
| 2       | 2       | ES      | e       | 11:00      |
| 3       | 3       | DE      | d       | 09:00      |
+---------+---------+---------+---------+------------+"
    );
}

/// SplitMix64, for the property test's random cases.
pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The dimension as applying every change one by one in sequence order makes it:
/// `(user_id, country, note, valid_from, valid_to)` per version.
fn oracle(changes: &[(i32, String, String, String)]) -> Vec<String> {
    let mut sorted = changes.to_vec();
    sorted.sort_by(|a, b| (a.0, &a.3).cmp(&(b.0, &b.3)));
    let mut versions: Vec<(i32, String, String, String)> = Vec::new();
    let mut previous: Option<(i32, String)> = None;
    for (user, country, note, at) in sorted {
        if previous.as_ref() != Some(&(user, country.clone())) {
            versions.push((user, country.clone(), note, at));
        }
        previous = Some((user, country));
    }
    versions
        .iter()
        .enumerate()
        .map(|(i, (user, country, note, from))| {
            let to = versions
                .get(i + 1)
                .filter(|next| next.0 == *user)
                .map(|next| next.3.clone())
                .unwrap_or_default();
            let current = to.is_empty();
            format!("{user},{country},{note},{from},{to},{current}")
        })
        .collect()
}

const DIM_ONLY: &str = r#"
[[tables]]
name = "DimUser"
cdc_column = "updated_at"
keys = ["user_id"]
[tables.silver]
name = "users"
[tables.gold]
name = "dim_user"
track_history_except = ["note"]
"#;

#[tokio::test]
async fn any_arrival_order_and_batch_split_gives_the_one_by_one_dimension() {
    for case in 0..8u64 {
        let mut rng = Rng(case * 7919 + 1);
        // 3 keys, 14 changes at distinct minutes per key, values from tiny domains so that
        // repeats, excluded-only changes and reverts all happen.
        let mut changes: Vec<(i32, String, String, String)> = Vec::new();
        while changes.len() < 14 {
            let user = 1 + rng.below(3) as i32;
            let at = format!("{:02}:{:02}", 9 + rng.below(4), rng.below(60));
            if changes.iter().any(|c| c.0 == user && c.3 == at) {
                continue;
            }
            let country = ["A", "B"][rng.below(2) as usize].to_string();
            let note = ["x", "y"][rng.below(2) as usize].to_string();
            changes.push((user, country, note, at));
        }
        // Odd cases arrive in time order, as a timer brings them: each batch after all the
        // history, which the build reads from the stored versions instead of silver.
        if case % 2 == 1 {
            changes.sort_by(|a, b| a.3.cmp(&b.3));
        }
        let h = Lakehouse::new(DIM_ONLY);
        let mut seen_sks: BTreeMap<String, String> = BTreeMap::new();
        let mut rest = changes.clone();
        while !rest.is_empty() {
            let take = 1 + rng.below(rest.len().min(6) as u64) as usize;
            let batch: Vec<_> = rest.drain(..take).collect();
            let rows: Vec<(i32, &str, &str, &str)> = batch
                .iter()
                .map(|(u, c, n, t)| (*u, c.as_str(), n.as_str(), t.as_str()))
                .collect();
            h.users(&rows).await;
            h.gold().await;
            // A surrogate key, once given to (key, valid_from), never names anything else.
            for line in h
                .csv("SELECT user_sk, user_id, date_format(valid_from, '%H:%M') FROM gold.dim_user WHERE user_sk > 0")
                .await
            {
                let (sk, version) = line.split_once(',').unwrap();
                let before = seen_sks.insert(sk.to_string(), version.to_string());
                assert!(
                    before.as_deref().is_none_or(|b| b == version),
                    "case {case}: sk {sk} reused for {version} (was {before:?})"
                );
            }
        }
        let got = h
            .csv(
                "SELECT user_id, country, note, date_format(valid_from, '%H:%M'), \
                 coalesce(date_format(valid_to, '%H:%M'), ''), is_current \
                 FROM gold.dim_user WHERE user_sk > 0 ORDER BY user_id, valid_from",
            )
            .await;
        assert_eq!(got, oracle(&changes), "case {case}: changes {changes:?}");
        let distinct = h
            .csv("SELECT count(*) = count(DISTINCT user_sk) FROM gold.dim_user")
            .await;
        assert_eq!(distinct, ["true"], "case {case}");
    }
}

/// Runs ingest, silver and gold of the shipped pipeline over a fixture's source.
async fn whole_run(fx: &crate::common::Fixture) {
    let pipeline = Pipeline::parse(tunelake::config::DEFAULT_PIPELINE, "pipeline.toml").unwrap();
    let ingest = fx
        .ingest_specs(&pipeline.tables, None, Default::default())
        .await;
    assert!(!ingest.failed());
    let lake = Lake::open(fx.lake.to_str().unwrap()).unwrap();
    let silver = tunelake::stages::silver::Silver::new(lake.clone(), Default::default(), "t")
        .run(&pipeline.tables)
        .await;
    assert!(!silver.failed());
    let gold = Gold::new(lake, "t").run(&pipeline, &pipeline.tables).await;
    assert!(!gold.failed(), "{:?}", gold.tables);
}

async fn lines(fx: &crate::common::Fixture, sql: &str) -> Vec<String> {
    let lake = Lake::open(fx.lake.to_str().unwrap()).unwrap();
    let batches = tunelake::query::run(&lake, sql).await.unwrap();
    tunelake::query::render(&batches, tunelake::query::Format::Csv)
        .unwrap()
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_star_schema_holds_its_invariants_over_several_source_batches() {
    let fx = crate::common::Fixture::seeded(0.01);
    whole_run(&fx).await;
    for batch in 0..2 {
        tunelake::seed::apply_changes(&fx.db, 100 + batch).unwrap();
        whole_run(&fx).await;
    }
    for (dim, key) in [
        ("dim_user", "user_id"),
        ("dim_track", "track_id"),
        ("dim_artist", "artist_id"),
    ] {
        let sk = format!("{}_sk", key.trim_end_matches("_id"));
        let checks = lines(
            &fx,
            &format!(
                "SELECT \
                   (SELECT count(*) FROM (SELECT {key} FROM gold.{dim} WHERE {sk} > 0 GROUP BY {key} \
                      HAVING sum(CASE WHEN is_current THEN 1 ELSE 0 END) <> 1)) AS a, \
                   (SELECT count(*) FROM gold.{dim} a JOIN gold.{dim} b ON a.{key} = b.{key} AND a.{sk} <> b.{sk} \
                      WHERE (b.valid_to IS NULL OR a.valid_from < b.valid_to) AND (a.valid_to IS NULL OR b.valid_from < a.valid_to)) AS b, \
                   (SELECT count(*) FROM (SELECT valid_to, LEAD(valid_from) OVER (PARTITION BY {key} ORDER BY valid_from) AS next \
                      FROM gold.{dim} WHERE {sk} > 0) WHERE valid_to IS DISTINCT FROM next) AS c, \
                   (SELECT count(*) - count(DISTINCT {sk}) FROM gold.{dim}) AS d, \
                   (SELECT count(*) FROM gold.{dim} WHERE {sk} = -1) AS e, \
                   (SELECT count(*) FROM gold.{dim} WHERE NOT is_current) AS f"
            ),
        )
        .await;
        let v: Vec<&str> = checks[0].split(',').collect();
        assert_eq!(
            &v[..5],
            ["0", "0", "0", "0", "1"],
            "{dim}: [keys without exactly one current version, overlapping versions, gaps, \
             duplicate surrogate keys, unknown members]"
        );
        if dim != "dim_artist" {
            // (1% of 100 artists may change nothing at this scale.)
            assert_ne!(
                v[5], "0",
                "{dim}: the change batches must have closed versions"
            );
        }
    }

    // dim_user against an independent oracle: silver's change log, sorted and compressed
    // one change at a time.
    let tracked = "user_name, country, subscription_type, start_date, end_date";
    let history = lines(
        &fx,
        &format!(
            "SELECT user_id, {tracked}, updated_at FROM silver.users ORDER BY user_id, updated_at"
        ),
    )
    .await;
    let mut expected = Vec::new();
    let mut previous: Option<(String, String)> = None;
    for line in &history {
        let (rest, at) = line.rsplit_once(',').unwrap();
        let (user, values) = rest.split_once(',').unwrap();
        let this = (user.to_string(), values.to_string());
        if previous.as_ref() != Some(&this) {
            if let Some(last) = expected.last_mut()
                && previous.as_ref().is_some_and(|p| p.0 == user)
            {
                *last = format!("{last}{at}");
            }
            expected.push(format!("{user},{values},{at},"));
        }
        previous = Some(this);
    }
    let got = lines(
        &fx,
        &format!(
            "SELECT user_id, {tracked}, valid_from, valid_to FROM gold.dim_user WHERE user_sk > 0 \
             ORDER BY user_id, valid_from"
        ),
    )
    .await;
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);

    // Every stream once, with the user and track versions valid when it was played.
    let fact = lines(
        &fx,
        "SELECT count(*), count(DISTINCT f.stream_id), \
           (SELECT count(DISTINCT stream_id) FROM silver.streams) AS silver_streams, \
           sum(CASE WHEN f.user_sk = -1 OR (u.valid_from <= f.stream_timestamp \
                AND (u.valid_to IS NULL OR f.stream_timestamp < u.valid_to)) THEN 0 ELSE 1 END), \
           sum(CASE WHEN f.track_sk = -1 OR (t.valid_from <= f.stream_timestamp \
                AND (t.valid_to IS NULL OR f.stream_timestamp < t.valid_to)) THEN 0 ELSE 1 END), \
           (SELECT count(*) FROM gold.fact_stream g JOIN gold.dim_user x ON x.user_id = g.user_id \
                AND x.valid_from <= g.stream_timestamp AND (x.valid_to IS NULL OR g.stream_timestamp < x.valid_to) \
                WHERE g.user_sk = -1) AS missed, \
           sum(CASE WHEN f.user_sk <> -1 AND NOT u.is_current THEN 1 ELSE 0 END) \
         FROM gold.fact_stream f LEFT JOIN gold.dim_user u ON f.user_sk = u.user_sk \
         LEFT JOIN gold.dim_track t ON f.track_sk = t.track_sk",
    )
    .await;
    let v: Vec<&str> = fact[0].split(',').collect();
    assert_eq!(v[0], v[1], "one row per stream");
    assert_eq!(v[0], v[2], "every silver stream is in the fact");
    assert_eq!(
        &v[3..6],
        ["0", "0", "0"],
        "[wrong user version, wrong track version, -1 with a valid version]"
    );
    assert_ne!(v[6], "0", "some streams must be on past user versions");
}

/// A dimension that copies another's attributes, listed before it: the track's artist name.
const OUTRIGGER: &str = r#"
[[tables]]
name = "DimTrack"
cdc_column = "updated_at"
keys = ["track_id"]
[tables.silver]
name = "tracks"
[tables.gold]
name = "dim_track"
lookups = [{ dimension = "dim_artist", on = ["artist_id"], columns = ["artist_name"] }]

[[tables]]
name = "DimArtist"
cdc_column = "updated_at"
keys = ["artist_id"]
[tables.silver]
name = "artists"
[tables.gold]
name = "dim_artist"
"#;

impl Lakehouse {
    /// Appends rows (id, second column, time of day) to silver `table`, whose first two
    /// columns are `names` (the second an integer when its name ends in `_id`, else text).
    async fn rows(&self, table: &str, names: [&str; 2], rows: &[(i32, &str, &str)]) {
        let other: arrow::array::ArrayRef = if names[1].ends_with("_id") {
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|r| r.1.parse::<i32>().unwrap()),
            ))
        } else {
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1)))
        };
        let other_type = other.data_type().clone();
        self.append(
            table,
            vec![
                (
                    names[0],
                    DataType::Int32,
                    Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.0))),
                ),
                (names[1], other_type, other),
                times("updated_at", rows.iter().map(|r| r.2)),
            ],
        )
        .await;
    }
}

#[tokio::test]
async fn a_new_version_copies_the_current_attributes_of_the_dimension_it_looks_up() {
    let h = Lakehouse::new(OUTRIGGER);
    let artists = ["artist_id", "artist_name"];
    let tracks = ["track_id", "artist_id"];
    h.rows(
        "artists",
        artists,
        &[
            (1, "Ann", "10:00"),
            (2, "Bob", "10:00"),
            (1, "Anna", "11:00"),
        ],
    )
    .await;
    h.rows(
        "tracks",
        tracks,
        &[
            (100, "1", "10:00"),
            (101, "2", "10:00"),
            (102, "9", "10:00"), // an artist that does not exist
            (100, "2", "12:00"), // moved to another artist: a new version
        ],
    )
    .await;
    h.gold().await;
    const SQL: &str = "SELECT track_sk, track_id, artist_id, artist_name, \
        date_format(valid_from, '%H:%M'), is_current FROM gold.dim_track \
        ORDER BY track_id NULLS FIRST, valid_from";
    // Every version written now takes the artist as it is now (as the peers' join does).
    assert_eq!(
        h.csv(SQL).await,
        [
            "-1,,,Unknown,,true",
            "1,100,1,Anna,10:00,false",
            "2,100,2,Bob,12:00,true",
            "3,101,2,Bob,10:00,true",
            "4,102,9,,10:00,true",
        ]
    );
    h.rows("artists", artists, &[(2, "Bobby", "13:00")]).await;
    h.rows(
        "tracks",
        tracks,
        &[(101, "1", "14:00"), (103, "2", "14:00")],
    )
    .await;
    let second = h.gold().await;
    assert_eq!(inserted_updated(&second, "dim_track"), (2, 1));
    // Versions written before keep what they copied; the new ones copy today's artists.
    assert_eq!(
        h.csv(SQL).await,
        [
            "-1,,,Unknown,,true",
            "1,100,1,Anna,10:00,false",
            "2,100,2,Bob,12:00,true",
            "3,101,2,Bob,10:00,false",
            "5,101,1,Anna,14:00,true",
            "4,102,9,,10:00,true",
            "6,103,2,Bobby,14:00,true",
        ]
    );
}

/// Silver holds a (key, sequence value) once, but if two rows of one ever came (two loads
/// racing), the one of the later file counts, as the tiebreak orders them, in a first build
/// and in a later run alike. Seven keys each have their two rows in two files: the data
/// files' names are random, so the order in which they are read is too, and some key would
/// take the wrong row if the history were not sorted by the tiebreak.
#[tokio::test]
async fn a_repeated_key_and_sequence_value_takes_the_row_of_the_later_file() {
    let h = Lakehouse::new(PIPELINE);
    // File names compare as text: f9 would sort after f10, so f9 holds a key of its own.
    for key in 1..=7 {
        if key == 5 {
            h.users(&[(100, "FR", "x", "10:00")]).await;
        }
        h.users(&[(key, "US", "early", "10:00")]).await;
        h.users(&[(key, "CA", "late", "10:00")]).await;
    }
    h.gold().await;
    for key in 1..=7 {
        h.users(&[(key, "DE", "early", "11:00")]).await;
        h.users(&[(key, "MX", "late", "11:00")]).await;
    }
    h.gold().await;
    let mut expected = vec!["-1,,Unknown,Unknown,,,true".to_string()];
    for key in 1..=7 {
        expected.push(format!("{key},{key},CA,late,10:00,11:00,false"));
        expected.push(format!("{},{key},MX,late,11:00,,true", key + 8));
    }
    expected.push("8,100,FR,x,10:00,,true".to_string());
    assert_eq!(h.csv(DIM).await, expected);
}
