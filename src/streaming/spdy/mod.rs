//! SPDY/3.1, server side, as far as Kubernetes uses it: the framer
//! ([`frame`]), header blocks and their compression ([`headers`]) and a
//! session that accepts the streams a client opens ([`session`]).
//!
//! No maintained Rust crate implements SPDY/3.1; the protocol subset the
//! Go peers use is small, so it lives here.

pub mod frame;
pub mod headers;
pub mod session;

pub use session::{Session, Stream, StreamReader, StreamWriter};

/// The fuzz target's seed corpus (`fuzz/seeds/spdy_frame/`): the frames of
/// the unit tests as a Kubernetes client sends them, one session per file.
#[cfg(test)]
mod fuzz_seeds {
    use std::path::PathBuf;

    use bytes::Bytes;

    use super::frame::{self, FLAG_FIN, Frame, RST_CANCEL};
    use super::headers::{Deflater, Inflater};

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/spdy_frame")
    }

    fn session(frames: &[Frame]) -> Vec<u8> {
        let mut wire = Vec::new();
        for f in frames {
            frame::encode(f, &mut wire);
        }
        wire
    }

    /// Each seed: a name and the bytes of one client session.
    fn seeds() -> Vec<(&'static str, Vec<u8>)> {
        let mut z = Deflater::new();
        let mut open = |id: u32, kind: &str| Frame::SynStream {
            stream_id: id,
            associated_id: 0,
            priority: 0,
            flags: 0,
            block: z
                .compress(&vec![
                    ("streamtype".into(), kind.into()),
                    ("port".into(), "8080".into()),
                    ("requestid".into(), "0".into()),
                ])
                .into(),
        };
        let exec = vec![
            open(1, "error"),
            open(3, "stdin"),
            open(5, "stdout"),
            open(7, "resize"),
            Frame::Data {
                stream_id: 3,
                fin: true,
                data: Bytes::from_static(b"echo hello\n"),
            },
            Frame::Data {
                stream_id: 7,
                fin: false,
                data: Bytes::from_static(b"{\"Width\":80,\"Height\":24}"),
            },
            Frame::RstStream {
                stream_id: 5,
                status: RST_CANCEL,
            },
        ];
        let control = vec![
            Frame::Settings {
                entries: vec![(0, 7, 65536)],
            },
            Frame::Ping { id: 1 },
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 1000,
            },
            Frame::SynReply {
                stream_id: 1,
                fin: false,
                block: Bytes::new(),
            },
            Frame::Headers {
                stream_id: 1,
                fin: true,
                block: Bytes::new(),
            },
            Frame::Unknown { kind: 0x42 },
            Frame::GoAway {
                last_good_id: 9,
                status: 0,
            },
        ];
        let data = vec![Frame::Data {
            stream_id: 5,
            fin: true,
            data: Bytes::from_static(b"hello"),
        }];
        let syn_fin = vec![Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 2,
            flags: FLAG_FIN,
            block: Bytes::from_static(b"\x78\x9c"),
        }];
        vec![
            ("exec-session", session(&exec)),
            ("control-frames", session(&control)),
            ("data-frame", session(&data)),
            ("syn-stream-fin", session(&syn_fin)),
        ]
    }

    /// Every committed seed is the session it is generated from (so a
    /// change of the framer that changes the wire shows here), and each
    /// parses whole, its header blocks inflating with one context.
    #[test]
    fn the_committed_seeds_are_current_and_parse() {
        for (name, bytes) in seeds() {
            let path = dir().join(name);
            let committed = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "read {}: {e} (regenerate: see write_fuzz_seeds)",
                    path.display()
                )
            });
            assert_eq!(committed, bytes, "{name} is stale: run write_fuzz_seeds");
            let mut rest = &bytes[..];
            let mut z = Inflater::new();
            while !rest.is_empty() {
                let (f, used) = frame::parse(rest).unwrap().expect("a whole frame");
                if let Frame::SynStream { block, .. } = &f
                    && name == "exec-session"
                {
                    z.decompress(block).unwrap();
                }
                rest = &rest[used..];
            }
        }
    }

    /// Writes the seeds: `cargo test --lib write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore = "writes into the source tree; run by hand after a wire change"]
    fn write_fuzz_seeds() {
        std::fs::create_dir_all(dir()).unwrap();
        for (name, bytes) in seeds() {
            std::fs::write(dir().join(name), bytes).unwrap();
        }
    }
}
