//! The `files:` source: CSV and parquet files per table, with the same watermark windows.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use tunelake::config::{Pipeline, Settings};
use tunelake::lake::Lake;
use tunelake::stages::Status;
use tunelake::stages::ingest::Ingest;

use crate::common::*;

fn streams(ids: std::ops::Range<i64>, base_us: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("stream_id", DataType::Int64, false),
        Field::new(
            "stream_timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        ),
    ]));
    let ts: Vec<i64> = ids.clone().map(|i| base_us + i * 1_000_000).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids.collect::<Vec<_>>())),
            Arc::new(TimestampMicrosecondArray::from(ts)),
        ],
    )
    .unwrap()
}

fn write_parquet(path: &std::path::Path, batch: &RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

async fn ingest(
    source: &str,
    lake: &std::path::Path,
    tables: &[&str],
) -> tunelake::stages::ingest::IngestReport {
    let pipeline = Pipeline::parse(tunelake::config::DEFAULT_PIPELINE, "pipeline.toml").unwrap();
    let specs = pipeline
        .select(&tables.iter().map(|t| t.to_string()).collect::<Vec<_>>())
        .unwrap();
    let source = tunelake::source::open(source).await.unwrap();
    Ingest::new(
        source,
        Lake::open(lake.to_str().unwrap()).unwrap(),
        Settings::default(),
        "test-run",
    )
    .run(&specs)
    .await
}

#[tokio::test]
async fn csv_and_parquet_folders_ingest_by_watermark_like_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("DimArtist.csv"),
        "artist_id,artist_name,genre,country,updated_at\n\
         1,  Sigur Rós ,post-rock,IS,2024-01-01 10:00:00\n\
         2,Björk,electronic,,2024-02-01 10:00:00.5\n\
         3,ABBA,pop,SE,2024-03-01 10:00:00\n",
    )
    .unwrap();
    let base = 1_700_000_000_000_000;
    write_parquet(
        &src.join("FactStream/part-00001.parquet"),
        &streams(0..100, base),
    );
    let lake = dir.path().join("lake");
    let url = format!("files:{}", src.display());

    let report = ingest(&url, &lake, &["DimArtist", "FactStream"]).await;
    assert!(!report.failed(), "{report:?}");
    assert_eq!(report.tables[0].rows, 3);
    assert_eq!(report.tables[1].rows, 100);
    let artists = read_parquet(&parquet_files(&lake.join("bronze/DimArtist"))[0]);
    let schema = artists[0].schema();
    assert_eq!(
        schema.field_with_name("updated_at").unwrap().data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    let names = artists[0].column_by_name("artist_name").unwrap();
    let names = names
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap();
    assert_eq!(names.value(0), "  Sigur Rós ", "values arrive untouched");
    assert_eq!(
        artists[0].column_by_name("country").unwrap().null_count(),
        1
    );

    // A new file with 50 newer streams and 10 old ones that are already in bronze.
    write_parquet(
        &src.join("FactStream/part-00002.parquet"),
        &streams(90..150, base),
    );
    let report = ingest(&url, &lake, &["DimArtist", "FactStream"]).await;
    assert!(!report.failed(), "{report:?}");
    assert_eq!(report.tables[0].status, Status::Empty);
    assert_eq!(
        report.tables[1].rows, 50,
        "only the rows past the watermark"
    );
    let counts = key_counts(&parquet_files(&lake.join("bronze/FactStream")), "stream_id");
    assert_eq!(counts.len(), 150);
    assert!(
        counts
            .iter()
            .filter(|(k, _)| **k >= 90 && **k < 100)
            .all(|(_, c)| *c == 1)
    );
}

#[tokio::test]
async fn a_missing_table_or_folder_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let report = ingest(
        &format!("files:{}", dir.path().display()),
        &lake,
        &["DimUser"],
    )
    .await;
    let err = report.tables[0].error.clone().unwrap();
    assert!(
        err.contains("DimUser") && err.contains("not found"),
        "{err}"
    );
    let err = tunelake::source::open("files:/no/such/folder")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("/no/such/folder"), "{err}");
}

/// Serves the files of `dir` over plain HTTP on loopback: HEAD and GET (whole, or one
/// `Range: bytes=a-b`), 404 when missing, the headers object_store reads (length,
/// last-modified, etag). Returns the base URL.
async fn serve_folder(dir: std::path::PathBuf) -> String {
    serve_counted(dir, Default::default()).await
}

/// [`serve_folder`], adding to `served` the body bytes it sends.
async fn serve_counted(
    dir: std::path::PathBuf,
    served: Arc<std::sync::atomic::AtomicUsize>,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (dir, served) = (dir.clone(), served.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let request = String::from_utf8_lossy(&buf).to_string();
                let mut words = request.split_whitespace();
                let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or("/"));
                let file = dir.join(path.trim_start_matches('/'));
                let range = request.lines().find_map(|l| {
                    let (a, b) = l
                        .strip_prefix("Range: bytes=")
                        .or_else(|| l.strip_prefix("range: bytes="))?
                        .split_once('-')?;
                    Some((a.parse::<usize>().ok()?, b.trim().parse::<usize>().ok()?))
                });
                let response = match std::fs::read(&file) {
                    Ok(whole) => {
                        let (status, body, extra) = match range {
                            Some((a, b)) if a <= b && b < whole.len() => (
                                "206 Partial Content",
                                whole[a..=b].to_vec(),
                                format!("Content-Range: bytes {a}-{b}/{}\r\n", whole.len()),
                            ),
                            _ => ("200 OK", whole.clone(), String::new()),
                        };
                        let head = format!(
                            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}Last-Modified: Tue, 01 Oct 2024 10:00:00 GMT\r\nETag: \"{}\"\r\nConnection: close\r\n\r\n",
                            body.len(),
                            whole.len()
                        );
                        let mut out = head.into_bytes();
                        if method == "GET" {
                            served.fetch_add(body.len(), std::sync::atomic::Ordering::SeqCst);
                            out.extend_from_slice(&body);
                        }
                        out
                    }
                    Err(_) => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = sock.write_all(&response).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}/data")
}

#[tokio::test]
async fn files_over_http_are_found_by_table_name_and_ingested() {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("www");
    std::fs::create_dir_all(served.join("data")).unwrap();
    std::fs::write(
        served.join("data/DimDate.csv"),
        "date_key,date,day,month,year,weekday\n20240101,2024-01-01,1,1,2024,Monday\n20240102,2024-01-02,2,1,2024,Tuesday\n",
    )
    .unwrap();
    write_parquet(
        &served.join("data/FactStream.parquet"),
        &streams(0..10, 1_700_000_000_000_000),
    );
    let base = serve_folder(served).await;
    let lake = dir.path().join("lake");
    let report = ingest(
        &format!("files:{base}"),
        &lake,
        &["DimDate", "FactStream", "DimUser"],
    )
    .await;
    assert_eq!(report.tables[0].rows, 2, "{report:?}");
    assert_eq!(report.tables[1].rows, 10, "{report:?}");
    let err = report.tables[2].error.clone().unwrap();
    assert!(
        err.contains("DimUser") && err.contains("not found"),
        "{err}"
    );
    let wm = std::fs::read_to_string(lake.join("bronze/_watermarks/DimDate.json")).unwrap();
    assert!(wm.contains("\"2024-01-02\""), "{wm}");
}

#[tokio::test]
async fn a_remote_parquet_files_high_watermark_costs_its_footer_not_the_file() {
    use parquet::file::properties::{EnabledStatistics, WriterProperties};
    use std::sync::atomic::Ordering;
    // With statistics (two row groups), the footer is enough; without, only the watermark
    // column is read, one of the file's two equal ones. Bounds in percent of the file.
    let cases = [
        (
            WriterProperties::builder()
                .set_max_row_group_row_count(Some(100_000))
                .build(),
            10,
        ),
        (
            WriterProperties::builder()
                .set_statistics_enabled(EnabledStatistics::None)
                .set_dictionary_enabled(false)
                .build(),
            60,
        ),
    ];
    for (props, percent) in cases {
        let dir = tempfile::tempdir().unwrap();
        let www = dir.path().join("www");
        let path = www.join("data/FactStream.parquet");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let rows = streams(0..200_000, 1_700_000_000_000_000);
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            rows.schema(),
            Some(props),
        )
        .unwrap();
        w.write(&rows).unwrap();
        w.close().unwrap();
        let size = std::fs::metadata(&path).unwrap().len() as usize;
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let base = serve_counted(www, served.clone()).await;
        let lake = dir.path().join("lake");
        let first = ingest(&format!("files:{base}"), &lake, &["FactStream"]).await;
        assert_eq!(first.tables[0].rows, 200_000, "{first:?}");
        let wm = std::fs::read_to_string(lake.join("bronze/_watermarks/FactStream.json")).unwrap();
        // The last stream: 199,999 s after the base.
        assert!(wm.contains("2023-11-17T05:46:39"), "{wm}");
        // Nothing new: the second run finds the same high watermark from part of the file.
        served.store(0, Ordering::SeqCst);
        let second = ingest(&format!("files:{base}"), &lake, &["FactStream"]).await;
        assert_eq!(second.tables[0].rows, 0, "{second:?}");
        let read = served.load(Ordering::SeqCst);
        assert!(
            read > 0 && read * 100 < size * percent,
            "{read} bytes of a {size}-byte file ({percent}% at most)"
        );
    }
}

/// A pipeline of its own over two sources and a third that cannot be reached: the SQLite
/// source (the default) and country names served over HTTP, joined in a view.
const TWO_SOURCES: &str = r#"
[sources.web]
url = "files:${WEB_BASE}"
[sources.broken]
url = "files:${BROKEN_DIR:-/no/such/folder}"

[[tables]]
name = "DimUser"
cdc_column = "updated_at"
keys = ["user_id"]
[tables.silver]
name = "users"
columns = [{ name = "country", expr = "coalesce(upper(trim(country)), 'UNKNOWN')" }]
[tables.gold]
name = "dim_user"

[[tables]]
name = "Country"
source = "web"
keys = ["country_code"]
[tables.gold]
name = "dim_country"
scd_type = 1

[[tables]]
name = "Region"
source = "broken"
cdc_column = "updated_at"
keys = ["region"]

[[views]]
name = "users_by_country"
template = "star_join.sql.j2"
params.tables = [
  { table = "gold.dim_user", alias = "u", cols = "u.user_id, u.country" },
  { table = "gold.dim_country", alias = "c", cols = "c.country_name", condition = "u.country = c.country_code" },
]
params.where = "u.user_sk > 0"
"#;

#[test]
fn one_run_reads_every_source_and_a_failing_source_fails_only_its_tables() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (code, _, err) = crate::cli::tunelake_with(
        d,
        &["seed", "--source", "sqlite:src.db", "--scale", "0.002"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let served = d.join("www");
    std::fs::create_dir_all(served.join("data")).unwrap();
    std::fs::copy(
        d.join("reference/Country.csv"),
        served.join("data/Country.csv"),
    )
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let base = runtime.block_on(serve_folder(served));
    std::fs::write(d.join("two.toml"), TWO_SOURCES).unwrap();
    let args = [
        "--config",
        "two.toml",
        "--source",
        "sqlite:src.db",
        "--lake",
        "lake",
        "run",
    ];

    // A variable the file needs and the environment lacks: nothing moves.
    let (code, out, err) = crate::cli::tunelake_with(d, &args, &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("sources.web.url") && err.contains("WEB_BASE"),
        "{out}{err}"
    );
    assert!(!d.join("lake").exists());

    let env = [("WEB_BASE", base)];
    let (code, out, err) = crate::cli::tunelake_with(d, &args, &env);
    assert_ne!(code, 0, "Region's source cannot be reached: {out}");
    let all = format!("{out}{err}");
    assert!(
        all.contains("Region") && all.contains("/no/such/folder"),
        "{all}"
    );
    let rows = |sql: &str| crate::cli::query_rows(d, "lake", sql);
    // Every user whose country the reference names has that name in the view.
    let users = crate::common::Fixture::count_in(&d.join("src.db"), "SELECT COUNT(*) FROM DimUser");
    assert_eq!(
        rows("SELECT count(*) FROM gold.users_by_country"),
        [users.to_string()]
    );
    let named = rows(
        "SELECT count(*) FROM gold.users_by_country v JOIN silver.country c ON v.country = c.country_code",
    );
    assert_eq!(
        rows("SELECT count(*) FROM gold.users_by_country WHERE country_name IS NOT NULL"),
        named
    );
    assert_ne!(named, ["0"]);
    assert_eq!(
        rows("SELECT count(*) FROM gold.dim_country WHERE country_sk > 0"),
        ["20"]
    );
}

#[test]
fn an_unknown_source_name_is_a_config_error_naming_the_table() {
    let text = TWO_SOURCES.replace("source = \"web\"", "source = \"webb\"");
    let err = Pipeline::parse(&text, "two.toml").unwrap_err().to_string();
    assert!(
        err.contains("tables[1] (Country).source") && err.contains("\"webb\""),
        "{err}"
    );
}
