//! WebSocket transports (RFC 6455, framing by tokio-tungstenite on the
//! upgraded connection): remote command channels, and a byte pipe for the
//! SPDY that port-forward clients tunnel in binary messages.
//!
//! tokio-tungstenite is used rather than an in-tree framer: it is the
//! maintained Rust WebSocket implementation (masking, fragmentation,
//! control frames, close handshake), and nothing about the Kubernetes use
//! needs more than whole binary messages.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::remotecommand::{Channels, Sink, Source, Version, Wanted};

/// The largest message accepted from a client.
pub const MAX_MESSAGE: usize = 1 << 20;

pub fn config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5: a message `[255, n]` closes the client's channel n (stdin).
const CLOSE: u8 = 255;

/// The server's end of a WebSocket remote command session.
pub struct WsSession {
    out: mpsc::Sender<Bytes>,
    writer: tokio::task::JoinHandle<()>,
    reader: tokio::task::JoinHandle<()>,
}

/// Splits `ws` into remote command channels.
pub fn channels<S>(
    ws: WebSocketStream<S>,
    version: Version,
    wanted: Wanted,
) -> (Channels, WsSession)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(super::spdy::session::QUEUE);
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(super::spdy::session::QUEUE);
    let (resize_tx, resize_rx) = mpsc::channel::<Bytes>(8);
    let (gone_tx, gone_rx) = watch::channel(false);
    let gone_tx = std::sync::Arc::new(gone_tx);
    let writer_gone = gone_tx.clone();
    let writer = tokio::spawn(async move {
        loop {
            // A ping when idle: a client that vanished is noticed by the
            // failed write even while the reader waits on a full stdin.
            let msg =
                match tokio::time::timeout(super::spdy::session::KEEPALIVE, out_rx.recv()).await {
                    Ok(Some(msg)) => msg,
                    Ok(None) => break,
                    Err(_) => {
                        if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                            let _ = writer_gone.send(true);
                            break;
                        }
                        continue;
                    }
                };
            // An empty message is the signal to close.
            let msg = if msg.is_empty() {
                Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                }))
            } else {
                Message::Binary(msg)
            };
            let close = matches!(msg, Message::Close(_));
            if sink.send(msg).await.is_err() {
                let _ = writer_gone.send(true);
                break;
            }
            if close {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let reader = tokio::spawn(async move {
        let mut stdin_tx = Some(stdin_tx);
        while let Some(Ok(msg)) = stream.next().await {
            let data = match msg {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                // Pings are answered by tungstenite; text (the base64
                // protocols) is not supported.
                _ => continue,
            };
            let Some((&channel, rest)) = data.split_first() else {
                continue;
            };
            let rest = data.slice(data.len() - rest.len()..);
            match channel {
                STDIN => {
                    if let Some(tx) = &stdin_tx
                        && !rest.is_empty()
                        && tx.send(rest).await.is_err()
                    {
                        stdin_tx = None;
                    }
                }
                RESIZE => {
                    let _ = resize_tx.send(rest).await;
                }
                CLOSE if version >= Version::V5 && rest.first() == Some(&STDIN) => stdin_tx = None,
                _ => {}
            }
        }
        let _ = gone_tx.send(true);
    });
    let sink = |channel| Sink::Channel {
        tx: out_tx.clone(),
        channel,
    };
    let channels = Channels {
        stdin: wanted.stdin.then_some(Source::Channel(stdin_rx)),
        stdout: wanted.stdout.then(|| sink(STDOUT)),
        stderr: (wanted.stderr && !wanted.tty).then(|| sink(STDERR)),
        error: sink(ERROR),
        resize: (wanted.tty && version >= Version::V3).then_some(Source::Channel(resize_rx)),
        gone: Box::pin(async move {
            let mut gone = gone_rx;
            let _ = gone.wait_for(|g| *g).await;
        }),
    };
    (
        channels,
        WsSession {
            out: out_tx,
            writer,
            reader,
        },
    )
}

impl WsSession {
    /// Sends a close frame after everything queued, then lets the reader
    /// see the client's close for a short while.
    pub async fn finish(self) {
        let _ = self.out.send(Bytes::new()).await;
        drop(self.out);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.writer).await;
        let abort = self.reader.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), self.reader)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

/// A byte pipe over `ws`: what the returned stream reads is the payload of
/// the client's binary messages, what is written to it leaves as binary
/// messages. The SPDY session of a tunnelled port-forward runs on it.
pub fn tunnel<S>(ws: WebSocketStream<S>) -> tokio::io::DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut rd, mut wr) = tokio::io::split(ours);
    let (mut sink, mut stream) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(data) if wr.write_all(&data).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let msg = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                    if sink.send(msg).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        let _ = sink.close().await;
    });
    theirs
}
