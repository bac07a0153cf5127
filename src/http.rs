//! The HTTP seam: `/metrics`, the landing page and the health endpoints, served by hyper
//! with one task per connection. Handlers only read published state; none calls AWS.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
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
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::config::{ListenAddress, WebSettings};
use crate::refresh::Shared;

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
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) {
    let web = Arc::new(web);
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
        let (web, shared) = (web.clone(), shared.clone());
        let service = service_fn(move |req| {
            let response = handle(&req, &web, &shared);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
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
        "/-/ready" if shared.is_ready() => plain(StatusCode::OK, "Ready\n"),
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
    let exposition = shared.exposition();
    let gzip = accepts_gzip(req.headers());
    let [head, tail] = if gzip {
        exposition.gzip.clone()
    } else {
        exposition.plain.clone()
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

#[cfg(test)]
mod tests {
    use super::*;

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
