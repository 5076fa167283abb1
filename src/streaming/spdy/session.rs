//! A server-side SPDY/3.1 session over any byte stream (an upgraded HTTP/1.1
//! connection, TLS, or SPDY tunnelled in WebSocket messages).
//!
//! Two tasks own the connection: the reader parses frames, inflates header
//! blocks with the session's one receive context, answers PINGs, accepts
//! every SYN_STREAM with a SYN_REPLY and hands the stream to the caller;
//! the writer owns the one send context and is the only task that writes,
//! so frames (and header blocks) leave in the order they were queued.
//!
//! Flow control is ignored on purpose: the Go peer (moby/spdystream)
//! sends no WINDOW_UPDATE, so a server that honoured the 64 KiB initial
//! window would stall every output larger than that. Memory stays bounded
//! by the queues instead: the writer's queue holds at most [`QUEUE`] frames
//! of at most [`CHUNK`] bytes, and a stream's incoming data waits in a
//! queue of [`QUEUE`] frames (the reader waits when it is full).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::frame::{self, FLAG_FIN, Frame};
use super::headers::{Deflater, Headers, Inflater};

/// The largest data frame crius writes (what the Go peer writes too).
pub const CHUNK: usize = 32 * 1024;
/// Frames queued per direction before the producer waits.
pub const QUEUE: usize = 64;
/// How long the writer stays silent before it sends a PING: a peer that
/// vanished is noticed by the failed write even while the reader waits on
/// a stream whose consumer (a process that never reads its stdin) is stuck.
pub const KEEPALIVE: Duration = Duration::from_secs(5);
/// Streams one session may open; more are refused with RST_STREAM.
const MAX_STREAMS: usize = 1024;
/// How long a finished session keeps reading what the peer still sends
/// before it closes the connection (closing with unread input makes the
/// kernel send RST, which can destroy output the peer has not read yet).
const LINGER: Duration = Duration::from_secs(2);

enum Out {
    Frame(Frame),
    /// A SYN_REPLY; compressed by the writer, in queue order.
    Reply(u32),
    /// GOAWAY, flush, then shut the write side down.
    Shutdown(oneshot::Sender<()>),
}

/// The sending half of one stream; cheap to clone.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    tx: mpsc::Sender<Out>,
    reset: Arc<AtomicBool>,
}

/// Why a write did not happen: the stream was reset or the session ended.
#[derive(Debug, thiserror::Error)]
#[error("spdy stream closed")]
pub struct Closed;

impl StreamWriter {
    /// Queues `data` as data frames of at most [`CHUNK`] bytes.
    pub async fn write(&self, data: &[u8]) -> Result<(), Closed> {
        for chunk in data.chunks(CHUNK) {
            self.send(Bytes::copy_from_slice(chunk), false).await?;
        }
        Ok(())
    }

    /// Half-closes the stream (an empty data frame with FIN).
    pub async fn close(&self) -> Result<(), Closed> {
        self.send(Bytes::new(), true).await
    }

    async fn send(&self, data: Bytes, fin: bool) -> Result<(), Closed> {
        if self.reset.load(Ordering::Relaxed) {
            return Err(Closed);
        }
        let frame = Frame::Data {
            stream_id: self.id,
            fin,
            data,
        };
        self.tx.send(Out::Frame(frame)).await.map_err(|_| Closed)
    }

    /// Resets the stream (RST_STREAM CANCEL).
    pub async fn reset(&self) {
        self.reset.store(true, Ordering::Relaxed);
        let frame = Frame::RstStream {
            stream_id: self.id,
            status: frame::RST_CANCEL,
        };
        let _ = self.tx.send(Out::Frame(frame)).await;
    }
}

/// One stream the peer opened.
pub struct Stream {
    pub id: u32,
    /// Lower-case names.
    pub headers: Headers,
    pub reader: StreamReader,
    pub writer: StreamWriter,
}

/// The receiving half of a stream: data until the peer's FIN or RST.
pub struct StreamReader {
    rx: mpsc::Receiver<Bytes>,
}

impl StreamReader {
    /// The next data, `None` at the end of the stream (FIN, RST or the
    /// session's end).
    pub async fn read(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }
}

/// A running session. Dropping it shuts the connection down.
pub struct Session {
    incoming: mpsc::Receiver<Stream>,
    tx: mpsc::Sender<Out>,
    gone: watch::Receiver<bool>,
    reader: Option<JoinHandle<()>>,
}

impl Session {
    /// Starts serving `io`.
    pub fn start<IO>(io: IO) -> Session
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (tx, rx) = mpsc::channel(QUEUE);
        let (in_tx, incoming) = mpsc::channel(16);
        let (gone_tx, gone) = watch::channel(false);
        let gone_tx = Arc::new(gone_tx);
        tokio::spawn(writer(write, rx, gone_tx.clone()));
        let reader = tokio::spawn(reader(read, tx.clone(), in_tx, gone_tx));
        Session {
            incoming,
            tx,
            gone,
            reader: Some(reader),
        }
    }

    /// The next stream the peer opens; `None` once the peer is gone.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.incoming.recv().await
    }

    /// Resolves when the peer closed the connection (or broke the
    /// protocol): the client went away.
    pub fn gone(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut gone = self.gone.clone();
        async move {
            let _ = gone.wait_for(|g| *g).await;
        }
    }

    /// Sends GOAWAY after everything queued, shuts the write side down and
    /// lets the reader drain the peer's input for a short while.
    pub async fn shutdown(mut self) {
        let (done_tx, done) = oneshot::channel();
        if self.tx.send(Out::Shutdown(done_tx)).await.is_ok() {
            let _ = done.await;
        }
        self.linger();
    }

    fn linger(&mut self) {
        if let Some(reader) = self.reader.take() {
            tokio::spawn(async move {
                let abort = reader.abort_handle();
                if tokio::time::timeout(LINGER, reader).await.is_err() {
                    abort.abort();
                }
            });
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let (done, _) = oneshot::channel();
        let _ = self.tx.try_send(Out::Shutdown(done));
        self.linger();
    }
}

async fn writer<W: AsyncWrite + Unpin>(
    mut io: W,
    mut rx: mpsc::Receiver<Out>,
    gone: Arc<watch::Sender<bool>>,
) {
    let mut deflate = Deflater::new();
    let mut buf = Vec::with_capacity(CHUNK + 64);
    // Server-initiated PINGs carry even ids (SPDY/3 section 2.6.5).
    let mut ping_id: u32 = 0;
    loop {
        let first = match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
            Ok(Some(out)) => out,
            Ok(None) => break,
            Err(_) => {
                ping_id = ping_id.wrapping_add(2);
                Out::Frame(Frame::Ping { id: ping_id })
            }
        };
        let mut next = Some(first);
        let mut shutdown = None;
        // Batch what is already queued into one write.
        while let Some(out) = next.take() {
            match out {
                Out::Frame(f) => frame::encode(&f, &mut buf),
                Out::Reply(stream_id) => {
                    let block = deflate.compress(&Vec::new());
                    let f = Frame::SynReply {
                        stream_id,
                        fin: false,
                        block: block.into(),
                    };
                    frame::encode(&f, &mut buf);
                }
                Out::Shutdown(done) => {
                    let f = Frame::GoAway {
                        last_good_id: 0,
                        status: 0,
                    };
                    frame::encode(&f, &mut buf);
                    shutdown = Some(done);
                    break;
                }
            }
            if buf.len() < 4 * CHUNK {
                next = rx.try_recv().ok();
            }
        }
        if io.write_all(&buf).await.is_err() || io.flush().await.is_err() {
            let _ = gone.send(true);
            return;
        }
        buf.clear();
        if let Some(done) = shutdown {
            let _ = io.shutdown().await;
            let _ = done.send(());
            return;
        }
    }
    let _ = io.shutdown().await;
}

struct Open {
    data: Option<mpsc::Sender<Bytes>>,
    reset: Arc<AtomicBool>,
}

async fn reader<R: AsyncRead + Unpin>(
    mut io: R,
    tx: mpsc::Sender<Out>,
    incoming: mpsc::Sender<Stream>,
    gone: Arc<watch::Sender<bool>>,
) {
    let mut inflate = Inflater::new();
    let mut streams: HashMap<u32, Open> = HashMap::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    'read: loop {
        loop {
            let (f, used) = match frame::parse(&buf) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break,
                Err(err) => {
                    tracing::debug!(%err, "spdy protocol error; closing the session");
                    break 'read;
                }
            };
            let _ = buf.split_to(used);
            match f {
                Frame::SynStream {
                    stream_id,
                    flags,
                    block,
                    ..
                } => {
                    let headers = match inflate.decompress(&block) {
                        Ok(h) => h,
                        Err(err) => {
                            tracing::debug!(%err, "spdy header block; closing the session");
                            break 'read;
                        }
                    };
                    if streams.contains_key(&stream_id) || streams.len() >= MAX_STREAMS {
                        let status = if streams.contains_key(&stream_id) {
                            frame::RST_PROTOCOL_ERROR
                        } else {
                            frame::RST_REFUSED_STREAM
                        };
                        let rst = Frame::RstStream { stream_id, status };
                        let _ = tx.send(Out::Frame(rst)).await;
                        continue;
                    }
                    let (data_tx, data_rx) = mpsc::channel(QUEUE);
                    let reset = Arc::new(AtomicBool::new(false));
                    let fin = flags & FLAG_FIN != 0;
                    streams.insert(
                        stream_id,
                        Open {
                            data: (!fin).then_some(data_tx),
                            reset: reset.clone(),
                        },
                    );
                    if tx.send(Out::Reply(stream_id)).await.is_err() {
                        break 'read;
                    }
                    let stream = Stream {
                        id: stream_id,
                        headers,
                        reader: StreamReader { rx: data_rx },
                        writer: StreamWriter {
                            id: stream_id,
                            tx: tx.clone(),
                            reset,
                        },
                    };
                    if incoming.send(stream).await.is_err() {
                        // Nobody accepts streams any more: keep reading
                        // only to notice the peer's close.
                    }
                }
                Frame::Data {
                    stream_id,
                    fin,
                    data,
                } => {
                    if let Some(open) = streams.get_mut(&stream_id) {
                        if let Some(sender) = &open.data
                            && !data.is_empty()
                            && sender.send(data).await.is_err()
                        {
                            open.data = None;
                        }
                        if fin {
                            open.data = None;
                        }
                    }
                }
                Frame::RstStream { stream_id, .. } => {
                    if let Some(open) = streams.get_mut(&stream_id) {
                        open.data = None;
                        open.reset.store(true, Ordering::Relaxed);
                    }
                }
                // Odd ids are the client's pings; even ones answer ours.
                Frame::Ping { id } if id % 2 == 1 => {
                    let _ = tx.send(Out::Frame(Frame::Ping { id })).await;
                }
                Frame::Ping { .. } => {}
                Frame::Headers { block, .. } | Frame::SynReply { block, .. } => {
                    // Inflated only to keep the context in step.
                    if inflate.decompress(&block).is_err() {
                        break 'read;
                    }
                }
                Frame::GoAway { .. }
                | Frame::Settings { .. }
                | Frame::WindowUpdate { .. }
                | Frame::Unknown { .. } => {}
            }
        }
        buf.reserve(16 * 1024);
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    // Every stream ends, the caller learns the peer is gone.
    streams.clear();
    drop(incoming);
    let _ = gone.send(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The peer's side, for tests: writes frames, reads frames.
    struct Peer {
        io: tokio::io::DuplexStream,
        deflate: Deflater,
        inflate: Inflater,
        buf: Vec<u8>,
    }

    impl Peer {
        async fn send(&mut self, f: Frame) {
            let mut wire = Vec::new();
            frame::encode(&f, &mut wire);
            self.io.write_all(&wire).await.unwrap();
        }
        async fn open(&mut self, id: u32, headers: &[(&str, &str)], fin: bool) {
            let h = headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            let block = self.deflate.compress(&h).into();
            self.send(Frame::SynStream {
                stream_id: id,
                associated_id: 0,
                priority: 0,
                flags: if fin { FLAG_FIN } else { 0 },
                block,
            })
            .await;
        }
        async fn next(&mut self) -> Option<Frame> {
            loop {
                if let Some((f, used)) = frame::parse(&self.buf).unwrap() {
                    self.buf.drain(..used);
                    if let Frame::SynReply { block, .. } = &f {
                        self.inflate.decompress(block).unwrap();
                    }
                    return Some(f);
                }
                let mut chunk = [0u8; 4096];
                let n = self.io.read(&mut chunk).await.unwrap();
                if n == 0 {
                    return None;
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }
    }

    fn pair() -> (Session, Peer) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let peer = Peer {
            io: b,
            deflate: Deflater::new(),
            inflate: Inflater::new(),
            buf: Vec::new(),
        };
        (Session::start(a), peer)
    }

    #[tokio::test]
    async fn streams_are_accepted_replied_and_carry_data() {
        let (mut session, mut peer) = pair();
        peer.open(1, &[("streamtype", "stdin")], false).await;
        peer.open(3, &[("streamtype", "stdout")], false).await;
        let mut stdin = session.accept().await.unwrap();
        let stdout = session.accept().await.unwrap();
        assert_eq!(headers_get(&stdin), "stdin");
        assert_eq!(headers_get(&stdout), "stdout");
        assert!(matches!(
            peer.next().await,
            Some(Frame::SynReply { stream_id: 1, .. })
        ));
        assert!(matches!(
            peer.next().await,
            Some(Frame::SynReply { stream_id: 3, .. })
        ));
        peer.send(Frame::Data {
            stream_id: 1,
            fin: true,
            data: Bytes::from_static(b"in"),
        })
        .await;
        assert_eq!(
            stdin.reader.read().await.unwrap(),
            Bytes::from_static(b"in")
        );
        assert_eq!(stdin.reader.read().await, None);
        // More than one chunk and far more than the 64 KiB window, with no
        // WINDOW_UPDATE from the peer.
        let big = vec![7u8; 300 * 1024];
        let w = stdout.writer.clone();
        let writing = tokio::spawn(async move {
            w.write(&big).await.unwrap();
            w.close().await.unwrap();
        });
        let mut got = 0;
        loop {
            match peer.next().await.unwrap() {
                Frame::Data {
                    stream_id: 3,
                    fin,
                    data,
                } => {
                    assert!(data.len() <= CHUNK);
                    got += data.len();
                    if fin {
                        break;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        writing.await.unwrap();
        assert_eq!(got, 300 * 1024);
    }

    fn headers_get(s: &Stream) -> &str {
        super::super::headers::get(&s.headers, "streamtype").unwrap()
    }

    #[tokio::test]
    async fn pings_are_answered_and_unknown_frames_ignored() {
        let (_session, mut peer) = pair();
        peer.send(Frame::Unknown { kind: 0x77 }).await;
        peer.send(Frame::Settings {
            entries: vec![(0, 7, 1)],
        })
        .await;
        peer.send(Frame::Ping { id: 1 }).await;
        assert_eq!(peer.next().await, Some(Frame::Ping { id: 1 }));
    }

    #[tokio::test]
    async fn a_broken_frame_ends_the_session() {
        let (mut session, mut peer) = pair();
        peer.io
            .write_all(&[0x80, 0x02, 0, 1, 0, 0, 0, 0])
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), session.gone())
            .await
            .unwrap();
        assert!(session.accept().await.is_none());
    }

    #[tokio::test]
    async fn shutdown_sends_goaway_then_eof() {
        let (session, mut peer) = pair();
        session.shutdown().await;
        assert!(matches!(peer.next().await, Some(Frame::GoAway { .. })));
        assert_eq!(peer.next().await, None);
    }

    #[tokio::test]
    async fn a_reset_stream_refuses_writes() {
        let (mut session, mut peer) = pair();
        peer.open(1, &[("streamtype", "stdout")], false).await;
        let s = session.accept().await.unwrap();
        peer.send(Frame::RstStream {
            stream_id: 1,
            status: frame::RST_CANCEL,
        })
        .await;
        // The reset is seen once the reader processed it.
        for _ in 0..100 {
            if s.writer.write(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("writes still accepted after RST_STREAM");
    }
}
