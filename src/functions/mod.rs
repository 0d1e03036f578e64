//! The Function App: `tunelake serve` is an Azure Functions custom handler. The host POSTs
//! `/<function>` with `{Data, Metadata}` for the timer (`ingest`, `catchup`, `maintain`) and
//! queue (`silver`, `gold`) functions, and forwards the HTTP functions (`alert`, `query`, `refresh`) as they
//! arrive, at `/api/<function>`. Every stage answers `{Outputs, Logs, ReturnValue}`; a failed stage
//! answers 500 so the host retries and, for the queue, poison-queues.

pub mod glibc;
pub mod package;
mod payload;
mod query;
mod silver;

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use tracing::{error, info, warn};

use crate::alert::{self, Alert, Graph};
use crate::config::Pipeline;
use crate::error::{Error, Result};
use crate::http::{Handler, Request, Response};
use crate::lake::Lake;
use crate::runs;
use crate::stages::new_run_id;
use crate::stages::silver::GoldWorkItem;

/// The functions, as `functions/<name>/function.json` declares them.
pub const FUNCTIONS: [&str; 8] = [
    "ingest", "silver", "catchup", "gold", "alert", "query", "refresh", "maintain",
];

/// What the handler works with: the pipeline, the lake, the source, the mail channel.
pub struct App {
    /// Queries running now: at most `settings.query_concurrency` (see [`App::new`]).
    queries: tokio::sync::Semaphore,
    pub pipeline: Pipeline,
    /// Where the pipeline came from (its file, or "built in"), as the readiness answer says.
    pub pipeline_origin: String,
    pub lake: Lake,
    pub source_url: String,
    pub graph: Option<Graph>,
}

impl App {
    pub fn new(
        pipeline: Pipeline,
        pipeline_origin: String,
        lake: Lake,
        source_url: String,
        graph: Option<Graph>,
    ) -> Self {
        App {
            queries: tokio::sync::Semaphore::new(pipeline.settings.query_concurrency),
            pipeline,
            pipeline_origin,
            lake,
            source_url,
            graph,
        }
    }

    /// The request handler for [`crate::http::serve`].
    pub fn handler(self: Arc<Self>) -> Handler {
        Arc::new(move |request: Request| {
            let app = self.clone();
            Box::pin(async move { app.route(request).await })
        })
    }

    async fn route(&self, request: Request) -> Response {
        let path = request.path.trim_end_matches('/').to_string();
        let start = Instant::now();
        let response = match (request.method.as_str(), path.as_str()) {
            (_, "") => Response::text(
                200,
                format!(
                    "tunelake ready: {}; pipeline {}",
                    FUNCTIONS.join(", "),
                    self.pipeline_origin
                ),
            ),
            ("POST", "/ingest") => self.invocation(&request, Self::ingest).await,
            ("POST", "/silver") => self.invocation(&request, Self::silver).await,
            ("POST", "/catchup") => self.invocation(&request, Self::catchup).await,
            ("POST", "/gold") => self.invocation(&request, Self::gold).await,
            ("POST", "/maintain") => self.invocation(&request, Self::maintain).await,
            (_, "/api/alert") => self.alert(request.body.as_ref()).await,
            (_, "/api/query") => self.query(&request).await,
            ("POST", "/api/refresh") => self.refresh(&request).await,
            // The HTTP functions as a host without request forwarding sends them.
            ("POST", "/alert" | "/query" | "/refresh") => {
                self.http_invocation(&request, &path[1..]).await
            }
            (method, _) => Response::json(
                404,
                &json!({
                    "error": format!("no function at {method} {}", request.path),
                    "functions": FUNCTIONS,
                }),
            ),
        };
        let seconds = start.elapsed().as_secs_f64();
        // Trigger invocations log their own failures (see `invocation`).
        if response.status >= 500 && request.path.starts_with("/api/") {
            error!(
                method = %request.method,
                path = %request.path,
                status = response.status,
                seconds,
                answer = %String::from_utf8_lossy(&response.body),
                "Answered with a failure."
            );
        } else {
            info!(method = %request.method, path = %request.path, status = response.status, seconds, "Answered.");
        }
        response
    }

    /// Runs a trigger function on a `{Data, Metadata}` payload and wraps its answer.
    async fn invocation<'a, F, Fut>(&'a self, request: &'a Request, function: F) -> Response
    where
        F: FnOnce(&'a Self, payload::Invocation) -> Fut,
        Fut: std::future::Future<Output = Outcome>,
    {
        let function_name = request.path.trim_matches('/');
        let invocation_id = request
            .header("x-azure-functions-invocationid")
            .unwrap_or("-");
        let invocation = match payload::Invocation::parse(&request.body) {
            Ok(i) => i,
            Err(message) => {
                error!(function = function_name, invocation_id, error = %message, "The invocation payload was refused.");
                return Response::json(400, &json!({ "error": message }));
            }
        };
        let outcome = function(self, invocation).await;
        let status = match &outcome.error {
            None => 200,
            Some(_) => outcome.status.unwrap_or(500),
        };
        let mut logs = outcome.logs;
        if let Some(e) = &outcome.error {
            // The host ignores `Logs` of a failed answer; stderr is what reaches
            // Application Insights.
            error!(function = function_name, invocation_id, status, error = %e, "The invocation failed.");
            logs.push(format!("error: {e}"));
        }
        Response::json(
            status,
            &json!({ "Outputs": outcome.outputs, "Logs": logs, "ReturnValue": Value::Null }),
        )
    }

    async fn ingest(&self, _: payload::Invocation) -> Outcome {
        let tables = self.pipeline.tables.clone();
        match runs::ingest(
            &crate::stages::new_run_id(),
            &self.source_url,
            &self.lake,
            &self.pipeline,
            &tables,
            None,
        )
        .await
        {
            Ok(report) => {
                let mut logs = Vec::new();
                for t in &report.tables {
                    logs.push(format!(
                        "ingest {} {}: {} rows, {} files",
                        t.table,
                        t.status,
                        t.rows,
                        t.files.len()
                    ));
                    logs.extend(t.files.iter().map(|f| format!("wrote {f}")));
                }
                Outcome::done(logs, json!({}))
                    .failed_if(report.failed(), "a table failed to ingest")
            }
            Err(e) => Outcome::error(e.to_string()),
        }
    }

    async fn gold(&self, invocation: payload::Invocation) -> Outcome {
        let item = match invocation.queue_item::<GoldWorkItem>("work") {
            Ok(item) => item,
            Err(message) => return Outcome::rejected(message),
        };
        if !self
            .pipeline
            .tables
            .iter()
            .any(|t| t.silver_name() == item.table)
        {
            return Outcome::rejected(format!(
                "work item names silver table {:?}, which is not in the pipeline",
                item.table
            ));
        }
        match crate::stages::gold::covers(&self.lake, &self.pipeline, &item.table, item.version)
            .await
        {
            Ok(true) => {
                let note = format!(
                    "gold already holds {} at version {}: nothing to build",
                    item.table, item.version
                );
                return Outcome::done(vec![note], json!({}));
            }
            Ok(false) => {}
            Err(e) => warn!(error = %e, "Could not tell whether gold holds the item; building."),
        }
        // Gold consumes every silver change since its last commit, so one item brings
        // every table up to date and later items for the same commits find nothing to do.
        let tables = self.pipeline.tables.clone();
        match runs::gold(
            &crate::stages::new_run_id(),
            &self.lake,
            &self.pipeline,
            &tables,
        )
        .await
        {
            Ok(report) => {
                let mut logs: Vec<String> = report
                    .tables
                    .iter()
                    .map(|t| {
                        format!(
                            "gold {} {}: {} in, {} inserted, {} updated",
                            t.table, t.status, t.rows_in, t.inserted, t.updated
                        )
                    })
                    .collect();
                // With a [catalog], what gold wrote is registered right away; a catalog that
                // cannot be reached does not fail the build (the next one publishes again).
                if self.pipeline.catalog.is_some() {
                    let published = match crate::catalog::token_source() {
                        Ok(tokens) => {
                            crate::catalog::publish(&self.lake, &self.pipeline, &tokens).await
                        }
                        Err(e) => Err(e),
                    };
                    match published {
                        Ok(p) => logs.push(format!(
                            "catalog: {} registered, {} unchanged",
                            p.registered.len(),
                            p.unchanged.len()
                        )),
                        Err(e) => {
                            warn!(error = %e, "The tables could not be published to Unity Catalog.");
                            logs.push(format!("catalog: not published: {e}"));
                        }
                    }
                }
                Outcome::done(logs, json!({})).failed_if(report.failed(), "a gold table failed")
            }
            Err(e) => Outcome::error(e.to_string()),
        }
    }

    /// The maintenance timer: every table compacted, vacuumed and its log cleaned, for lakes
    /// whose runs leave that off (`[maintenance]`), or to catch up after a pause.
    async fn maintain(&self, _: payload::Invocation) -> Outcome {
        let paths = runs::written_tables(&self.pipeline, &self.pipeline.tables);
        let wanted = paths.len();
        let run_id = crate::stages::new_run_id();
        let done = runs::maintain(
            &self.lake,
            &self.pipeline,
            paths,
            &run_id,
            crate::lake::maintain::Due::Forced,
        )
        .await;
        runs::clean_sources(&self.lake, &self.pipeline, &self.pipeline.tables).await;
        let logs = done
            .iter()
            .map(|m| {
                format!(
                    "{}: {} files, compacted {:?}, {} vacuumed, {} log entries",
                    m.table, m.files, m.compacted, m.vacuumed, m.log_entries_removed
                )
            })
            .collect();
        Outcome::done(logs, json!({})).failed_if(
            done.len() < wanted,
            "a table could not be maintained (see the logs)",
        )
    }

    /// The HTTP functions when the host sends them as `{Data: {req: ...}}`.
    async fn http_invocation(&self, request: &Request, function: &str) -> Response {
        let invocation = match payload::Invocation::parse(&request.body) {
            Ok(i) => i,
            Err(message) => return Response::json(400, &json!({ "error": message })),
        };
        let inner = invocation.http_request();
        let answer = match function {
            "alert" => self.alert(inner.body.as_ref()).await,
            "refresh" => self.refresh(&inner).await,
            _ => self.query(&inner).await,
        };
        if answer.status >= 500 {
            error!(function, status = answer.status, answer = %String::from_utf8_lossy(&answer.body), "Answered with a failure.");
        }
        let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        Response::json(
            200,
            &json!({
                "Outputs": { "res": {
                    "statusCode": answer.status.to_string(),
                    "body": body.to_string(),
                    "headers": { "Content-Type": "application/json" },
                }},
                "Logs": [],
                "ReturnValue": Value::Null,
            }),
        )
    }

    async fn alert(&self, body: &[u8]) -> Response {
        let alert: Alert = match serde_json::from_slice(body) {
            Ok(a) => a,
            Err(e) => {
                return Response::json(
                    400,
                    &json!({ "error": format!("the alert body is not an alert: {e} \
                        (expected {{\"run_id\", \"stage\", \"failures\": [{{\"table\", \"error\"}}]}})") }),
                );
            }
        };
        match alert::send(&self.lake, self.graph.as_ref(), &alert).await {
            Ok(alert::Delivered::Mail) => Response::json(202, &json!({ "delivered": "mail" })),
            Ok(alert::Delivered::Outbox(path, reason)) => Response::json(
                202,
                &json!({ "delivered": "outbox", "path": path, "mail_error": reason }),
            ),
            Err(e) => Response::json(500, &json!({ "error": e.to_string() })),
        }
    }

    /// A full refresh of one table (`table` parameter, or `{"table"}` in the body): without
    /// `confirm=yes` (or `"confirm": true`) it answers what would be discarded and changes
    /// nothing. The function's auth level is `admin`: only the host's master key may call it.
    async fn refresh(&self, request: &Request) -> Response {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let table = request
            .param("table")
            .map(String::from)
            .or_else(|| body.get("table").and_then(Value::as_str).map(String::from));
        let confirmed = request.param("confirm") == Some("yes")
            || body.get("confirm").and_then(Value::as_bool) == Some(true);
        let Some(table) = table else {
            return Response::json(400, &json!({ "error": "no table: send ?table=<name>" }));
        };
        let spec = match self.pipeline.select(std::slice::from_ref(&table)) {
            Ok(mut specs) => specs.remove(0),
            Err(e) => return Response::json(400, &json!({ "error": e.to_string() })),
        };
        use crate::stages::refresh;
        let plan = match refresh::plan(&self.lake, &self.pipeline, &spec).await {
            Ok(plan) => plan,
            Err(e) => return Response::json(500, &json!({ "error": e.to_string() })),
        };
        if !confirmed {
            return Response::json(
                200,
                &json!({ "refreshed": false, "would_discard": plan,
                         "hint": "nothing was changed; send confirm=yes to refresh" }),
            );
        }
        let run_id = new_run_id();
        let outcome = async {
            let tables = refresh::reset(&self.lake, &self.pipeline, &spec, &run_id).await?;
            runs::flow(
                &run_id,
                &self.source_url,
                &self.lake,
                &self.pipeline,
                &tables,
            )
            .await
        }
        .await;
        match outcome {
            Ok(flow) => {
                let failed = flow.ingest.failed() || flow.silver.failed() || flow.gold.failed();
                Response::json(
                    if failed { 500 } else { 200 },
                    &json!({ "refreshed": true, "run_id": run_id, "discarded": plan,
                             "failed": failed, "ingest": flow.ingest, "gold": flow.gold }),
                )
            }
            Err(e) => Response::json(500, &json!({ "error": e.to_string(), "run_id": run_id })),
        }
    }
}

/// What a trigger function did.
struct Outcome {
    logs: Vec<String>,
    outputs: Value,
    error: Option<String>,
    /// The answer's status when it failed (default 500).
    status: Option<u16>,
}

impl Outcome {
    fn done(logs: Vec<String>, outputs: Value) -> Self {
        Outcome {
            logs,
            outputs,
            error: None,
            status: None,
        }
    }

    fn error(message: String) -> Self {
        Outcome {
            logs: Vec::new(),
            outputs: json!({}),
            error: Some(message),
            status: None,
        }
    }

    /// A payload the function cannot work with: 400, which the host also retries and then
    /// poison-queues, with nothing written.
    fn rejected(message: String) -> Self {
        Outcome {
            status: Some(400),
            ..Outcome::error(message)
        }
    }

    fn failed_if(mut self, failed: bool, message: &str) -> Self {
        if failed {
            self.error = Some(message.to_string());
        }
        self
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "SIGTERM cannot be watched; only Ctrl-C stops the server.");
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Serves the functions on `127.0.0.1:port` until SIGTERM or Ctrl-C.
pub async fn serve(app: App, port: u16) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| Error::io(format!("127.0.0.1:{port}"), e))?;
    info!(port, "tunelake serve is listening.");
    let shutdown = async {
        shutdown_signal().await;
        info!("Stopping: finishing the requests in flight.");
    };
    crate::http::serve(
        listener,
        Arc::new(app).handler(),
        crate::http::Limits::default(),
        shutdown,
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    fn router(dir: &std::path::Path, settings: &str) -> axum::Router {
        let text = crate::config::DEFAULT_PIPELINE.replace("[settings]", settings);
        let pipeline = Pipeline::parse(&text, "pipeline.toml").unwrap();
        let lake = Lake::open(dir.join("lake").to_str().unwrap()).unwrap();
        let app = App::new(pipeline, "test".into(), lake, "sqlite:none.db".into(), None);
        crate::http::router(Arc::new(app).handler(), crate::http::Limits::default())
    }

    async fn call(router: &axum::Router, method: &str, uri: &str, body: &str) -> (u16, String) {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn the_router_answers_readiness_unknown_functions_and_bad_payloads() {
        let dir = tempfile::tempdir().unwrap();
        let router = router(dir.path(), "[settings]");
        let (status, body) = call(&router, "GET", "/", "").await;
        assert_eq!(status, 200);
        assert!(
            body.contains("catchup") && body.contains("pipeline test"),
            "{body}"
        );
        let (status, body) = call(&router, "POST", "/platinum", "{}").await;
        assert_eq!(status, 404, "{body}");
        let (status, body) = call(&router, "POST", "/gold", "{not json").await;
        assert_eq!(status, 400, "{body}");
        let created = r#"{"Data":{"event":{"eventType":"Microsoft.Storage.BlobCreated","subject":"/blobServices/default/containers/bronze/blobs/DimUser/x.parquet","data":{"api":"CreateFile"}}},"Metadata":{}}"#;
        let (status, body) = call(&router, "POST", "/silver", created).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("not a complete new blob"), "{body}");
        let (status, body) = call(&router, "GET", "/api/query?q=SELECT%201&limit=x", "").await;
        assert_eq!(status, 400, "{body}");
    }

    #[tokio::test]
    async fn a_runaway_query_is_stopped_while_other_requests_are_served() {
        let dir = tempfile::tempdir().unwrap();
        let router = router(
            dir.path(),
            "[settings]\nquery_timeout_seconds = 1\nquery_concurrency = 1",
        );
        let runaway = tokio::spawn({
            let router = router.clone();
            async move {
                let sql = "SELECT%20count(*)%20AS%20n%20FROM%20range(1000000000000)";
                call(&router, "GET", &format!("/api/query?q={sql}"), "").await
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        // Served while the runaway runs.
        let started = Instant::now();
        let (status, _) = call(&router, "GET", "/", "").await;
        assert_eq!(status, 200);
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
        // A second query waits for the one place, then runs.
        let (status, body) = call(&router, "GET", "/api/query?q=SELECT%2042%20AS%20x", "").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("42"), "{body}");
        let (status, body) = runaway.await.unwrap();
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("settings.query_timeout_seconds"), "{body}");
    }

    async fn call_with(
        router: &axum::Router,
        uri: &str,
        accept: &str,
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let request = axum::http::Request::builder()
            .method("GET")
            .uri(uri)
            .header("accept", accept)
            .body(Body::empty())
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let headers = (response.headers().iter())
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, headers, bytes.to_vec())
    }

    #[tokio::test]
    async fn query_answers_come_as_json_csv_or_arrow_a_page_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let router = router(dir.path(), "[settings]");
        let q = "/api/query?q=SELECT%20value%20FROM%20range(5)%20ORDER%20BY%20value";
        let header = |h: &[(String, String)], name: &str| {
            h.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        };
        // JSON, first page of 2: the answer says where the next one starts.
        let (status, h, body) = call_with(&router, &format!("{q}&limit=2"), "").await;
        assert_eq!(status, 200);
        let page: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(page["rows"], json!([{ "value": 0 }, { "value": 1 }]));
        assert_eq!(
            (page["truncated"].clone(), page["next_offset"].clone()),
            (json!(true), json!(2))
        );
        assert_eq!(header(&h, "x-next-offset").as_deref(), Some("2"));
        // The last page: no next.
        let (_, h, body) = call_with(&router, &format!("{q}&limit=2&offset=4"), "").await;
        let page: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(page["rows"], json!([{ "value": 4 }]));
        assert_eq!(page["next_offset"], Value::Null);
        assert_eq!(header(&h, "x-next-offset"), None);
        // CSV by parameter.
        let (status, h, body) =
            call_with(&router, &format!("{q}&format=csv&limit=3&offset=1"), "").await;
        assert_eq!(status, 200);
        assert_eq!(String::from_utf8(body).unwrap(), "value\n1\n2\n3\n");
        assert!(header(&h, "content-type").unwrap().starts_with("text/csv"));
        // Arrow IPC by Accept header, read back with Arrow's reader.
        let (status, h, body) = call_with(&router, q, "application/vnd.apache.arrow.stream").await;
        assert_eq!(status, 200);
        assert_eq!(
            header(&h, "content-type").as_deref(),
            Some("application/vnd.apache.arrow.stream")
        );
        let reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None).unwrap();
        let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 5);
        let (status, _, _) = call_with(&router, &format!("{q}&format=xml"), "").await;
        assert_eq!(status, 400);
    }
}
