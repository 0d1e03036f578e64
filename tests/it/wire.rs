//! `tunelake serve-sql` as a BI tool meets it: the real `psql` client (Debian's
//! postgresql-client, which `.ci/run` installs) connects, lists the tables, runs the star join
//! and gets the rows `tunelake sql` gets; a write is refused and never runs; a password is
//! required when one is set.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use crate::cli::tunelake_with;

fn psql_binary() -> String {
    if let Ok(p) = std::env::var("TUNELAKE_PSQL") {
        return p;
    }
    let found = Command::new("sh")
        .args(["-c", "command -v psql"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    assert!(
        !found.is_empty(),
        "psql is needed (Debian's postgresql-client; .ci/run installs it)"
    );
    found
}

struct Endpoint(Child, u16);

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path, env: &[(&str, &str)]) -> Endpoint {
    start_with(dir, env, &[])
}

fn start_with(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Endpoint {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_tunelake"))
        .current_dir(dir)
        .env_remove("TUNELAKE_SQL_PASSWORD")
        .envs(env.iter().copied())
        .args(args)
        .args([
            "--lake",
            "lake",
            "-q",
            "serve-sql",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .spawn()
        .unwrap();
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "serve-sql did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Endpoint(child, port)
}

fn psql(port: u16, password: Option<&str>, sql: &str) -> Output {
    let mut command = Command::new(psql_binary());
    command
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "analyst",
            "-d",
            "datafusion",
        ])
        .args([
            "-X",
            "-A",
            "-t",
            "-F",
            ",",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
        ])
        .args(["-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGSSLMODE", "disable");
    match password {
        Some(p) => command.env("PGPASSWORD", p),
        None => command.env_remove("PGPASSWORD"),
    };
    command.output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

const STAR_JOIN: &str = "SELECT f.stream_id, u.user_name, t.track_name, a.artist_name \
    FROM gold.fact_stream f JOIN gold.dim_user u ON f.user_sk = u.user_sk \
    JOIN gold.dim_track t ON f.track_sk = t.track_sk JOIN gold.dim_artist a ON f.artist_sk = a.artist_sk \
    ORDER BY f.stream_id LIMIT 25";

#[test]
fn psql_lists_the_tables_runs_the_star_join_and_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for args in [
        vec!["seed", "--source", "sqlite:src.db", "--scale", "0.002"],
        vec!["--source", "sqlite:src.db", "--lake", "lake", "run"],
    ] {
        let (code, out, err) = tunelake_with(d, &args, &[]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let endpoint = start(d, &[]);
    let port = endpoint.1;

    let listed = psql(port, None, "\\dt gold.*");
    assert!(listed.status.success(), "{}", text(&listed));
    for table in ["dim_user", "fact_stream", "stream_details"] {
        assert!(
            text(&listed).contains(table),
            "{table} not listed:\n{}",
            text(&listed)
        );
    }

    // A table's columns, as `\d` asks the pg_catalog for them; an unknown table is named.
    let described = psql(port, None, "\\d gold.dim_user");
    assert!(described.status.success(), "{}", text(&described));
    for column in ["user_sk", "user_id", "valid_from", "is_current"] {
        assert!(
            text(&described).contains(column),
            "{column}:\n{}",
            text(&described)
        );
    }
    let unknown = psql(port, None, "SELECT * FROM gold.podcasts");
    assert!(!unknown.status.success());
    assert!(text(&unknown).contains("podcasts"), "{}", text(&unknown));

    let over_wire = psql(port, None, STAR_JOIN);
    assert!(over_wire.status.success(), "{}", text(&over_wire));
    let (code, csv, err) = tunelake_with(
        d,
        &["--lake", "lake", "sql", "--format", "csv", STAR_JOIN],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let expected: Vec<&str> = csv.lines().skip(1).filter(|l| !l.is_empty()).collect();
    let got_text = String::from_utf8_lossy(&over_wire.stdout).to_string();
    let got: Vec<&str> = got_text.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(got, expected);
    assert_eq!(got.len(), 25);

    // A write is refused with SQLSTATE 25006 and nothing changes; the server goes on serving.
    let count = || {
        let out = psql(port, None, "SELECT count(*) FROM gold.dim_user");
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let before = count();
    for write in [
        "DELETE FROM gold.dim_user",
        "INSERT INTO gold.dim_user SELECT * FROM gold.dim_user",
        "DROP TABLE gold.dim_user",
    ] {
        let refused = psql(port, None, write);
        assert!(!refused.status.success(), "{write} ran");
        assert!(
            text(&refused).contains("25006"),
            "{write}: {}",
            text(&refused)
        );
    }
    assert_eq!(count(), before);
}

#[test]
fn a_password_is_required_once_set_and_without_one_only_loopback_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let endpoint = start(d, &[("TUNELAKE_SQL_PASSWORD", "s3cret")]);
    let wrong = psql(endpoint.1, Some("guess"), "SELECT 1");
    assert!(!wrong.status.success(), "a wrong password was let in");
    let right = psql(endpoint.1, Some("s3cret"), "SELECT 1 AS one");
    assert!(right.status.success(), "{}", text(&right));
    assert_eq!(String::from_utf8_lossy(&right.stdout).trim(), "1");
    // A certificate that is not one: refused, never served in clear.
    std::fs::write(d.join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(d.join("key.pem"), "not a key").unwrap();
    let tls = [
        (
            "TUNELAKE_SQL_TLS_CERT",
            d.join("cert.pem").display().to_string(),
        ),
        (
            "TUNELAKE_SQL_TLS_KEY",
            d.join("key.pem").display().to_string(),
        ),
    ];
    let (code, _, err) = tunelake_with(
        d,
        &["--lake", "lake", "serve-sql", "--listen", "127.0.0.1:0"],
        &tls,
    );
    assert_ne!(code, 0);
    assert!(err.contains("is not PEM"), "{err}");
    // Open to every network without a password: refused before listening.
    let (code, _, err) = tunelake_with(
        d,
        &["--lake", "lake", "serve-sql", "--listen", "0.0.0.0:0"],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("loopback only"), "{err}");
}

#[test]
fn a_runaway_query_is_cancelled_at_the_time_bound_and_the_endpoint_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pipeline = tunelake::config::DEFAULT_PIPELINE
        .replace("[settings]", "[settings]\nquery_timeout_seconds = 1");
    std::fs::write(d.join("p.toml"), pipeline).unwrap();
    let endpoint = start_with(d, &[], &["--config", "p.toml"]);
    let started = Instant::now();
    let runaway = psql(
        endpoint.1,
        None,
        "SELECT count(*) FROM range(1000000000000)",
    );
    assert!(!runaway.status.success(), "{}", text(&runaway));
    assert!(text(&runaway).contains("57014"), "{}", text(&runaway));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let next = psql(endpoint.1, None, "SELECT 2 AS two");
    assert!(next.status.success(), "{}", text(&next));
    assert_eq!(String::from_utf8_lossy(&next.stdout).trim(), "2");
}
