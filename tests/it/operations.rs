//! A source's lifetime and an operator's commands: backfills that never skip, rows that
//! commit late, a reader that dies, two runs at once, and a full refresh.

use std::process::Command;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use tunelake::config::{Pipeline, Settings, TableSpec};
use tunelake::error::Result;
use tunelake::lake::Lake;
use tunelake::source::{BatchStream, Source};
use tunelake::stages::Status;
use tunelake::stages::ingest::Ingest;
use tunelake::window::{Bound, BoundKind, Window};

use crate::cli::tunelake_with;
use crate::common::*;

fn stream_count(fx: &Fixture) -> u64 {
    fx.count("SELECT COUNT(*) FROM FactStream")
}

/// Every source stream is in bronze exactly once.
fn assert_bronze_holds_every_stream_once(fx: &Fixture) {
    let counts = key_counts(&fx.bronze_files("FactStream"), "stream_id");
    assert_eq!(counts.len() as u64, stream_count(fx));
    assert!(
        counts.values().all(|&c| c == 1),
        "a stream is in bronze twice"
    );
}

fn watermark_value(fx: &Fixture, table: &str) -> String {
    fx.watermark(table).unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_backfill_starting_past_the_watermark_still_reads_from_the_watermark() {
    let fx = Fixture::seeded(0.01);
    assert!(!fx.ingest(&["FactStream"], None).await.failed());
    let old = watermark_value(&fx, "FactStream");
    tunelake::seed::apply_changes(&fx.db, 7).unwrap();
    let high = fx.scalar("SELECT MAX(stream_timestamp) FROM FactStream");
    // A start between the stored watermark and the new rows' maximum.
    let inside = fx.scalar(
        "SELECT stream_timestamp FROM FactStream ORDER BY stream_timestamp DESC LIMIT 1 OFFSET 50",
    );
    assert!(inside.as_str() > old.replace('T', " ").as_str());
    let report = fx.ingest(&["FactStream"], Some(&inside)).await;
    assert!(!report.failed(), "{report:?}");
    // The window starts at the old watermark, not at `inside`: nothing is skipped.
    assert_eq!(
        report.tables[0].window.as_ref().unwrap().0.as_deref(),
        Some(old.as_str())
    );
    assert_bronze_holds_every_stream_once(&fx);
    assert_eq!(
        watermark_value(&fx, "FactStream")
            .replace('T', " ")
            .trim_end_matches('Z'),
        high
    );
    // Before the watermark: re-read from there; the watermark never moves back.
    let report = fx.ingest(&["FactStream"], Some("2025-01-01")).await;
    assert_eq!(report.tables[0].status, Status::Ok);
    assert_eq!(
        watermark_value(&fx, "FactStream")
            .replace('T', " ")
            .trim_end_matches('Z'),
        high
    );
    // Past every row: nothing to do.
    let report = fx.ingest(&["FactStream"], Some("2031-01-01")).await;
    assert_eq!(report.tables[0].status, Status::Empty);
}

#[tokio::test]
async fn a_lookback_finds_a_row_that_committed_below_the_watermark() {
    let fx = Fixture::seeded(0.01);
    let pipeline = Pipeline::parse(tunelake::config::DEFAULT_PIPELINE, "p.toml").unwrap();
    let mut spec = pipeline.select(&["FactStream".into()]).unwrap().remove(0);
    assert!(
        !fx.ingest_specs(std::slice::from_ref(&spec), None, Settings::default())
            .await
            .failed()
    );
    let late_at =
        "SELECT strftime('%Y-%m-%d %H:%M:%f000', MAX(stream_timestamp), '-1 hour') FROM FactStream";
    let late = fx.scalar(late_at);
    fx.sql()
        .execute(
            "INSERT INTO FactStream SELECT 99000001, user_id, track_id, date_key, 120, 'web', ?1 \
             FROM FactStream LIMIT 1",
            [&late],
        )
        .unwrap();
    // Without a lookback the late stream is never read.
    let report = fx
        .ingest_specs(std::slice::from_ref(&spec), None, Settings::default())
        .await;
    assert_eq!(report.tables[0].status, Status::Empty);
    assert!(!key_counts(&fx.bronze_files("FactStream"), "stream_id").contains_key(&99000001));

    spec.lookback = Some(tunelake::config::ingest::LookbackSetting::Text("2h".into()));
    let report = fx
        .ingest_specs(std::slice::from_ref(&spec), None, Settings::default())
        .await;
    assert_eq!(report.tables[0].status, Status::Ok, "{report:?}");
    let counts = key_counts(&fx.bronze_files("FactStream"), "stream_id");
    assert_eq!(counts.get(&99000001), Some(&1));
    // Silver holds every stream once: the re-read rows are dropped as already loaded.
    let lake = Lake::open(fx.lake.to_str().unwrap()).unwrap();
    let silver = tunelake::stages::silver::Silver::new(lake.clone(), Settings::default(), "t")
        .run(std::slice::from_ref(&spec))
        .await;
    assert!(!silver.failed(), "{silver:?}");
    let batches = tunelake::query::run(
        &lake,
        "SELECT count(*) AS n, count(DISTINCT stream_id) AS d, \
         sum(CASE WHEN stream_id = 99000001 THEN 1 ELSE 0 END) AS late FROM silver.streams",
    )
    .await
    .unwrap();
    let value = |c: usize| {
        tunelake::lake::int_column(batches[0].column(c))
            .unwrap()
            .value(0) as u64
    };
    let kept = fx.count("SELECT COUNT(*) FROM FactStream WHERE listen_duration >= 0");
    assert_eq!(value(0), kept);
    assert_eq!(value(1), kept);
    assert_eq!(value(2), 1);
}

/// A source whose reader dies part-way through one table.
struct Dying {
    inner: Arc<dyn Source>,
    table: &'static str,
}

#[async_trait::async_trait]
impl Source for Dying {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn schema(&self, table: &TableSpec) -> Result<SchemaRef> {
        self.inner.schema(table).await
    }

    async fn high_watermark(&self, table: &TableSpec, kind: BoundKind) -> Result<Option<Bound>> {
        self.inner.high_watermark(table, kind).await
    }

    async fn keys(
        &self,
        table: &TableSpec,
        schema: SchemaRef,
        batch_rows: usize,
    ) -> Result<BatchStream> {
        self.inner.keys(table, schema, batch_rows).await
    }

    async fn extract(
        &self,
        table: &TableSpec,
        schema: SchemaRef,
        window: Window,
        batch_rows: usize,
    ) -> Result<BatchStream> {
        let mut rows = self
            .inner
            .extract(table, schema, window, batch_rows)
            .await?;
        if table.name != self.table {
            return Ok(rows);
        }
        Ok(tunelake::source::spawn_reader(
            &table.name,
            |tx| async move {
                use futures::StreamExt;
                if let Some(first) = rows.next().await {
                    tx.send(first).await.ok();
                }
                panic!("the reader was killed")
            },
        ))
    }
}

#[tokio::test]
async fn a_reader_that_panics_fails_its_table_and_moves_nothing() {
    let fx = Fixture::seeded(0.01);
    let source = Dying {
        inner: tunelake::source::open(&fx.source_url()).await.unwrap(),
        table: "FactStream",
    };
    let pipeline = Pipeline::parse(tunelake::config::DEFAULT_PIPELINE, "p.toml").unwrap();
    let lake = Lake::open(fx.lake.to_str().unwrap()).unwrap();
    let settings = Settings {
        batch_rows: 1000,
        max_file_rows: 1000,
        ..Settings::default()
    };
    // The tables of the default source (the reference files are another source's).
    let tables: Vec<_> = (pipeline.tables.iter())
        .filter(|t| t.source.is_none())
        .cloned()
        .collect();
    let report = Ingest::new(Arc::new(source), lake, settings.clone(), "r1")
        .run(&tables)
        .await;
    let fact = report
        .tables
        .iter()
        .find(|t| t.table == "FactStream")
        .unwrap();
    assert_eq!(fact.status, Status::Failed);
    let error = fact.error.as_deref().unwrap();
    assert!(
        error.contains("FactStream") && error.contains("the reader was killed"),
        "{error}"
    );
    assert!(fx.watermark("FactStream").is_none(), "the watermark moved");
    // The other tables went on.
    for t in report.tables.iter().filter(|t| t.table != "FactStream") {
        assert_eq!(t.status, Status::Ok, "{t:?}");
    }
    // The next run, with a healthy reader, loads the whole window once.
    let report = fx.ingest_with(&["FactStream"], None, settings).await;
    assert!(!report.failed(), "{report:?}");
    assert_bronze_holds_every_stream_once(&fx);
}

fn spawn_run(dir: &std::path::Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_tunelake"))
        .current_dir(dir)
        .env_remove("TUNELAKE_SOURCE")
        .env_remove("TUNELAKE_LAKE")
        .env_remove("TUNELAKE_CONFIG")
        .args([
            "--quiet",
            "--source",
            "sqlite:source.db",
            "--lake",
            "lake",
            "run",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn sql(dir: &std::path::Path, query: &str) -> String {
    let (code, out, err) = tunelake_with(
        dir,
        &["--lake", "lake", "sql", "--format", "csv", query],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    out.lines().nth(1).unwrap_or_default().to_string()
}

#[test]
fn two_whole_runs_at_once_load_every_row_once() {
    let fx = Fixture::seeded(0.05);
    let dir = fx.db.parent().unwrap();
    let runs = [spawn_run(dir), spawn_run(dir)];
    for run in runs {
        let out = run.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_bronze_holds_every_stream_once(&fx);
    // Silver and gold leave out the streams a quality rule drops.
    let streams = fx
        .count("SELECT COUNT(*) FROM FactStream WHERE listen_duration >= 0")
        .to_string();
    assert_eq!(
        sql(
            dir,
            "SELECT count(*), count(DISTINCT stream_id) FROM silver.streams"
        ),
        format!("{streams},{streams}")
    );
    assert_eq!(
        sql(
            dir,
            "SELECT count(*), count(DISTINCT stream_id) FROM gold.fact_stream"
        ),
        format!("{streams},{streams}")
    );
    let users = fx.count("SELECT COUNT(*) FROM DimUser");
    assert_eq!(
        sql(
            dir,
            "SELECT count(*), count(DISTINCT user_id) FROM gold.dim_user WHERE is_current AND user_sk <> -1"
        ),
        format!("{users},{users}")
    );
}

#[test]
fn a_refresh_says_what_it_discards_then_starts_the_table_over() {
    let fx = Fixture::seeded(0.01);
    let dir = fx.db.parent().unwrap();
    let base = ["--source", "sqlite:source.db", "--lake", "lake"];
    let run = |args: &[&str]| {
        let all: Vec<&str> = base.iter().chain(args).copied().collect();
        tunelake_with(dir, &all, &[])
    };
    let (code, out, err) = run(&["run"]);
    assert_eq!(code, 0, "{out}{err}");
    tunelake::seed::apply_changes(&fx.db, 7).unwrap();
    let (code, out, err) = run(&["run"]);
    assert_eq!(code, 0, "{out}{err}");
    let max_sk: i64 = sql(dir, "SELECT max(user_sk) FROM gold.dim_user")
        .parse()
        .unwrap();
    let history: u64 = sql(
        dir,
        "SELECT count(*) FROM gold.dim_user WHERE NOT is_current",
    )
    .parse()
    .unwrap();
    assert!(history > 0);
    let wm = watermark_value(&fx, "DimUser");

    // Without --yes: the plan, and nothing changes.
    let (code, out, err) = run(&["refresh", "--table", "DimUser"]);
    assert_ne!(code, 0);
    assert!(
        out.contains("gold.dim_user")
            && out.contains(&format!("{history} of them closed SCD2 versions"))
            && out.contains("FactStream")
            && err.contains("--yes"),
        "{out}{err}"
    );
    assert_eq!(watermark_value(&fx, "DimUser"), wm);
    assert!(!fx.bronze_files("DimUser").is_empty());

    // An unknown table is refused before anything moves.
    let (code, _, err) = run(&["refresh", "--table", "Nope", "--yes"]);
    assert_ne!(code, 0);
    assert!(err.contains("Nope") && err.contains("DimUser"), "{err}");

    let (code, out, err) = run(&["refresh", "--table", "DimUser", "--yes"]);
    assert_eq!(code, 0, "{out}{err}");
    let users = fx.count("SELECT COUNT(*) FROM DimUser");
    // Silver holds the source's current rows once; gold one version per user, with surrogate
    // keys never handed out before.
    assert_eq!(
        sql(dir, "SELECT count(*) FROM silver.users"),
        users.to_string()
    );
    assert_eq!(
        sql(
            dir,
            "SELECT count(*), count(DISTINCT user_id), sum(CASE WHEN is_current THEN 1 ELSE 0 END), \
             min(user_sk) > {max_sk} FROM gold.dim_user WHERE user_sk <> -1"
                .replace("{max_sk}", &max_sk.to_string())
                .as_str()
        ),
        format!("{users},{users},{users},true")
    );
    // The fact was rebuilt: every stream again, each user key pointing at a user version or
    // at the unknown member (a stream older than every version the source still holds).
    let streams = fx.count("SELECT COUNT(*) FROM FactStream WHERE listen_duration >= 0");
    assert_eq!(
        sql(
            dir,
            "SELECT count(*), sum(CASE WHEN u.user_sk IS NULL THEN 1 ELSE 0 END), \
             sum(CASE WHEN f.user_sk > {max_sk} THEN 1 ELSE 0 END) > 0 \
             FROM gold.fact_stream f LEFT JOIN gold.dim_user u ON f.user_sk = u.user_sk"
                .replace("{max_sk}", &max_sk.to_string())
                .as_str()
        ),
        format!("{streams},0,true")
    );
    // The old bronze files were moved aside, not lost.
    let archived = fx.lake.join("bronze/_refreshed/DimUser");
    assert_eq!(std::fs::read_dir(archived).unwrap().count(), 1);
    assert_eq!(fx.bronze_files("DimUser").len(), 1);
}
