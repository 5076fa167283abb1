//! HPACK (RFC 7541), as much as [`super::authority`] needs: a decoder that
//! follows the client's dynamic table, and an encoder that writes plain
//! literals (no indexing, no Huffman), so the server's own decoder never
//! needs a dynamic table entry it was not given.
//!
//! Every length is bounded: a header block decodes to at most
//! [`MAX_DECODED`] bytes, a string to at most its block.

use std::collections::VecDeque;

/// The dynamic table size the server allows (SETTINGS_HEADER_TABLE_SIZE:
/// h2's default, which crius does not change).
pub const TABLE_SIZE: usize = 4096;

/// The most a decoded header list may hold (names + values + 32 each, as
/// RFC 7540 counts it); hyper's server refuses more than 16 KiB anyway.
pub const MAX_DECODED: usize = 64 << 10;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("truncated header block")]
    Truncated,
    #[error("integer overflow in header block")]
    Overflow,
    #[error("header index {0} is not in the table")]
    BadIndex(usize),
    #[error("invalid huffman code")]
    Huffman,
    #[error("table size update to {0} exceeds {TABLE_SIZE}")]
    TableSize(usize),
    #[error("header list larger than {MAX_DECODED} bytes")]
    TooLarge,
}

pub type Header = (Vec<u8>, Vec<u8>);

/// RFC 7541 Appendix A.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Code lengths of the HPACK Huffman code (RFC 7541 Appendix B), symbols
/// 0..=256 (256 is EOS). The code is canonical: codes follow from lengths.
#[rustfmt::skip]
const HUFFMAN_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5,
    6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23,
    23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20,
    22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22,
    22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26,
    27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25,
    25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

const MAX_CODE_LEN: usize = 30;

/// Canonical-code decoding tables: for each length, the first code, where
/// its symbols start in `symbols`, and how many there are.
struct Huffman {
    first: [u32; MAX_CODE_LEN + 1],
    offset: [usize; MAX_CODE_LEN + 1],
    count: [u32; MAX_CODE_LEN + 1],
    symbols: [u16; 257],
}

fn huffman() -> &'static Huffman {
    static TABLE: std::sync::OnceLock<Huffman> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut h = Huffman {
            first: [0; MAX_CODE_LEN + 1],
            offset: [0; MAX_CODE_LEN + 1],
            count: [0; MAX_CODE_LEN + 1],
            symbols: [0; 257],
        };
        for &len in &HUFFMAN_LENGTHS {
            h.count[len as usize] += 1;
        }
        let (mut code, mut offset) = (0u32, 0usize);
        for len in 1..=MAX_CODE_LEN {
            code <<= 1;
            h.first[len] = code;
            h.offset[len] = offset;
            code += h.count[len];
            offset += h.count[len] as usize;
        }
        let mut next = h.offset;
        for (sym, &len) in HUFFMAN_LENGTHS.iter().enumerate() {
            h.symbols[next[len as usize]] = sym as u16;
            next[len as usize] += 1;
        }
        h
    })
}

fn huffman_decode(input: &[u8]) -> Result<Vec<u8>, Error> {
    let h = huffman();
    let mut out = Vec::with_capacity(input.len() * 8 / 5);
    let (mut code, mut len) = (0u32, 0usize);
    for &byte in input {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let index = code.wrapping_sub(h.first[len]);
            if index < h.count[len] {
                let sym = h.symbols[h.offset[len] + index as usize];
                if sym == 256 {
                    return Err(Error::Huffman); // EOS inside a string
                }
                out.push(sym as u8);
                (code, len) = (0, 0);
            } else if len == MAX_CODE_LEN {
                return Err(Error::Huffman);
            }
        }
    }
    // Padding: fewer than 8 bits, all ones (a prefix of EOS).
    if len >= 8 || code != (1u32 << len) - 1 {
        return Err(Error::Huffman);
    }
    Ok(out)
}

/// Reads an integer with an `n`-bit prefix (RFC 7541 5.1).
fn integer(input: &[u8], pos: &mut usize, n: u8) -> Result<usize, Error> {
    let first = *input.get(*pos).ok_or(Error::Truncated)?;
    *pos += 1;
    let max = (1usize << n) - 1;
    let mut value = usize::from(first) & max;
    if value < max {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let b = *input.get(*pos).ok_or(Error::Truncated)?;
        *pos += 1;
        if shift > 21 {
            return Err(Error::Overflow);
        }
        value += usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
}

fn string(input: &[u8], pos: &mut usize) -> Result<Vec<u8>, Error> {
    let huffman = input.get(*pos).ok_or(Error::Truncated)? & 0x80 != 0;
    let len = integer(input, pos, 7)?;
    let end = pos.checked_add(len).ok_or(Error::Overflow)?;
    let raw = input.get(*pos..end).ok_or(Error::Truncated)?;
    *pos = end;
    if huffman {
        huffman_decode(raw)
    } else {
        Ok(raw.to_vec())
    }
}

/// The decoder side of one connection's HPACK context.
pub struct Decoder {
    table: VecDeque<Header>,
    size: usize,
    max: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max: TABLE_SIZE,
        }
    }
}

fn entry_size(h: &Header) -> usize {
    h.0.len() + h.1.len() + 32
}

impl Decoder {
    fn evict(&mut self) {
        while self.size > self.max {
            let old = self.table.pop_back().expect("size > 0 means entries");
            self.size -= entry_size(&old);
        }
    }

    fn get(&self, index: usize) -> Result<Header, Error> {
        match index {
            1..=61 => {
                let (n, v) = STATIC[index - 1];
                Ok((n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            }
            _ => index
                .checked_sub(62)
                .and_then(|i| self.table.get(i))
                .cloned()
                .ok_or(Error::BadIndex(index)),
        }
    }

    /// Decodes one complete header block.
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<Header>, Error> {
        let mut headers = Vec::new();
        let (mut pos, mut total) = (0, 0usize);
        while pos < block.len() {
            let b = block[pos];
            let header = if b & 0x80 != 0 {
                self.get(integer(block, &mut pos, 7)?)?
            } else if b & 0xe0 == 0x20 {
                let size = integer(block, &mut pos, 5)?;
                if size > TABLE_SIZE {
                    return Err(Error::TableSize(size));
                }
                self.max = size;
                self.evict();
                continue;
            } else {
                let indexing = b & 0xc0 == 0x40;
                let index = integer(block, &mut pos, if indexing { 6 } else { 4 })?;
                let name = match index {
                    0 => string(block, &mut pos)?,
                    i => self.get(i)?.0,
                };
                let header = (name, string(block, &mut pos)?);
                if indexing {
                    self.size += entry_size(&header);
                    self.table.push_front(header.clone());
                    self.evict();
                }
                header
            };
            total += entry_size(&header);
            if total > MAX_DECODED {
                return Err(Error::TooLarge);
            }
            headers.push(header);
        }
        Ok(headers)
    }
}

/// Encodes `headers` as literals without indexing, names and values raw.
pub fn encode(headers: &[Header]) -> Vec<u8> {
    fn int(out: &mut Vec<u8>, flags: u8, n: u8, mut value: usize) {
        let max = (1usize << n) - 1;
        if value < max {
            out.push(flags | value as u8);
            return;
        }
        out.push(flags | max as u8);
        value -= max;
        while value >= 0x80 {
            out.push((value as u8 & 0x7f) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name);
        int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn h(n: &str, v: &str) -> Header {
        (n.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    /// RFC 7541 C.4: three requests with Huffman coding and the dynamic table.
    #[test]
    fn rfc_7541_c4_requests_with_huffman() {
        let mut d = Decoder::default();
        let first = d
            .decode(&hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"))
            .unwrap();
        assert_eq!(
            first,
            [
                h(":method", "GET"),
                h(":scheme", "http"),
                h(":path", "/"),
                h(":authority", "www.example.com")
            ]
        );
        let second = d.decode(&hex("8286 84be 5886 a8eb 1064 9cbf")).unwrap();
        assert_eq!(second[3], h(":authority", "www.example.com"));
        assert_eq!(second[4], h("cache-control", "no-cache"));
        let third = d
            .decode(&hex(
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ))
            .unwrap();
        assert_eq!(third[2], h(":path", "/index.html"));
        assert_eq!(third[3], h(":authority", "www.example.com"));
        assert_eq!(third[4], h("custom-key", "custom-value"));
        assert_eq!(d.size, 164);
    }

    #[test]
    fn encode_decodes_back() {
        let headers = vec![
            h(":authority", "run%2Fcrius%2Fcrius.sock"),
            h("x", &"v".repeat(300)),
        ];
        assert_eq!(
            Decoder::default().decode(&encode(&headers)).unwrap(),
            headers
        );
    }

    #[test]
    fn hostile_blocks_are_errors() {
        let mut d = Decoder::default();
        assert_eq!(d.decode(&[0xbe]), Err(Error::BadIndex(62)));
        assert_eq!(d.decode(&[0x80]), Err(Error::BadIndex(0)));
        assert_eq!(d.decode(&[0x3f, 0xff, 0x7f]), Err(Error::TableSize(16414)));
        assert_eq!(
            d.decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(Error::Overflow)
        );
        assert_eq!(d.decode(&[0x00, 0x05, b'a']), Err(Error::Truncated));
        // Huffman padding longer than 7 bits, and not all ones.
        assert_eq!(d.decode(&[0x00, 0x82, 0xff, 0xff]), Err(Error::Huffman));
        assert_eq!(d.decode(&[0x00, 0x81, 0x00]), Err(Error::Huffman));
        // An indexed entry repeated past the bound.
        let mut bomb = vec![0x40, 0x01, b'a', 0x7f, 0xa1, 0x1e];
        bomb.extend(std::iter::repeat_n(b'v', 4000));
        bomb.extend(std::iter::repeat_n(0xbe, 100));
        assert_eq!(Decoder::default().decode(&bomb), Err(Error::TooLarge));
    }
}
