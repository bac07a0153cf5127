//! The HTTP seam: `/metrics`, the landing page and the health endpoints, served by hyper
//! with one task per connection, over TLS and behind basic auth when the web configuration
//! says so. Handlers only read published state; none calls AWS.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use bytes::buf::{Buf, Chain};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

use crate::config::{ListenAddress, WebSettings};
use crate::refresh::Shared;
use crate::web_config::{WatchedWebConfig, WebConfig};

/// Every response body: one or two shared buffers, written without being joined.
type Body = Full<Chain<Bytes, Bytes>>;

fn body(head: Bytes, tail: Bytes) -> Body {
    Full::new(head.chain(tail))
}

/// The content type of the Prometheus text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// In-flight requests get this long to finish once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the listener. `:port` binds every interface: IPv6 with IPv4 mapped where the host
/// has IPv6, else IPv4 alone.
pub async fn bind(address: &ListenAddress) -> Result<TcpListener, HttpError> {
    let result = match address {
        ListenAddress::AllInterfaces(port) => {
            match TcpListener::bind(SocketAddr::from(([0u16; 8], *port))).await {
                Ok(listener) => Ok(listener),
                Err(_) => TcpListener::bind(SocketAddr::from(([0u8; 4], *port))).await,
            }
        }
        ListenAddress::Host(host, port) => TcpListener::bind((host.as_str(), *port)).await,
    };
    result.map_err(|source| HttpError::Bind {
        address: match address {
            ListenAddress::AllInterfaces(port) => format!(":{port}"),
            ListenAddress::Host(host, port) => format!("{host}:{port}"),
        },
        source,
    })
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    web: WebSettings,
    web_config: WatchedWebConfig,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) {
    let web = Arc::new(web);
    let web_config = Arc::new(web_config);
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(web.header_read_timeout);
    // A permit per connection: at the cap, new connections wait in the kernel's backlog
    // instead of being accepted without limit.
    let connections = Arc::new(tokio::sync::Semaphore::new(web.max_connections));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Running out of file descriptors must not end the server; back off.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let connection = Connection {
            web: web.clone(),
            shared: shared.clone(),
            web_config: web_config.clone(),
            builder: builder.clone(),
            watcher: graceful.watcher(),
        };
        tokio::spawn(async move {
            let _permit = permit;
            connection.run(stream, peer).await;
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period; closing them");
    }
}

/// One accepted connection and what its task needs.
struct Connection {
    web: Arc<WebSettings>,
    shared: Arc<Shared>,
    web_config: Arc<WatchedWebConfig>,
    builder: http1::Builder,
    watcher: Watcher,
}

impl Connection {
    /// TLS as configured when the connection arrives; a changed certificate or client CA
    /// applies to the next connection.
    async fn run(self, stream: TcpStream, peer: SocketAddr) {
        let Some(acceptor) = self.web_config.current().tls.clone() else {
            return self.serve(stream, peer).await;
        };
        // The handshake gets the header-read timeout: a client that stalls it must not hold
        // a connection slot.
        match tokio::time::timeout(self.web.header_read_timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => self.serve(stream, peer).await,
            // At debug: scanners and misconfigured clients would fill the log otherwise.
            Ok(Err(err)) => tracing::debug!(%peer, error = %err, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }

    async fn serve<S>(self, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            web,
            shared,
            web_config,
            builder,
            watcher,
        } = self;
        let io = TokioIo::new(Deadline::new(stream, web.request_timeout));
        let service = service_fn(move |req| {
            // Per request, not per connection: a changed password applies to connections
            // that scrapers keep alive, too.
            let config = web_config.current();
            let (web, shared) = (web.clone(), shared.clone());
            async move { Ok::<_, Infallible>(respond(req, &web, &shared, &config).await) }
        });
        if let Err(err) = watcher.watch(builder.serve_connection(io, service)).await {
            tracing::debug!(%peer, error = %err, "connection ended with an error");
        }
    }
}

/// Every path, the health endpoints included, needs the credentials when basic auth is
/// configured, as in exporter-toolkit: the simplest rule, and nothing is served openly by
/// mistake.
async fn respond(
    req: Request<Incoming>,
    web: &WebSettings,
    shared: &Shared,
    config: &WebConfig,
) -> Response<Body> {
    let mut response = match &config.basic_auth {
        Some(auth) if !auth.allows(req.headers().get(header::AUTHORIZATION)).await => {
            let mut response = plain(StatusCode::UNAUTHORIZED, "Unauthorized\n");
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
            response
        }
        _ => handle(&req, web, shared),
    };
    for (name, value) in &config.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

fn handle(req: &Request<Incoming>, web: &WebSettings, shared: &Shared) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match req.uri().path() {
        path if path == web.telemetry_path => metrics(req, shared),
        "/" => landing_page(web, shared),
        "/-/healthy" => plain(StatusCode::OK, "Healthy\n"),
        // The value /metrics serves: ready means its data is there.
        "/-/ready" if shared.published().is_ready() => plain(StatusCode::OK, "Ready\n"),
        "/-/ready" => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not ready: waiting for the first successful refresh\n",
        ),
        _ => plain(StatusCode::NOT_FOUND, "Not found\n"),
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(body(Bytes::from_static(text.as_bytes()), Bytes::new()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Pre-assembled bytes: the snapshot's series, then the exporter's own metrics. Nothing
/// is formatted or compressed here.
fn metrics(req: &Request<Incoming>, shared: &Shared) -> Response<Body> {
    let published = shared.published();
    let gzip = accepts_gzip(req.headers());
    let [head, tail] = if gzip {
        published.exposition.gzip.clone()
    } else {
        published.exposition.plain.clone()
    };
    let mut response = Response::new(body(head, tail));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

/// True when the client lists `gzip` in Accept-Encoding without refusing it with `q=0`.
fn accepts_gzip(headers: &hyper::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

fn landing_page(web: &WebSettings, shared: &Shared) -> Response<Body> {
    let refresh = match shared.last_refresh() {
        None => "No refresh has finished yet.".to_string(),
        Some(status) => {
            let when = humantime::format_rfc3339_seconds(status.finished_at);
            let took = format!("{:.1}s", status.duration.as_secs_f64());
            match &status.error {
                None => format!("Last refresh: succeeded at {when} in {took}."),
                Some(error) => format!(
                    "Last refresh: <strong>failed</strong> at {when} after {took}: {}",
                    escape_html(error)
                ),
            }
        }
    };
    let data = match shared.snapshot() {
        None => "No data yet.".to_string(),
        Some(s) => format!(
            "Serving {} users and {} access keys of {} account(s).",
            s.users, s.keys, s.accounts
        ),
    };
    let path = escape_html(&web.telemetry_path);
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>IAM Key Exporter</title></head>\n<body>\n\
         <h1>IAM Key Exporter</h1>\n<p>Version {version}</p>\n\
         <p><a href=\"{path}\">Metrics</a> · <a href=\"/-/healthy\">Health</a> · <a href=\"/-/ready\">Readiness</a></p>\n\
         <p>{refresh}</p>\n<p>{data}</p>\n</body>\n</html>\n",
        version = env!("CARGO_PKG_VERSION"),
    );
    let mut response = Response::new(body(Bytes::from(html), Bytes::new()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A connection's stream under the request timeout, which runs from the first byte of a
/// request (or of its response, for a pipelined request) until the response is flushed
/// to the socket. Past it every read and write fails and hyper drops the connection, so a
/// client that reads slowly, or not at all, cannot hold it for ever. The flush marks the
/// end because hyper hands all of its buffered response to the stream before it flushes.
/// An idle keep-alive connection is not timed here: the header-read timeout covers it.
struct Deadline<S> {
    stream: S,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    /// A request is being read or answered, and `sleep` ends its time.
    armed: bool,
    /// Bytes of the response were written since the timer was armed.
    wrote: bool,
}

impl<S> Deadline<S> {
    fn new(stream: S, timeout: Duration) -> Deadline<S> {
        Deadline {
            stream,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            armed: false,
            wrote: false,
        }
    }

    fn arm(&mut self) {
        if !self.armed {
            self.armed = true;
            self.sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + self.timeout);
        }
    }

    /// An error once the time is up. Polling the timer also wakes the task when it ends,
    /// so a write blocked on a client that never reads fails then.
    fn check(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        if self.armed && self.sleep.as_mut().poll(cx).is_ready() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request timeout: the response was not written in time",
            ));
        }
        Ok(())
    }

    fn wrote(&mut self, result: &Poll<std::io::Result<usize>>) {
        if matches!(result, Poll::Ready(Ok(n)) if *n > 0) {
            self.wrote = true;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        this.check(cx)?;
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.arm();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        this.check(cx)?;
        this.arm();
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.wrote(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        this.check(cx)?;
        this.arm();
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.wrote(&result);
        result
    }

    /// Passed on: hyper writes a response as a list of shared buffers, and without
    /// vectored writes it would copy each response into one.
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        this.check(cx)?;
        let result = Pin::new(&mut this.stream).poll_flush(cx);
        if matches!(result, Poll::Ready(Ok(()))) && this.wrote {
            this.armed = false;
            this.wrote = false;
        }
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TIMEOUT: Duration = Duration::from_secs(30);

    /// A client that sends a request and then reads nothing: the response fills the pipe,
    /// and the write fails once the request timeout has passed since the request came.
    #[tokio::test(start_paused = true)]
    async fn a_response_not_taken_in_time_fails_the_connection() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = Deadline::new(server, TIMEOUT);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut request = [0; 64];
        assert!(server.read(&mut request).await.unwrap() > 0);
        let start = tokio::time::Instant::now();
        // The paused clock moves on by itself while everything waits.
        let err = server.write_all(&[b'x'; 64 * 1024]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), TIMEOUT);
    }

    /// After a response is flushed in time, the connection may stay idle past the timeout
    /// and serve the next request.
    #[tokio::test(start_paused = true)]
    async fn a_flushed_response_stops_the_clock() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = Deadline::new(server, TIMEOUT);
        let mut buf = [0; 64];
        for _ in 0..2 {
            client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            assert!(server.read(&mut buf).await.unwrap() > 0);
            server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
            server.flush().await.unwrap();
            assert!(client.read(&mut buf).await.unwrap() > 0);
            tokio::time::advance(TIMEOUT * 2).await;
        }
    }

    /// Without the flush, the same idle time is over the timeout: what the test above
    /// shows is the flush's doing.
    #[tokio::test(start_paused = true)]
    async fn an_unflushed_response_keeps_the_clock_running() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = Deadline::new(server, TIMEOUT);
        let mut buf = [0; 64];
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(server.read(&mut buf).await.unwrap() > 0);
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        tokio::time::advance(TIMEOUT * 2).await;
        let err = server.flush().await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape_html("<b>\"x\" & 'y'</b>"),
            "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;"
        );
    }

    #[test]
    fn gzip_is_used_only_when_accepted() {
        let accepts = |value: &str| {
            let mut headers = hyper::HeaderMap::new();
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(value).unwrap(),
            );
            accepts_gzip(&headers)
        };
        assert!(accepts("gzip"));
        assert!(accepts("deflate, GZIP;q=0.5"));
        assert!(accepts("identity;q=1, gzip ; q=1.0"));
        assert!(!accepts("gzip;q=0"));
        assert!(!accepts("deflate, br"));
        assert!(!accepts_gzip(&hyper::HeaderMap::new()));
    }
}
