//! The handler's HTTP server: axum on hyper's HTTP/1 connection builder, so that the parsing,
//! keep-alive and chunked bodies are hyper's, and every connection has deadlines ([`Limits`]): a
//! request head (and an idle keep-alive connection waiting for one) must arrive in time, and a
//! body in time and under a size. The functions see a whole [`Request`] and answer a
//! [`Response`]; nothing else of HTTP reaches them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// A connection's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bodies larger than this are refused with 413 (queries, alerts and the host's payloads
    /// are small: bronze files are read from the lake, never sent through the handler).
    pub max_body: usize,
    /// How long a client may take to send a request head, or keep a connection idle between
    /// requests, before it is closed.
    pub head_timeout: Duration,
    /// How long a client may take to send a body once its head arrived (408 after).
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 16 * 1024 * 1024,
            head_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
        }
    }
}

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
    /// More headers, names in lower case.
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    /// A response of any media type.
    pub fn bytes(status: u16, content_type: &'static str, body: Vec<u8>) -> Self {
        Response {
            status,
            content_type,
            body: Bytes::from(body),
            headers: Vec::new(),
        }
    }

    /// The response with one more header.
    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Response {
            status,
            content_type: "application/json; charset=utf-8",
            body: Bytes::from(value.to_string()),
            headers: Vec::new(),
        }
    }

    /// A plain-text response.
    pub fn text(status: u16, text: impl Into<String>) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::from(text.into()),
            headers: Vec::new(),
        }
    }

    fn into_axum(self) -> axum::response::Response {
        let status = axum::http::StatusCode::from_u16(self.status)
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = axum::response::Response::new(Body::from(self.body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static(self.content_type),
        );
        for (name, value) in self.headers {
            if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

/// What answers each request.
pub type Handler =
    Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// The request as the functions see it, its body read whole within the limits; an error is
/// the response to send instead.
async fn read(request: axum::extract::Request, limits: Limits) -> Result<Request, Response> {
    let (parts, body) = request.into_parts();
    let collected = tokio::time::timeout(
        limits.body_timeout,
        Limited::new(body, limits.max_body).collect(),
    )
    .await
    .map_err(|_| {
        Response::text(
            408,
            format!("the body did not arrive within {:?}", limits.body_timeout),
        )
    })?;
    let body = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Response::text(
                413,
                format!("the body is over {} bytes", limits.max_body),
            ));
        }
        Err(e) => {
            return Err(Response::text(
                400,
                format!("the body could not be read: {e}"),
            ));
        }
    };
    let query = parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    Ok(Request {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query,
        headers,
        body,
    })
}

/// Every path goes to `handler`: the functions route by name themselves.
pub fn router(handler: Handler, limits: Limits) -> axum::Router {
    axum::Router::new().fallback(move |request: axum::extract::Request| {
        let handler = handler.clone();
        async move {
            match read(request, limits).await {
                Ok(request) => handler(request).await.into_axum(),
                Err(refused) => refused.into_axum(),
            }
        }
    })
}

/// Serves connections until `shutdown` completes; requests in flight finish first.
pub async fn serve(
    listener: TcpListener,
    handler: Handler,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let router = router(handler, limits);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let service = TowerToHyperService::new(router.clone());
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            debug!(error = %e, "A connection ended with an error.");
                        }
                    });
                }
                Err(e) => warn!(error = %e, "Accepting a connection failed."),
            },
        }
    }
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const LIMITS: Limits = Limits {
        max_body: 1024 * 1024,
        head_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(500),
    };

    async fn server() -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
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
        tokio::spawn(serve(listener, handler, LIMITS, async {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    async fn roundtrip(raw: &[u8]) -> String {
        let (addr, _stop) = server().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
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

    #[tokio::test]
    async fn crafted_and_oversized_requests_are_refused_and_the_server_keeps_serving() {
        // A chunk size that overflows a usize: refused, not a panic.
        let out = roundtrip(
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        )
        .await;
        assert!(!out.contains("200 OK"), "{out}");
        // Chunks adding up past the limit.
        let big = format!(
            "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            LIMITS.max_body + 1
        );
        let (addr, _stop) = server().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(big.as_bytes()).await.unwrap();
        stream
            .write_all(&vec![b'x'; LIMITS.max_body + 1])
            .await
            .ok();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
        // The same server still answers.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /ok HTTP/1.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        assert!(out.ends_with("GET /ok q=[] body="), "{out}");
    }

    #[tokio::test]
    async fn http_1_0_closes_after_the_answer_unless_asked_to_keep_alive() {
        let (addr, _stop) = server().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /a HTTP/1.0\r\n\r\n").await.unwrap();
        let mut out = String::new();
        // read_to_string ends only because the server closes the connection.
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut out))
            .await
            .expect("an HTTP/1.0 connection is closed after its answer")
            .unwrap();
        assert!(out.ends_with("GET /a q=[] body="), "{out}");
    }

    #[tokio::test]
    async fn slow_heads_and_bodies_and_idle_connections_are_cut_off() {
        let (addr, _stop) = server().await;
        let wait = Duration::from_secs(5);
        // A head that never ends: the connection is closed with no answer.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /slow HTTP/1.1\r\nHost")
            .await
            .unwrap();
        let mut out = Vec::new();
        let read = tokio::time::timeout(wait, stream.read_to_end(&mut out)).await;
        assert!(
            read.is_ok(),
            "a half-sent head kept its connection for {wait:?}"
        );
        assert!(!String::from_utf8_lossy(&out).contains("200 OK"));
        // A body that never arrives: 408.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST /slow HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(wait, stream.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 408"), "{out}");
        // An idle keep-alive connection after an answer is closed.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let read = tokio::time::timeout(wait, stream.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "an idle connection stayed open for {wait:?}");
        assert!(String::from_utf8_lossy(&out).ends_with("GET /a q=[] body="));
    }
}
