//! SPDY/3.1 framing: the 8-byte frame header, the control frames a
//! Kubernetes peer sends (SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS,
//! PING, GOAWAY, HEADERS, WINDOW_UPDATE) and data frames.
//!
//! Spec: SPDY Protocol draft 3.1, section 2 (framing) and 2.6 (control
//! frames). The parser is pure (bytes in, frame out) so that it can be
//! fuzzed; it never trusts a length: every frame is bounded by
//! [`MAX_FRAME_LEN`] and every field is checked against the frame's length.
//! Header blocks stay compressed here; `headers.rs` inflates them.
//! Unknown control frame types parse as [`Frame::Unknown`] (the spec says
//! to ignore them).

use bytes::Bytes;

/// The protocol version in every control frame.
pub const VERSION: u16 = 3;
/// The largest frame payload accepted. The Go peers (moby/spdystream)
/// write data in 32 KiB chunks and header blocks of a few hundred bytes,
/// so 1 MiB leaves room while bounding what one frame can make us buffer.
pub const MAX_FRAME_LEN: usize = 1 << 20;

pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes (section 2.6.3).
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_CANCEL: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
    SynStream {
        stream_id: u32,
        associated_id: u32,
        priority: u8,
        flags: u8,
        /// The compressed header block.
        block: Bytes,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        block: Bytes,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    /// Settings are parsed for validation only: the Go peer sends none
    /// that matter, and crius never waits on a window.
    Settings {
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        block: Bytes,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    /// A control frame of a type this implementation does not know.
    Unknown {
        kind: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("spdy frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    TooLarge(usize),
    #[error("spdy control frame of unsupported version {0}")]
    Version(u16),
    #[error("spdy {what} frame too short: {len} bytes")]
    Short { what: &'static str, len: usize },
    #[error("spdy {what} frame carries stream id 0")]
    ZeroStream { what: &'static str },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses one frame from the front of `buf`. `Ok(None)`: more bytes are
/// needed; `Ok(Some((frame, used)))`: `used` bytes were consumed. An error
/// is a protocol error: the session must end.
pub fn parse(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let flags = buf[4];
    let len = (u32_at(buf, 4) & 0x00ff_ffff) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    if buf.len() < 8 + len {
        return Ok(None);
    }
    let body = &buf[8..8 + len];
    let used = 8 + len;
    if buf[0] & 0x80 == 0 {
        let stream_id = u32_at(buf, 0) & 0x7fff_ffff;
        if stream_id == 0 {
            return Err(FrameError::ZeroStream { what: "data" });
        }
        let frame = Frame::Data {
            stream_id,
            fin: flags & FLAG_FIN != 0,
            data: Bytes::copy_from_slice(body),
        };
        return Ok(Some((frame, used)));
    }
    let version = u16::from_be_bytes([buf[0], buf[1]]) & 0x7fff;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let kind = u16::from_be_bytes([buf[2], buf[3]]);
    let need = |what: &'static str, n: usize| {
        if len < n {
            Err(FrameError::Short { what, len })
        } else {
            Ok(())
        }
    };
    let stream = |what: &'static str| {
        let id = u32_at(body, 0) & 0x7fff_ffff;
        if id == 0 {
            Err(FrameError::ZeroStream { what })
        } else {
            Ok(id)
        }
    };
    let fin = flags & FLAG_FIN != 0;
    let frame = match kind {
        SYN_STREAM => {
            need("SYN_STREAM", 10)?;
            Frame::SynStream {
                stream_id: stream("SYN_STREAM")?,
                associated_id: u32_at(body, 4) & 0x7fff_ffff,
                priority: body[8] >> 5,
                flags,
                block: Bytes::copy_from_slice(&body[10..]),
            }
        }
        SYN_REPLY => {
            need("SYN_REPLY", 4)?;
            Frame::SynReply {
                stream_id: stream("SYN_REPLY")?,
                fin,
                block: Bytes::copy_from_slice(&body[4..]),
            }
        }
        RST_STREAM => {
            need("RST_STREAM", 8)?;
            Frame::RstStream {
                stream_id: u32_at(body, 0) & 0x7fff_ffff,
                status: u32_at(body, 4),
            }
        }
        SETTINGS => {
            need("SETTINGS", 4)?;
            let count = u32_at(body, 0) as usize;
            // Each entry is 8 bytes; the count must fit the frame.
            if count > (len - 4) / 8 {
                return Err(FrameError::Short {
                    what: "SETTINGS",
                    len,
                });
            }
            let entries = (0..count)
                .map(|i| {
                    let at = 4 + i * 8;
                    let head = u32_at(body, at);
                    ((head >> 24) as u8, head & 0x00ff_ffff, u32_at(body, at + 4))
                })
                .collect();
            Frame::Settings { entries }
        }
        PING => {
            need("PING", 4)?;
            Frame::Ping {
                id: u32_at(body, 0),
            }
        }
        GOAWAY => {
            // SPDY/3 adds a status code; accept the 4-byte SPDY/2 form too.
            need("GOAWAY", 4)?;
            Frame::GoAway {
                last_good_id: u32_at(body, 0) & 0x7fff_ffff,
                status: if len >= 8 { u32_at(body, 4) } else { 0 },
            }
        }
        HEADERS => {
            need("HEADERS", 4)?;
            Frame::Headers {
                stream_id: stream("HEADERS")?,
                fin,
                block: Bytes::copy_from_slice(&body[4..]),
            }
        }
        WINDOW_UPDATE => {
            need("WINDOW_UPDATE", 8)?;
            Frame::WindowUpdate {
                stream_id: u32_at(body, 0) & 0x7fff_ffff,
                delta: u32_at(body, 4) & 0x7fff_ffff,
            }
        }
        kind => Frame::Unknown { kind },
    };
    Ok(Some((frame, used)))
}

fn control(out: &mut Vec<u8>, kind: u16, flags: u8, body: &[&[u8]]) {
    let len: usize = body.iter().map(|b| b.len()).sum();
    debug_assert!(len <= 0x00ff_ffff);
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&((u32::from(flags) << 24) | len as u32).to_be_bytes());
    for b in body {
        out.extend_from_slice(b);
    }
}

/// Appends the wire form of `frame` to `out`. Payloads longer than 24
/// bits are the caller's bug (the session splits data into chunks).
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    match frame {
        Frame::Data {
            stream_id,
            fin,
            data,
        } => {
            debug_assert!(data.len() <= 0x00ff_ffff);
            out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
            let flags = if *fin { FLAG_FIN } else { 0 };
            out.extend_from_slice(&((u32::from(flags) << 24) | data.len() as u32).to_be_bytes());
            out.extend_from_slice(data);
        }
        Frame::SynStream {
            stream_id,
            associated_id,
            priority,
            flags,
            block,
        } => control(
            out,
            SYN_STREAM,
            *flags,
            &[
                &stream_id.to_be_bytes(),
                &associated_id.to_be_bytes(),
                &[(priority & 0x7) << 5, 0],
                block,
            ],
        ),
        Frame::SynReply {
            stream_id,
            fin,
            block,
        } => control(
            out,
            SYN_REPLY,
            if *fin { FLAG_FIN } else { 0 },
            &[&stream_id.to_be_bytes(), block],
        ),
        Frame::RstStream { stream_id, status } => control(
            out,
            RST_STREAM,
            0,
            &[&stream_id.to_be_bytes(), &status.to_be_bytes()],
        ),
        Frame::Settings { entries } => {
            let mut body = (entries.len() as u32).to_be_bytes().to_vec();
            for (flags, id, value) in entries {
                body.extend_from_slice(
                    &((u32::from(*flags) << 24) | (id & 0x00ff_ffff)).to_be_bytes(),
                );
                body.extend_from_slice(&value.to_be_bytes());
            }
            control(out, SETTINGS, 0, &[&body]);
        }
        Frame::Ping { id } => control(out, PING, 0, &[&id.to_be_bytes()]),
        Frame::GoAway {
            last_good_id,
            status,
        } => control(
            out,
            GOAWAY,
            0,
            &[&last_good_id.to_be_bytes(), &status.to_be_bytes()],
        ),
        Frame::Headers {
            stream_id,
            fin,
            block,
        } => control(
            out,
            HEADERS,
            if *fin { FLAG_FIN } else { 0 },
            &[&stream_id.to_be_bytes(), block],
        ),
        Frame::WindowUpdate { stream_id, delta } => control(
            out,
            WINDOW_UPDATE,
            0,
            &[&stream_id.to_be_bytes(), &delta.to_be_bytes()],
        ),
        Frame::Unknown { kind } => control(out, *kind, 0, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(frame: Frame) {
        let mut wire = Vec::new();
        encode(&frame, &mut wire);
        let (back, used) = parse(&wire).unwrap().unwrap();
        assert_eq!(used, wire.len());
        assert_eq!(back, frame);
        // Every strict prefix asks for more bytes.
        for cut in 0..wire.len() {
            assert_eq!(parse(&wire[..cut]).unwrap(), None, "prefix {cut}");
        }
    }

    #[test]
    fn frames_round_trip() {
        round_trip(Frame::Data {
            stream_id: 5,
            fin: true,
            data: Bytes::from_static(b"hello"),
        });
        round_trip(Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 2,
            flags: FLAG_FIN,
            block: Bytes::from_static(b"\x78\x9c"),
        });
        round_trip(Frame::SynReply {
            stream_id: 1,
            fin: false,
            block: Bytes::new(),
        });
        round_trip(Frame::RstStream {
            stream_id: 3,
            status: RST_CANCEL,
        });
        round_trip(Frame::Settings {
            entries: vec![(0, 7, 65536)],
        });
        round_trip(Frame::Ping { id: 2 });
        round_trip(Frame::GoAway {
            last_good_id: 9,
            status: 0,
        });
        round_trip(Frame::WindowUpdate {
            stream_id: 1,
            delta: 1000,
        });
        round_trip(Frame::Unknown { kind: 0x42 });
    }

    #[test]
    fn known_bytes_of_a_ping() {
        // 0x8003 version 3, type 6, no flags, length 4, id 1.
        let wire = [0x80, 0x03, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1];
        assert_eq!(
            parse(&wire).unwrap(),
            Some((Frame::Ping { id: 1 }, wire.len()))
        );
    }

    #[test]
    fn bad_frames_are_errors() {
        // Version 2.
        let wire = [0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1];
        assert_eq!(parse(&wire), Err(FrameError::Version(2)));
        // A length beyond the limit is refused before the body arrives.
        let wire = [0x00, 0, 0, 1, 0, 0xff, 0xff, 0xff];
        assert!(matches!(parse(&wire), Err(FrameError::TooLarge(_))));
        // A SYN_STREAM shorter than its fixed fields.
        let wire = [0x80, 0x03, 0x00, 0x01, 0, 0, 0, 4, 0, 0, 0, 1];
        assert!(matches!(parse(&wire), Err(FrameError::Short { .. })));
        // SETTINGS claiming more entries than it holds.
        let wire = [0x80, 0x03, 0x00, 0x04, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(parse(&wire), Err(FrameError::Short { .. })));
        // Data on stream 0.
        let wire = [0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(parse(&wire), Err(FrameError::ZeroStream { .. })));
    }

    proptest! {
        /// Whatever the bytes, parse returns (never panics), consumes no
        /// more than it was given, and what it parsed re-encodes to a frame
        /// that parses the same (a bounded, proptest-driven fuzz run).
        #[test]
        fn parse_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(Some((frame, used))) = parse(&bytes) {
                prop_assert!(used <= bytes.len());
                let mut wire = Vec::new();
                encode(&frame, &mut wire);
                let again = parse(&wire).unwrap().unwrap().0;
                prop_assert_eq!(again, frame);
            }
        }

        /// Frames built from arbitrary fields survive encode + parse, even
        /// when split at an arbitrary point.
        #[test]
        fn data_frames_round_trip(id in 1u32..0x7fff_ffff, fin: bool,
                                  data in proptest::collection::vec(any::<u8>(), 0..2048),
                                  cut in 0usize..2100) {
            let frame = Frame::Data { stream_id: id, fin, data: Bytes::from(data) };
            let mut wire = Vec::new();
            encode(&frame, &mut wire);
            let cut = cut.min(wire.len());
            if cut < wire.len() {
                prop_assert_eq!(parse(&wire[..cut]).unwrap(), None);
            }
            prop_assert_eq!(parse(&wire).unwrap(), Some((frame, wire.len())));
        }

        #[test]
        fn syn_streams_round_trip(id in 1u32..0x7fff_ffff, assoc in 0u32..0x7fff_ffff,
                                  priority in 0u8..8, flags in 0u8..4,
                                  block in proptest::collection::vec(any::<u8>(), 0..256)) {
            round_trip(Frame::SynStream { stream_id: id, associated_id: assoc, priority, flags,
                                          block: Bytes::from(block) });
        }
    }
}
