//! One async lock per pod or container id: create, stop, remove and update
//! of the same object run one at a time, while List and Status (which never
//! take these locks) answer from the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct IdLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl IdLocks {
    /// The lock of `id`, created on first use.
    pub fn of(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("lock poisoned")
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// Drops the lock of an object that is gone.
    pub fn forget(&self, id: &str) {
        self.locks.lock().expect("lock poisoned").remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lock_per_id_until_forgotten() {
        let locks = IdLocks::default();
        let a = locks.of("a");
        assert!(Arc::ptr_eq(&a, &locks.of("a")));
        assert!(!Arc::ptr_eq(&a, &locks.of("b")));
        let guard = a.try_lock().unwrap();
        assert!(locks.of("a").try_lock().is_err(), "held");
        drop(guard);
        locks.forget("a");
        assert!(!Arc::ptr_eq(&a, &locks.of("a")));
    }
}
