//! The `query` function: a read-only SQL query over the lake's tables, answered as JSON rows
//! (default), CSV or an Arrow IPC stream (`format=` or the `Accept` header), a page at a time
//! (`limit`, `offset`; the answer says where the next page starts), within the query bounds
//! of `[settings]` so that one query cannot take the app down.

use serde_json::{Value, json};

use super::App;
use crate::error::{Error, Result};
use crate::http::{Request, Response};

/// Rows a page holds unless `limit` asks for fewer.
const DEFAULT_ROWS: usize = 1000;
const MAX_ROWS: usize = 100_000;
/// How long a query waits for a place among the running ones before it is answered 429.
const QUERY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// The Arrow IPC stream's media type.
const ARROW: &str = "application/vnd.apache.arrow.stream";

/// How the rows are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Json,
    Csv,
    Arrow,
}

impl Shape {
    /// `format=json|csv|arrow`, else the first known type the `Accept` header names.
    fn of(request: &Request) -> std::result::Result<Self, String> {
        if let Some(format) = request.param("format") {
            return match format.to_ascii_lowercase().as_str() {
                "json" => Ok(Shape::Json),
                "csv" => Ok(Shape::Csv),
                "arrow" => Ok(Shape::Arrow),
                other => Err(format!("format {other:?}: use json, csv or arrow")),
            };
        }
        let accept = request.header("accept").unwrap_or("");
        for kind in accept
            .split(',')
            .map(|k| k.split(';').next().unwrap_or("").trim())
        {
            match kind {
                "text/csv" => return Ok(Shape::Csv),
                ARROW => return Ok(Shape::Arrow),
                "application/json" => return Ok(Shape::Json),
                _ => {}
            }
        }
        Ok(Shape::Json)
    }
}

impl App {
    pub(super) async fn query(&self, request: &Request) -> Response {
        let sql = match query_text(request) {
            Ok(sql) => sql,
            Err(message) => return Response::json(400, &json!({ "error": message })),
        };
        let number = |name: &str, default: usize| {
            request
                .param(name)
                .map(str::parse::<usize>)
                .transpose()
                .map(|n| n.unwrap_or(default))
                .map_err(|_| format!("{name} must be a number"))
        };
        let (limit, offset, shape) = match (
            number("limit", DEFAULT_ROWS),
            number("offset", 0),
            Shape::of(request),
        ) {
            (Ok(l), Ok(o), Ok(s)) => (l.min(MAX_ROWS), o, s),
            (Err(m), _, _) | (_, Err(m), _) | (_, _, Err(m)) => {
                return Response::json(400, &json!({ "error": m }));
            }
        };
        // A query waits briefly for a place, then the caller is told to come back.
        let place = tokio::time::timeout(QUERY_WAIT, self.queries.acquire()).await;
        let Ok(Ok(_place)) = place else {
            return Response::json(
                429,
                &json!({ "error": format!(
                    "{} queries are running (settings.query_concurrency); retry shortly",
                    self.pipeline.settings.query_concurrency
                ) }),
            );
        };
        let settings = &self.pipeline.settings;
        let bounds = crate::query::Bounds {
            memory: Some(settings.query_memory_mb as usize * 1_048_576),
            time: Some(std::time::Duration::from_secs(
                settings.query_timeout_seconds,
            )),
        };
        // One row past the page says whether another page follows.
        let batches =
            match crate::query::run_page(&self.lake, &sql, offset, limit + 1, bounds).await {
                Ok(batches) => batches,
                Err(e @ Error::BadArgument { .. }) => {
                    return Response::json(400, &json!({ "error": e.to_string() }));
                }
                Err(e) => return Response::json(500, &json!({ "error": e.to_string() })),
            };
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let next = (rows > limit).then_some(offset + limit);
        let page = first_rows(&batches, limit);
        let answer = match shape {
            Shape::Json => rows_json(&page, next).map(|v| Response::json(200, &v)),
            Shape::Csv => crate::query::render(&page, crate::query::Format::Csv)
                .map(|text| Response::bytes(200, "text/csv; charset=utf-8", text.into_bytes())),
            Shape::Arrow => arrow_stream(&page).map(|bytes| Response::bytes(200, ARROW, bytes)),
        };
        match answer {
            Ok(response) => match next {
                Some(n) => response.with_header("x-next-offset", n.to_string()),
                None => response,
            },
            Err(e) => Response::json(500, &json!({ "error": e.to_string() })),
        }
    }
}

/// The statement of a query request: the `q` parameter, a JSON body `{"sql": ...}` or
/// `{"q": ...}`, or the body as text.
fn query_text(request: &Request) -> std::result::Result<String, String> {
    if let Some(q) = request.param("q") {
        return Ok(q.to_string());
    }
    let body = String::from_utf8_lossy(&request.body).trim().to_string();
    if body.is_empty() {
        return Err("no query: send it as the q parameter or as the body".to_string());
    }
    if body.starts_with('{') {
        let value: Value = serde_json::from_str(&body)
            .map_err(|e| format!("the JSON body does not parse: {e}"))?;
        return value
            .get("sql")
            .or_else(|| value.get("q"))
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or_else(|| "the JSON body has no \"sql\" string".to_string());
    }
    Ok(body)
}

/// The first `limit` rows of `batches`.
fn first_rows(
    batches: &[arrow::array::RecordBatch],
    limit: usize,
) -> Vec<arrow::array::RecordBatch> {
    let mut left = limit;
    let mut out = Vec::new();
    for batch in batches {
        if left == 0 {
            break;
        }
        let take = batch.num_rows().min(left);
        out.push(batch.slice(0, take));
        left -= take;
    }
    if out.is_empty()
        && let Some(first) = batches.first()
    {
        out.push(first.slice(0, 0));
    }
    out
}

/// Rows as `{columns, rows, row_count, truncated, next_offset}`.
fn rows_json(batches: &[arrow::array::RecordBatch], next: Option<usize>) -> Result<Value> {
    let text = crate::query::render(batches, crate::query::Format::Json)?;
    let rows: Vec<Value> =
        serde_json::from_str(&text).map_err(|e| Error::Task(format!("query result: {e}")))?;
    let columns: Vec<String> = batches
        .first()
        .map(|b| {
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
        .unwrap_or_default();
    Ok(json!({
        "columns": columns,
        "row_count": rows.len(),
        "truncated": next.is_some(),
        "next_offset": next,
        "rows": rows,
    }))
}

/// Rows as an Arrow IPC stream (schema first, then the batches).
fn arrow_stream(batches: &[arrow::array::RecordBatch]) -> Result<Vec<u8>> {
    let Some(schema) = batches.first().map(|b| b.schema()) else {
        return Ok(Vec::new());
    };
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &schema)
        .map_err(|e| Error::arrow("the query result", e))?;
    for batch in batches {
        writer
            .write(batch)
            .map_err(|e| Error::arrow("the query result", e))?;
    }
    writer
        .into_inner()
        .map_err(|e| Error::arrow("the query result", e))
}
