//! The one lifecycle pods and containers share: records in the metadata
//! store that are written as an intent before the first side effect on the
//! host, finished by a creation that survives its caller, claimed by that
//! caller (or a retry), rolled back when a step fails, when crius died
//! halfway, or when nobody claims them.
//!
//! A resource kind ([`Kind`]: the pod service, the container service)
//! brings its record type ([`Record`]), its creation steps and its
//! rollback; [`Records`] holds what is common: the table, the per-id
//! locks, the creations under way (a retry with the same key waits for the
//! first call's outcome instead of starting a second creation), id-prefix
//! resolution among visible records, claim, and the reaper of records
//! nobody claimed. A kind may leave part of a creation for after the
//! answer ([`Kind::finish`]): it runs under the record's lock, so the
//! kind's other calls on that record wait for it. [`reconcile`] is the start-up half: after a restart no
//! caller can still be waiting, so intents and unclaimed records are both
//! rolled back.
//!
//! Durability: the claim is the one durable write (an fsync) of a
//! creation. The intent is a file written without an fsync
//! ([`intents`]: it survives what the creation's side effects survive)
//! beside a lazy write of the record; the steps record their progress
//! with lazy writes too ([`Records::put_lazy`]), which the claim's commit
//! makes durable. After a crash before the claim, the record is an intent
//! file or an unclaimed record, so [`reconcile`] rolls it back from what
//! survived: the intent alone names everything a rollback must undo.
//!
//! Removal: a removed record's directory goes into a [`trash::Trash`] (one
//! rename) before the record is deleted, and is deleted in the background.
//!
//! Crash points for the e2e tests ([`pause_point`]) and the error of a
//! named creation step ([`StepFailed`]) live here too.

pub mod intents;
pub mod step;
pub mod trash;

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::locks::IdLocks;
use crate::store::{self, Store, Table};
pub use step::{StepFailed, pause_point, step};

/// A record of a resource kind, as the store holds it.
pub trait Record: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// What names are unique under (kubelet's name + attempt, ...).
    type Key: Clone + Eq + Hash + std::fmt::Debug + Send + Sync + 'static;
    const TABLE: Table<Self>;
    /// The kind in log lines: "pod", "container".
    const KIND: &'static str;
    /// The RPC that creates it, in log lines.
    const CREATE_RPC: &'static str;

    fn id(&self) -> &str;
    fn key(&self) -> Self::Key;
    /// An intent: creation under way, or interrupted by a crash.
    fn is_intent(&self) -> bool;
    /// Creation finished: a retry of an unclaimed record may claim it.
    fn is_finished(&self) -> bool;
    fn claimed(&self) -> bool;
    fn set_claimed(&mut self);
    /// When the bound on unclaimed records starts (nanoseconds).
    fn settled_at(&self) -> i64;
    /// Takes an unclaimed record away from retries before it is rolled
    /// back (a state retries never claim, with the reason).
    fn abandon(&mut self, reason: &str);

    /// Visible to List and Status.
    fn visible(&self) -> bool {
        self.claimed() && !self.is_intent()
    }
}

/// The errors the lifecycle produces, in the kind's own error type.
pub trait RecordError:
    From<store::Error> + From<crate::ids::Error> + std::error::Error + Send + Sync + 'static
{
    /// The outcome of a creation shared with a retry that waited for it.
    fn shared(e: Arc<Self>) -> Self;
    /// A creation ended without an outcome (its task panicked).
    fn abandoned(kind: &'static str) -> Self;
    fn not_found(id: &str) -> Self;
}

/// A resource kind: the service that creates and rolls back its records.
#[async_trait::async_trait]
pub trait Kind: Send + Sync + Sized + 'static {
    type Record: Record;
    type Error: RecordError;
    /// What creation decided before its first side effect.
    type Plan: Send + 'static;
    /// What is left of a creation once its caller has its answer
    /// ([`Kind::finish`]); `()` for a kind whose steps do everything.
    type Rest: Send + 'static;

    fn records(&self) -> &Records<Self::Record, Self::Error>;
    /// AlreadyExists for `key`, naming the record that holds it.
    fn already_exists(&self, key: <Self::Record as Record>::Key, id: &str) -> Self::Error;
    /// The steps of a creation that its caller waits for; `rec` (the
    /// intent) is updated as they go. A failure rolls them back.
    async fn create_steps(
        self: &Arc<Self>,
        rec: &mut Self::Record,
        plan: Self::Plan,
    ) -> Result<Self::Rest, Self::Error>;
    /// The rest of a creation, run after its caller has the record (and
    /// may have claimed it), still under the record's lock, so that every
    /// call that takes the lock waits for it. It is never rolled back:
    /// the kind records a failure in the record, for the next call on it
    /// to report.
    async fn finish(self: &Arc<Self>, _rec: Self::Record, _rest: Self::Rest) {}
    /// Undoes whatever the record holds on the host, from any state, and
    /// deletes the record. Idempotent; logs what it cannot undo.
    async fn rollback(&self, rec: &Self::Record);
    /// A caller has just claimed `rec`: it is visible from now on (the
    /// kind announces it: [`crate::events`]).
    fn on_claimed(&self, _rec: &Self::Record) {}
}

/// A finished creation: the id or the (shared) error.
type Outcome<E> = Result<String, Arc<E>>;

/// What every kind's service holds of the lifecycle: records of type `R`
/// whose creation fails with `E`.
pub struct Records<R: Record, E> {
    store: Arc<Store>,
    /// Creations under way, by key: a retry waits on the receiver.
    #[allow(clippy::type_complexity)]
    creating: Mutex<HashMap<R::Key, watch::Receiver<Option<Outcome<E>>>>>,
    /// Which record holds each key ([`KeyIndex`]); `None` until
    /// [`reconcile`] builds it from the records it keeps (every lookup
    /// reads the table until then).
    keys: Mutex<Option<KeyIndex<R::Key>>>,
    /// One lock per id for create/stop/remove/update (never taken by
    /// List/Status).
    locks: IdLocks,
    /// How long a finished, unclaimed record waits for a retry.
    pub unclaimed_ttl: Duration,
    /// The intents of creations not claimed yet, beside the database.
    intents: intents::Intents,
}

/// The id of the newest record written with each key, and the key of
/// each id: a creation's check for a record already holding its key
/// reads that one record instead of decoding the whole table (every
/// record of it, with its OCI spec, for each CreateContainer).
/// Built by [`reconcile`] from the records it keeps; every record is
/// first written by [`Records::put_intent`], which adds it, and deleted
/// by [`Records::delete`], which drops it; keys never change. The record
/// an entry names is read and checked, so an entry can only be stale,
/// never wrong.
struct KeyIndex<K> {
    by_key: HashMap<K, String>,
    by_id: HashMap<String, K>,
}

impl<K: Clone + Eq + Hash> KeyIndex<K> {
    fn insert(&mut self, key: K, id: &str) {
        if self.by_id.contains_key(id) {
            return;
        }
        self.by_key.insert(key.clone(), id.to_string());
        self.by_id.insert(id.to_string(), key);
    }

    fn remove(&mut self, id: &str) {
        if let Some(key) = self.by_id.remove(id)
            && self.by_key.get(&key).is_some_and(|held| held == id)
        {
            self.by_key.remove(&key);
        }
    }
}

/// A write-ahead intent that could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum IntentError {
    #[error(transparent)]
    File(#[from] intents::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl crate::error::Classify for IntentError {
    fn kind(&self) -> crate::error::Kind {
        match self {
            IntentError::File(e) => e.kind(),
            IntentError::Store(e) => e.kind(),
        }
    }
}

impl<R: Record, E: RecordError> Records<R, E> {
    /// The intents live in `intents/` beside the database file.
    pub fn new(store: Arc<Store>, unclaimed_ttl: Duration) -> Records<R, E> {
        let dir = store.path().with_file_name("intents");
        Records {
            intents: intents::Intents::new(dir),
            store,
            creating: Mutex::new(HashMap::new()),
            keys: Mutex::new(None),
            locks: IdLocks::default(),
            unclaimed_ttl,
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn lock_of(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.of(id)
    }

    pub fn forget_lock(&self, id: &str) {
        self.locks.forget(id);
    }

    pub fn get(&self, id: &str) -> store::Result<Option<R>> {
        self.store.get(R::TABLE, id)
    }

    pub fn put(&self, rec: &R) -> store::Result<()> {
        self.store.put(R::TABLE, rec.id(), rec)
    }

    /// Records a creation's write-ahead intent, before its first side
    /// effect on the host (or replaces it with what a step learned that
    /// a rollback needs): the intent file ([`intents`]) and a lazy write
    /// of the record, visible at once, durable with the claim.
    pub fn put_intent(&self, rec: &R) -> Result<(), IntentError> {
        if let Some(index) = self.keys.lock().expect("lock poisoned").as_mut() {
            index.insert(rec.key(), rec.id());
        }
        self.intents.write(R::KIND, rec.id(), rec)?;
        Ok(self.put_lazy(rec)?)
    }

    /// Writes a creation's progress between its intent and its durable
    /// claim without an fsync of its own ([`Store::write_lazy`]): a crash
    /// in between rolls the creation back from the intent anyway.
    pub fn put_lazy(&self, rec: &R) -> store::Result<()> {
        self.store.put_lazy(R::TABLE, rec.id(), rec)
    }

    /// Deletes the record and its intent, if any.
    pub fn delete(&self, id: &str) -> store::Result<bool> {
        let existed = self.store.delete(R::TABLE, id)?;
        self.intents.remove(R::KIND, id);
        if let Some(index) = self.keys.lock().expect("lock poisoned").as_mut() {
            index.remove(id);
        }
        Ok(existed)
    }

    pub fn list(&self) -> store::Result<Vec<R>> {
        Ok(self
            .store
            .list(R::TABLE)?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// Resolves a full id or unique prefix among visible records.
    pub fn resolve(&self, prefix: &str) -> Result<Option<String>, E> {
        Ok(self.resolve_record(prefix)?.map(|r| r.id().to_string()))
    }

    /// The visible record whose id is `prefix`, or else the only visible
    /// one whose id starts with it ([`crate::ids::resolve`]). A full id
    /// (what kubelet sends) is one lookup; only a prefix scans the table.
    pub fn resolve_record(&self, prefix: &str) -> Result<Option<R>, E> {
        if !prefix.is_empty()
            && let Some(rec) = self.get(prefix)?
            && rec.visible()
        {
            return Ok(Some(rec));
        }
        let all = self.store.list(R::TABLE)?;
        let ids = all
            .iter()
            .filter(|(_, r)| r.visible())
            .map(|(k, _)| k.as_str());
        let Some(id) = crate::ids::resolve(prefix, ids)?.map(str::to_string) else {
            return Ok(None);
        };
        Ok(all.into_iter().find(|(k, _)| *k == id).map(|(_, r)| r))
    }

    /// The finished record holding `key`, if any.
    fn find_by_key(&self, key: &R::Key) -> store::Result<Option<R>> {
        let held = match self.keys.lock().expect("lock poisoned").as_ref() {
            Some(index) => index.by_key.get(key).cloned(),
            None => {
                return Ok(self
                    .list()?
                    .into_iter()
                    .find(|r| !r.is_intent() && &r.key() == key));
            }
        };
        let Some(id) = held else {
            return Ok(None);
        };
        Ok(self.get(&id)?.filter(|r| !r.is_intent() && &r.key() == key))
    }

    /// Hands a finished record to its caller: from now on List/Status
    /// show it. The record, when this call is the one that claimed it.
    /// The claim's commit makes the record durable, and its intent file
    /// is no longer needed.
    pub fn claim(&self, id: &str) -> Result<Option<R>, E> {
        let claimed = self.store.write(|txn| {
            let Some(mut rec) = txn.get(R::TABLE, id)? else {
                return Err(E::not_found(id));
            };
            if rec.claimed() {
                return Ok(None);
            }
            rec.set_claimed();
            txn.put(R::TABLE, id, &rec)?;
            Ok(Some(rec))
        })?;
        if claimed.is_some() {
            self.intents.remove(R::KIND, id);
        }
        Ok(claimed)
    }

    /// Takes an unclaimed record away from retries, in one transaction:
    /// the abandoned record, or `None` when it is gone or was claimed.
    fn take_unclaimed(&self, id: &str, reason: &str) -> store::Result<Option<R>> {
        self.store.write(|txn| {
            let Some(mut r) = txn.get(R::TABLE, id)? else {
                return Ok(None);
            };
            if r.claimed() || r.is_intent() {
                return Ok(None);
            }
            r.abandon(reason);
            txn.put(R::TABLE, id, &r)?;
            Ok(Some(r))
        })
    }
}

/// Creates a record of kind `K`: single-flight by key (a retry waits for
/// the creation under way and shares its outcome), claim of a finished
/// record whose caller gave up, AlreadyExists for any other holder of the
/// key; else `plan` decides everything without side effects (bad input
/// fails there) and returns the intent, and the steps run in a detached
/// task, so a caller that gives up never interrupts them halfway.
pub async fn create<K: Kind>(
    kind: &Arc<K>,
    key: <K::Record as Record>::Key,
    plan: impl FnOnce() -> Result<(K::Record, K::Plan), K::Error>,
) -> Result<String, K::Error> {
    let records = kind.records();
    // The plan (the OCI spec, a seccomp filter, ...) is made outside the
    // lock of the creations under way, so that creations of other keys
    // do not wait for it; what the lock decides is decided again after.
    let mut plan = Some(plan);
    let mut planned = None;
    let mut rx: watch::Receiver<Option<Outcome<K::Error>>> = loop {
        let mut creating = records.creating.lock().expect("lock poisoned");
        if let Some(rx) = creating.get(&key) {
            tracing::info!(kind = K::Record::KIND, key = ?key, "a retry waits for the creation under way");
            break rx.clone();
        }
        if let Some(existing) = records.find_by_key(&key)? {
            if !existing.claimed() && existing.is_finished() {
                tracing::info!(kind = K::Record::KIND, id = %existing.id(), "a retry claims what its first call created");
                return claim(kind, existing.id());
            }
            return Err(kind.already_exists(key, existing.id()));
        }
        let Some(made) = planned.take() else {
            drop(creating);
            planned = plan.take().map(|plan| plan());
            continue;
        };
        let (rec, plan) = made?;
        let (tx, rx) = watch::channel(None);
        creating.insert(key.clone(), rx.clone());
        let this = kind.clone();
        tokio::spawn(async move {
            let announce = |outcome: Result<String, K::Error>| {
                this.records()
                    .creating
                    .lock()
                    .expect("lock poisoned")
                    .remove(&key);
                let _ = tx.send(Some(outcome.map_err(Arc::new)));
            };
            run(&this, rec, plan, announce).await;
        });
        break rx;
    };
    let outcome = rx
        .wait_for(Option::is_some)
        .await
        .map_err(|_| K::Error::abandoned(K::Record::KIND))?
        .clone()
        .expect("checked by wait_for");
    match outcome {
        Ok(id) => claim(kind, &id),
        Err(e) => Err(K::Error::shared(e)),
    }
}

/// Claims record `id` for its caller and tells the kind when this call
/// made it visible.
fn claim<K: Kind>(kind: &Arc<K>, id: &str) -> Result<String, K::Error> {
    if let Some(rec) = kind.records().claim(id)? {
        kind.on_claimed(&rec);
    }
    Ok(id.to_string())
}

/// Runs the steps under the record's lock; a failure rolls back all of
/// them. `announce` gets the outcome as soon as the steps end; the rest
/// of the creation ([`Kind::finish`]) runs after it, under the lock.
async fn run<K: Kind>(
    kind: &Arc<K>,
    mut rec: K::Record,
    plan: K::Plan,
    announce: impl FnOnce(Result<String, K::Error>),
) {
    let id = rec.id().to_string();
    let lock = kind.records().lock_of(&id);
    let guard = lock.lock().await;
    match kind.create_steps(&mut rec, plan).await {
        Ok(rest) => {
            tracing::info!(kind = K::Record::KIND, %id, "{} created", K::Record::KIND);
            announce(Ok(id));
            kind.finish(rec, rest).await;
            drop(guard);
        }
        Err(err) => {
            tracing::warn!(kind = K::Record::KIND, %id, error = %crate::error::chain(&err), "creation failed; rolling back");
            kind.rollback(&rec).await;
            drop(guard);
            kind.records().forget_lock(&id);
            announce(Err(err));
        }
    }
}

/// At start, before anything else touches the records of kind `K`: no
/// caller of a previous run can still be waiting, so intents (creations
/// a crash interrupted) and finished records nobody claimed are rolled
/// back. The records left are the ones to reattach.
pub async fn reconcile<K: Kind>(kind: &Arc<K>) -> Result<Vec<K::Record>, K::Error> {
    let records = kind.records();
    let mut all = records.list()?;
    // Intents the crash left only in their files (their lazy records
    // died with the process): rolled back like the stored ones. A stored
    // record is newer than its intent file.
    let mut files = std::collections::HashSet::new();
    for found in records.intents.list::<K::Record>(K::Record::KIND) {
        if all.iter().any(|r| r.id() == found.id) {
            files.insert(found.id);
            continue;
        }
        match found.record {
            Some(rec) if rec.id() == found.id => all.push(rec),
            _ => {
                tracing::warn!(id = %found.id, "removing a {} intent that is not one: a crash of the machine, whose kernel objects went with it", K::Record::KIND);
                records.intents.remove(K::Record::KIND, &found.id);
            }
        }
    }
    let mut kept = Vec::new();
    for rec in all {
        if rec.is_intent() {
            tracing::warn!(id = %rec.id(), "rolling back a {} whose creation was interrupted", K::Record::KIND);
            kind.rollback(&rec).await;
        } else if !rec.claimed() {
            tracing::warn!(id = %rec.id(), "rolling back a {} whose creation finished after its caller gave up: no caller can claim it any more", K::Record::KIND);
            kind.rollback(&rec).await;
        } else {
            if files.contains(rec.id()) {
                records.intents.remove(K::Record::KIND, rec.id());
            }
            kept.push(rec);
        }
    }
    // What is left is claimed and finished: at most one record per key.
    let mut index = KeyIndex {
        by_key: HashMap::new(),
        by_id: HashMap::new(),
    };
    for rec in &kept {
        index.insert(rec.key(), rec.id());
    }
    *records.keys.lock().expect("lock poisoned") = Some(index);
    Ok(kept)
}

/// Starts the background reaper of records nobody claimed within the
/// bound (while the daemon that created them lives, a retry may still
/// come).
pub fn start_reaper<K: Kind>(kind: &Arc<K>) {
    let this = kind.clone();
    tokio::spawn(async move {
        let ttl = this.records().unclaimed_ttl;
        let period = (ttl / 2).clamp(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            tokio::time::sleep(period).await;
            reap_unclaimed(&this).await;
        }
    });
}

/// One round of the reaper.
pub async fn reap_unclaimed<K: Kind>(kind: &Arc<K>) {
    let records = kind.records();
    let Ok(all) = records.list() else {
        return;
    };
    let limit = crate::pod::now_ns() - records.unclaimed_ttl.as_nanos() as i64;
    for rec in all {
        if rec.claimed() || rec.is_intent() || rec.settled_at() > limit {
            continue;
        }
        let id = rec.id().to_string();
        let lock = records.lock_of(&id);
        let guard = lock.lock().await;
        if let Ok(Some(r)) = records.take_unclaimed(&id, "never claimed") {
            tracing::warn!(%id, "removing a {} that no {} retry claimed", K::Record::KIND, K::Record::CREATE_RPC);
            kind.rollback(&r).await;
        }
        drop(guard);
        records.forget_lock(&id);
    }
}

#[cfg(test)]
mod tests;
