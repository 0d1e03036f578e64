//! `tunelake catalog publish` against a loopback Unity Catalog that keeps what it is sent and
//! checks the exact requests (the same API as Azure Databricks and the open-source server):
//! a first publish creates the catalog, schemas, tables and grants; a second changes nothing;
//! a schema change re-registers that one table.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tunelake::http::{Handler, Request, Response};

use crate::cli::tunelake_with;

/// What the fake server holds, and every request it saw (`METHOD path`).
#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    grants: Vec<Value>,
    seen: Vec<String>,
    /// Table registrations to let through before answering one with 503 (a publish that
    /// fails half way).
    tables_until_failure: Option<usize>,
}

fn handle(state: &Mutex<State>, r: Request) -> Response {
    let mut s = state.lock().unwrap();
    // The managed identity's token endpoint: a token for Azure Databricks only.
    if r.path == "/msi/token" {
        let resource = r.param("resource").unwrap_or("").to_string();
        s.seen.push(format!("TOKEN {resource}"));
        return match resource.as_str() {
            "2ff814a6-3304-4ab8-85cb-cd0e6f879c1d" => {
                Response::json(200, &json!({ "access_token": "uc-token" }))
            }
            _ => Response::json(400, &json!({ "error": "wrong resource" })),
        };
    }
    let path = r
        .path
        .trim_start_matches("/api/2.1/unity-catalog/")
        .to_string();
    s.seen.push(format!("{} {path}", r.method));
    if r.method == "POST" && path == "tables" {
        match s.tables_until_failure {
            Some(0) => {
                s.tables_until_failure = None;
                return Response::json(503, &json!({ "message": "try later" }));
            }
            Some(n) => s.tables_until_failure = Some(n - 1),
            None => {}
        }
    }
    if r.header("authorization") != Some("Bearer uc-token") {
        return Response::json(401, &json!({ "message": "no token" }));
    }
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    match (r.method.as_str(), path.as_str()) {
        ("GET", p) if p.starts_with("permissions/") => {
            Response::json(200, &json!({ "privilege_assignments": s.grants }))
        }
        ("PATCH", p) if p.starts_with("permissions/") => {
            for change in body["changes"].as_array().unwrap() {
                s.grants
                    .push(json!({ "principal": change["principal"], "privileges": change["add"] }));
            }
            Response::json(200, &json!({}))
        }
        ("GET", p) => match s.objects.get(p) {
            Some(v) => Response::json(200, v),
            None => Response::json(404, &json!({ "error_code": "NOT_FOUND" })),
        },
        ("DELETE", p) => {
            s.objects.remove(p);
            Response::json(200, &json!({}))
        }
        ("POST", kind) => {
            let full = match kind {
                "tables" => format!(
                    "tables/{}.{}.{}",
                    body["catalog_name"].as_str().unwrap(),
                    body["schema_name"].as_str().unwrap(),
                    body["name"].as_str().unwrap()
                ),
                "schemas" => format!(
                    "schemas/{}.{}",
                    body["catalog_name"].as_str().unwrap(),
                    body["name"].as_str().unwrap()
                ),
                other => format!("{other}/{}", body["name"].as_str().unwrap()),
            };
            assert!(!s.objects.contains_key(&full), "{full} created twice");
            s.objects.insert(full, body.clone());
            Response::json(200, &body)
        }
        _ => Response::json(400, &json!({ "message": "unexpected" })),
    }
}

const CATALOG: &str = r#"
[catalog]
url = "${UC_URL}"
name = "music"
grants = [{ principal = "analysts", privileges = ["USE_CATALOG", "USE_SCHEMA", "SELECT"] }]
access_connector_id = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Databricks/accessConnectors/dbac"
"#;

#[test]
fn publishing_registers_once_changes_nothing_twice_and_follows_a_schema_change() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let state = Arc::new(Mutex::new(State::default()));
    let url = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let s = state.clone();
        let handler: Handler = Arc::new(move |r| {
            let s = s.clone();
            Box::pin(async move { handle(&s, r) })
        });
        tokio::spawn(tunelake::http::serve(
            listener,
            handler,
            Default::default(),
            std::future::pending(),
        ));
        url
    });
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pipeline = format!("{}\n{CATALOG}", tunelake::config::DEFAULT_PIPELINE);
    std::fs::write(d.join("p.toml"), &pipeline).unwrap();
    let env = [
        ("UC_URL", url.clone()),
        ("TUNELAKE_CATALOG_TOKEN", "uc-token".to_string()),
    ];
    let cli = |args: &[&str]| {
        let mut all = vec![
            "--config",
            "p.toml",
            "--source",
            "sqlite:src.db",
            "--lake",
            "lake",
        ];
        all.extend_from_slice(args);
        let (code, out, err) = tunelake_with(d, &all, &env);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        out
    };
    cli(&["seed", "--scale", "0.002"]);
    cli(&["run"]);
    // The server gives out after three tables: the publish fails, and the next one registers
    // only what is missing.
    state.lock().unwrap().tables_until_failure = Some(3);
    let all = ["--config", "p.toml", "--lake", "lake", "catalog", "publish"];
    let (code, _, err) = tunelake_with(d, &all, &env);
    assert_ne!(code, 0);
    assert!(err.contains("503"), "{err}");
    let out = cli(&["catalog", "publish"]);
    let pipeline =
        tunelake::config::Pipeline::parse(&pipeline.replace("${UC_URL}", &url), "p.toml").unwrap();
    // A silver table per table, a gold one per gold section, and the views.
    let tables = pipeline.tables.len()
        + pipeline.tables.iter().filter(|t| t.gold.is_some()).count()
        + pipeline.views.len();
    assert!(
        out.contains(&format!("{} registered, 3 unchanged", tables - 3)),
        "{out}"
    );
    {
        let s = state.lock().unwrap();
        let posts: Vec<&String> = s.seen.iter().filter(|l| l.starts_with("POST")).collect();
        assert_eq!(posts[0], "POST catalogs");
        // The access connector's credential and a read-only location per area it reads.
        assert_eq!(
            posts[1..4],
            [
                "POST storage-credentials",
                "POST external-locations",
                "POST external-locations"
            ]
        );
        assert_eq!(posts[4..6], ["POST schemas", "POST schemas"]);
        let credential = &s.objects["storage-credentials/music_lake"];
        assert!(
            credential["azure_managed_identity"]["access_connector_id"]
                .as_str()
                .unwrap()
                .ends_with("/accessConnectors/dbac")
        );
        let gold = &s.objects["external-locations/music_gold"];
        assert_eq!(gold["read_only"], true);
        assert_eq!(gold["credential_name"], "music_lake");
        assert!(
            gold["url"].as_str().unwrap().ends_with("/lake/gold/"),
            "{gold}"
        );
        // Catalog, credential, locations, schemas, three tables, the refused one, the rest.
        assert_eq!(posts.len(), 6 + tables + 1);
        let users = &s.objects["tables/music.silver.users"];
        assert_eq!(users["table_type"], "EXTERNAL");
        assert_eq!(users["data_source_format"], "DELTA");
        let location = users["storage_location"].as_str().unwrap();
        assert!(
            location.starts_with("file://") && location.ends_with("/lake/silver/users"),
            "{location}"
        );
        let columns = users["columns"].as_array().unwrap();
        let id = columns.iter().find(|c| c["name"] == "user_id").unwrap();
        assert_eq!(
            (id["type_name"].as_str(), id["position"].as_u64()),
            (Some("INT"), Some(0))
        );
        assert!(s.objects.contains_key("tables/music.gold.stream_details"));
        assert_eq!(
            s.grants,
            [
                json!({ "principal": "analysts", "privileges": ["USE_CATALOG", "USE_SCHEMA", "SELECT"] })
            ]
        );
    }

    // Again, with an Entra token from the managed identity: only reads.
    state.lock().unwrap().seen.clear();
    let identity = [
        ("UC_URL", url.clone()),
        ("IDENTITY_ENDPOINT", format!("{url}/msi/token")),
        ("IDENTITY_HEADER", "h".to_string()),
    ];
    let (code, out, err) = tunelake_with(d, &all, &identity);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        state.lock().unwrap().seen[0],
        "TOKEN 2ff814a6-3304-4ab8-85cb-cd0e6f879c1d"
    );
    assert!(
        out.contains(&format!("0 registered, {tables} unchanged")),
        "{out}"
    );
    let seen = state.lock().unwrap().seen.clone();
    assert!(seen[1..].iter().all(|l| l.starts_with("GET")), "{seen:?}");

    // A new silver column (a derived one, for the files loaded from now on): that table alone
    // is registered again.
    let changed = std::fs::read_to_string(d.join("p.toml")).unwrap().replacen(
        "  { name = \"user_name\", expr = \"upper(trim(user_name))\" },",
        "  { name = \"user_name\", expr = \"upper(trim(user_name))\" },\n  { name = \"initial\", expr = \"substr(trim(user_name), 1, 1)\" },",
        1,
    );
    std::fs::write(d.join("p.toml"), changed).unwrap();
    cli(&["seed", "--incremental"]);
    cli(&["run"]);
    state.lock().unwrap().seen.clear();
    let out = cli(&["catalog", "publish"]);
    let s = state.lock().unwrap();
    let writes: Vec<&str> = (s.seen.iter())
        .filter(|l| !l.starts_with("GET"))
        .map(String::as_str)
        .collect();
    assert_eq!(
        writes,
        [
            "DELETE tables/music.silver.users",
            "POST tables",
            "DELETE tables/music.gold.dim_user",
            "POST tables"
        ],
        "{out}"
    );
    let users = &s.objects["tables/music.silver.users"];
    assert!(
        users["columns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "initial"),
        "{users}"
    );
}
