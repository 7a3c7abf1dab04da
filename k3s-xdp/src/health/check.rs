//! Health check probes, the I/O edge of health checking: `tcp` (the connection is accepted),
//! `tls` (the TLS handshake completes: the right check for k3s, whose `/readyz` answers 401 to
//! anonymous requests), `https` (GET a path, the status is one of `expect`). A failure comes back
//! in the operator's words: "connection refused", "timeout after 1s", "HTTP 500 (expected 200)".
//!
//! Without `ca_file`, the server's certificate is not verified (k3s serves its own CA; what
//! matters is that the API server answers); with it, the chain and the backend's IP address
//! are verified. `client_cert`/`client_key` authenticate the check, `bearer_token_file` adds an
//! `Authorization: Bearer` header.

use super::state::Outcome;
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::Empty;
use hyper::{client::conn::http1, header, Request};
use hyper_util::rt::TokioIo;
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::{
    io,
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::{io::AsyncWriteExt, net::TcpStream, time::timeout};
use tokio_rustls::TlsConnector;

/// What to check and how, built once per service (certificates are read at build time).
#[derive(Clone)]
pub enum Probe {
    Tcp,
    Tls {
        tls: Arc<ClientConfig>,
    },
    Https {
        tls: Arc<ClientConfig>,
        path: String,
        expect: Vec<u16>,
        bearer_token: Option<String>,
    },
}

/// Files named by the config for TLS checks.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles<'a> {
    pub ca_file: Option<&'a Path>,
    pub client_cert: Option<&'a Path>,
    pub client_key: Option<&'a Path>,
}

impl Probe {
    /// A TLS client configuration for checks: verifying against `ca_file` if given, presenting
    /// a client certificate if given. Errors name the file and what is wrong with it.
    pub fn tls_config(files: &TlsFiles<'_>) -> Result<Arc<ClientConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match files.ca_file {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(path)
                    .with_context(|| format!("ca_file {}: cannot read", path.display()))?;
                for cert in certs {
                    let cert = cert.with_context(|| {
                        format!("ca_file {}: not a PEM certificate", path.display())
                    })?;
                    roots.add(cert).with_context(|| {
                        format!("ca_file {}: certificate rejected", path.display())
                    })?;
                }
                if roots.is_empty() {
                    bail!("ca_file {}: no certificate in it", path.display());
                }
                builder.with_root_certificates(roots)
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider))),
        };
        let config = match (files.client_cert, files.client_key) {
            (Some(cert), Some(key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                    .with_context(|| format!("client_cert {}: cannot read", cert.display()))?
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("client_cert {}: not PEM", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
                    format!("client_key {}: not a PEM private key", key.display())
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .context("client_cert and client_key do not match")?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => bail!("client_cert and client_key go together"),
        };
        Ok(Arc::new(config))
    }

    /// Reads a bearer token file (trimmed), with a clear error.
    pub fn read_token(path: &Path) -> Result<String> {
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("bearer_token_file {}: cannot read", path.display()))?;
        let token = token.trim().to_string();
        if token.is_empty() || token.contains(['\r', '\n']) {
            bail!(
                "bearer_token_file {}: expected one line with the token",
                path.display()
            );
        }
        Ok(token)
    }

    /// Runs one check against `addr` within `limit`; returns the outcome and how long it took.
    pub async fn run(&self, addr: SocketAddr, limit: Duration) -> (Outcome, Duration) {
        let started = Instant::now();
        let outcome = match timeout(limit, self.attempt(addr)).await {
            Ok(Ok(())) => Outcome::Passed,
            Ok(Err(why)) => Outcome::Failed(why),
            Err(_) => Outcome::Failed(format!("timeout after {limit:.1?}")),
        };
        (outcome, started.elapsed())
    }

    async fn attempt(&self, addr: SocketAddr) -> Result<(), String> {
        let stream = TcpStream::connect(addr).await.map_err(|e| describe(&e))?;
        let _ = stream.set_nodelay(true);
        match self {
            Probe::Tcp => Ok(()),
            Probe::Tls { tls } => {
                let mut tls = handshake(tls, addr, stream).await?;
                let _ = tls.shutdown().await;
                Ok(())
            }
            Probe::Https {
                tls,
                path,
                expect,
                bearer_token,
            } => {
                let tls = handshake(tls, addr, stream).await?;
                let status = get(tls, addr, path, bearer_token.as_deref()).await?;
                if expect.contains(&status) {
                    Ok(())
                } else {
                    Err(format!("HTTP {status} (expected {})", list(expect)))
                }
            }
        }
    }
}

/// `GET path` over an established TLS connection (HTTP/1.1, `hyper`): the response's status
/// code. The body is not read; the connection closes when the check ends.
async fn get(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    addr: SocketAddr,
    path: &str,
    bearer_token: Option<&str>,
) -> Result<u16, String> {
    let mut request = Request::get(path)
        .header(header::HOST, addr.to_string())
        .header(header::USER_AGENT, "k3s-xdp-health-check")
        .header(header::ACCEPT, "*/*")
        .header(header::CONNECTION, "close");
    if let Some(token) = bearer_token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("path {path:?}: {e}"))?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| http_error(&e))?;
    let response = sender.send_request(request);
    tokio::pin!(connection, response);
    // The connection does the I/O while the request waits for its response; it ending first
    // means the server closed (or broke) it before answering.
    let answer = tokio::select! {
        biased;
        answer = &mut response => answer,
        ended = &mut connection => match ended {
            Err(e) => return Err(http_error(&e)),
            // Closed cleanly: the request side says why.
            Ok(()) => response.await,
        },
    };
    answer
        .map(|r| r.status().as_u16())
        .map_err(|e| http_error(&e))
}

/// An HTTP client error in the operator's words.
fn http_error(e: &hyper::Error) -> String {
    if e.is_incomplete_message() {
        return "connection closed without a response".into();
    }
    if e.is_parse() {
        return format!("not an HTTP/1 response ({e})");
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<io::Error>() {
            return describe(io);
        }
        source = inner.source();
    }
    e.to_string()
}

async fn handshake(
    tls: &Arc<ClientConfig>,
    addr: SocketAddr,
    stream: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let name = ServerName::IpAddress(addr.ip().into());
    TlsConnector::from(tls.clone())
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS handshake failed: {}", describe(&e)))
}

fn list(codes: &[u16]) -> String {
    codes
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(" or ")
}

/// An I/O error in the words an operator would use.
pub fn describe(e: &io::Error) -> String {
    use io::ErrorKind::*;
    if let Some(inner) = e.get_ref() {
        // TLS errors come wrapped in io::Error.
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return tls.to_string();
        }
    }
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "connection refused".into(),
        Some(libc::EHOSTUNREACH) => "no route to host".into(),
        Some(libc::ENETUNREACH) => "network unreachable".into(),
        Some(libc::ECONNRESET) => "connection reset".into(),
        Some(libc::ETIMEDOUT) => "timed out".into(),
        _ => match e.kind() {
            UnexpectedEof => "connection closed by the server".into(),
            ConnectionReset => "connection reset".into(),
            _ => e.to_string(),
        },
    }
}

/// Accepts any server certificate (no `ca_file`) but still checks the handshake signatures, so
/// the check proves the server holds the key of the certificate it presents. (The integration
/// tests' TLS clients use it too.)
#[derive(Debug)]
pub struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl AcceptAnyCertificate {
    /// Checks signatures with `provider`'s algorithms.
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        AcceptAnyCertificate(provider)
    }
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Errors when the probe cannot even be built (for messages at startup/reload).
pub fn probe_error(service: &str, e: anyhow::Error) -> anyhow::Error {
    anyhow!("service {service}: health check: {e:#}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_like_an_operator_would_say_them() {
        assert_eq!(
            describe(&io::Error::from_raw_os_error(libc::ECONNREFUSED)),
            "connection refused"
        );
        assert_eq!(
            describe(&io::Error::from_raw_os_error(libc::EHOSTUNREACH)),
            "no route to host"
        );
        assert_eq!(list(&[200, 204]), "200 or 204");
    }

    /// Real sockets on loopback: a refused port and a listener that accepts.
    #[tokio::test]
    async fn tcp_checks_on_loopback() {
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let listener = tokio::net::TcpListener::bind(local).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (outcome, _) = Probe::Tcp.run(addr, Duration::from_secs(1)).await;
            assert_eq!(outcome, Outcome::Passed, "{addr}");
            drop(listener);
            let (outcome, _) = Probe::Tcp.run(addr, Duration::from_secs(1)).await;
            assert_eq!(
                outcome,
                Outcome::Failed("connection refused".into()),
                "{addr}"
            );
        }
    }

    /// A TLS server on loopback that reads each request head (a GET with the bearer token),
    /// answers `answer` and closes.
    async fn tls_server(answer: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        tls_server_on("127.0.0.1:0", answer).await
    }

    /// [`tls_server`] listening on `local`.
    async fn tls_server_on(
        local: &str,
        answer: &'static [u8],
    ) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        use tokio::io::AsyncReadExt;
        let key =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "::1".into()]).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![key.cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.key_pair.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind(local).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 512];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
                if head.is_empty() {
                    // A tls check: the handshake, and no request.
                    continue;
                }
                assert!(head.starts_with(b"GET /readyz HTTP/1.1\r\n"));
                let head = String::from_utf8_lossy(&head).to_lowercase();
                assert!(
                    head.contains("\r\nauthorization: bearer t0ken\r\n"),
                    "{head}"
                );
                let _ = tls.write_all(answer).await;
                let _ = tls.shutdown().await;
            }
        });
        (addr, task)
    }

    /// https checks against real TLS servers on loopback: the status code decides, and what is
    /// not an HTTP answer is said so.
    #[tokio::test]
    async fn https_checks_read_the_status_code() {
        let tls = Probe::tls_config(&TlsFiles::default()).unwrap();
        let probe = Probe::Https {
            tls,
            path: "/readyz".into(),
            expect: vec![200, 204],
            bearer_token: Some("t0ken".into()),
        };
        let limit = Duration::from_secs(5);
        for (answer, outcome) in [
            (&b"HTTP/1.1 204 No Content\r\n\r\n"[..], Outcome::Passed),
            (
                b"HTTP/1.0 401 Unauthorized\r\nContent-Length: 0\r\n\r\n",
                Outcome::Failed("HTTP 401 (expected 200 or 204)".into()),
            ),
            (
                b"",
                Outcome::Failed("connection closed without a response".into()),
            ),
        ] {
            let (addr, server) = tls_server(answer).await;
            assert_eq!(probe.run(addr, limit).await.0, outcome);
            server.abort();
        }
        let (addr, server) = tls_server(b"SSH-2.0-OpenSSH_9.2\r\n").await;
        let (outcome, _) = probe.run(addr, limit).await;
        assert!(
            matches!(&outcome, Outcome::Failed(why) if why.starts_with("not an HTTP/1 response")),
            "{outcome:?}"
        );
        server.abort();
    }

    /// tls and https checks of an IPv6 backend (on `::1`): the handshake names the server by
    /// its IPv6 address, the request's Host is `[addr]:port`.
    #[tokio::test]
    async fn tls_and_https_checks_over_ipv6() {
        let tls = Probe::tls_config(&TlsFiles::default()).unwrap();
        let limit = Duration::from_secs(5);
        let (addr, server) = tls_server_on("[::1]:0", b"HTTP/1.1 200 OK\r\n\r\n").await;
        assert!(addr.is_ipv6());
        let tls_probe = Probe::Tls { tls: tls.clone() };
        assert_eq!(tls_probe.run(addr, limit).await.0, Outcome::Passed);
        let https = Probe::Https {
            tls,
            path: "/readyz".into(),
            expect: vec![200],
            bearer_token: Some("t0ken".into()),
        };
        assert_eq!(https.run(addr, limit).await.0, Outcome::Passed);
        server.abort();
    }

    /// A listener that accepts TCP but never speaks TLS: the tls check times out.
    #[tokio::test]
    async fn a_tls_check_against_a_silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(s);
        });
        let tls = Probe::tls_config(&TlsFiles::default()).unwrap();
        let (outcome, took) = Probe::Tls { tls }
            .run(addr, Duration::from_millis(300))
            .await;
        assert_eq!(outcome, Outcome::Failed("timeout after 300.0ms".into()));
        assert!(took < Duration::from_secs(2));
        hold.abort();
    }
}
