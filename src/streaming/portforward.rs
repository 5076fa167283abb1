//! `portforward.k8s.io` over SPDY: for every forwarded connection the
//! client opens two streams with the same `requestID` and `port` headers,
//! `streamType: error` and `streamType: data`. Once both are there the
//! server connects to the port on the pod's loopback and copies bytes
//! between the connection and the data stream; a failure (a closed port)
//! is a text message on the error stream, and the session goes on serving
//! other requests.
//!
//! The connection is made from a dedicated OS thread that joins the pod's
//! network namespace, connects, and exits; the socket keeps its namespace,
//! and no tokio worker ever changes namespace. Host-network pods connect
//! on the host.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::spdy::{Session, Stream, headers};
use super::{NetTarget, Runtime};

/// The protocol name in `X-Stream-Protocol-Version`.
pub const PROTOCOL: &str = "portforward.k8s.io";
/// How long one connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the client's half may go on once the pod closed its side.
const UPSTREAM_GRACE: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Pair {
    error: Option<Stream>,
    data: Option<Stream>,
    since: Option<Instant>,
}

/// Serves port-forward requests on `session` until the client goes away.
pub async fn serve(
    mut session: Session,
    runtime: Arc<dyn Runtime>,
    pod_id: String,
    creation_timeout: Duration,
) {
    let mut pending: HashMap<String, Pair> = HashMap::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        let stream = tokio::select! {
            s = session.accept() => match s {
                Some(s) => s,
                None => break,
            },
            _ = sweep.tick() => {
                // A request whose second stream never came.
                pending.retain(|id, pair| {
                    let stale = pair.since.is_some_and(|t| t.elapsed() > creation_timeout);
                    if stale {
                        tracing::debug!(request_id = %id, "port-forward request incomplete; dropped");
                    }
                    !stale
                });
                continue;
            }
        };
        let Some(request_id) = headers::get(&stream.headers, "requestid").map(str::to_string)
        else {
            tracing::debug!("port-forward stream without requestID; reset");
            stream.writer.reset().await;
            continue;
        };
        let pair = pending.entry(request_id.clone()).or_default();
        pair.since.get_or_insert_with(Instant::now);
        match headers::get(&stream.headers, "streamtype") {
            Some("error") => pair.error = Some(stream),
            Some("data") => pair.data = Some(stream),
            other => {
                tracing::debug!(stream_type = ?other, "unexpected port-forward stream; reset");
                stream.writer.reset().await;
                continue;
            }
        }
        if pair.error.is_some() && pair.data.is_some() {
            let pair = pending.remove(&request_id).expect("present");
            let (error, data) = (pair.error.expect("error"), pair.data.expect("data"));
            let runtime = runtime.clone();
            let pod_id = pod_id.clone();
            tokio::spawn(async move { forward(runtime, &pod_id, error, data).await });
        }
    }
    session.shutdown().await;
}

async fn forward(runtime: Arc<dyn Runtime>, pod_id: &str, error: Stream, data: Stream) {
    let port = headers::get(&data.headers, "port")
        .or_else(|| headers::get(&error.headers, "port"))
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p > 0);
    let result = match port {
        None => Err("invalid or missing port header".to_string()),
        Some(port) => match runtime.net_target(pod_id).await {
            Err(e) => Err(crate::error::chain(&e)),
            Ok(target) => connect(target, port).await.map_err(|e| e.to_string()),
        },
    };
    let conn = match result {
        Ok(conn) => conn,
        Err(msg) => {
            let port = port.map(|p| p.to_string()).unwrap_or_default();
            let text = format!("error forwarding port {port} to pod {pod_id}: {msg}");
            tracing::info!(pod_id, %text, "port-forward");
            let _ = error.writer.write(text.as_bytes()).await;
            let _ = error.writer.close().await;
            let _ = data.writer.close().await;
            return;
        }
    };
    let (mut rd, mut wr) = conn.into_split();
    let Stream {
        reader: mut from_client,
        writer: to_client,
        ..
    } = data;
    let upstream = async {
        while let Some(bytes) = from_client.read().await {
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; super::spdy::session::CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_client.write(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = to_client.close().await;
    };
    // The client's half ends at its FIN (then the pod's half runs to the
    // connection's EOF); once the pod's half has ended the client gets a
    // short grace for its last bytes, then the error stream closes: the Go
    // client waits for that close before it lets the connection go.
    let mut up = std::pin::pin!(upstream);
    let mut down = std::pin::pin!(downstream);
    tokio::select! {
        () = &mut down => {
            let _ = tokio::time::timeout(UPSTREAM_GRACE, &mut up).await;
        }
        () = &mut up => down.await,
    }
    let _ = error.writer.close().await;
}

/// Connects to `port` on the loopback of `target` (IPv4, then IPv6).
pub async fn connect(target: NetTarget, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let std_stream = match target {
        NetTarget::Host => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("crius-portfwd".into())
                .spawn(move || {
                    let _ = tx.send(dial(port));
                })?;
            rx.await
                .map_err(|_| std::io::Error::other("connect thread died"))??
        }
        NetTarget::Netns(path) => in_netns(path, port).await?,
    };
    std_stream.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(std_stream)
}

fn dial(port: u16) -> std::io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Ok(s) => Ok(s),
        Err(e4) => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| e4)
        }
    }
}

/// Connects from a new OS thread that joins the network namespace pinned
/// at `netns` first; the thread ends with the connect.
async fn in_netns(netns: PathBuf, port: u16) -> std::io::Result<TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("crius-portfwd".into())
        .spawn(move || {
            let result = std::fs::File::open(&netns)
                .map_err(|e| {
                    std::io::Error::new(e.kind(), format!("open {}: {e}", netns.display()))
                })
                .and_then(|ns| {
                    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                        std::io::Error::other(format!(
                            "join network namespace {}: {e}",
                            netns.display()
                        ))
                    })
                })
                .and_then(|()| dial(port));
            let _ = tx.send(result);
        })?;
    rx.await
        .map_err(|_| std::io::Error::other("connect thread died"))?
}
