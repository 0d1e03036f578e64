//! The Function App as the Functions host drives it: `tunelake serve` as a process, the
//! host's invocation payloads over HTTP, on a local lake and on Azurite.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cli::{gold_tables, gold_tables_with, tunelake_with};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `tunelake serve`, its stderr (what the host forwards to Application Insights)
/// in a file.
struct Server {
    child: Child,
    port: u16,
    stderr: PathBuf,
}

impl Server {
    fn start(dir: &Path, lake: &str, env: &[(&str, String)]) -> (Server, Duration) {
        let port = free_port();
        let started = Instant::now();
        let stderr = std::env::temp_dir().join(format!("tunelake-serve-{port}.stderr"));
        let child = Command::new(env!("CARGO_BIN_EXE_tunelake"))
            .stderr(std::fs::File::create(&stderr).unwrap())
            .current_dir(dir)
            .env_remove("TUNELAKE_CONFIG")
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .env("TUNELAKE_SOURCE", "sqlite:src.db")
            .env("TUNELAKE_LAKE", lake)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .args(["-q", "serve"])
            .spawn()
            .unwrap();
        // The host's readiness probe: any answer to GET / means ready.
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                s.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let mut out = String::new();
                if s.read_to_string(&mut out).is_ok() && out.starts_with("HTTP/1.1 200") {
                    break;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "serve did not start"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        (
            Server {
                child,
                port,
                stderr,
            },
            started.elapsed(),
        )
    }

    fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json; charset=utf-8\r\n\
             X-Azure-Functions-InvocationId: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap();
        (status, body)
    }

    fn invoke(&self, function: &str, payload: &Value) -> (u16, Value) {
        let (status, body) = self.request("POST", &format!("/{function}"), &payload.to_string());
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Server {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        // Shown when a test fails; removed with the server.
        eprint!("{}", self.stderr());
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// What the host sends, strings JSON-encoded a second time as current hosts do.
fn twice(text: &str) -> Value {
    Value::String(serde_json::to_string(text).unwrap())
}

/// A `BlobCreated` event for `file` as Event Grid puts it on the `bronze-events` queue, and as
/// the host hands the message over: base64 (the queue extension's default) or plain JSON text
/// encoded a second time.
fn blob_created(blob_base: &str, file: &str, api: &str, base64: bool) -> Value {
    use base64::Engine;
    let event = json!({
        "topic": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/storageAccounts/a",
        "subject": format!("/blobServices/default/containers/bronze/blobs/{}", file.strip_prefix("bronze/").unwrap()),
        "eventType": "Microsoft.Storage.BlobCreated",
        "id": "e1", "eventTime": "2026-12-07T10:00:01Z",
        "data": { "api": api, "url": format!("{blob_base}/{file}"), "contentLength": 4, "blobType": "BlockBlob" },
        "dataVersion": "", "metadataVersion": "1"
    })
    .to_string();
    let message = match base64 {
        true => Value::String(base64::engine::general_purpose::STANDARD.encode(event)),
        false => twice(&event),
    };
    json!({
        "Data": { "event": message },
        "Metadata": { "DequeueCount": "1", "Id": twice("m0"), "sys": { "MethodName": "silver", "UtcNow": "2026-12-07T10:00:01Z", "RandGuid": "y" } }
    })
}

/// The messages of an answer's `goldQueue` output.
fn gold_messages(answer: &Value) -> Vec<String> {
    match &answer["Outputs"]["goldQueue"] {
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().unwrap().to_string())
            .collect(),
        Value::Null => Vec::new(),
        other => panic!("goldQueue is not an array of messages: {other}"),
    }
}

/// Drives one pipeline round through the functions: the ingest timer, one queue message per
/// bronze file the timer wrote except the last (an event lost), the catch-up timer (which must
/// load that one), and the gold invocation per work item. Returns the work items.
fn drive(server: &Server, blob_base: &str) -> Vec<String> {
    let timer = json!({
        "Data": { "timer": { "Schedule": { "AdjustForDST": true }, "ScheduleStatus": null, "IsPastDue": false } },
        "Metadata": { "sys": { "MethodName": "ingest", "UtcNow": "2026-11-27T10:00:00Z", "RandGuid": "x" } }
    });
    let (status, answer) = server.invoke("ingest", &timer);
    assert_eq!(status, 200, "{answer}");
    let files: Vec<String> = answer["Logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str()?.strip_prefix("wrote ").map(String::from))
        .collect();
    assert!(files.len() > 1, "{answer}");
    let (lost, announced) = files.split_last().unwrap();
    let mut work = Vec::new();
    for (i, file) in announced.iter().enumerate() {
        // An empty file being created (hierarchical namespace) is no file to load yet.
        let (status, answer) = server.invoke(
            "silver",
            &blob_created(blob_base, file, "CreateFile", false),
        );
        assert_eq!(status, 200, "{file}: {answer}");
        assert!(
            answer["Logs"][0].as_str().unwrap().contains("ignored"),
            "{answer}"
        );
        assert!(gold_messages(&answer).is_empty());
        let (status, answer) = server.invoke(
            "silver",
            &blob_created(blob_base, file, "PutBlob", i % 2 == 0),
        );
        assert_eq!(status, 200, "{file}: {answer}");
        assert!(
            answer["Logs"][0].as_str().unwrap().contains("Committed"),
            "{file}: {answer}"
        );
        work.extend(gold_messages(&answer));
    }
    assert_eq!(work.len(), announced.len());
    // The file no event brought: the catch-up timer loads it, and only it.
    let (status, answer) = server.invoke("catchup", &timer);
    assert_eq!(status, 200, "{answer}");
    let loaded: Vec<&str> = answer["Logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .filter(|l| !l.contains(" 0 files loaded"))
        .collect();
    assert_eq!(loaded.len(), 1, "{lost}: {answer}");
    assert!(loaded[0].contains("1 files loaded"), "{lost}: {answer}");
    work.extend(gold_messages(&answer));
    assert_eq!(work.len(), announced.len() + 1);
    // A redelivered event changes nothing.
    let (status, answer) = server.invoke(
        "silver",
        &blob_created(blob_base, &files[0], "PutBlob", true),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["Logs"][0]
            .as_str()
            .unwrap()
            .contains("AlreadyLoaded"),
        "{answer}"
    );
    for item in &work {
        let message = json!({
            "Data": { "work": twice(item) },
            "Metadata": { "DequeueCount": "1", "Id": twice("m1"), "sys": { "MethodName": "gold" } }
        });
        let (status, answer) = server.invoke("gold", &message);
        assert_eq!(status, 200, "{item}: {answer}");
    }
    work
}

fn reference_run(dir: &Path, env: &[(&str, String)]) -> Vec<(String, Vec<String>)> {
    let (code, out, err) = tunelake_with(
        dir,
        &["--source", "sqlite:src.db", "--lake", "reference", "run"],
        env,
    );
    assert_eq!(code, 0, "{out}{err}");
    gold_tables(dir, "reference")
}

fn seeded() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = tunelake_with(
        dir.path(),
        &["seed", "--source", "sqlite:src.db", "--scale", "0.002"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    dir
}

#[test]
fn the_functions_build_the_same_gold_as_a_run_and_refuse_bad_input() {
    let dir = seeded();
    let d = dir.path();
    let (server, ready) = Server::start(d, "lake", &[]);
    eprintln!(
        "serve answered its readiness probe {} ms after spawn",
        ready.as_millis()
    );

    // Unknown function, malformed payloads, a blob outside bronze, a poison message.
    let (status, answer) = server.invoke("platinum", &json!({ "Data": {} }));
    assert_eq!(status, 404);
    assert_eq!(
        answer["functions"],
        json!([
            "ingest", "silver", "catchup", "gold", "alert", "query", "refresh", "maintain"
        ])
    );
    let (status, body) = server.request("POST", "/gold", "{not json");
    assert_eq!(status, 400, "{body}");
    let (status, answer) = server.invoke("gold", &json!({ "Metadata": {} }));
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("Data"),
        "{answer}"
    );
    // A blob outside bronze is acknowledged and ignored; a message that is no event is
    // refused (the host retries it, then moves it to the poison queue).
    let (status, answer) = server.invoke(
        "silver",
        &blob_created(
            "https://a.blob.core.windows.net/lake/x",
            "bronze/../other/x.parquet",
            "PutBlob",
            true,
        ),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["Logs"][0].as_str().unwrap().contains("ignored"),
        "{answer}"
    );
    let (status, answer) = server.invoke(
        "silver",
        &json!({ "Data": { "event": twice(r#"{"subject":"x"}"#) }, "Metadata": {} }),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer["Logs"].to_string().contains("eventType"), "{answer}");

    let work = drive(&server, "https://acct.blob.core.windows.net/lake/demo");
    let before = gold_tables(d, "lake");
    let (status, answer) = server.invoke(
        "gold",
        &json!({ "Data": { "work": twice(r#"{"table":"users","version":"three"}"#) }, "Metadata": {} }),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(answer["Logs"].to_string().contains("Data.work"), "{answer}");
    // The host does not read the Logs of a failed answer: the failure is on stderr too.
    let stderr = server.stderr();
    assert!(
        !stderr.contains('\u{1b}')
            && stderr.lines().any(|l| l.contains("ERROR")
                && l.contains("The invocation failed")
                && l.contains("gold")
                && l.contains("Data.work")),
        "{stderr}"
    );
    // Redelivering a work item changes nothing, and answers at once.
    let (status, answer) = server.invoke("gold", &json!({ "Data": { "work": twice(&work[0]) } }));
    assert_eq!(status, 200);
    assert!(
        answer["Logs"][0]
            .as_str()
            .unwrap()
            .contains("nothing to build"),
        "{answer}"
    );
    assert_eq!(gold_tables(d, "lake"), before);

    // The query function: rows as JSON with a limit; anything but a query is refused.
    let (status, body) = server.request(
        "GET",
        "/api/query?q=SELECT%20user_id%2C%20country%20FROM%20gold.dim_user%20WHERE%20is_current%20ORDER%20BY%20user_id&limit=3",
        "",
    );
    assert_eq!(status, 200, "{body}");
    let rows: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rows["columns"], json!(["user_id", "country"]));
    assert_eq!(rows["row_count"], 3);
    assert_eq!(rows["truncated"], true);
    assert_eq!(rows["rows"][0]["user_id"], 1);
    let (status, body) = server.request(
        "POST",
        "/api/query",
        r#"{"sql": "DELETE FROM gold.dim_user"}"#,
    );
    assert_eq!(status, 400, "{body}");

    // The refresh function: the plan without confirm=yes, nothing changed; then the refresh.
    let (status, body) = server.request("POST", "/api/refresh", "");
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.request("POST", "/api/refresh?table=Nope", "");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Nope"), "{body}");
    let (status, body) = server.request("POST", "/api/refresh?table=DimDate", "");
    assert_eq!(status, 200, "{body}");
    let plan: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(plan["refreshed"], false);
    assert_eq!(plan["would_discard"]["table"], "DimDate");
    assert_eq!(gold_tables(d, "lake"), before, "a plan changes nothing");
    let (status, body) = server.request(
        "POST",
        "/api/refresh",
        r#"{"table": "DimDate", "confirm": true}"#,
    );
    assert_eq!(status, 200, "{body}");
    let done: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(done["refreshed"], true);
    assert!(d.join("lake/bronze/_refreshed/DimDate").is_dir());
    let (status, body) = server.request(
        "GET",
        "/api/query?q=SELECT%20count(*)%20AS%20n%20FROM%20gold.dim_date%20WHERE%20date_sk%20%3C%3E%20-1",
        "",
    );
    assert_eq!(status, 200, "{body}");
    let dates = crate::common::Fixture::count_in(&d.join("src.db"), "SELECT COUNT(*) FROM DimDate");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["rows"][0]["n"],
        dates
    );

    // The alert function: no mail channel here, so the outbox.
    let (status, body) = server.request(
        "POST",
        "/api/alert",
        r#"{"run_id":"r9","stage":"gold","failures":[{"table":"dim_user","error":"boom"}]}"#,
    );
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("outbox"), "{body}");
    assert!(d.join("lake/_system/outbox/r9-gold.json").is_file());
    let (status, body) = server.request("POST", "/api/alert", r#"{"stage": 1}"#);
    assert_eq!(status, 400, "{body}");

    // The maintenance timer: every table maintained, gold as it was.
    let timer = json!({ "Data": { "timer": { "IsPastDue": false } }, "Metadata": {} });
    let (status, answer) = server.invoke("maintain", &timer);
    assert_eq!(status, 200, "{answer}");
    let logs = answer["Logs"].to_string();
    for table in [
        "silver/streams",
        "gold/dim_user",
        "gold/stream_details",
        "_system/events",
    ] {
        assert!(logs.contains(table), "{table} not maintained: {logs}");
    }

    // The same tables as `tunelake run` over the same source.
    assert_eq!(before, reference_run(d, &[]));
    assert!(
        server.stop().success(),
        "serve must exit cleanly on SIGTERM"
    );
}

/// Azurite as the tests start it: from TUNELAKE_AZURITE, else from the cache folder
/// (`~/.cache/tunelake/azurite`), where the first test that needs it installs it through npm
/// (Node 20), so `cargo test` needs nothing installed by hand but Node.
fn azurite_binary() -> PathBuf {
    if let Ok(path) = std::env::var("TUNELAKE_AZURITE") {
        return PathBuf::from(path);
    }
    static INSTALLED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let home = std::env::var("HOME").unwrap_or_default();
            let dir = PathBuf::from(home).join(".cache/tunelake/azurite");
            let path = dir.join("node_modules/.bin/azurite");
            if !path.exists() {
                std::fs::create_dir_all(&dir).unwrap();
                let status = Command::new("npm")
                    .args(["install", "--prefix"])
                    .arg(&dir)
                    .args(["--no-audit", "--no-fund", "--loglevel=error", AZURITE])
                    .status()
                    .unwrap_or_else(|e| {
                        panic!("Azurite is installed through npm, which did not start ({e}): install Node 20")
                    });
                assert!(status.success(), "npm install {AZURITE} failed: {status}");
            }
            path
        })
        .clone()
}

/// The Azurite release the tests run (DEPENDENCIES.md).
const AZURITE: &str = "azurite@3.35.0";

/// The emulator process and its data folder (removed when dropped).
struct Azurite(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_azurite() -> (Azurite, u16) {
    let dir = tempfile::tempdir().unwrap();
    let (blob, queue, table) = (free_port(), free_port(), free_port());
    let child = Command::new(azurite_binary())
        .args([
            "--silent",
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--location",
        ])
        .arg(dir.path())
        .args([
            "--blobHost",
            "127.0.0.1",
            "--queueHost",
            "127.0.0.1",
            "--tableHost",
            "127.0.0.1",
        ])
        .args([
            "--blobPort",
            &blob.to_string(),
            "--queuePort",
            &queue.to_string(),
        ])
        .args(["--tablePort", &table.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", blob)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "Azurite did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (Azurite(child, dir), blob)
}

#[test]
fn on_azurite_the_functions_and_a_run_build_the_same_gold() {
    let (_azurite, port) = start_azurite();
    let dir = seeded();
    let d = dir.path();
    let env = [
        ("AZURE_STORAGE_USE_EMULATOR", "true".to_string()),
        (
            "AZURITE_BLOB_STORAGE_URL",
            format!("http://127.0.0.1:{port}"),
        ),
    ];
    // A container per area, as in Azure; none exists yet: tunelake creates them on the
    // emulator.
    let (server, _) = Server::start(d, "az://{area}/", &env);
    drive(
        &server,
        &format!("http://127.0.0.1:{port}/devstoreaccount1"),
    );
    assert!(server.stop().success());
    let (code, out, err) = tunelake_with(
        d,
        &[
            "--source",
            "sqlite:src.db",
            "--lake",
            "az://lake/run",
            "run",
        ],
        &env,
    );
    assert_eq!(code, 0, "{out}{err}");
    let on_azurite = |lake: &str| gold_tables_with(d, lake, &env);
    let functions = on_azurite("az://{area}/");
    assert!(functions.iter().all(|(_, rows)| rows.len() > 1));
    assert_eq!(functions, on_azurite("az://lake/run"));
    assert_eq!(functions, reference_run(d, &[]));
}

#[test]
fn the_package_carries_the_pipeline_and_its_templates_and_serve_reads_them_from_the_app_root() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let project = d.join("project");
    std::fs::create_dir_all(project.join("templates")).unwrap();
    let pipeline = tunelake::config::DEFAULT_PIPELINE.replace(
        "[settings]",
        "[settings]\nquery_concurrency = 3   # this project's own",
    );
    assert_ne!(pipeline, tunelake::config::DEFAULT_PIPELINE);
    std::fs::write(project.join("pipeline.toml"), &pipeline).unwrap();
    let star = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/star_join.sql.j2"),
    )
    .unwrap();
    let own_star = format!("{{# this project's star join #}}\n{star}");
    std::fs::write(project.join("templates/star_join.sql.j2"), &own_star).unwrap();
    // The reference source's folder (`files:reference`, relative), which the app reads from
    // its root.
    std::fs::create_dir_all(d.join("reference")).unwrap();
    std::fs::write(
        d.join("reference/Country.csv"),
        "country_code,updated_at\nUS,2024-01-01\n",
    )
    .unwrap();

    let (code, out, err) = tunelake_with(
        d,
        &[
            "--config",
            "project/pipeline.toml",
            "package",
            "--out",
            "dist",
            "--max-glibc",
            "2.99",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let file = std::fs::File::open(d.join("dist/tunelake-functions.zip")).unwrap();
    let mut zip = zip::ZipArchive::new(file).unwrap();
    let mut read = |name: &str| {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut zip.by_name(name).unwrap(), &mut text).unwrap();
        text
    };
    assert_eq!(read("pipeline.toml"), pipeline);
    assert_eq!(read("templates/star_join.sql.j2"), own_star);
    assert!(read("reference/Country.csv").starts_with("country_code,"));
    assert!(read("templates/top_tracks_per_day.sql.j2").contains("SELECT"));
    assert!(read("catchup/function.json").contains("CATCHUP_SCHEDULE"));
    let silver: Value = serde_json::from_str(&read("silver/function.json")).unwrap();
    assert_eq!(silver["bindings"][0]["type"], "queueTrigger");
    assert_eq!(silver["bindings"][0]["queueName"], "bronze-events");
    assert_eq!(silver["bindings"][0]["name"], "event");

    // Core Tools' local settings sit in the folder, not in the zip Azure receives.
    assert!(d.join("dist/app/local.settings.json").is_file());
    assert!(zip.by_name("local.settings.json").is_err());

    // serve, started by the host in some other folder, reads the packaged pipeline.
    let app = d.join("dist/app");
    let elsewhere = d.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let (server, _) = Server::start(
        &elsewhere,
        "lake",
        &[("FUNCTIONS_APP_ROOT_PATH", app.display().to_string())],
    );
    let (status, body) = server.request("GET", "/", "");
    assert_eq!(status, 200);
    assert!(
        body.contains(&app.join("pipeline.toml").display().to_string()),
        "{body}"
    );
    assert!(server.stop().success());

    // A pipeline file that does not validate is never packaged.
    std::fs::write(
        project.join("pipeline.toml"),
        pipeline.replace("query_concurrency = 3", "query_concurrency = 0"),
    )
    .unwrap();
    let (code, out, err) = tunelake_with(
        d,
        &[
            "--config",
            "project/pipeline.toml",
            "package",
            "--out",
            "bad",
            "--max-glibc",
            "2.99",
        ],
        &[],
    );
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("query_concurrency"), "{err}");
    assert!(!d.join("bad/tunelake-functions.zip").exists());
}

#[test]
fn a_bronze_file_far_over_the_request_limit_loads_through_its_event() {
    use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray, UInt32Array};
    use std::sync::Arc;
    let dir = seeded();
    let d = dir.path();
    let (server, _) = Server::start(d, "lake", &[]);
    let timer = json!({ "Data": { "timer": {} }, "Metadata": {} });
    let (status, answer) = server.invoke("ingest", &timer);
    assert_eq!(status, 200, "{answer}");
    // A part of a big DimTrack extract: the ingested part's first row 24,000 times, with new
    // ids and 1 KiB names, uncompressed: about 24 MiB, over the 16 MiB a request body may hold.
    let tracks = d.join("lake/bronze/DimTrack");
    let ingested = crate::common::parquet_files(&tracks);
    let first = &crate::common::read_parquet(&ingested[0])[0];
    let rows = 24_000u32;
    let repeated =
        arrow::compute::take_record_batch(first, &UInt32Array::from(vec![0; rows as usize]))
            .unwrap();
    let schema = repeated.schema();
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .zip(repeated.columns())
        .map(|(field, column)| -> ArrayRef {
            match field.name().as_str() {
                "track_id" => Arc::new(Int32Array::from_iter_values(
                    1_000_001..1_000_001 + rows as i32,
                )),
                "track_name" => Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("{i:08}-{}", "x".repeat(1015))),
                )),
                _ => column.clone(),
            }
        })
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let name = ingested[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace("_00000.parquet", "_00099.parquet");
    let file = format!("bronze/DimTrack/{name}");
    let path = d.join("lake").join(&file);
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::UNCOMPRESSED)
        .set_dictionary_enabled(false)
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        schema,
        Some(props),
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size > 16 * 1024 * 1024, "{size} bytes");

    let (status, answer) = server.invoke(
        "silver",
        &blob_created(
            "https://acct.blob.core.windows.net",
            &file,
            "PutBlockList",
            true,
        ),
    );
    assert_eq!(status, 200, "{answer}");
    let log = answer["Logs"][0].as_str().unwrap();
    assert!(
        log.contains("Committed") && log.contains(&format!("{rows} rows in")),
        "{answer}"
    );
    assert_eq!(gold_messages(&answer).len(), 1);
    assert!(server.stop().success());
}
