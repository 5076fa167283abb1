//! Any `:authority` on the unix socket, and the silence of a connection.
//!
//! gRPC C-core clients (Python grpcio, C++, Ruby, PHP) send the socket path
//! percent-encoded as `:authority` (`run%2Fcrius%2Fcrius.sock`); grpc-java
//! sends the raw path. h2 parses the authority as a URI authority and
//! answers RST_STREAM PROTOCOL_ERROR (hyperium/h2 PR 487 is still open).
//! On a unix socket the authority means nothing, so [`Conn`] sits between
//! the socket and hyper and rewrites, in the client's byte stream, every
//! header block whose `:authority` h2 would refuse to carry `localhost`
//! instead. Everything else passes through byte for byte.
//!
//! To do that it follows the client's HPACK context ([`super::hpack`]) and
//! re-encodes every header block as plain literals, so the server's own
//! HPACK decoder stays consistent. Anything it does not understand (a bad
//! preface, a frame out of order, an undecodable or oversized block) makes
//! it step aside: those bytes and all later ones pass unchanged, and h2
//! answers them with the protocol error they deserve.
//!
//! [`Conn`] also stamps the time of the last byte read ([`Activity`]), for
//! the server's idle timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::hpack;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest header block (all its frames) followed; larger ones pass
/// through for h2 to refuse (hyper's limit on a header list is 16 KiB).
const MAX_BLOCK: usize = 64 << 10;
/// Frame size of rewritten header frames: the minimum every peer accepts.
const OUT_FRAME: usize = 16 << 10;
/// What `authority` becomes when h2 would refuse it.
const PLACEHOLDER: &[u8] = b"localhost";

#[derive(Debug)]
enum State {
    /// Bytes of the connection preface still to come.
    Preface(usize),
    /// Collecting a 9-byte frame header in `held`.
    FrameHeader,
    /// Passing this many payload bytes of a frame through.
    Pass(usize),
    /// Collecting this many payload bytes of a HEADERS or CONTINUATION.
    Block(usize),
    /// Stepped aside: everything passes unchanged.
    Raw,
}

/// The client-to-server byte stream transformer (no I/O: unit-testable).
pub struct Rewriter {
    state: State,
    decoder: hpack::Decoder,
    /// The frame header being collected, then the current frame's.
    header: Vec<u8>,
    /// The original bytes of the frames of the header block being
    /// collected (given to h2 unchanged if the block cannot be followed).
    held: Vec<u8>,
    /// Where the current frame's payload starts in `held`.
    payload_start: usize,
    /// The block's fragments so far, padding removed.
    block: Vec<u8>,
    /// Stream, flags and priority fields of the block's HEADERS frame.
    first: Option<(u32, u8, Option<[u8; 5]>)>,
}

impl Default for Rewriter {
    fn default() -> Self {
        Rewriter {
            state: State::Preface(0),
            decoder: hpack::Decoder::default(),
            header: Vec::with_capacity(FRAME_HEADER),
            held: Vec::new(),
            payload_start: 0,
            block: Vec::new(),
            first: None,
        }
    }
}

impl Rewriter {
    /// Feeds bytes read from the client; appends what h2 should read.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            match self.state {
                State::Raw => {
                    out.extend_from_slice(input);
                    return;
                }
                State::Preface(done) => {
                    let n = input.len().min(PREFACE.len() - done);
                    out.extend_from_slice(&input[..n]);
                    self.state = if input[..n] != PREFACE[done..done + n] {
                        State::Raw
                    } else if done + n == PREFACE.len() {
                        State::FrameHeader
                    } else {
                        State::Preface(done + n)
                    };
                    input = &input[n..];
                }
                State::Pass(left) => {
                    let n = input.len().min(left);
                    out.extend_from_slice(&input[..n]);
                    self.state = if n == left {
                        State::FrameHeader
                    } else {
                        State::Pass(left - n)
                    };
                    input = &input[n..];
                }
                State::FrameHeader => {
                    let n = input.len().min(FRAME_HEADER - self.header.len());
                    self.header.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.header.len() == FRAME_HEADER {
                        self.on_frame_header(out);
                    }
                }
                State::Block(left) => {
                    let n = input.len().min(left);
                    self.held.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if n == left {
                        self.on_block_frame(out);
                    } else {
                        self.state = State::Block(left - n);
                    }
                }
            }
        }
    }

    fn step_aside(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
        if self.payload_start == 0 {
            // The frame header not yet moved into `held`.
            out.append(&mut self.header);
        }
        self.block.clear();
        self.first = None;
        self.state = State::Raw;
    }

    fn on_frame_header(&mut self, out: &mut Vec<u8>) {
        let (len, kind) = (frame_len(&self.header), self.header[3]);
        let in_block = self.first.is_some();
        self.payload_start = 0;
        match kind {
            HEADERS if !in_block => {}
            CONTINUATION if in_block => {}
            _ if in_block => return self.step_aside(out),
            CONTINUATION => return self.step_aside(out),
            _ => {
                out.append(&mut self.header);
                self.state = if len == 0 {
                    State::FrameHeader
                } else {
                    State::Pass(len)
                };
                return;
            }
        }
        if self.held.len() + FRAME_HEADER + len > MAX_BLOCK {
            return self.step_aside(out);
        }
        self.held.extend_from_slice(&self.header);
        self.payload_start = self.held.len();
        self.state = State::Block(len);
        if len == 0 {
            self.on_block_frame(out);
        }
    }

    /// A complete HEADERS or CONTINUATION frame is at the end of `held`.
    fn on_block_frame(&mut self, out: &mut Vec<u8>) {
        let h = &self.header;
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        self.header.clear();
        let mut payload = &self.held[self.payload_start..];
        if kind == HEADERS {
            if flags & PADDED != 0 {
                let Some((&pad, rest)) = payload.split_first() else {
                    return self.step_aside(out);
                };
                let Some(unpadded) = rest.len().checked_sub(pad as usize) else {
                    return self.step_aside(out);
                };
                payload = &rest[..unpadded];
            }
            let mut priority = None;
            if flags & PRIORITY != 0 {
                let Some((p, rest)) = payload.split_first_chunk::<5>() else {
                    return self.step_aside(out);
                };
                priority = Some(*p);
                payload = rest;
            }
            self.first = Some((stream, flags, priority));
        } else if self.first.is_some_and(|(s, _, _)| s != stream) {
            return self.step_aside(out);
        }
        self.block.extend_from_slice(payload);
        if flags & END_HEADERS == 0 {
            self.state = State::FrameHeader;
            return;
        }
        let Ok(mut headers) = self.decoder.decode(&self.block) else {
            return self.step_aside(out);
        };
        for (name, value) in &mut headers {
            if name == b":authority" && http::uri::Authority::try_from(value.as_slice()).is_err() {
                *value = PLACEHOLDER.to_vec();
            }
        }
        let (stream, flags, priority) = self.first.take().expect("set by the HEADERS frame");
        write_block(out, stream, flags, priority, &hpack::encode(&headers));
        self.held.clear();
        self.block.clear();
        self.state = State::FrameHeader;
    }
}

fn frame_len(header: &[u8]) -> usize {
    (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2])
}

/// Writes a header block as HEADERS + CONTINUATION frames.
fn write_block(out: &mut Vec<u8>, stream: u32, flags: u8, priority: Option<[u8; 5]>, block: &[u8]) {
    let mut chunks = block.chunks(OUT_FRAME).peekable();
    let mut kind = HEADERS;
    let mut flags = flags & (END_STREAM | PRIORITY);
    loop {
        let chunk = chunks.next().unwrap_or_default();
        let last = chunks.peek().is_none();
        let prio: &[u8] = match (kind, &priority) {
            (HEADERS, Some(p)) => p,
            _ => &[],
        };
        let len = (prio.len() + chunk.len()) as u32;
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags | if last { END_HEADERS } else { 0 });
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(prio);
        out.extend_from_slice(chunk);
        if last {
            return;
        }
        kind = CONTINUATION;
        flags = 0;
    }
}

/// When a connection last sent a byte.
#[derive(Clone)]
pub struct Activity {
    base: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            base: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Activity {
    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }

    /// Resolves once the connection has sent nothing for `limit`.
    pub async fn idle(&self, limit: Duration) {
        loop {
            let silent = self.silent_for();
            if silent >= limit {
                return;
            }
            tokio::time::sleep(limit - silent).await;
        }
    }
}

/// A client connection as hyper reads it: [`Rewriter`] on the way in,
/// writes untouched.
pub struct Conn<S> {
    io: S,
    rewriter: Rewriter,
    /// Rewritten bytes hyper has not read yet; freed once drained, so a
    /// quiet connection holds no buffer of its own.
    ready: Vec<u8>,
    ready_pos: usize,
    activity: Activity,
}

/// Bytes read from the socket at a time, into a buffer on the stack: a
/// buffer per connection (64 KiB, zeroed) made 2,000 silent connections
/// cost 140 MiB.
const READ_CHUNK: usize = 32 << 10;

impl<S> Conn<S> {
    pub fn new(io: S, activity: Activity) -> Conn<S> {
        Conn {
            io,
            rewriter: Rewriter::default(),
            ready: Vec::new(),
            ready_pos: 0,
            activity,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_pos < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_pos);
                buf.put_slice(&this.ready[this.ready_pos..this.ready_pos + n]);
                this.ready_pos += n;
                if this.ready_pos == this.ready.len() {
                    this.ready = Vec::new();
                    this.ready_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut tmp = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut tmp))?;
            if tmp.filled().is_empty() {
                return Poll::Ready(Ok(())); // EOF
            }
            this.activity.touch();
            this.rewriter.feed(tmp.filled(), &mut this.ready);
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    fn h(n: &str, v: &str) -> hpack::Header {
        (n.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    /// Splits a stream into frames: (kind, flags, stream, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = frame_len(bytes);
            let sid = u32::from_be_bytes(bytes[5..9].try_into().unwrap());
            out.push((bytes[3], bytes[4], sid, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        out
    }

    /// Feeds `input` in chunks of `step` bytes.
    fn rewrite(input: &[u8], step: usize) -> Vec<u8> {
        let mut r = Rewriter::default();
        let mut out = Vec::new();
        for chunk in input.chunks(step) {
            r.feed(chunk, &mut out);
        }
        out
    }

    #[test]
    fn a_socket_path_authority_becomes_localhost_and_the_rest_passes() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
        // HEADERS, padded, with priority: :method POST (indexed), a
        // percent-encoded authority added to the dynamic table, then a
        // CONTINUATION with content-type (literal, indexed name 31).
        let mut block = vec![0x83, 0x41, 24];
        block.extend(b"run%2Fcrius%2Fcrius.sock");
        let mut payload = vec![3]; // pad length
        payload.extend([0x80, 0, 0, 1, 16]); // priority
        payload.extend(&block);
        payload.extend([0, 0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY, 1, &payload));
        let mut rest = vec![0x0f, 0x10, 16];
        rest.extend(b"application/grpc");
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &rest));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"));
        // A second request refers to the authority through the table.
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &[0x83, 0xbe]));

        for step in [1, 7, 4096] {
            let out = rewrite(&input, step);
            assert!(out.starts_with(PREFACE));
            let f = frames(&out[PREFACE.len()..]);
            assert_eq!(f.len(), 4, "{f:?}");
            assert_eq!(f[0], (0x4, 0, 0, vec![0, 3, 0, 0, 0, 100]));
            let mut d = hpack::Decoder::default();
            let (kind, flags, sid, payload) = &f[1];
            assert_eq!((*kind, *flags, *sid), (HEADERS, PRIORITY | END_HEADERS, 1));
            assert_eq!(payload[..5], [0x80, 0, 0, 1, 16]);
            assert_eq!(
                d.decode(&payload[5..]).unwrap(),
                [
                    h(":method", "POST"),
                    h(":authority", "localhost"),
                    h("content-type", "application/grpc")
                ]
            );
            assert_eq!(f[2], (0x0, END_STREAM, 1, b"\0\0\0\0\0".to_vec()));
            let (_, flags, sid, payload) = &f[3];
            assert_eq!((*flags, *sid), (END_HEADERS | END_STREAM, 3));
            assert_eq!(
                d.decode(payload).unwrap(),
                [h(":method", "POST"), h(":authority", "localhost")]
            );
        }
    }

    #[test]
    fn a_valid_authority_is_kept_and_big_blocks_are_split() {
        let mut input = PREFACE.to_vec();
        let mut block = vec![0x01, 5];
        block.extend(b"crius");
        block.extend([0x00, 1, b'x', 0x7f, 0x81, 0xa0, 0x01]); // 20608 bytes
        block.extend(std::iter::repeat_n(b'v', 20608));
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        let out = rewrite(&input, 1000);
        let f = frames(&out[PREFACE.len()..]);
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].0, f[0].1), (HEADERS, 0));
        assert_eq!((f[1].0, f[1].1), (CONTINUATION, END_HEADERS));
        let block: Vec<u8> = [f[0].3.clone(), f[1].3.clone()].concat();
        let headers = hpack::Decoder::default().decode(&block).unwrap();
        assert_eq!(headers[0], h(":authority", "crius"));
        assert_eq!(headers[1].1.len(), 20608);
    }

    #[test]
    fn what_cannot_be_followed_passes_unchanged() {
        // A bad preface.
        let junk = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        assert_eq!(rewrite(&junk, 3), junk);
        // An undecodable block, then anything.
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff]));
        input.extend(frame(0x0, 0, 1, b"data"));
        assert_eq!(rewrite(&input, 5), input);
        // A DATA frame in the middle of a header block.
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &[0x83]));
        input.extend(frame(0x0, 0, 1, b"data"));
        assert_eq!(rewrite(&input, 2), input);
        // A CONTINUATION with no HEADERS before it.
        let mut input = PREFACE.to_vec();
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &[0x83]));
        assert_eq!(rewrite(&input, 64), input);
        // A padding length larger than the frame.
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS | PADDED, 1, &[9, 0x83]));
        assert_eq!(rewrite(&input, 64), input);
        // A block larger than the bound.
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &vec![0x83; MAX_BLOCK]));
        assert_eq!(rewrite(&input, 4096), input);
    }
}
