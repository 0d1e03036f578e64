//! `tunelake demo`: a sample source, two runs with a change batch and a delete between them,
//! a rerun with nothing new, what gold holds, and the run report.

use std::path::Path;
use std::time::Instant;

use super::Cli;
use super::print::{
    print_gold, print_ingest, print_seed, print_silver, report_errors, report_gold_errors,
    report_silver_errors,
};
use crate::config::Pipeline;
use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::stages::new_run_id;
use crate::{runs, seed};

/// What the demo shows of gold: checks a data engineer would run first, then the views.
const DEMO_QUERIES: [(&str, &str); 5] = [
    (
        "Dimensions: one current version per key, every version with a unique surrogate key",
        "SELECT 'dim_user' AS dimension, count(*) AS versions, count(DISTINCT user_id) AS keys, \
           sum(CASE WHEN is_current THEN 1 ELSE 0 END) AS current, count(DISTINCT user_sk) AS surrogate_keys \
         FROM gold.dim_user WHERE user_sk > 0 \
         UNION ALL SELECT 'dim_track', count(*), count(DISTINCT track_id), sum(CASE WHEN is_current THEN 1 ELSE 0 END), count(DISTINCT track_sk) \
         FROM gold.dim_track WHERE track_sk > 0 \
         UNION ALL SELECT 'dim_artist', count(*), count(DISTINCT artist_id), sum(CASE WHEN is_current THEN 1 ELSE 0 END), count(DISTINCT artist_sk) \
         FROM gold.dim_artist WHERE artist_sk > 0 ORDER BY dimension",
    ),
    (
        "One user's history (SCD2): the second run closed a version and opened the next",
        "SELECT user_sk, user_id, user_name, country, subscription_type, end_date, valid_from, valid_to, is_current \
         FROM gold.dim_user WHERE user_id = (SELECT min(user_id) FROM gold.dim_user WHERE NOT is_current) \
         ORDER BY valid_from",
    ),
    (
        "fact_stream: streams point at the user version valid when they were played (-1: no such user)",
        "SELECT count(*) AS streams, count(DISTINCT f.stream_id) AS distinct_ids, \
           sum(CASE WHEN f.user_sk = -1 THEN 1 ELSE 0 END) AS unknown_user, \
           sum(CASE WHEN f.user_sk <> -1 AND u.valid_from <= f.stream_timestamp \
                     AND (u.valid_to IS NULL OR f.stream_timestamp < u.valid_to) THEN 1 ELSE 0 END) AS user_version_valid_at_play, \
           sum(CASE WHEN f.user_sk <> -1 AND NOT u.is_current THEN 1 ELSE 0 END) AS on_a_past_version \
         FROM gold.fact_stream f LEFT JOIN gold.dim_user u ON f.user_sk = u.user_sk",
    ),
    (
        "gold.top_tracks_per_day (templates/top_tracks_per_day.sql.j2), the latest day",
        "SELECT * FROM gold.top_tracks_per_day \
         WHERE date_key = (SELECT max(date_key) FROM gold.top_tracks_per_day) ORDER BY position LIMIT 5",
    ),
    (
        "gold.stream_details (templates/star_join.sql.j2), a sample",
        "SELECT stream_id, stream_timestamp, user_name, country, subscription_type, track_name, artist_name, device_type \
         FROM gold.stream_details ORDER BY stream_id DESC LIMIT 5",
    ),
];

/// One demo round: the whole pipeline as one run, each stage printed; false when a table failed.
pub(super) async fn demo_round(
    run_id: &str,
    source: &str,
    lake: &Lake,
    pipeline: &Pipeline,
) -> Result<bool> {
    let flow = runs::flow(run_id, source, lake, pipeline, &pipeline.tables).await?;
    print_ingest(&flow.ingest);
    print_silver(&flow.silver);
    print_gold(&flow.gold);
    Ok(report_errors(&flow.ingest)
        & report_silver_errors(&flow.silver)
        & report_gold_errors(&flow.gold))
}

/// Builds the report of a run and writes it to `out`.
pub(super) async fn write_report(
    lake: &Lake,
    pipeline: &Pipeline,
    run_id: Option<&str>,
    out: &Path,
) -> Result<crate::report::Report> {
    let report = crate::report::build(lake, pipeline, run_id).await?;
    let html = crate::report::render(&report)?;
    std::fs::write(out, html).map_err(|e| Error::io(out, e))?;
    Ok(report)
}

pub(super) async fn demo(cli: &Cli, dir: &Path, scale: f64, seed_value: u64) -> Result<bool> {
    let started = Instant::now();
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let db = dir.join("source.db");
    let source = format!("sqlite:{}", db.display());
    let lake_path = dir.join("lake").display().to_string();
    let lake = Lake::open(&lake_path)?;
    let mut pipeline = Pipeline::load_or_default(cli.config.as_deref())?;
    // The shipped reference files are seeded beside the demo's database: a relative
    // `files:` source that is not here reads them there.
    for url in pipeline.sources.values_mut() {
        if let Some(folder) = url.strip_prefix("files:")
            && Path::new(folder).is_relative()
            && !folder.contains("://")
            && !Path::new(folder).exists()
        {
            *url = format!("files:{}", dir.join(folder).display());
        }
    }

    out!("== 1. Seed a sample source (scale {scale})");
    print_seed(&seed::create(&db, scale, seed_value)?, &source, false);
    out!("\n== 2. First run: everything up to the current high watermark");
    let first_run = new_run_id();
    let first_ok = demo_round(&first_run, &source, &lake, &pipeline).await?;
    out!("\n== 3. The source changes: updates, new users, new streams, a deleted user");
    print_seed(&seed::apply_changes(&db, seed_value)?, &source, true);
    let deleted = seed::delete_user(&db)?;
    if let Some(id) = deleted {
        out!("  and user {id} is deleted (DimUser has deletes = \"detect\")");
    }
    out!(
        "\n== 4. Second run: only the rows past each watermark, only the new bronze files, only the changed keys"
    );
    let second_run = new_run_id();
    let second_ok = demo_round(&second_run, &source, &lake, &pipeline).await?;
    out!("\n== 5. A rerun with nothing new writes nothing and moves no watermark");
    let third_run = new_run_id();
    let third_ok = demo_round(&third_run, &source, &lake, &pipeline).await?;
    out!("\n== 6. What gold holds");
    for (title, sql) in DEMO_QUERIES {
        out!("\n{title}");
        match crate::query::run(&lake, sql).await {
            Ok(batches) => out!(
                "{}",
                crate::query::render(&batches, crate::query::Format::Table)?
            ),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    if let Some(id) = deleted {
        out!(
            "\nUser {id}, deleted from the source: its history stays, its last version closed at the delete"
        );
        let sql = format!(
            "SELECT user_sk, user_id, user_name, country, valid_from, valid_to, is_current \
             FROM gold.dim_user WHERE user_id = {id} ORDER BY valid_from"
        );
        match crate::query::run(&lake, &sql).await {
            Ok(batches) => out!(
                "{}",
                crate::query::render(&batches, crate::query::Format::Table)?
            ),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    let page = dir.join("report.html");
    write_report(&lake, &pipeline, Some(&second_run), &page).await?;
    out!(
        "\n== 7. The report of the second run: {}\n   (any run: tunelake --lake {lake_path} report --run <id>; the first run was {first_run})",
        page.display()
    );
    out!(
        "\nDone in {:.1} s. Source: {source}  Lake: {lake_path}\nLook around: tunelake --lake {lake_path} status\n             tunelake --lake {lake_path} sql \"SELECT * FROM gold.stream_details LIMIT 10\"",
        started.elapsed().as_secs_f64()
    );
    Ok(first_ok & second_ok & third_ok)
}
