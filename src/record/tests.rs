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
    Intent(#[from] IntentError),
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
    type Rest = ();
    fn records(&self) -> &Records<Toy, ToyError> {
        &self.records
    }
    fn already_exists(&self, _: String, id: &str) -> ToyError {
        ToyError::Exists(id.into())
    }
    async fn create_steps(self: &Arc<Self>, rec: &mut Toy, _: ()) -> Result<(), ToyError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        self.records.put_intent(rec)?;
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
    let toys = toys_in(dir.path());
    (dir, toys)
}

/// The toys whose database (and intents) are in `dir`.
fn toys_in(dir: &std::path::Path) -> Arc<Toys> {
    let store = Arc::new(Store::open(&dir.join("db")).unwrap());
    Arc::new(Toys {
        records: Records::new(store, Duration::ZERO),
        gate: tokio::sync::Notify::new(),
        slow: false.into(),
        fail: false.into(),
        runs: AtomicUsize::new(0),
        rollbacks: AtomicUsize::new(0),
    })
}

fn intent_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("intents"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn toy(name: &str) -> Toy {
    Toy {
        id: crate::ids::new_id(),
        name: name.into(),
        done: false,
        claimed: false,
        abandoned: false,
        finished_at: 0,
    }
}

async fn make(t: &Arc<Toys>, name: &str) -> Result<String, ToyError> {
    create(t, name.to_string(), || Ok((toy(name), ()))).await
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
async fn a_key_is_checked_by_one_read_also_after_a_restart_and_freed_by_delete() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let t = toys_in(dir.path());
        make(&t, "a").await.unwrap()
    };
    // A new daemon: its index comes from the records reconcile keeps.
    let t = toys_in(dir.path());
    assert_eq!(reconcile(&t).await.unwrap().len(), 1);
    // A record no listing can decode: a creation that read the whole
    // table would fail on it.
    const RAW: Table<String> = Table::new("toys");
    t.records
        .store
        .put(RAW, &"f".repeat(64), &"not a toy".to_string())
        .unwrap();
    assert!(matches!(make(&t, "a").await, Err(ToyError::Exists(e)) if e == id));
    let b = make(&t, "b").await.unwrap();
    assert!(matches!(make(&t, "b").await, Err(ToyError::Exists(e)) if e == b));
    t.records.delete(&id).unwrap();
    let again = make(&t, "a").await.unwrap();
    assert_ne!(again, id);
}

#[tokio::test]
async fn at_start_a_finished_record_holds_its_key_over_an_intent_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let t = toys_in(dir.path());
        let id = make(&t, "a").await.unwrap();
        // An intent with the same key whose id sorts after the record's.
        let mut intent = toy("a");
        intent.id = "f".repeat(64);
        t.records.put(&intent).unwrap();
        id
    };
    let t = toys_in(dir.path());
    reconcile(&t).await.unwrap();
    assert!(matches!(make(&t, "a").await, Err(ToyError::Exists(e)) if e == id));
}

/// Blocks the calling thread until `go` receives (or 10 s pass).
fn plan_waiting(
    name: &str,
    started: std::sync::mpsc::Sender<()>,
    go: std::sync::mpsc::Receiver<()>,
) -> impl FnOnce() -> Result<(Toy, ()), ToyError> {
    let rec = toy(name);
    move || {
        started.send(()).unwrap();
        let _ = go.recv_timeout(Duration::from_secs(10));
        Ok((rec, ()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_does_not_hold_up_creations_of_other_keys() {
    let (_d, t) = toys();
    let (started, planning) = std::sync::mpsc::channel();
    let (go, wait) = std::sync::mpsc::channel();
    let slow = {
        let t = t.clone();
        tokio::spawn(
            async move { create(&t, "a".to_string(), plan_waiting("a", started, wait)).await },
        )
    };
    planning.recv().unwrap();
    // Under a lock held through a's plan, b would wait for its 10 s.
    let t0 = std::time::Instant::now();
    let other = make(&t, "b").await;
    let waited = t0.elapsed();
    let _ = go.send(());
    assert!(other.is_ok());
    assert!(
        waited < Duration::from_secs(5),
        "b waited {waited:?} for a's plan"
    );
    assert!(slow.await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_calls_that_plan_the_same_key_at_once_make_one_record() {
    let (_d, t) = toys();
    let (started, planning) = std::sync::mpsc::channel();
    let (go_1, wait_1) = std::sync::mpsc::channel();
    let (go_2, wait_2) = std::sync::mpsc::channel();
    let call = |started, wait| {
        let t = t.clone();
        tokio::spawn(
            async move { create(&t, "a".to_string(), plan_waiting("a", started, wait)).await },
        )
    };
    let first = call(started.clone(), wait_1);
    let second = call(started, wait_2);
    // Both are planning, neither holds the key yet.
    planning.recv().unwrap();
    planning.recv().unwrap();
    go_1.send(()).unwrap();
    go_2.send(()).unwrap();
    let (a, b) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(t.runs.load(Ordering::SeqCst), 1, "one creation ran");
    // The second either waited for the first's creation (same id) or
    // found its record claimed (AlreadyExists naming it).
    let ids: Vec<String> = [a, b]
        .into_iter()
        .map(|r| match r {
            Ok(id) | Err(ToyError::Exists(id)) => id,
            Err(e) => panic!("{e}"),
        })
        .collect();
    assert_eq!(ids[0], ids[1]);
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

/// Where the crash test's writer process keeps its database.
const CRASH_DIR_ENV: &str = "CRIUS_TEST_INTENT_CRASH_DIR";

/// The writer of `an_intent_outlives_a_crash_in_its_file`, run as a
/// process of its own (ignored unless that test starts it): records one
/// intent, says so, and waits to be killed.
#[test]
#[ignore]
fn intent_writer() {
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
        return;
    };
    let t = toys_in(std::path::Path::new(&dir));
    let rec = toy("crashed");
    t.records.put_intent(&rec).unwrap();
    assert_eq!(
        t.records.get(&rec.id).unwrap(),
        Some(rec.clone()),
        "visible"
    );
    // Past the test harness's capture of print!.
    let mut out = std::io::stdout().lock();
    std::io::Write::write_all(&mut out, format!("intent {}\n", rec.id).as_bytes()).unwrap();
    std::io::Write::flush(&mut out).unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

/// The intent is a file and a lazy record: a crash of the process (a
/// SIGKILL) loses the record, redb's non-durable commit, and the next
/// start rolls the creation back from the file.
#[test]
fn an_intent_outlives_a_crash_in_its_file() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "record::tests::intent_writer", "--ignored"])
        .args(["--nocapture", "--test-threads", "1"])
        .env(CRASH_DIR_ENV, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut id = None;
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let Ok(line) = line else { break };
        // libtest's "test ... " comes first on the line.
        if let Some((_, i)) = line.rsplit_once("intent ") {
            id = Some(i.to_string());
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let id = id.expect("the writer recorded its intent");
    assert_eq!(intent_files(dir.path()), [format!("toy-{id}.json")]);

    let t = toys_in(dir.path());
    assert!(
        t.records.list().unwrap().is_empty(),
        "the lazy record died with the process"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert!(rt.block_on(reconcile(&t)).unwrap().is_empty());
    assert_eq!(t.rollbacks.load(Ordering::SeqCst), 1, "rolled back");
    assert!(intent_files(dir.path()).is_empty());
}

/// The file lives from the intent to the claim or the rollback.
#[tokio::test]
async fn the_claim_and_a_rollback_remove_the_intent_file() {
    let (d, t) = toys();
    make(&t, "claimed").await.unwrap();
    t.fail.store(true, Ordering::SeqCst);
    assert!(make(&t, "failed").await.is_err());
    assert_eq!(t.rollbacks.load(Ordering::SeqCst), 1);
    assert!(intent_files(d.path()).is_empty());
}

/// At start: a file beside a stored record (a crash between the claim and
/// the file's removal) is removed and the record kept; a file that is not
/// a record (a crash of the machine can leave it empty) is removed
/// without a rollback, and so is the temporary file of an interrupted
/// write; names that are not an intent's are left alone.
#[tokio::test]
async fn reconcile_reads_only_intent_files_and_trusts_stored_records() {
    let dir = tempfile::tempdir().unwrap();
    let t = toys_in(dir.path());
    let id = make(&t, "claimed").await.unwrap();
    let claimed = t.records.get(&id).unwrap().unwrap();
    t.records
        .intents
        .write(Toy::KIND, &id, &toy("claimed"))
        .unwrap();
    let empty = crate::ids::new_id();
    let intents = dir.path().join("intents");
    std::fs::write(intents.join(format!("toy-{empty}.json")), "").unwrap();
    std::fs::write(intents.join("toy-notanid.json"), "{}").unwrap();
    let stranger = crate::ids::new_id();
    std::fs::write(intents.join(format!("pod-{stranger}.json")), "{}").unwrap();
    // A write a crash interrupted before its rename: removed; another
    // kind's is that kind's to remove.
    std::fs::write(intents.join(format!(".toy-{empty}.tmp")), "{").unwrap();
    std::fs::write(intents.join(format!(".pod-{stranger}.tmp")), "{").unwrap();
    drop(t);

    let t = toys_in(dir.path());
    assert_eq!(reconcile(&t).await.unwrap(), [claimed]);
    assert_eq!(t.rollbacks.load(Ordering::SeqCst), 0);
    assert_eq!(
        intent_files(dir.path()),
        [
            format!(".pod-{stranger}.tmp"),
            format!("pod-{stranger}.json"),
            "toy-notanid.json".to_string()
        ]
    );
}
