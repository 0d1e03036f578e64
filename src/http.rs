//! A small HTTP/1.1 server on tokio: what the Functions host (and curl) need from a custom
//! handler, and nothing more. Requests are parsed with `httparse` (already in the tree through
//! hyper); building on hyper's server feature instead would recompile the whole DataFusion
//! and delta-rs stack for one feature flag.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

/// Requests larger than this are refused (queries and payloads are small; blobs are read
/// from the lake, never sent through the handler).
const MAX_BODY: usize = 16 * 1024 * 1024;
const MAX_HEAD: usize = 64 * 1024;

/// One request.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// Decoded query parameters.
    pub query: Vec<(String, String)>,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body, whole.
    pub body: Bytes,
}

impl Request {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of query parameter `name`, decoded.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: &'static str,
    /// The body.
    pub body: Bytes,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Response {
            status,
            content_type: "application/json; charset=utf-8",
            body: Bytes::from(value.to_string()),
        }
    }

    /// A plain-text response.
    pub fn text(status: u16, text: impl Into<String>) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::from(text.into()),
        }
    }
}

/// What answers each request.
pub type Handler =
    Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// Serves connections until `shutdown` completes; requests in flight finish first.
pub async fn serve(listener: TcpListener, handler: Handler, shutdown: impl Future<Output = ()>) {
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let handler = handler.clone();
                    while tasks.try_join_next().is_some() {}
                    tasks.spawn(async move {
                        if let Err(e) = connection(stream, handler).await {
                            debug!(error = %e, "A connection ended with an error.");
                        }
                    });
                }
                Err(e) => warn!(error = %e, "Accepting a connection failed."),
            },
        }
    }
    while tasks.join_next().await.is_some() {}
}

async fn connection(mut stream: TcpStream, handler: Handler) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        let Some((request, keep_alive)) = read_request(&mut stream, &mut buf).await? else {
            return Ok(());
        };
        let response = match request {
            Ok(r) => handler(r).await,
            Err(message) => Response::text(400, message),
        };
        write_response(&mut stream, &response, keep_alive).await?;
        if !keep_alive {
            return Ok(());
        }
    }
}

/// Reads one request; `None` when the peer closed the connection between requests.
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(Result<Request, String>, bool)>> {
    let (head_len, method, target, headers) = loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut slots);
        match parsed.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                break (
                    n,
                    parsed.method.unwrap_or("GET").to_string(),
                    parsed.path.unwrap_or("/").to_string(),
                    headers,
                );
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {
                let mut chunk = [0u8; 8192];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(None);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Ok(httparse::Status::Partial) => {
                return Ok(Some((Err("request head too large".to_string()), false)));
            }
            Err(e) => return Ok(Some((Err(format!("malformed HTTP request: {e}")), false))),
        }
    };
    buf.drain(..head_len);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let keep_alive = !header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let body = if chunked {
        match read_chunked(stream, buf).await? {
            Ok(b) => b,
            Err(message) => return Ok(Some((Err(message), false))),
        }
    } else {
        let length: usize = match header("content-length").map(str::parse).transpose() {
            Ok(l) => l.unwrap_or(0),
            Err(_) => return Ok(Some((Err("bad Content-Length".to_string()), false))),
        };
        if length > MAX_BODY {
            return Ok(Some((Err(format!("body over {MAX_BODY} bytes")), false)));
        }
        fill(stream, buf, length).await?;
        buf.drain(..length).collect()
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (
            p.to_string(),
            form_urlencoded::parse(q.as_bytes()).into_owned().collect(),
        ),
        None => (target, Vec::new()),
    };
    Ok(Some((
        Ok(Request {
            method,
            path,
            query,
            headers,
            body: Bytes::from(body),
        }),
        keep_alive,
    )))
}

/// Reads until `buf` holds at least `n` bytes.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> std::io::Result<()> {
    let mut chunk = [0u8; 65536];
    while buf.len() < n {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the body ended early",
            ));
        }
        buf.extend_from_slice(&chunk[..read]);
    }
    Ok(())
}

async fn read_chunked(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Result<Vec<u8>, String>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            let len = buf.len();
            fill(stream, buf, len + 1).await?;
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            return Ok(Err(format!("bad chunk size {size_text:?}")));
        };
        buf.drain(..line_end + 2);
        if body.len() + size > MAX_BODY {
            return Ok(Err(format!("body over {MAX_BODY} bytes")));
        }
        fill(stream, buf, size + 2).await?;
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
        if size == 0 {
            return Ok(Ok(body));
        }
    }
}

async fn write_response(
    stream: &mut TcpStream,
    response: &Response,
    keep_alive: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&response.body).await?;
    stream.flush().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn roundtrip(raw: &[u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler: Handler = Arc::new(|r: Request| {
            Box::pin(async move {
                Response::text(
                    200,
                    format!(
                        "{} {} q={:?} body={}",
                        r.method,
                        r.path,
                        r.query,
                        String::from_utf8_lossy(&r.body)
                    ),
                )
            })
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, handler, async {
            let _ = stopped.await;
        }));
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(raw).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        let _ = stop.send(());
        server.await.unwrap();
        out
    }

    #[tokio::test]
    async fn bodies_by_length_and_by_chunks_and_query_strings_arrive_whole() {
        let out = roundtrip(
            b"POST /api/query?q=SELECT%201&limit=5 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(
            out.ends_with(r#"POST /api/query q=[("q", "SELECT 1"), ("limit", "5")] body=hello"#),
            "{out}"
        );
        let out = roundtrip(
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .await;
        assert!(out.ends_with("body=abcde"), "{out}");
        let out = roundtrip(b"NOT HTTP\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    }
}
