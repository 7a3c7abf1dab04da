//! The control socket (`/run/k3s-xdp/control.sock` by default): one JSON request per line, one
//! JSON response per line. Root only: the directory is 0700, the socket 0600, and the peer's
//! uid is checked (SO_PEERCRED) on every connection. `k3s-xdp status`, `backend` and `reload`
//! are its clients.

use super::{
    ask,
    status::{Request, Response},
    Event,
};
use anyhow::{bail, Context, Result};
use std::{
    future::Future,
    os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::mpsc,
};
use tracing::{debug, warn};

/// The most bytes read from one connection (its requests together).
pub const MAX_REQUEST: usize = 64 * 1024;

/// The listening socket; removes its file on drop.
pub struct ControlSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ControlSocket {
    /// Binds `path` (creating its directory 0700 if missing), refusing to take over a socket
    /// another k3s-xdp still serves.
    pub fn bind(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                bail!(
                    "{} exists and is not a socket; remove it or set control_socket",
                    path.display()
                );
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "another k3s-xdp answers on {}: stop it first (or set another control_socket)",
                    path.display()
                );
            }
            // A stale socket from a process that died.
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("binding the control socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
        Ok(ControlSocket {
            path: path.to_path_buf(),
            listener,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections forever (until the task is dropped).
    pub async fn serve(self, events: mpsc::Sender<Event>) {
        loop {
            let (stream, _) = match self.listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    warn!("control socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let events = events.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_one(stream, events).await {
                    debug!("control connection: {e:#}");
                }
            });
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve_one(stream: UnixStream, events: mpsc::Sender<Event>) -> Result<()> {
    let cred = stream
        .peer_cred()
        .context("reading the peer's credentials")?;
    let (read, write) = stream.into_split();
    serve_requests(read, write, cred.uid(), |request| answer(&events, request)).await
}

async fn answer(events: &mpsc::Sender<Event>, request: Request) -> Response {
    ask(events, request)
        .await
        .unwrap_or_else(|e| Response::Error {
            message: format!("{e:#}"),
        })
}

/// The protocol of one connection, whatever carries it (the socket; the fuzzer's bytes): at
/// most [`MAX_REQUEST`] bytes read in all, one JSON request per line, each answered by one
/// line from `answer` (or an error for a line that is not a request); a peer whose `uid` is
/// not root gets one refusal and the connection ends.
pub async fn serve_requests<R, W, F, Fut>(
    read: R,
    mut write: W,
    uid: u32,
    mut answer: F,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    F: FnMut(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let mut lines = BufReader::new(read.take(MAX_REQUEST as u64)).lines();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("idle control connection")??
    {
        // The request is read before it is refused, so the client gets the answer, not EPIPE.
        if uid != 0 {
            let r = Response::Error {
                message: format!(
                    "permission denied: the control socket is for root (you are uid {uid})"
                ),
            };
            write
                .write_all(format!("{}\n", serde_json::to_string(&r)?).as_bytes())
                .await?;
            return Ok(());
        }
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => answer(request).await,
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        };
        write
            .write_all(format!("{}\n", serde_json::to_string(&response)?).as_bytes())
            .await?;
    }
    Ok(())
}

use tokio::io::AsyncReadExt as _;

/// Sends one request to the daemon at `path` and returns its response (the CLI's side).
pub async fn request(path: &Path, request: &Request) -> Result<Response> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                anyhow::anyhow!(
                    "no k3s-xdp answers on {} ({e}): is `k3s-xdp run` running? (see --socket)",
                    path.display()
                )
            }
            std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
                "permission denied on {}: the control socket is for root",
                path.display()
            ),
            _ => anyhow::anyhow!("connecting to {}: {e}", path.display()),
        })?;
    let (read, mut write) = stream.into_split();
    write
        .write_all(format!("{}\n", serde_json::to_string(request)?).as_bytes())
        .await?;
    let mut lines = BufReader::new(read).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("the daemon did not answer within 10 s")??
        .context("the daemon closed the connection without answering")?;
    serde_json::from_str(&line).with_context(|| format!("bad response from the daemon: {line}"))
}
