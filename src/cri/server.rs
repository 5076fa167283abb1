//! Serving the CRI over a unix socket: socket setup, the per-RPC layer
//! (deadline and tracing span), what a silent client is allowed (HTTP/2
//! keepalive PINGs, an idle timeout for connections and request bodies) and
//! graceful shutdown. Every connection goes through
//! [`super::authority::Conn`], so clients that send a socket path as
//! `:authority` (gRPC C-core, grpc-java) are served too.
//!
//! crius drives hyper's HTTP/2 server itself instead of tonic's transport so
//! that an expired `grpc-timeout` answers DEADLINE_EXCEEDED, the code kubelet
//! and critest check (tonic's own timeout layer answers CANCELLED).

use std::convert::Infallible;
use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::UnixListener;
use tonic::Status;
use tonic::service::Routes;
use tracing::Instrument;

use super::Cri;
use super::authority::{Activity, Conn};
use super::proto::image_service_server::ImageServiceServer;
use super::proto::runtime_service_server::RuntimeServiceServer;
use crate::error::{Classify, Kind};

/// kubelet's gRPC message size limit, both ways (tonic's default is 4 MiB).
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// How long shutdown waits for in-flight RPCs before it closes anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("create socket directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("socket {0} is in use by a running server")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket")]
    NotSocket(PathBuf),
    #[error("listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Classify for Error {
    fn kind(&self) -> Kind {
        Kind::Internal
    }
}

/// Binds the CRI socket: parent directories created, a stale socket left by a
/// dead server replaced, mode 0660.
pub fn bind(path: &Path) -> Result<UnixListener, Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
            path: dir.into(),
            source,
        })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::InUse(path.into()));
            }
            let _ = std::fs::remove_file(path);
        }
        Ok(_) => return Err(Error::NotSocket(path.into())),
        Err(_) => {}
    }
    let bind_err = |source| Error::Bind {
        path: path.into(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
    Ok(listener)
}

/// Serves `cri` on `listener` until `shutdown` resolves, then stops
/// accepting, lets in-flight RPCs finish and removes the socket file.
pub async fn serve(
    cri: Cri,
    listener: UnixListener,
    path: &Path,
    shutdown: impl Future<Output = ()>,
) {
    let limits = cri.daemon.config.grpc.clone();
    let events = cri.daemon.events.clone();
    let routes = Routes::new(
        RuntimeServiceServer::new(cri.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE),
    )
    .add_service(
        ImageServiceServer::new(cri)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE),
    )
    .prepare();
    let idle = limits.idle_timeout();
    let service = RpcService {
        routes,
        body_idle: idle,
    };
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http.max_frame_size(MAX_FRAME_SIZE)
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(limits.keepalive_interval())
        .keep_alive_timeout(limits.keepalive_timeout());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let activity = Activity::default();
                    let io = TokioIo::new(Conn::new(stream, activity.clone()));
                    let conn = graceful.watch(http.serve_connection(io, service.clone()));
                    tokio::spawn(async move {
                        tokio::select! {
                            done = conn => if let Err(err) = done {
                                tracing::debug!(?err, "connection closed with an error");
                            },
                            () = activity.idle(idle) => {
                                tracing::debug!(?idle, "closing a connection that sent nothing");
                            }
                        }
                    });
                }
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(?err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = std::fs::remove_file(path);
    // GetContainerEvents streams never end by themselves.
    events.close();
    tracing::info!("shutting down: waiting for in-flight requests");
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests still running after {SHUTDOWN_GRACE:?}; closing");
    }
}

/// HTTP/2 frame size: large frames make 16 MiB messages cheaper.
const MAX_FRAME_SIZE: u32 = 1 << 20;

/// Wraps the tonic routes: one tracing span per RPC (ids recorded by the
/// handlers), duration at debug level, and the client's deadline.
#[derive(Clone)]
struct RpcService {
    routes: Routes,
    /// How long a request body may stop arriving.
    body_idle: Duration,
}

type HttpResponse = http::Response<tonic::body::Body>;

impl hyper::service::Service<http::Request<Incoming>> for RpcService {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Infallible>> + Send>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let deadline = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let span = tracing::info_span!(
            "rpc",
            method = %method,
            pod_id = tracing::field::Empty,
            container_id = tracing::field::Empty,
            image = tracing::field::Empty,
        );
        let routes = self.routes.clone();
        let req = req.map(|body| IdleBody::new(body, self.body_idle));
        Box::pin(
            async move {
                let start = Instant::now();
                let call = tower::ServiceExt::oneshot(routes, req);
                let response = match deadline {
                    None => call.await,
                    Some(limit) => match tokio::time::timeout(limit, call).await {
                        Ok(response) => response,
                        Err(_) => Ok(Status::deadline_exceeded(format!(
                            "{method}: deadline of {limit:?} exceeded"
                        ))
                        .into_http()),
                    },
                };
                tracing::debug!(elapsed_us = start.elapsed().as_micros() as u64, "rpc done");
                response.map(cap_status_message)
            }
            .instrument(span),
        )
    }
}

/// The most of a `grpc-message` crius sends. Error messages may quote what
/// the client sent, and clients refuse a response whose headers pass their
/// header list limit (16 KiB for hyper and tonic), resetting the stream.
const MAX_STATUS_MESSAGE: usize = 2048;

/// Cuts an error answer's `grpc-message` to [`MAX_STATUS_MESSAGE`] bytes
/// (errors are answered trailers-only: the message is in the headers).
fn cap_status_message(mut resp: HttpResponse) -> HttpResponse {
    let Some(value) = resp.headers().get("grpc-message") else {
        return resp;
    };
    let bytes = value.as_bytes();
    if bytes.len() <= MAX_STATUS_MESSAGE {
        return resp;
    }
    // The value is percent-encoded: never split a %XX escape.
    let mut cut = MAX_STATUS_MESSAGE;
    if let Some(p) = bytes[cut - 2..cut].iter().position(|&b| b == b'%') {
        cut = cut - 2 + p;
    }
    let capped = format!(
        "{}...%20({}%20bytes%20cut)",
        String::from_utf8_lossy(&bytes[..cut]),
        bytes.len() - cut
    );
    if let Ok(v) = http::HeaderValue::from_str(&capped) {
        resp.headers_mut().insert("grpc-message", v);
    }
    resp
}

/// A request body that fails when no frame arrives for `limit`: a stream
/// whose client never sends its message does not hold its handler forever.
struct IdleBody {
    inner: Incoming,
    limit: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl IdleBody {
    fn new(inner: Incoming, limit: Duration) -> IdleBody {
        IdleBody {
            inner,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl hyper::body::Body for IdleBody {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + self.limit;
                self.timer.as_mut().reset(next);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Some(Err(
                        format!("no request data for {:?}", self.limit).into()
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Parses a gRPC `grpc-timeout` header value: up to 8 digits and a unit.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("1m"), Some(Duration::from_millis(1)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_grpc_timeout("3H"),
            Some(Duration::from_secs(3 * 3600))
        );
        assert_eq!(parse_grpc_timeout("100u"), Some(Duration::from_micros(100)));
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }

    #[test]
    fn long_status_messages_are_cut_between_escapes() {
        let answer = |msg: &str| {
            let mut r = Status::not_found(msg).into_http::<tonic::body::Body>();
            r = cap_status_message(r);
            r.headers()["grpc-message"].to_str().unwrap().to_string()
        };
        assert_eq!(answer("short"), "short");
        let long = answer(&format!("container {} not found", "y".repeat(40_000)));
        assert!(long.len() < MAX_STATUS_MESSAGE + 40, "{}", long.len());
        assert!(long.starts_with("container%20yyy") && long.ends_with("bytes%20cut)"));
        // Only escapes near the cut: none is split.
        let spaces = answer(&" ".repeat(10_000));
        assert!(
            spaces.split("...").next().unwrap().len() % 3 == 0,
            "{spaces}"
        );
    }

    #[test]
    fn stale_socket_is_replaced_live_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/crius.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let live = bind(&path).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o660);
            assert!(matches!(bind(&path), Err(Error::InUse(_))));
            drop(live);
            // The file stays behind with nobody listening: a stale socket.
            assert!(path.exists());
            bind(&path).unwrap();
        });
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(bind(&file), Err(Error::NotSocket(_))));
    }
}
