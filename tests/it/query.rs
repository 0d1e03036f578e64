//! `tunelake sql`: read-only queries over the lake's Delta tables by name.

use tunelake::config::{Pipeline, Settings};
use tunelake::lake::Lake;
use tunelake::query::{Format, render, run};
use tunelake::stages::silver::Silver;

use crate::common::*;

async fn loaded() -> (Fixture, Lake) {
    let fx = Fixture::seeded(0.005);
    assert!(!fx.ingest(&["DimUser", "FactStream"], None).await.failed());
    let pipeline = Pipeline::parse(tunelake::config::DEFAULT_PIPELINE, "pipeline.toml").unwrap();
    let tables = pipeline
        .select(&["DimUser".into(), "FactStream".into()])
        .unwrap();
    let lake = Lake::open(fx.lake.to_str().unwrap()).unwrap();
    let report = Silver::new(lake.clone(), Settings::default(), "q")
        .run(&tables)
        .await;
    tunelake::lake::events::append(&lake, &report.events(chrono::Utc::now()))
        .await
        .unwrap();
    (fx, lake)
}

#[tokio::test]
async fn queries_see_silver_and_system_tables_by_name_in_every_format() {
    let (fx, lake) = loaded().await;
    let expected = fx.count("SELECT COUNT(*) FROM FactStream WHERE listen_duration >= 0");
    let batches = run(&lake, "SELECT count(*) AS n FROM silver.streams")
        .await
        .unwrap();
    assert_eq!(
        render(&batches, Format::Csv).unwrap(),
        format!("n\n{expected}\n")
    );
    assert_eq!(
        render(&batches, Format::Json).unwrap(),
        format!("[{{\"n\":{expected}}}]")
    );
    assert!(
        render(&batches, Format::Table)
            .unwrap()
            .contains(&expected.to_string())
    );
    let batches = run(
        &lake,
        "SELECT \"table\", status FROM system.events ORDER BY 1",
    )
    .await
    .unwrap();
    assert_eq!(
        render(&batches, Format::Csv).unwrap(),
        "table,status\nstreams,ok\nusers,ok\n"
    );
    let joined = run(
        &lake,
        "SELECT count(*) AS n FROM silver.streams s JOIN silver.users u ON s.user_id = u.user_id",
    )
    .await
    .unwrap();
    assert_eq!(joined[0].num_rows(), 1);
}

#[tokio::test]
async fn anything_but_a_query_is_refused_and_unknown_tables_are_named() {
    let (_fx, lake) = loaded().await;
    for sql in [
        "DROP TABLE silver.users",
        "INSERT INTO silver.users SELECT * FROM silver.users",
        "CREATE TABLE x AS SELECT 1",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let err = run(&lake, sql).await.unwrap_err().to_string();
        assert!(err.contains("read-only"), "{sql}: {err}");
    }
    let err = run(&lake, "SELECT * FROM silver.podcasts")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("podcasts"), "{err}");
    assert_eq!(render(&[], Format::Json).unwrap(), "[]");
}

#[tokio::test]
async fn a_query_past_its_memory_or_time_is_stopped_with_the_setting_to_change() {
    use std::time::Duration;
    use tunelake::query::{Bounds, run_within};
    let (_fx, lake) = loaded().await;
    // A self-join's build side cannot spill: 64 KB is far below what it holds.
    let heavy =
        "SELECT count(*) AS n FROM silver.streams a JOIN silver.streams b ON a.user_id = b.user_id";
    let tight = Bounds {
        memory: Some(64 * 1024),
        time: None,
    };
    let err = run_within(&lake, heavy, None, tight).await.unwrap_err();
    assert!(
        err.to_string().contains("settings.query_memory_mb"),
        "{err}"
    );
    let short = Bounds {
        memory: None,
        time: Some(Duration::from_nanos(1)),
    };
    let err = run_within(&lake, heavy, None, short).await.unwrap_err();
    assert!(
        err.to_string().contains("settings.query_timeout_seconds"),
        "{err}"
    );
    // Within generous bounds the same query answers.
    let roomy = Bounds {
        memory: Some(512 * 1024 * 1024),
        time: Some(Duration::from_secs(120)),
    };
    let batches = run_within(&lake, heavy, None, roomy).await.unwrap();
    assert_eq!(batches[0].num_rows(), 1);
}
