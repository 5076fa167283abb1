//! The Kubernetes remote command protocol (exec and attach): which streams
//! a client opens, what goes on each, and the status that ends a session.
//!
//! Protocols (newest first): `v5.channel.k8s.io` (v4 plus closing stdin
//! by a message, WebSocket only), `v4.channel.k8s.io` (the error stream
//! carries a JSON `metav1.Status`, with the exit code as a cause),
//! `v3.channel.k8s.io` (adds the resize stream), `v2.channel.k8s.io` and
//! `channel.k8s.io` (the error stream carries plain text). Over SPDY each
//! of stdin, stdout, stderr, error and resize is a stream named by its
//! `streamType` header; over WebSocket each is a channel (the first byte
//! of every binary message). Resize messages are JSON
//! `{"Width":w,"Height":h}` objects.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::fdio::FdIo;
use super::spdy::{Session, StreamReader, StreamWriter, headers};
use super::{Error, Process, Stdio};

/// A remote command protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V1,
    V2,
    V3,
    V4,
    V5,
}

/// Protocol names in the server's order of preference.
pub const PROTOCOLS: [(&str, Version); 5] = [
    ("v5.channel.k8s.io", Version::V5),
    ("v4.channel.k8s.io", Version::V4),
    ("v3.channel.k8s.io", Version::V3),
    ("v2.channel.k8s.io", Version::V2),
    ("channel.k8s.io", Version::V1),
];

pub fn version_of(name: &str) -> Option<Version> {
    PROTOCOLS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// Which streams the client asked for (from the CRI request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Data from the client on one stream or channel.
pub enum Source {
    Spdy(StreamReader),
    Channel(mpsc::Receiver<Bytes>),
}

impl Source {
    pub async fn read(&mut self) -> Option<Bytes> {
        match self {
            Source::Spdy(r) => r.read().await,
            Source::Channel(r) => r.recv().await,
        }
    }
}

/// Data to the client on one stream or channel.
#[derive(Clone)]
pub enum Sink {
    Spdy(StreamWriter),
    /// A WebSocket channel: every message is prefixed with its number.
    Channel {
        tx: mpsc::Sender<Bytes>,
        channel: u8,
    },
    /// Output nobody asked for: read and dropped, so the process never
    /// blocks on a full pipe.
    Discard,
}

impl Sink {
    pub async fn write(&self, data: &[u8]) -> Result<(), ()> {
        match self {
            Sink::Discard => Ok(()),
            Sink::Spdy(w) => w.write(data).await.map_err(drop),
            Sink::Channel { tx, channel } => {
                for chunk in data.chunks(super::spdy::session::CHUNK) {
                    let mut msg = Vec::with_capacity(chunk.len() + 1);
                    msg.push(*channel);
                    msg.extend_from_slice(chunk);
                    tx.send(msg.into()).await.map_err(drop)?;
                }
                Ok(())
            }
        }
    }

    /// The end of this direction (a FIN over SPDY; WebSocket channels end
    /// with the connection).
    pub async fn close(&self) {
        if let Sink::Spdy(w) = self {
            let _ = w.close().await;
        }
    }
}

/// The client's end of a remote command session, whatever the transport.
pub struct Channels {
    pub stdin: Option<Source>,
    pub stdout: Option<Sink>,
    pub stderr: Option<Sink>,
    pub error: Sink,
    pub resize: Option<Source>,
    /// Resolves when the client is gone.
    pub gone: BoxFuture<'static, ()>,
}

/// Waits for the streams a SPDY client opens (each accepted with a reply)
/// until every one `wanted` asks for is there.
pub async fn spdy_channels(
    session: &mut Session,
    version: Version,
    wanted: Wanted,
    timeout: Duration,
) -> Result<Channels, Error> {
    let mut stdin = None;
    let mut stdout = None;
    let mut stderr = None;
    let mut error = None;
    let mut resize = None;
    let need_resize = wanted.tty && version >= Version::V3;
    let complete = |stdin: &Option<_>,
                    stdout: &Option<_>,
                    stderr: &Option<_>,
                    error: &Option<_>,
                    resize: &Option<_>| {
        error.is_some()
            && (stdin.is_some() || !wanted.stdin)
            && (stdout.is_some() || !wanted.stdout)
            && (stderr.is_some() || !wanted.stderr || wanted.tty)
            && (resize.is_some() || !need_resize)
    };
    let deadline = tokio::time::Instant::now() + timeout;
    while !complete(&stdin, &stdout, &stderr, &error, &resize) {
        let stream = match tokio::time::timeout_at(deadline, session.accept()).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Err(Error::Precondition(
                    "the client closed the connection before opening its streams".into(),
                ));
            }
            Err(_) => {
                return Err(Error::Precondition(format!(
                    "the client did not open its streams within {timeout:?}"
                )));
            }
        };
        match headers::get(&stream.headers, "streamtype").unwrap_or("") {
            "stdin" => stdin = Some(Source::Spdy(stream.reader)),
            "stdout" => stdout = Some(Sink::Spdy(stream.writer)),
            "stderr" => stderr = Some(Sink::Spdy(stream.writer)),
            "error" => error = Some(Sink::Spdy(stream.writer)),
            "resize" => resize = Some(Source::Spdy(stream.reader)),
            other => tracing::debug!(stream_type = other, "ignoring an unexpected stream"),
        }
    }
    Ok(Channels {
        stdin,
        stdout,
        stderr,
        error: error.expect("complete"),
        resize,
        gone: Box::pin(session.gone()),
    })
}

/// How a session ended, for the status on the error stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Failed(String),
}

/// The error stream's payload for `outcome`: v4+ a JSON `metav1.Status`,
/// older versions plain text and nothing on success.
pub fn status(version: Version, outcome: &Outcome) -> Vec<u8> {
    if version < Version::V4 {
        return match outcome {
            Outcome::Exited(0) => Vec::new(),
            Outcome::Exited(code) => {
                format!("command terminated with non-zero exit code: exit code {code}").into_bytes()
            }
            Outcome::Failed(msg) => msg.clone().into_bytes(),
        };
    }
    let value = match outcome {
        Outcome::Exited(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Outcome::Exited(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Outcome::Failed(msg) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": msg,
            "reason": "InternalError",
            "code": 500,
        }),
    };
    serde_json::to_vec(&value).expect("json")
}

/// Terminal size messages, as the Go client encodes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct Size {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// Splits a byte stream of JSON objects into sizes; keeps an incomplete
/// tail in `buf`, drops garbage.
pub fn sizes(buf: &mut Vec<u8>) -> Vec<Size> {
    let mut out = Vec::new();
    let mut iter = serde_json::Deserializer::from_slice(buf).into_iter::<Size>();
    loop {
        match iter.next() {
            Some(Ok(size)) => out.push(size),
            Some(Err(e)) if e.is_eof() => {
                let used = iter.byte_offset();
                buf.drain(..used);
                return out;
            }
            Some(Err(_)) => {
                buf.clear();
                return out;
            }
            None => {
                buf.clear();
                return out;
            }
        }
    }
}

fn copy_out(fd: Arc<FdIo>, sink: Sink) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; super::spdy::session::CHUNK];
        loop {
            match fd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.write(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        sink.close().await;
    })
}

fn copy_in(mut source: Source, fd: Arc<FdIo>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(data) = source.read().await {
            if fd.write_all(&data).await.is_err() {
                break;
            }
        }
        // Dropping the last reference closes the pipe: the process sees EOF.
    })
}

/// Applies every size the client sends on `source`.
fn resizer<F>(mut source: Source, apply: F) -> JoinHandle<()>
where
    F: Fn(Size) -> BoxFuture<'static, ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(data) = source.read().await {
            buf.extend_from_slice(&data);
            if buf.len() > 4096 {
                buf.clear();
            }
            for size in sizes(&mut buf) {
                apply(size).await;
            }
        }
    })
}

/// Resizes a pty master the daemon holds.
fn resize_master(master: Arc<FdIo>) -> impl Fn(Size) -> BoxFuture<'static, ()> {
    move |size| {
        let ws = rustix::termios::Winsize {
            ws_row: size.height,
            ws_col: size.width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        if let Err(err) = rustix::termios::tcsetwinsize(master.as_fd(), ws) {
            tracing::debug!(%err, "resize the terminal");
        }
        Box::pin(std::future::ready(()))
    }
}

fn fdio(fd: std::os::fd::OwnedFd) -> Option<Arc<FdIo>> {
    match FdIo::new(fd) {
        Ok(io) => Some(Arc::new(io)),
        Err(err) => {
            tracing::warn!(%err, "stdio fd cannot be polled");
            None
        }
    }
}

/// Copies the process's stdio to and from the client until the process
/// exits (then the status goes on the error stream) or the client goes away
/// (then the process is abandoned: an exec is killed and reaped).
pub async fn run(process: Process, mut ch: Channels, version: Version, drain: Duration) -> Outcome {
    let Process { stdio, control } = process;
    let control: Arc<dyn super::Control> = Arc::from(control);
    let mut outputs = Vec::new();
    let mut inputs = Vec::new();
    // Input nobody takes is not read at all: dropping its source lets the
    // session discard it instead of stalling every stream behind it.
    let stdin_source = ch.stdin.take();
    match stdio {
        Stdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            if let (Some(fd), Some(source)) = (stdin.and_then(fdio), stdin_source) {
                inputs.push(copy_in(source, fd));
            }
            if let Some(source) = ch.resize.take() {
                let control = control.clone();
                inputs.push(resizer(source, move |size| {
                    let control = control.clone();
                    Box::pin(async move { control.resize(size.width, size.height).await })
                }));
            }
            for (fd, sink) in [(stdout, ch.stdout.take()), (stderr, ch.stderr.take())] {
                match (fd.and_then(fdio), sink) {
                    (Some(fd), Some(sink)) => outputs.push(copy_out(fd, sink)),
                    // Nobody reads it: keep draining so the process never
                    // blocks on a full pipe.
                    (Some(fd), None) => inputs.push(copy_out(fd, Sink::Discard)),
                    (None, Some(sink)) => sink.close().await,
                    (None, None) => {}
                }
            }
        }
        Stdio::Pty { master, stdin } => {
            if let Some(master) = fdio(master) {
                if let Some(sink) = ch.stdout.take() {
                    outputs.push(copy_out(master.clone(), sink));
                }
                if stdin && let Some(source) = stdin_source {
                    inputs.push(copy_in(source, master.clone()));
                }
                if let Some(source) = ch.resize.take() {
                    inputs.push(resizer(source, resize_master(master)));
                }
            }
        }
    }
    // A stream the process has no fd for ends at once.
    for sink in [ch.stdout.take(), ch.stderr.take()].into_iter().flatten() {
        sink.close().await;
    }
    let gone = std::mem::replace(&mut ch.gone, Box::pin(std::future::pending()));
    let exit = tokio::select! {
        r = control.wait() => Some(r),
        () = gone => None,
    };
    let outcome = match exit {
        None => {
            tracing::info!("stream client went away; abandoning the process");
            control.abandon().await;
            for t in outputs.iter().chain(&inputs) {
                t.abort();
            }
            return Outcome::Failed("the client went away".into());
        }
        Some(Ok(code)) => Outcome::Exited(code),
        Some(Err(e)) => Outcome::Failed(crate::error::chain(&e)),
    };
    let all = futures::future::join_all(outputs.iter_mut());
    if tokio::time::timeout(drain, all).await.is_err() {
        tracing::debug!("output still open after the process exited; cut off");
    }
    for t in outputs.iter().chain(&inputs) {
        t.abort();
    }
    let payload = status(version, &outcome);
    if !payload.is_empty() {
        let _ = ch.error.write(&payload).await;
    }
    ch.error.close().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_the_exit_code() {
        let s: serde_json::Value =
            serde_json::from_slice(&status(Version::V4, &Outcome::Exited(3))).unwrap();
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        let ok: serde_json::Value =
            serde_json::from_slice(&status(Version::V5, &Outcome::Exited(0))).unwrap();
        assert_eq!(ok["status"], "Success");
        assert!(status(Version::V2, &Outcome::Exited(0)).is_empty());
        assert!(!status(Version::V3, &Outcome::Exited(1)).is_empty());
    }

    #[test]
    fn sizes_split_a_json_stream() {
        let mut buf = br#"{"Width":80,"Height":24}
{"Width":100,"Height":4"#
            .to_vec();
        assert_eq!(
            sizes(&mut buf),
            vec![Size {
                width: 80,
                height: 24
            }]
        );
        buf.extend_from_slice(b"0}\n");
        assert_eq!(
            sizes(&mut buf),
            vec![Size {
                width: 100,
                height: 40
            }]
        );
        assert!(buf.iter().all(u8::is_ascii_whitespace));
        let mut junk = b"]]]".to_vec();
        assert!(sizes(&mut junk).is_empty());
        assert!(junk.is_empty());
    }

    #[test]
    fn versions_are_ordered_and_named() {
        assert_eq!(version_of("v4.channel.k8s.io"), Some(Version::V4));
        assert_eq!(version_of("channel.k8s.io"), Some(Version::V1));
        assert_eq!(version_of("v6.channel.k8s.io"), None);
        assert!(Version::V5 > Version::V3);
    }
}
