//! Fuzz target: the SPDY/3.1 frame parser and header-block inflater, fed
//! whatever bytes a hostile peer could send on a streaming connection.
//!
//! The parser modules are compiled from crius's own source files
//! (`src/streaming/spdy/frame.rs` and `headers.rs`, which use nothing of
//! the crate but each other), so the fuzzer exercises exactly the code the
//! daemon runs, without building the whole daemon with coverage
//! instrumentation.
//!
//! Checked for every input: parsing never panics and never consumes more
//! than it was given; a parsed frame re-encodes to bytes that parse to the
//! same frame; a header block is inflated by one context per session (as
//! the session does) and bounded, and what it inflates to survives a
//! compress / inflate round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/streaming/spdy/frame.rs"]
#[allow(dead_code)]
mod frame;
#[path = "../../src/streaming/spdy/headers.rs"]
#[allow(dead_code)]
mod headers;

use frame::Frame;

fuzz_target!(|data: &[u8]| {
    let mut inflater = Some(headers::Inflater::new());
    let mut rest = data;
    while let Ok(Some((f, used))) = frame::parse(rest) {
        assert!(
            used >= 8 && used <= rest.len(),
            "used {used} of {}",
            rest.len()
        );
        let mut wire = Vec::new();
        frame::encode(&f, &mut wire);
        let again = frame::parse(&wire).expect("a re-encoded frame parses");
        assert_eq!(again, Some((f.clone(), wire.len())));
        if let Frame::SynStream { block, .. }
        | Frame::SynReply { block, .. }
        | Frame::Headers { block, .. } = &f
            && let Some(z) = inflater.as_mut()
        {
            match z.decompress(block) {
                Ok(h) => {
                    let plain = headers::encode_block(&h);
                    assert!(plain.len() <= headers::MAX_BLOCK);
                    let mut d = headers::Deflater::new();
                    let mut i = headers::Inflater::new();
                    let back = i
                        .decompress(&d.compress(&h))
                        .expect("our own block inflates");
                    assert_eq!(headers::encode_block(&back), plain);
                }
                // An error ends the session: the context is poisoned.
                Err(_) => inflater = None,
            }
        }
        rest = &rest[used..];
    }
});
