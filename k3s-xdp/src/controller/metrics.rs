//! The Prometheus endpoint: `GET /metrics` on `metrics_listen` (127.0.0.1:9742 by default),
//! served by `hyper` from the controller's status snapshot ([`exposition`](super::exposition)
//! renders it). One request per connection (the answer says `Connection: close`), request
//! headers bounded in size and in time, so a slow or hostile client holds nothing for long.

use super::{
    exposition::{self, Format},
    Event,
};
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming, header, server::conn::http1, service::service_fn, Method, Request, Response,
    StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::{convert::Infallible, net::SocketAddr, time::Duration};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};
use tracing::{debug, warn};

/// How long a client may take to send its request headers, and how long a whole connection
/// may last.
const REQUEST_TIME: Duration = Duration::from_secs(5);
const CONNECTION_TIME: Duration = Duration::from_secs(30);

/// The largest request head read.
const MAX_HEAD: usize = 16 * 1024;

/// Connections served at once; beyond, a new one is closed at once (and counted), so slow
/// clients cannot hold more than this many tasks and sockets, each for at most
/// [`REQUEST_TIME`] before its request arrives.
pub const MAX_CONNECTIONS: usize = 32;

/// Connections closed at once because [`MAX_CONNECTIONS`] were open.
static REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    pub async fn bind(addr: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding metrics_listen {addr}"))?;
        Ok(MetricsServer { listener })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    pub async fn serve(self, events: mpsc::Sender<Event>) {
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        let n = REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        if n.is_power_of_two() {
                            warn!("metrics: {MAX_CONNECTIONS} connections open, {peer} closed at once ({n} so far)");
                        }
                        drop(stream);
                        continue;
                    };
                    let events = events.clone();
                    tokio::spawn(async move {
                        serve_connection(stream, events).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, events: mpsc::Sender<Event>) {
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIME)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        .serve_connection(
            TokioIo::new(stream),
            service_fn(move |request| answer(request, events.clone())),
        );
    match tokio::time::timeout(CONNECTION_TIME, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!("metrics connection: {e}"),
        Err(_) => debug!("metrics connection: open longer than {CONNECTION_TIME:?}, closed"),
    }
}

async fn answer(
    request: Request<Incoming>,
    events: mpsc::Sender<Event>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(v) = header::HeaderValue::from_str(content_type) {
            response.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        response
    };
    let text = "text/plain; charset=utf-8";
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, text, "only GET\n".into());
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return Ok(response);
    }
    Ok(match request.uri().path() {
        "/metrics" => {
            let format = Format::from_accept(
                request
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok()),
            );
            match snapshot(&events).await {
                Ok(mut status) => {
                    status.metrics_connections_refused =
                        REFUSED.load(std::sync::atomic::Ordering::Relaxed);
                    reply(
                        StatusCode::OK,
                        format.content_type(),
                        exposition::render(&status, format),
                    )
                }
                Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, text, format!("{e:#}\n")),
            }
        }
        "/" => reply(
            StatusCode::OK,
            text,
            "k3s-xdp: metrics at /metrics\n".into(),
        ),
        _ => reply(StatusCode::NOT_FOUND, text, "not found\n".into()),
    })
}

/// The controller's status snapshot, asked through its event queue.
async fn snapshot(events: &mpsc::Sender<Event>) -> Result<super::status::Status> {
    let (reply, answer) = oneshot::channel();
    events
        .send(Event::Metrics { reply })
        .await
        .map_err(|_| anyhow::anyhow!("controller stopped"))?;
    Ok(*answer.await.context("controller dropped the scrape")?)
}
