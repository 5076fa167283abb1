//! One-time tokens for streaming URLs: a CRI call stores its request under
//! a random token; the first HTTP request that presents the token takes it
//! (a second, or one after the expiry, finds nothing: 404).
//!
//! The cache is bounded like kubelet's (1000 requests in flight), expired
//! entries are dropped whenever the cache is touched.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Error, Request};

/// At most this many requests wait for their client.
pub const MAX_IN_FLIGHT: usize = 1000;

pub struct Tokens {
    ttl: Duration,
    map: Mutex<HashMap<String, (Request, Instant)>>,
}

impl Tokens {
    pub fn new(ttl: Duration) -> Tokens {
        Tokens {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Stores `req`; returns its token (256 random bits, hex).
    pub fn insert(&self, req: Request) -> Result<String, Error> {
        let now = Instant::now();
        let mut map = self.map.lock().expect("lock poisoned");
        map.retain(|_, (_, deadline)| *deadline > now);
        if map.len() >= MAX_IN_FLIGHT {
            return Err(Error::Exhausted(MAX_IN_FLIGHT));
        }
        let token = crate::ids::new_id();
        map.insert(token.clone(), (req, now + self.ttl));
        Ok(token)
    }

    /// Takes the request stored under `token` if it is of `kind` and has
    /// not expired; the token is spent either way.
    pub fn take(&self, kind: &str, token: &str) -> Option<Request> {
        let now = Instant::now();
        let mut map = self.map.lock().expect("lock poisoned");
        let (req, deadline) = map.remove(token)?;
        (deadline > now && req.kind() == kind).then_some(req)
    }

    pub fn len(&self) -> usize {
        self.map.lock().expect("lock poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf() -> Request {
        Request::PortForward { pod_id: "p".into() }
    }

    #[test]
    fn a_token_is_used_once() {
        let t = Tokens::new(Duration::from_secs(60));
        let token = t.insert(pf()).unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(t.take("portforward", &token), Some(pf()));
        assert_eq!(t.take("portforward", &token), None);
        assert_eq!(t.take("portforward", "nonsense"), None);
    }

    #[test]
    fn the_wrong_kind_spends_the_token() {
        let t = Tokens::new(Duration::from_secs(60));
        let token = t.insert(pf()).unwrap();
        assert_eq!(t.take("exec", &token), None);
        assert_eq!(t.take("portforward", &token), None);
    }

    #[test]
    fn tokens_expire() {
        let t = Tokens::new(Duration::from_millis(20));
        let token = t.insert(pf()).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(t.take("portforward", &token), None);
        // Expired entries do not count against the bound.
        t.insert(pf()).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        t.insert(pf()).unwrap();
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn the_cache_is_bounded() {
        let t = Tokens::new(Duration::from_secs(60));
        for _ in 0..MAX_IN_FLIGHT {
            t.insert(pf()).unwrap();
        }
        assert!(matches!(t.insert(pf()), Err(Error::Exhausted(_))));
    }
}
