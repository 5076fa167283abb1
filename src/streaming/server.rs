//! The HTTP/1.1 server of streaming URLs: one-time tokens, protocol
//! negotiation and the upgrade to SPDY/3.1 or WebSocket, optional TLS.
//!
//! Paths are `/exec/<token>`, `/attach/<token>` and `/portforward/<token>`.
//! An unknown, spent or expired token is 404. SPDY clients name the stream
//! protocols they speak in `X-Stream-Protocol-Version` headers, WebSocket
//! clients in `Sec-WebSocket-Protocol`; the first the server supports, in
//! the client's order, wins (as in Kubernetes' httpstream.Handshake).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::Instrument;

use super::remotecommand::{self, Version, Wanted};
use super::spdy::Session;
use super::tokens::Tokens;
use super::{Error, Request, Runtime, Settings, portforward, websocket};

/// The WebSocket subprotocol of SPDY tunnelled in binary messages.
pub const SPDY_OVER_WEBSOCKET: &str = "SPDY/3.1+portforward.k8s.io";

struct Shared {
    tokens: Tokens,
    runtime: Arc<dyn Runtime>,
    settings: Settings,
}

/// A running streaming server.
pub struct Server {
    shared: Arc<Shared>,
    base_url: String,
    local_addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Server {
    /// Binds the configured address and starts serving.
    pub async fn start(settings: Settings, runtime: Arc<dyn Runtime>) -> Result<Server, Error> {
        let addr: SocketAddr = settings.address.parse().map_err(|_| {
            Error::Invalid(format!(
                "streaming address {:?} is not an ip:port",
                settings.address
            ))
        })?;
        let tls = match &settings.tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key)?),
            None => None,
        };
        let listener = TcpListener::bind(addr).await.map_err(|source| Error::Io {
            what: format!("listen on {addr}"),
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Io {
            what: "local address".into(),
            source,
        })?;
        let host = url_host(local_addr.ip());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base_url = format!("{scheme}://{}", SocketAddr::new(host, local_addr.port()));
        let shared = Arc::new(Shared {
            tokens: Tokens::new(settings.token_ttl),
            runtime,
            settings,
        });
        let accept = tokio::spawn(accept_loop(listener, tls, shared.clone()));
        tracing::info!(address = %local_addr, url = %base_url, "streaming server listening");
        Ok(Server {
            shared,
            base_url,
            local_addr,
            accept,
        })
    }

    /// `http(s)://ip:port`, the prefix of every URL handed out.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Checks `req` against the runtime and returns its one-time URL.
    pub async fn url_for(&self, req: Request) -> Result<String, Error> {
        self.shared.runtime.check(&req).await?;
        let kind = req.kind();
        let token = self.shared.tokens.insert(req)?;
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }

    /// Requests waiting for their client (for tests and metrics).
    pub fn pending(&self) -> usize {
        self.shared.tokens.len()
    }
}

/// A concrete address for URLs: the bound one, or for an unspecified bind
/// the node's first global address of the same family (else loopback).
fn url_host(bound: IpAddr) -> IpAddr {
    if !bound.is_unspecified() {
        return bound;
    }
    let found = nix::ifaddrs::getifaddrs().ok().and_then(|addrs| {
        addrs
            .filter_map(|a| a.address)
            .filter_map(|a| {
                if let Some(v4) = a.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                }
            })
            .find(|ip| {
                ip.is_ipv4() == bound.is_ipv4()
                    && !ip.is_loopback()
                    && !ip.is_unspecified()
                    && !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())
            })
    });
    found.unwrap_or(match bound {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
    })
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, Error> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::Tls(format!("read certificates {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!("no certificate in {}", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::Tls(format!("read private key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(%err, "streaming accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(tcp, shared).await,
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(stream)) => serve_connection(stream, shared).await,
                        Ok(Err(err)) => tracing::debug!(%peer, %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_connection<IO>(io: IO, shared: Arc<Shared>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(err) = conn.await {
        tracing::debug!(%err, "streaming connection ended with an error");
    }
}

fn reply(status: StatusCode, text: impl Into<String>) -> Response<String> {
    let mut r = Response::new(text.into());
    *r.status_mut() = status;
    r
}

/// Every value of a (possibly repeated, comma-separated) header.
fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

async fn handle(shared: Arc<Shared>, mut req: http::Request<Incoming>) -> Response<String> {
    let path = req.uri().path().to_string();
    let Some((kind, token)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return reply(StatusCode::NOT_FOUND, "not found\n");
    };
    let Some(request) = shared.tokens.take(kind, token) else {
        return reply(
            StatusCode::NOT_FOUND,
            "unknown, used or expired streaming token\n",
        );
    };
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let span = tracing::info_span!("stream", kind, id = tracing::field::Empty);
    match &request {
        Request::Exec { container_id, .. } | Request::Attach { container_id, .. } => {
            span.record("id", container_id.as_str());
        }
        Request::PortForward { pod_id } => {
            span.record("id", pod_id.as_str());
        }
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let handshake = if upgrade == "websocket" {
        websocket_handshake(req.headers(), &request)
    } else if upgrade.starts_with("spdy/3.1") {
        spdy_handshake(req.headers(), &request)
    } else {
        return reply(
            StatusCode::BAD_REQUEST,
            "this endpoint needs an upgrade to SPDY/3.1 or websocket\n",
        );
    };
    let (response, transport) = match handshake {
        Handshake::Upgrade(response, transport) => (response, transport),
        Handshake::Refused(response) => return *response,
    };
    tokio::spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => TokioIo::new(u),
                Err(err) => {
                    tracing::debug!(%err, "upgrade failed");
                    return;
                }
            };
            run_session(shared, request, transport, upgraded).await;
        }
        .instrument(span),
    );
    response
}

/// A handshake's answer: switch protocols, or a refusal to send as is.
enum Handshake {
    Upgrade(Response<String>, Transport),
    Refused(Box<Response<String>>),
}

fn refuse(status: StatusCode, text: impl Into<String>) -> Handshake {
    Handshake::Refused(Box::new(reply(status, text)))
}

#[derive(Debug, Clone, Copy)]
enum Transport {
    Spdy(Option<Version>),
    WebSocket(Option<Version>),
    SpdyInWebSocket,
}

fn switching(upgrade: &'static str) -> Response<String> {
    let mut r = reply(StatusCode::SWITCHING_PROTOCOLS, "");
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    r.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(upgrade));
    r
}

fn spdy_handshake(headers: &HeaderMap, request: &Request) -> Handshake {
    let offered = values(headers, "x-stream-protocol-version");
    let supported: Vec<&str> = match request {
        Request::PortForward { .. } => vec![portforward::PROTOCOL],
        _ => remotecommand::PROTOCOLS.iter().map(|(n, _)| *n).collect(),
    };
    let chosen = offered.iter().find(|p| supported.contains(&p.as_str()));
    if chosen.is_none() && !offered.is_empty() {
        let mut r = reply(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {supported:?}\n"
            ),
        );
        for p in &supported {
            r.headers_mut().append(
                "X-Accepted-Stream-Protocol-Versions",
                HeaderValue::from_static(p),
            );
        }
        return Handshake::Refused(Box::new(r));
    }
    let mut r = switching("SPDY/3.1");
    if let Some(p) = chosen
        && let Ok(v) = HeaderValue::from_str(p)
    {
        r.headers_mut().insert("X-Stream-Protocol-Version", v);
    }
    let version = match request {
        Request::PortForward { .. } => None,
        // No negotiation: the first protocol.
        _ => Some(
            chosen
                .and_then(|p| remotecommand::version_of(p))
                .unwrap_or(Version::V1),
        ),
    };
    Handshake::Upgrade(r, Transport::Spdy(version))
}

fn websocket_handshake(headers: &HeaderMap, request: &Request) -> Handshake {
    let Some(key) = headers.get("sec-websocket-key") else {
        return refuse(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    if headers
        .get("sec-websocket-version")
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "only WebSocket version 13 is supported\n",
        );
    }
    let offered = values(headers, "sec-websocket-protocol");
    let (chosen, transport) = match request {
        Request::PortForward { .. } => {
            if !offered.iter().any(|p| p == SPDY_OVER_WEBSOCKET) {
                return refuse(
                    StatusCode::FORBIDDEN,
                    format!(
                        "port-forward over websocket needs the {SPDY_OVER_WEBSOCKET} subprotocol; client offered {offered:?}\n"
                    ),
                );
            }
            (
                Some(SPDY_OVER_WEBSOCKET.to_string()),
                Transport::SpdyInWebSocket,
            )
        }
        _ => {
            let chosen = offered
                .iter()
                .find_map(|p| remotecommand::version_of(p).map(|v| (p.clone(), v)));
            match chosen {
                Some((name, v)) => (Some(name), Transport::WebSocket(Some(v))),
                None if offered.is_empty() => (None, Transport::WebSocket(Some(Version::V1))),
                None => {
                    return refuse(
                        StatusCode::FORBIDDEN,
                        format!(
                            "unable to negotiate a stream protocol: client offered {offered:?}\n"
                        ),
                    );
                }
            }
        }
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut r = switching("websocket");
    r.headers_mut().insert(
        "Sec-WebSocket-Accept",
        HeaderValue::from_str(&accept).expect("base64"),
    );
    if let Some(p) = chosen
        && let Ok(v) = HeaderValue::from_str(&p)
    {
        r.headers_mut().insert("Sec-WebSocket-Protocol", v);
    }
    Handshake::Upgrade(r, transport)
}

fn wanted(request: &Request) -> Wanted {
    match *request {
        Request::Exec {
            tty,
            stdin,
            stdout,
            stderr,
            ..
        }
        | Request::Attach {
            tty,
            stdin,
            stdout,
            stderr,
            ..
        } => Wanted {
            stdin,
            stdout,
            stderr,
            tty,
        },
        Request::PortForward { .. } => Wanted {
            stdin: false,
            stdout: false,
            stderr: false,
            tty: false,
        },
    }
}

async fn start_process(shared: &Shared, request: &Request) -> Result<super::Process, Error> {
    match request {
        Request::Exec {
            container_id,
            cmd,
            tty,
            stdin,
            ..
        } => shared.runtime.exec(container_id, cmd, *tty, *stdin).await,
        Request::Attach {
            container_id,
            tty,
            stdin,
            ..
        } => shared.runtime.attach(container_id, *tty, *stdin).await,
        Request::PortForward { .. } => Err(Error::Invalid("not a remote command".into())),
    }
}

async fn run_session(
    shared: Arc<Shared>,
    request: Request,
    transport: Transport,
    io: TokioIo<hyper::upgrade::Upgraded>,
) {
    let settings = &shared.settings;
    match (transport, &request) {
        (Transport::Spdy(_), Request::PortForward { pod_id }) => {
            portforward::serve(
                Session::start(io),
                shared.runtime.clone(),
                pod_id.clone(),
                settings.stream_creation_timeout,
            )
            .await;
        }
        (Transport::SpdyInWebSocket, Request::PortForward { pod_id }) => {
            let ws =
                WebSocketStream::from_raw_socket(io, Role::Server, Some(websocket::config())).await;
            let session = Session::start(websocket::tunnel(ws));
            portforward::serve(
                session,
                shared.runtime.clone(),
                pod_id.clone(),
                settings.stream_creation_timeout,
            )
            .await;
        }
        (Transport::Spdy(version), _) => {
            let version = version.unwrap_or(Version::V1);
            let mut session = Session::start(io);
            let channels = match remotecommand::spdy_channels(
                &mut session,
                version,
                wanted(&request),
                settings.stream_creation_timeout,
            )
            .await
            {
                Ok(c) => c,
                Err(err) => {
                    tracing::info!(%err, "stream setup failed");
                    session.shutdown().await;
                    return;
                }
            };
            remote_command(&shared, &request, channels, version).await;
            session.shutdown().await;
        }
        (Transport::WebSocket(version), _) => {
            let version = version.unwrap_or(Version::V1);
            let ws =
                WebSocketStream::from_raw_socket(io, Role::Server, Some(websocket::config())).await;
            let (channels, ws) = websocket::channels(ws, version, wanted(&request));
            remote_command(&shared, &request, channels, version).await;
            ws.finish().await;
        }
        (Transport::SpdyInWebSocket, _) => {}
    }
}

async fn remote_command(
    shared: &Shared,
    request: &Request,
    channels: remotecommand::Channels,
    version: Version,
) {
    match start_process(shared, request).await {
        Ok(process) => {
            let outcome =
                remotecommand::run(process, channels, version, shared.settings.drain).await;
            tracing::debug!(?outcome, "stream done");
        }
        Err(err) => {
            let text = crate::error::chain(&err);
            tracing::info!(error = %text, "stream: starting the process failed");
            let payload = remotecommand::status(version, &remotecommand::Outcome::Failed(text));
            let _ = channels.error.write(&payload).await;
            channels.error.close().await;
            for sink in [channels.stdout, channels.stderr].into_iter().flatten() {
                sink.close().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_never_carry_an_unspecified_address() {
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(url_host(v4), v4);
        let any4 = url_host("0.0.0.0".parse().unwrap());
        assert!(any4.is_ipv4() && !any4.is_unspecified(), "{any4}");
        let any6 = url_host("::".parse().unwrap());
        assert!(any6.is_ipv6() && !any6.is_unspecified(), "{any6}");
    }

    #[test]
    fn tls_files_that_do_not_load_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let err = tls_acceptor(&cert, &key).err().unwrap().to_string();
        assert!(err.contains("cert.pem"), "{err}");
        std::fs::write(&cert, "not a certificate").unwrap();
        let err = tls_acceptor(&cert, &key).err().unwrap().to_string();
        assert!(err.contains("no certificate"), "{err}");
    }

    #[test]
    fn negotiation_follows_the_clients_order() {
        let mut h = HeaderMap::new();
        h.append(
            "X-Stream-Protocol-Version",
            HeaderValue::from_static("v9.channel.k8s.io"),
        );
        h.append(
            "X-Stream-Protocol-Version",
            HeaderValue::from_static("v3.channel.k8s.io, v4.channel.k8s.io"),
        );
        let exec = Request::Exec {
            container_id: "c".into(),
            cmd: vec!["true".into()],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        };
        match spdy_handshake(&h, &exec) {
            Handshake::Upgrade(r, Transport::Spdy(Some(Version::V3))) => {
                assert_eq!(r.status(), StatusCode::SWITCHING_PROTOCOLS);
                assert_eq!(
                    r.headers()["x-stream-protocol-version"],
                    "v3.channel.k8s.io"
                );
            }
            _ => panic!("expected v3"),
        }
        let mut h = HeaderMap::new();
        h.append(
            "X-Stream-Protocol-Version",
            HeaderValue::from_static("v9.channel.k8s.io"),
        );
        match spdy_handshake(&h, &exec) {
            Handshake::Refused(r) => assert_eq!(r.status(), StatusCode::FORBIDDEN),
            _ => panic!("expected a refusal"),
        }
        // No negotiation at all: the oldest protocol.
        match spdy_handshake(&HeaderMap::new(), &exec) {
            Handshake::Upgrade(_, Transport::Spdy(Some(Version::V1))) => {}
            _ => panic!("expected v1"),
        }
    }
}
