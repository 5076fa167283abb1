//! SPDY/3 header blocks: the name/value block format and its zlib
//! compression with the SPDY/3 dictionary (draft 3.1, section 2.6.10).
//!
//! A session has one compression context per direction that lives as long
//! as the session: every block is deflated with a sync flush on the same
//! stream, and the peer inflates it on its one stream. A second context or
//! a reset per block breaks the Go peer (moby/spdystream) at its second
//! frame. Inflated blocks are bounded ([`MAX_BLOCK`]) so a small
//! compressed frame cannot make the daemon allocate without limit.

use std::sync::LazyLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The largest inflated header block accepted. Kubernetes streams carry a
/// handful of short headers.
pub const MAX_BLOCK: usize = 64 * 1024;

/// Names of the length-prefixed entries at the start of the dictionary.
const DICT_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The unprefixed values that end the dictionary.
const DICT_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
    "501 Not Implemented503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,",
    "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch",
    "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

/// The SPDY/3 zlib dictionary (1423 bytes): each word with a 32-bit
/// big-endian length in front, then the tail as is.
pub static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut d = Vec::with_capacity(1423);
    for w in DICT_WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(DICT_TAIL.as_bytes());
    d
});

/// Header names and values; a name may repeat (a NUL-joined value list on
/// the wire is split into several pairs).
pub type Headers = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("spdy header block: {0}")]
    Zlib(String),
    #[error("spdy header block inflates beyond {MAX_BLOCK} bytes")]
    TooLarge,
    #[error("spdy header block is malformed: {0}")]
    Malformed(&'static str),
}

/// The sending side's compression context.
pub struct Deflater {
    z: Compress,
}

impl Default for Deflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Deflater {
    pub fn new() -> Deflater {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(&DICTIONARY)
            .expect("a fresh deflate stream takes a dictionary");
        Deflater { z }
    }

    /// The compressed form of `headers`, sync-flushed so the peer can
    /// inflate it at once.
    pub fn compress(&mut self, headers: &Headers) -> Vec<u8> {
        let plain = encode_block(headers);
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut input = &plain[..];
        loop {
            out.reserve(256);
            let before_in = self.z.total_in();
            let before_out = self.z.total_out();
            self.z
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .expect("deflate of an in-memory buffer");
            let used = (self.z.total_in() - before_in) as usize;
            input = &input[used..];
            let wrote = self.z.total_out() - before_out;
            // Done once all input is in and the flush left spare room.
            if input.is_empty() && out.len() < out.capacity() && wrote > 0 {
                return out;
            }
        }
    }
}

/// The receiving side's decompression context.
pub struct Inflater {
    z: Decompress,
}

impl Default for Inflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Inflater {
    pub fn new() -> Inflater {
        Inflater {
            z: Decompress::new(true),
        }
    }

    /// Inflates one block and parses it. An error poisons the context: the
    /// session must end (the peer's next block depends on this one).
    pub fn decompress(&mut self, block: &[u8]) -> Result<Headers, HeaderError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_BLOCK {
                    return Err(HeaderError::TooLarge);
                }
                out.reserve((out.len() * 2).min(MAX_BLOCK) - out.len() + 1);
            }
            let before_in = self.z.total_in();
            let result = self
                .z
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (self.z.total_in() - before_in) as usize;
            input = &input[used..];
            match result {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {
                    if input.is_empty() && out.len() < out.capacity() {
                        break;
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| HeaderError::Zlib(e.to_string()))?;
                }
                Err(e) => return Err(HeaderError::Zlib(e.to_string())),
            }
        }
        if out.len() > MAX_BLOCK {
            return Err(HeaderError::TooLarge);
        }
        decode_block(&out)
    }
}

/// The uncompressed block: a 32-bit pair count, then length-prefixed names
/// and values. Pairs with the same name are joined by NUL, as the spec
/// requires a name to appear once.
pub fn encode_block(headers: &Headers) -> Vec<u8> {
    let mut names: Vec<&str> = Vec::new();
    for (n, _) in headers {
        if !names.contains(&n.as_str()) {
            names.push(n);
        }
    }
    let mut out = (names.len() as u32).to_be_bytes().to_vec();
    for name in names {
        let values: Vec<&str> = headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        let value = values.join("\0");
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Parses an uncompressed block; names are lower-cased (HTTP header names
/// are case-insensitive, and the Go peer sends canonical case).
pub fn decode_block(b: &[u8]) -> Result<Headers, HeaderError> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], HeaderError> {
        let end = at
            .checked_add(n)
            .filter(|end| *end <= b.len())
            .ok_or(HeaderError::Malformed("truncated"))?;
        let s = &b[at..end];
        at = end;
        Ok(s)
    };
    let word = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize;
    let count = word(take(4)?);
    // Each pair needs at least 8 bytes: refuse absurd counts up front.
    if count > b.len() / 8 {
        return Err(HeaderError::Malformed("pair count exceeds the block"));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let n = word(take(4)?);
        let name = std::str::from_utf8(take(n)?)
            .map_err(|_| HeaderError::Malformed("name is not UTF-8"))?
            .to_ascii_lowercase();
        if name.is_empty() {
            return Err(HeaderError::Malformed("empty name"));
        }
        let n = word(take(4)?);
        let value = String::from_utf8_lossy(take(n)?).into_owned();
        for v in value.split('\0') {
            headers.push((name.clone(), v.to_string()));
        }
    }
    Ok(headers)
}

/// The first value of `name` (lower case).
pub fn get<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sha2::Digest;

    #[test]
    fn dictionary_is_the_spdy3_one() {
        // Length and digest of the dictionary in the SPDY/3 draft (and
        // moby/spdystream's headerDictionary).
        assert_eq!(DICTIONARY.len(), 1423);
        let digest = crate::ids::hex(&sha2::Sha256::digest(&*DICTIONARY));
        assert_eq!(
            digest,
            "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
        );
    }

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn one_context_per_direction_across_blocks() {
        let mut d = Deflater::new();
        let mut i = Inflater::new();
        for n in 0..20 {
            let headers = h(&[("streamtype", "stdout"), ("port", &n.to_string())]);
            let block = d.compress(&headers);
            assert_eq!(i.decompress(&block).unwrap(), headers);
        }
        // A fresh inflater cannot read the stream from its middle.
        let block = d.compress(&h(&[("a", "b")]));
        assert!(Inflater::new().decompress(&block).is_err());
    }

    #[test]
    fn the_first_block_asks_for_the_dictionary() {
        // FDICT set in the zlib header, with the dictionary's adler32.
        let block = Deflater::new().compress(&h(&[("streamtype", "error")]));
        assert_eq!(block[1] & 0x20, 0x20);
        let (mut a, mut b) = (1u32, 0u32);
        for byte in DICTIONARY.iter() {
            a = (a + u32::from(*byte)) % 65521;
            b = (b + a) % 65521;
        }
        let adler = (b << 16) | a;
        assert_eq!(u32::from_be_bytes(block[2..6].try_into().unwrap()), adler);
    }

    #[test]
    fn repeated_names_join_with_nul() {
        let headers = h(&[
            ("x-stream-protocol-version", "v4"),
            ("x-stream-protocol-version", "v3"),
        ]);
        let block = encode_block(&headers);
        assert_eq!(decode_block(&block).unwrap(), headers);
        assert_eq!(u32::from_be_bytes(block[..4].try_into().unwrap()), 1);
    }

    #[test]
    fn malformed_blocks_are_errors() {
        assert!(decode_block(&[0, 0, 0]).is_err());
        assert!(decode_block(&[0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode_block(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']).is_err());
        assert!(Inflater::new().decompress(b"not zlib").is_err());
    }

    #[test]
    fn a_zip_bomb_is_refused() {
        let mut d = Deflater::new();
        let big = "x".repeat(MAX_BLOCK * 2);
        let block = d.compress(&h(&[("a", &big)]));
        assert!(block.len() < MAX_BLOCK / 8);
        assert_eq!(
            Inflater::new().decompress(&block),
            Err(HeaderError::TooLarge)
        );
    }

    proptest! {
        #[test]
        fn blocks_round_trip(pairs in proptest::collection::vec(("[a-z][a-z0-9-]{0,20}", "[ -~]{0,40}"), 0..12)) {
            let mut seen = std::collections::HashSet::new();
            // One value per name keeps the comparison exact.
            let headers: Headers = pairs.into_iter().filter(|(n, _)| seen.insert(n.clone())).collect();
            let mut d = Deflater::new();
            let mut i = Inflater::new();
            prop_assert_eq!(i.decompress(&d.compress(&headers)).unwrap(), headers.clone());
            prop_assert_eq!(i.decompress(&d.compress(&headers)).unwrap(), headers);
        }

        #[test]
        fn arbitrary_blocks_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_block(&bytes);
            let _ = Inflater::new().decompress(&bytes);
        }
    }
}
