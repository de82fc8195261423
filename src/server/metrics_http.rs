//! The Prometheus endpoint (`[server] metrics_listen`): a minimal HTTP/1.1 server that
//! answers `GET /metrics` with keel's metrics and every other path with 404.
//!
//! Deliberately small and bounded, since it may face more than Prometheus: a request head of
//! at most 8 KiB (431 beyond), read within a short time limit (so silent connections cannot
//! hold the slots for long), a time limit for the whole exchange, a cap on connections served
//! at once (beyond it a connection gets 503 and is closed at once), one request per
//! connection (`Connection: close`). The body is Prometheus's text format 0.0.4,
//! or OpenMetrics 1.0 when the scraper's Accept header asks for it (Prometheus does).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use prometheus_client::registry::Registry;

use crate::provision::Provisioner;
use crate::provision::metrics_export::ProvisionCollector;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::iscsi::Service;
use crate::iscsi::metrics_export;

/// The longest request head read (request line and headers).
const MAX_HEAD: usize = 8 * 1024;
/// Time for a client to send its request head: Prometheus sends it at once.
const HEAD_TIME: Duration = Duration::from_secs(2);
/// Time for a client to send its request and take the answer.
const REQUEST_TIME: Duration = Duration::from_secs(10);
/// Connections served at once.
const MAX_CONNECTIONS: usize = 16;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_0_0_4: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The answer to a connection over the cap.
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Binds `listen` and serves the metrics of `service` on a task of its own until the
/// service shuts down. Returns the bound address (`listen` may ask for port 0).
pub async fn serve(
    listen: SocketAddr,
    service: Arc<Service>,
    provisioner: Option<Provisioner>,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen for metrics on {listen}"))?;
    let bound = listener.local_addr()?;
    info!(address = %bound, "serving metrics at /metrics");
    let mut registry = metrics_export::registry(service.clone());
    if let Some(provisioner) = provisioner {
        registry.register_collector(Box::new(ProvisionCollector::new(provisioner)));
    }
    let registry = Arc::new(registry);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = service.shutdown.cancelled() => break,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Over the cap the connection is told so (RFC 9110 §15.6.4) and closed: one
            // write that never waits (a fresh socket's buffer takes it), no task, so it costs
            // nothing the cap is there to bound, and a scraper learns why it got nothing.
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                debug!("metrics: too many connections; refusing one");
                let _ = stream.try_write(BUSY);
                continue;
            };
            let registry = Arc::clone(&registry);
            tokio::spawn(async move {
                let _slot = slot;
                if let Err(e) = answer(stream, &registry, HEAD_TIME, REQUEST_TIME).await {
                    debug!("metrics: {e}");
                }
            });
        }
    });
    Ok(bound)
}

/// Reads one request from `stream`, its head within `head_limit`, and answers it, all
/// within `time_limit`.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    registry: &Registry,
    head_limit: Duration,
    time_limit: Duration,
) -> std::io::Result<()> {
    let exchange = async {
        let head = tokio::time::timeout(head_limit, read_head(&mut stream))
            .await
            .map_err(|_| too_slow())?;
        let response = match head? {
            Some(head) => respond(&head, registry),
            None => status_only(431, "Request Header Fields Too Large"),
        };
        stream.write_all(&response).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(time_limit, exchange).await {
        Ok(result) => result,
        Err(_) => Err(too_slow()),
    }
}

fn too_slow() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "client too slow")
}

/// The request head, up to its blank line; `None` if it is longer than [`MAX_HEAD`].
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Ok(Some(head));
        }
        if head.len() >= MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "request ended before its head did",
            ));
        }
        head.extend_from_slice(&chunk[..n]);
    }
}

/// Where the head ends (RFC 9112 §2.2: a bare LF is accepted as a line end).
fn head_end(buf: &[u8]) -> Option<usize> {
    let limit = buf.len().min(MAX_HEAD);
    let window = &buf[..limit];
    window
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| window.windows(2).position(|w| w == b"\n\n"))
}

/// The response to a request head.
fn respond(head: &[u8], registry: &Registry) -> Vec<u8> {
    let Ok(head) = std::str::from_utf8(head) else {
        return status_only(400, "Bad Request");
    };
    let mut lines = head.lines();
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version)) = (
        request_line.next(),
        request_line.next(),
        request_line.next(),
    ) else {
        return status_only(400, "Bad Request");
    };
    if !version.starts_with("HTTP/1.") {
        return status_only(505, "HTTP Version Not Supported");
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return status_only(404, "Not Found");
    }
    if method != "GET" && method != "HEAD" {
        return status_only(405, "Method Not Allowed");
    }
    let openmetrics = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept")
                && value.contains("application/openmetrics-text")
        })
    });
    let Ok(body) = metrics_export::render(registry, openmetrics) else {
        return status_only(500, "Internal Server Error");
    };
    let content_type = if openmetrics { OPENMETRICS } else { TEXT_0_0_4 };
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method == "GET" {
        response.extend_from_slice(body.as_bytes());
    }
    response
}

fn status_only(code: u16, reason: &str) -> Vec<u8> {
    format!("HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> (Arc<Service>, Registry) {
        let service = Arc::new(Service::new(crate::iscsi::Settings::default()));
        let registry = metrics_export::registry(service.clone());
        (service, registry)
    }

    async fn exchange(request: &[u8]) -> String {
        let (_service, registry) = registry();
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let served =
            tokio::spawn(async move { answer(server, &registry, HEAD_TIME, REQUEST_TIME).await });
        client.write_all(request).await.unwrap();
        let mut response = Vec::new();
        client.read_to_end(&mut response).await.unwrap();
        let _ = served.await.unwrap();
        String::from_utf8(response).unwrap()
    }

    #[tokio::test]
    async fn metrics_in_either_format_and_404_elsewhere() {
        let text = exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains(TEXT_0_0_4), "{text}");
        assert!(text.contains("keel_build_info{version=\""), "{text}");
        assert!(!text.contains("# EOF"));
        let open = exchange(
            b"GET /metrics?x=1 HTTP/1.1\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\n\n",
        )
        .await;
        assert!(open.contains(OPENMETRICS), "{open}");
        assert!(open.ends_with("# EOF\n"), "{open}");
        let head = exchange(b"HEAD /metrics HTTP/1.0\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK") && head.ends_with("\r\n\r\n"));
        assert!(
            exchange(b"GET / HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 404")
        );
        assert!(
            exchange(b"POST /metrics HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 405")
        );
        assert!(exchange(b"GET\r\n\r\n").await.starts_with("HTTP/1.1 400"));
        assert!(
            exchange(b"GET /metrics SPDY/3\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 505")
        );
    }

    #[tokio::test]
    async fn a_head_longer_than_8_kib_is_refused() {
        let mut request = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while request.len() <= MAX_HEAD {
            request.extend_from_slice(
                b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        request.extend_from_slice(b"\r\n");
        assert!(exchange(&request).await.starts_with("HTTP/1.1 431"));
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_request_is_dropped() {
        let (_service, registry) = registry();
        let (mut client, server) = tokio::io::duplex(1024);
        client
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        let result = answer(server, &registry, HEAD_TIME, Duration::from_millis(50)).await;
        assert_eq!(result.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_client_silent_past_the_head_time_is_dropped_early() {
        let (_service, registry) = registry();
        let (_client, server) = tokio::io::duplex(1024);
        let started = std::time::Instant::now();
        let head_limit = Duration::from_millis(50);
        let result = answer(server, &registry, head_limit, REQUEST_TIME).await;
        assert_eq!(result.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        // Long before the whole exchange's limit.
        assert!(
            started.elapsed() < REQUEST_TIME / 4,
            "{:?}",
            started.elapsed()
        );
    }

    async fn get_metrics(at: SocketAddr) -> String {
        let mut stream = tokio::net::TcpStream::connect(at).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serve_listens_until_shutdown() {
        let (service, _) = registry();
        let bound = serve("127.0.0.1:0".parse().unwrap(), service.clone(), None)
            .await
            .unwrap();
        let response = get_metrics(bound).await;
        assert!(response.contains("keel_uptime_seconds"), "{response}");
        service.shutdown.cancel();
        // The listener closes once the loop sees the shutdown.
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(bound).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("still listening after shutdown");
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_get_503_at_once() {
        let (service, _) = registry();
        let bound = serve("127.0.0.1:0".parse().unwrap(), service.clone(), None)
            .await
            .unwrap();
        // Idle clients hold every slot (until their request time runs out).
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(tokio::net::TcpStream::connect(bound).await.unwrap());
        }
        let mut extra = tokio::net::TcpStream::connect(bound).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut answer));
        assert!(matches!(read.await, Ok(Ok(_))));
        assert_eq!(answer, BUSY);
        // A slot freed is usable again.
        drop(idle.pop());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let response = get_metrics(bound).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        service.shutdown.cancel();
    }
}
