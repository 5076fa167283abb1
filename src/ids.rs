//! Ids of pods, containers and exec sessions: 64 lower-case hex digits, as
//! containerd and CRI-O make them, and the unique-prefix lookup that lets
//! crictl users paste the 13-character ids `crictl ps` prints.

use std::io::Read;

use crate::error::{Classify, Kind};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("empty id")]
    Empty,
    #[error("id prefix {0:?} is ambiguous: it matches {1} ids")]
    Ambiguous(String, usize),
}

impl Classify for Error {
    fn kind(&self) -> Kind {
        Kind::InvalidArgument
    }
}

/// A new random id (256 bits from the kernel's CSPRNG).
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom is readable");
    hex(&bytes)
}

/// A name [`new_id`] makes: 64 hex digits.
pub fn is_id(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Resolves `prefix` among `ids`: an exact match wins, else the one id that
/// starts with it. `Ok(None)` when nothing matches; callers decide whether
/// that is NotFound or (for Stop/Remove) success.
pub fn resolve<'a, I>(prefix: &str, ids: I) -> Result<Option<&'a str>, Error>
where
    I: IntoIterator<Item = &'a str>,
{
    if prefix.is_empty() {
        return Err(Error::Empty);
    }
    let mut found = None;
    let mut count = 0;
    for id in ids {
        if id == prefix {
            return Ok(Some(id));
        }
        if id.starts_with(prefix) {
            count += 1;
            found = Some(id);
        }
    }
    match count {
        0 | 1 => Ok(found),
        n => Err(Error::Ambiguous(prefix.to_string(), n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_hex() {
        let a = new_id();
        assert_eq!(a.len(), 64);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, new_id());
    }

    #[test]
    fn prefix_resolution() {
        let ids = ["abc123", "abd456", "abc"];
        assert_eq!(resolve("abd", ids), Ok(Some("abd456")));
        assert_eq!(resolve("abc", ids), Ok(Some("abc")), "exact match wins");
        assert_eq!(resolve("zz", ids), Ok(None));
        assert_eq!(resolve("ab", ids), Err(Error::Ambiguous("ab".into(), 3)));
        assert_eq!(resolve("", ids), Err(Error::Empty));
    }
}
