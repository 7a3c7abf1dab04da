//! The Prometheus endpoint: `GET /metrics` on `metrics_listen` (127.0.0.1:9742 by default),
//! text exposition format 0.0.4, rendered from the controller's status snapshot. A deliberately
//! small HTTP/1.1 server: one request per connection, bounded request size and time.

use super::Event;
use anyhow::{Context, Result};
use std::{net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};
use tracing::{debug, warn};

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
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let events = events.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve_one(stream, events).await {
                            debug!("metrics connection: {e:#}");
                        }
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

async fn serve_one(mut stream: TcpStream, events: mpsc::Sender<Event>) -> Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    let request_line = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = stream.read(&mut buf[len..]).await?;
            if n == 0 {
                anyhow::bail!("closed before the request");
            }
            len += n;
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") || buf[..len].ends_with(b"\n\n") {
                break;
            }
            if len == buf.len() {
                anyhow::bail!("request headers too large");
            }
        }
        Ok(String::from_utf8_lossy(&buf[..len])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string())
    })
    .await
    .context("slow request")??;
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => {
            let (reply, answer) = oneshot::channel();
            events
                .send(Event::Metrics { reply })
                .await
                .map_err(|_| anyhow::anyhow!("controller stopped"))?;
            let body = answer.await.context("controller dropped the scrape")?;
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
        }
        ("GET", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "k3s-xdp: metrics at /metrics\n".to_string(),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}
