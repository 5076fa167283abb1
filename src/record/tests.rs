//! The lifecycle with a toy kind: records named by key, steps that can
//! fail or wait, a rollback that counts.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;

use super::*;
use crate::error::{Classify, Kind as ErrorKind};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Toy {
    id: String,
    name: String,
    done: bool,
    claimed: bool,
    abandoned: bool,
    finished_at: i64,
}

impl Record for Toy {
    type Key = String;
    const TABLE: Table<Toy> = Table::new("toys");
    const KIND: &'static str = "toy";
    const CREATE_RPC: &'static str = "CreateToy";
    fn id(&self) -> &str {
        &self.id
    }
    fn key(&self) -> String {
        self.name.clone()
    }
    fn is_intent(&self) -> bool {
        !self.done
    }
    fn is_finished(&self) -> bool {
        self.done && !self.abandoned
    }
    fn claimed(&self) -> bool {
        self.claimed
    }
    fn set_claimed(&mut self) {
        self.claimed = true;
    }
    fn settled_at(&self) -> i64 {
        self.finished_at
    }
    fn abandon(&mut self, _: &str) {
        self.abandoned = true;
    }
}

#[derive(Debug, thiserror::Error)]
enum ToyError {
    #[error("{0}")]
    Failed(String),
    #[error("exists {0}")]
    Exists(String),
    #[error("not found {0}")]
    NotFound(String),
    #[error(transparent)]
    Shared(Arc<ToyError>),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Id(#[from] crate::ids::Error),
    #[error("abandoned")]
    Abandoned,
}

impl RecordError for ToyError {
    fn shared(e: Arc<Self>) -> Self {
        ToyError::Shared(e)
    }
    fn abandoned(_: &'static str) -> Self {
        ToyError::Abandoned
    }
    fn not_found(id: &str) -> Self {
        ToyError::NotFound(id.into())
    }
}

struct Toys {
    records: Records<Toy, ToyError>,
    gate: tokio::sync::Notify,
    slow: std::sync::atomic::AtomicBool,
    fail: std::sync::atomic::AtomicBool,
    runs: AtomicUsize,
    rollbacks: AtomicUsize,
}

#[async_trait::async_trait]
impl Kind for Toys {
    type Record = Toy;
    type Error = ToyError;
    type Plan = ();
    fn records(&self) -> &Records<Toy, ToyError> {
        &self.records
    }
    fn already_exists(&self, _: String, id: &str) -> ToyError {
        ToyError::Exists(id.into())
    }
    async fn create_steps(self: &Arc<Self>, rec: &mut Toy, _: ()) -> Result<(), ToyError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        self.records.put(rec)?;
        if self.slow.load(Ordering::SeqCst) {
            self.gate.notified().await;
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(ToyError::Failed("step 2".into()));
        }
        rec.done = true;
        rec.finished_at = 1;
        self.records.put(rec)?;
        Ok(())
    }
    async fn rollback(&self, rec: &Toy) {
        self.rollbacks.fetch_add(1, Ordering::SeqCst);
        self.records.delete(&rec.id).unwrap();
    }
}

fn toys() -> (tempfile::TempDir, Arc<Toys>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
    let toys = Arc::new(Toys {
        records: Records::new(store, Duration::ZERO),
        gate: tokio::sync::Notify::new(),
        slow: false.into(),
        fail: false.into(),
        runs: AtomicUsize::new(0),
        rollbacks: AtomicUsize::new(0),
    });
    (dir, toys)
}

async fn make(t: &Arc<Toys>, name: &str) -> Result<String, ToyError> {
    create(t, name.to_string(), || {
        let rec = Toy {
            id: crate::ids::new_id(),
            name: name.into(),
            done: false,
            claimed: false,
            abandoned: false,
            finished_at: 0,
        };
        Ok((rec, ()))
    })
    .await
}

impl Classify for ToyError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Internal
    }
}

#[tokio::test]
async fn create_claim_resolve_and_duplicates() {
    let (_d, t) = toys();
    let id = make(&t, "a").await.unwrap();
    assert_eq!(t.records.resolve(&id[..5]).unwrap(), Some(id.clone()));
    assert!(matches!(make(&t, "a").await, Err(ToyError::Exists(e)) if e == id));
    assert_eq!(t.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_full_id_resolves_by_one_read_a_prefix_by_a_listing() {
    let (_d, t) = toys();
    let id = make(&t, "a").await.unwrap();
    // A record no listing can decode: only a full id gets past it.
    const RAW: Table<String> = Table::new("toys");
    t.records
        .store
        .put(RAW, &"f".repeat(64), &"not a toy".to_string())
        .unwrap();
    assert_eq!(t.records.resolve(&id).unwrap(), Some(id.clone()));
    assert!(
        t.records.resolve(&id[..5]).is_err(),
        "a prefix lists them all"
    );
}

#[tokio::test]
async fn a_failed_creation_is_rolled_back_and_shared_with_waiting_retries() {
    let (_d, t) = toys();
    t.slow.store(true, Ordering::SeqCst);
    t.fail.store(true, Ordering::SeqCst);
    let (a, b) = (t.clone(), t.clone());
    let first = tokio::spawn(async move { make(&a, "x").await });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let second = tokio::spawn(async move { make(&b, "x").await });
    tokio::time::sleep(Duration::from_millis(30)).await;
    t.gate.notify_one();
    assert!(matches!(first.await.unwrap(), Err(ToyError::Shared(_))));
    assert!(matches!(second.await.unwrap(), Err(ToyError::Shared(_))));
    assert_eq!(t.runs.load(Ordering::SeqCst), 1, "one creation for both");
    assert_eq!(t.rollbacks.load(Ordering::SeqCst), 1);
    assert!(t.records.list().unwrap().is_empty());
}

#[tokio::test]
async fn unclaimed_records_are_invisible_then_claimed_reaped_or_rolled_back_at_start() {
    let (_d, t) = toys();
    t.slow.store(true, Ordering::SeqCst);
    for name in ["claimed-later", "reaped", "at-start"] {
        let gave_up = tokio::time::timeout(Duration::from_millis(20), make(&t, name)).await;
        assert!(gave_up.is_err());
        t.gate.notify_one();
    }
    while t.records.list().unwrap().iter().any(|r| !r.done) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all = t.records.list().unwrap();
    let id_of = |n: &str| all.iter().find(|r| r.name == n).unwrap().id.clone();
    assert_eq!(
        t.records.resolve(&id_of("reaped")).unwrap(),
        None,
        "invisible"
    );
    // A retry claims what its first call created.
    t.slow.store(false, Ordering::SeqCst);
    assert_eq!(
        make(&t, "claimed-later").await.unwrap(),
        id_of("claimed-later")
    );
    // The reaper (bound 0 here) takes the unclaimed ones away.
    reap_unclaimed(&t).await;
    assert_eq!(t.rollbacks.load(Ordering::SeqCst), 2);
    let left: Vec<String> = t
        .records
        .list()
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(left, ["claimed-later"]);
    // At start, intents and unclaimed records are rolled back.
    let mut intent = t.records.get(&id_of("claimed-later")).unwrap().unwrap();
    intent.id = crate::ids::new_id();
    intent.done = false;
    t.records.put(&intent).unwrap();
    let kept = reconcile(&t).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].name, "claimed-later");
    assert_eq!(t.records.list().unwrap().len(), 1);
}

/// A full id resolves with one lookup, a prefix by a scan; both give the
/// visible record itself, and an empty prefix is refused.
#[tokio::test]
async fn resolve_record_by_full_id_or_prefix() {
    let (_d, t) = toys();
    let id = make(&t, "a").await.unwrap();
    let other = make(&t, "b").await.unwrap();
    let full = t.records.resolve_record(&id).unwrap().unwrap();
    assert_eq!((full.id.as_str(), full.name.as_str()), (id.as_str(), "a"));
    let by_prefix = t.records.resolve_record(&other[..12]).unwrap().unwrap();
    assert_eq!(by_prefix.name, "b");
    assert!(t.records.resolve_record("").is_err(), "empty prefix");
    assert!(t.records.resolve_record("zz").unwrap().is_none());
}
