//! The metadata database: pods, containers and images as records in one
//! embedded transactional store (redb), so a crash never leaves half a record
//! and a multi-record change (an image and its tags, a pod and its intent)
//! commits atomically or not at all.
//!
//! Records are JSON values in named tables keyed by a string (an id). Each
//! module owns its tables: `const PODS: Table<PodRecord> = Table::new("pods");`.
//!
//! Group commit: a commit costs an fsync (milliseconds on a busy disk), and
//! redb has one writer at a time, so concurrent writes would queue for one
//! fsync each. Instead, writes that arrive while a commit is in flight are
//! applied to the next open transaction and committed together with one
//! fsync; each [`Store::write`] still returns only once its changes are
//! durable, and a write whose closure fails changes nothing (its changes
//! are buffered in [`Txn`] and applied only when it succeeds).
//!
//! Lazy writes ([`Store::write_lazy`], [`Store::put_lazy`]): committed and
//! visible to every reader when they return, but without an fsync of
//! their own; they become durable with the next durable commit (redb's
//! `Durability::None`: a non-durable commit exists only in this process
//! until then, so a crash, of the process or of the machine, rolls the
//! database back to the last durable commit). For a creation's intent
//! and steps before its durable claim: a crash between the two rolls the
//! creation back from its intent file ([`crate::record::intents`]),
//! whatever the lazy writes recorded. A batch with any durable writer commits durably.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Classify, Kind};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the metadata database {path} is damaged ({reason}); crius never deletes it by itself. \
         `crius store check` tells what is wrong; to start over, stop crius, run `crius store reset` \
         (it moves the file aside), then start crius: it removes what the lost records owned"
    )]
    Damaged { path: PathBuf, reason: String },
    #[error("open metadata database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("metadata database {table}")]
    Db {
        table: &'static str,
        #[source]
        source: redb::Error,
    },
    #[error("decode record {key:?} of table {table}")]
    Decode {
        table: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("commit to the metadata database")]
    Commit {
        #[source]
        source: Arc<redb::Error>,
    },
    #[error("encode record {key:?} of table {table}")]
    Encode {
        table: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Classify for Error {
    fn kind(&self) -> Kind {
        Kind::Internal
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A named table whose values are `T` (as JSON) keyed by strings.
pub struct Table<T> {
    name: &'static str,
    _value: PhantomData<fn() -> T>,
}

impl<T> Clone for Table<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Table<T> {}

impl<T> Table<T> {
    pub const fn new(name: &'static str) -> Table<T> {
        Table {
            name,
            _value: PhantomData,
        }
    }

    fn def(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(self.name)
    }

    pub fn name(self) -> &'static str {
        self.name
    }
}

pub struct Store {
    db: redb::Database,
    path: PathBuf,
    batch: Mutex<Batch>,
    committed: Condvar,
}

/// The group commit's state (see the module doc).
#[derive(Default)]
struct Batch {
    /// The transaction the writers of batch `next` applied their changes to.
    txn: Option<redb::WriteTransaction>,
    /// The number of the batch `txn` belongs to.
    next: u64,
    /// Some writer applied changes to `txn`.
    dirty: bool,
    /// Every batch below this number has been committed (or failed).
    done: u64,
    /// A writer is committing a batch (without holding the lock).
    committing: bool,
    /// Some writer of batch `next` needs it durable (an fsync).
    durable: bool,
    /// The last failed commit: its batch and error.
    failed: Option<(u64, Arc<redb::Error>)>,
}

fn db_err<E: Into<redb::Error>>(table: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Db {
        table,
        source: e.into(),
    }
}

impl Store {
    /// Opens (or creates) the database file; its directory must exist.
    /// Every page is checked first: a file damaged outside redb is
    /// refused with [`Error::Damaged`] (a plain redb open may panic on
    /// it), and is never modified or removed here.
    pub fn open(path: &Path) -> Result<Store> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        // 0600 before redb writes a byte: records hold Secret values.
        let opened = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o600)));
        opened.map_err(|e| Error::Open {
            path: path.into(),
            source: redb::Error::Io(e),
        })?;
        let opened = std::panic::catch_unwind(|| {
            redb::Database::builder()
                .set_check_integrity_on_open(true)
                .create(path)
        });
        let damaged = |reason: String| Error::Damaged {
            path: path.into(),
            reason,
        };
        match opened {
            Ok(Ok(db)) => Ok(Store {
                db,
                path: path.into(),
                batch: Mutex::default(),
                committed: Condvar::new(),
            }),
            Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(why)))) => {
                Err(damaged(why))
            }
            Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
                if e.kind() == std::io::ErrorKind::InvalidData =>
            {
                Err(damaged(e.to_string()))
            }
            Ok(Err(e)) => Err(Error::Open {
                path: path.into(),
                source: e.into(),
            }),
            Err(panic) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "the database library panicked".into());
                Err(damaged(why))
            }
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `crius store check`: opens the file (checking every page) and
    /// decodes every record of every table; the record count per table.
    /// A record that is not JSON is [`Error::Damaged`].
    pub fn check(path: &Path) -> Result<Vec<(String, usize)>> {
        let store = Store::open(path)?;
        let damaged = |reason: String| Error::Damaged {
            path: path.into(),
            reason,
        };
        let txn = store.db.begin_read().map_err(db_err("<check>"))?;
        let mut out = Vec::new();
        for handle in txn.list_tables().map_err(db_err("<check>"))? {
            let name = handle.name().to_string();
            let def: TableDefinition<&str, &[u8]> = TableDefinition::new(&name);
            let t = txn
                .open_table(def)
                .map_err(|e| damaged(format!("table {name}: {e}")))?;
            let mut n = 0;
            for entry in t
                .iter()
                .map_err(|e| damaged(format!("table {name}: {e}")))?
            {
                let (k, v) = entry.map_err(|e| damaged(format!("table {name}: {e}")))?;
                serde_json::from_slice::<serde_json::Value>(v.value())
                    .map_err(|e| damaged(format!("table {name}, record {:?}: {e}", k.value())))?;
                n += 1;
            }
            out.push((name, n));
        }
        Ok(out)
    }

    /// `crius store reset`: moves the database file aside (to
    /// `<file>.damaged-<unix seconds>`), never deleting it; the next start
    /// opens an empty store and removes the leftovers of the lost records.
    /// The new name, or `None` when there was no file.
    pub fn set_aside(path: &Path) -> std::io::Result<Option<PathBuf>> {
        if !path.exists() {
            return Ok(None);
        }
        if let Err(Error::Open {
            source: redb::Error::DatabaseAlreadyOpen,
            ..
        }) = Store::open(path)
        {
            return Err(std::io::Error::other(format!(
                "{} is in use: stop crius first",
                path.display()
            )));
        }
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".damaged-{secs}"));
        let to = PathBuf::from(name);
        std::fs::rename(path, &to)?;
        Ok(Some(to))
    }

    /// Reads one record.
    pub fn get<T: DeserializeOwned>(&self, table: Table<T>, key: &str) -> Result<Option<T>> {
        let txn = self.db.begin_read().map_err(db_err(table.name))?;
        let t = match txn.open_table(table.def()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(table.name)(e)),
        };
        let value = t.get(key).map_err(db_err(table.name))?;
        value.map(|v| decode(table, key, v.value())).transpose()
    }

    /// Reads every record of a table, in key order.
    pub fn list<T: DeserializeOwned>(&self, table: Table<T>) -> Result<Vec<(String, T)>> {
        let txn = self.db.begin_read().map_err(db_err(table.name))?;
        let t = match txn.open_table(table.def()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(table.name)(e)),
        };
        read_all(table, &t)
    }

    /// Writes one record (insert or replace).
    pub fn put<T: Serialize>(&self, table: Table<T>, key: &str, value: &T) -> Result<()> {
        self.write(|txn| txn.put(table, key, value))
    }

    /// Deletes one record; `true` when it existed.
    pub fn delete<T>(&self, table: Table<T>, key: &str) -> Result<bool> {
        self.write(|txn| txn.delete(table, key))
    }

    /// Runs `f` in one write transaction: all its changes commit together,
    /// or none do when it returns an error. Returns once they are durable
    /// (possibly committed with other writers' changes: see the module doc).
    pub fn write<R, E>(&self, f: impl FnOnce(&mut Txn<'_>) -> Result<R, E>) -> Result<R, E>
    where
        E: From<Error>,
    {
        self.write_with(true, f)
    }

    /// Like [`Store::write`], but the commit needs no fsync of its own:
    /// see "Lazy writes" in the module doc for when that is safe.
    pub fn write_lazy<R, E>(&self, f: impl FnOnce(&mut Txn<'_>) -> Result<R, E>) -> Result<R, E>
    where
        E: From<Error>,
    {
        self.write_with(false, f)
    }

    /// Writes one record lazily ([`Store::write_lazy`]).
    pub fn put_lazy<T: Serialize>(&self, table: Table<T>, key: &str, value: &T) -> Result<()> {
        self.write_lazy(|txn| txn.put(table, key, value))
    }

    fn write_with<R, E>(
        &self,
        durable: bool,
        f: impl FnOnce(&mut Txn<'_>) -> Result<R, E>,
    ) -> Result<R, E>
    where
        E: From<Error>,
    {
        // Waiting for the lock or an fsync must not stall a runtime worker.
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.write_now(durable, f))
            }
            _ => self.write_now(durable, f),
        }
    }

    /// The batch state; a writer's panic leaves it consistent (its closure
    /// only touched its own buffer).
    fn lock(&self) -> std::sync::MutexGuard<'_, Batch> {
        self.batch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_now<R, E>(
        &self,
        durable: bool,
        f: impl FnOnce(&mut Txn<'_>) -> Result<R, E>,
    ) -> Result<R, E>
    where
        E: From<Error>,
    {
        let mut g = self.lock();
        if g.txn.is_none() {
            // Waits inside redb while another writer's commit finishes.
            g.txn = Some(self.db.begin_write().map_err(db_err("<transaction>"))?);
        }
        let Some(open) = g.txn.as_ref() else {
            unreachable!("opened above")
        };
        let mut txn = Txn {
            txn: open,
            changes: BTreeMap::new(),
        };
        let out = f(&mut txn)?;
        let mine = g.next;
        if txn.changes.is_empty() {
            if !g.dirty {
                return Ok(out);
            }
            // It read other writers' changes: it stands or falls with them.
        } else if let Err(e) = txn.apply() {
            // Half applied: the whole batch fails, its writers are told.
            drop(g.txn.take());
            g.dirty = false;
            let e = Arc::new(e);
            g.failed = Some((mine, e.clone()));
            g.durable = false;
            g.next += 1;
            g.done = mine + 1;
            self.committed.notify_all();
            return Err(Error::Commit { source: e }.into());
        } else {
            g.dirty = true;
        }
        g.durable |= durable;
        while g.done <= mine {
            if g.committing {
                g = self
                    .committed
                    .wait(g)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            let Some(mut txn) = g.txn.take() else {
                unreachable!("batch {mine} has an open transaction")
            };
            let batch = g.next;
            g.next += 1;
            g.dirty = false;
            g.committing = true;
            let durability = if std::mem::take(&mut g.durable) {
                redb::Durability::Immediate
            } else {
                redb::Durability::None
            };
            drop(g);
            // Refused only where non-durable commits are unsupported: that
            // transaction then commits durably, its default.
            let _ = txn.set_durability(durability);
            let result = txn.commit();
            g = self.lock();
            g.committing = false;
            g.done = batch + 1;
            if let Err(e) = result {
                g.failed = Some((batch, Arc::new(e.into())));
            }
            self.committed.notify_all();
        }
        match &g.failed {
            Some((batch, e)) if *batch == mine => Err(Error::Commit { source: e.clone() }.into()),
            _ => Ok(out),
        }
    }
}

/// A write transaction: see [`Store::write`]. Its changes are buffered
/// and reach the database only when the closure succeeds.
pub struct Txn<'a> {
    txn: &'a redb::WriteTransaction,
    /// (table, key) -> the new value, or `None` for a deletion.
    changes: BTreeMap<(&'static str, String), Option<Vec<u8>>>,
}

impl Txn<'_> {
    pub fn put<T: Serialize>(&mut self, table: Table<T>, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|source| Error::Encode {
            table: table.name,
            key: key.into(),
            source,
        })?;
        self.changes.insert((table.name, key.into()), Some(bytes));
        Ok(())
    }

    pub fn get<T: DeserializeOwned>(&mut self, table: Table<T>, key: &str) -> Result<Option<T>> {
        if let Some(change) = self.changes.get(&(table.name, key.to_string())) {
            return change.as_deref().map(|v| decode(table, key, v)).transpose();
        }
        let t = self
            .txn
            .open_table(table.def())
            .map_err(db_err(table.name))?;
        let value = t.get(key).map_err(db_err(table.name))?;
        value.map(|v| decode(table, key, v.value())).transpose()
    }

    /// Every record of a table, in key order, as this transaction sees it
    /// (its own buffered changes included).
    pub fn list<T: DeserializeOwned>(&mut self, table: Table<T>) -> Result<Vec<(String, T)>> {
        let t = self
            .txn
            .open_table(table.def())
            .map_err(db_err(table.name))?;
        let mut all: BTreeMap<String, T> = read_all(table, &t)?.into_iter().collect();
        for ((name, key), change) in &self.changes {
            if *name != table.name {
                continue;
            }
            match change {
                Some(bytes) => {
                    all.insert(key.clone(), decode(table, key, bytes)?);
                }
                None => {
                    all.remove(key);
                }
            }
        }
        Ok(all.into_iter().collect())
    }

    pub fn delete<T>(&mut self, table: Table<T>, key: &str) -> Result<bool> {
        let existed = match self.changes.get(&(table.name, key.to_string())) {
            Some(change) => change.is_some(),
            None => {
                let t = self
                    .txn
                    .open_table(table.def())
                    .map_err(db_err(table.name))?;
                t.get(key).map_err(db_err(table.name))?.is_some()
            }
        };
        self.changes.insert((table.name, key.into()), None);
        Ok(existed)
    }

    /// Writes the buffered changes into the open transaction.
    fn apply(self) -> Result<(), redb::Error> {
        for ((name, key), change) in self.changes {
            let def: TableDefinition<'static, &'static str, &'static [u8]> =
                TableDefinition::new(name);
            let mut t = self.txn.open_table(def)?;
            match change {
                Some(bytes) => t.insert(key.as_str(), bytes.as_slice()).map(drop)?,
                None => t.remove(key.as_str()).map(drop)?,
            }
        }
        Ok(())
    }
}

/// Every record of an open table, in key order.
fn read_all<T: DeserializeOwned>(
    table: Table<T>,
    t: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<(String, T)>> {
    let mut out = Vec::new();
    for entry in t.iter().map_err(db_err(table.name))? {
        let (k, v) = entry.map_err(db_err(table.name))?;
        let key = k.value().to_string();
        let value = decode(table, &key, v.value())?;
        out.push((key, value));
    }
    Ok(out)
}

fn decode<T: DeserializeOwned>(table: Table<T>, key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::Decode {
        table: table.name,
        key: key.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rec {
        n: u32,
    }
    const RECS: Table<Rec> = Table::new("recs");
    const OTHER: Table<Rec> = Table::new("other");

    #[test]
    fn put_get_list_delete_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let s = Store::open(&path).unwrap();
            assert_eq!(
                s.get(RECS, "a").unwrap(),
                None,
                "missing table reads as empty"
            );
            assert!(s.list(RECS).unwrap().is_empty());
            s.put(RECS, "b", &Rec { n: 2 }).unwrap();
            s.put(RECS, "a", &Rec { n: 1 }).unwrap();
            assert_eq!(s.get(RECS, "a").unwrap(), Some(Rec { n: 1 }));
            let keys: Vec<_> = s.list(RECS).unwrap().into_iter().map(|(k, _)| k).collect();
            assert_eq!(keys, ["a", "b"]);
            assert!(s.delete(RECS, "b").unwrap());
            assert!(!s.delete(RECS, "b").unwrap());
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.list(RECS).unwrap().len(), 1, "records survive reopening");
    }

    /// 8 KiB of random bytes anywhere in the file (the header, a page):
    /// open fails with Damaged naming the file, without a panic, and the
    /// file is left exactly as it was.
    #[test]
    fn a_damaged_file_is_refused_and_kept() {
        use std::io::{Read, Seek, Write};
        // Pages in use only: junk over free space is not damage.
        for offset in [0u64, 4096, 8192] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("db");
            {
                let s = Store::open(&path).unwrap();
                const BIG: Table<String> = Table::new("recs");
                for i in 0..200 {
                    s.put(BIG, &format!("k{i}"), &"x".repeat(500)).unwrap();
                }
            }
            assert_eq!(Store::check(&path).unwrap(), [("recs".to_string(), 200)]);
            let mut junk = vec![0u8; 8192];
            std::fs::File::open("/dev/urandom")
                .unwrap()
                .read_exact(&mut junk)
                .unwrap();
            let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.seek(std::io::SeekFrom::Start(offset)).unwrap();
            f.write_all(&junk).unwrap();
            drop(f);
            let before = std::fs::read(&path).unwrap();
            let Err(err) = Store::open(&path) else {
                panic!("offset {offset}: a damaged file was opened");
            };
            assert!(
                matches!(err, Error::Damaged { .. }),
                "offset {offset}: {err}"
            );
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("crius store reset"), "{msg}");
            assert!(matches!(Store::check(&path), Err(Error::Damaged { .. })));
            assert_eq!(std::fs::read(&path).unwrap(), before, "file untouched");
            let aside = Store::set_aside(&path).unwrap().unwrap();
            assert!(!path.exists());
            assert_eq!(std::fs::read(&aside).unwrap(), before, "moved, not deleted");
            let s = Store::open(&path).unwrap();
            assert!(s.list(RECS).unwrap().is_empty(), "a fresh store");
        }
    }

    #[test]
    fn a_failed_transaction_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let r: Result<(), Error> = s.write(|t| {
            t.put(RECS, "x", &Rec { n: 1 })?;
            t.put(OTHER, "y", &Rec { n: 2 })?;
            Err(Error::Decode {
                table: "recs",
                key: "x".into(),
                source: serde_json::from_str::<Rec>("!").unwrap_err(),
            })
        });
        assert!(r.is_err());
        assert_eq!(s.get(RECS, "x").unwrap(), None);
        assert_eq!(s.get(OTHER, "y").unwrap(), None);
        s.write(|t| {
            t.put(RECS, "x", &Rec { n: 1 })?;
            t.put(OTHER, "y", &Rec { n: 2 })
        })
        .unwrap();
        assert_eq!(s.get(OTHER, "y").unwrap(), Some(Rec { n: 2 }));
    }

    #[test]
    fn a_transaction_reads_its_own_changes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        s.put(RECS, "old", &Rec { n: 1 }).unwrap();
        s.write(|t| {
            t.put(RECS, "new", &Rec { n: 2 })?;
            assert_eq!(t.get(RECS, "new")?, Some(Rec { n: 2 }));
            assert!(t.delete(RECS, "old")?);
            assert_eq!(t.get(RECS, "old")?, None);
            assert!(!t.delete(RECS, "old")?, "deleted in this transaction");
            assert!(t.delete(RECS, "new")?);
            t.put(RECS, "new", &Rec { n: 3 })
        })
        .unwrap();
        assert_eq!(s.get(RECS, "old").unwrap(), None);
        assert_eq!(s.get(RECS, "new").unwrap(), Some(Rec { n: 3 }));
    }

    /// A lazy write is visible at once and durable with the next durable
    /// commit (lazy writes of other records included).
    #[test]
    fn lazy_writes_are_visible_and_durable_with_the_next_durable_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let s = Store::open(&path).unwrap();
            s.put_lazy(RECS, "lazy", &Rec { n: 1 }).unwrap();
            assert_eq!(s.get(RECS, "lazy").unwrap(), Some(Rec { n: 1 }));
            s.put_lazy(RECS, "lazy", &Rec { n: 2 }).unwrap();
            let r: Result<(), Error> = s.write_lazy(|t| {
                t.put(RECS, "failed", &Rec { n: 3 })?;
                Err(Error::Commit {
                    source: Arc::new(redb::Error::Corrupted("test".into())),
                })
            });
            assert!(r.is_err());
            s.put(OTHER, "durable", &Rec { n: 4 }).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.get(RECS, "lazy").unwrap(), Some(Rec { n: 2 }));
        assert_eq!(s.get(RECS, "failed").unwrap(), None);
        assert_eq!(s.get(OTHER, "durable").unwrap(), Some(Rec { n: 4 }));
    }

    /// Concurrent writers share commits; each one's changes are visible
    /// when its write returns, and a failing one among them changes nothing.
    #[test]
    fn concurrent_writes_commit_in_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let s = Arc::new(Store::open(&path).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for j in 0..25 {
                        let key = format!("{i}-{j}");
                        if j % 5 == 4 {
                            let r: Result<(), Error> = s.write(|t| {
                                t.put(RECS, &key, &Rec { n: j })?;
                                Err(Error::Commit {
                                    source: Arc::new(redb::Error::Corrupted("test".into())),
                                })
                            });
                            assert!(r.is_err());
                            assert_eq!(s.get(RECS, &key).unwrap(), None);
                        } else if j % 2 == 0 {
                            s.put_lazy(RECS, &key, &Rec { n: j }).unwrap();
                            assert_eq!(s.get(RECS, &key).unwrap(), Some(Rec { n: j }));
                        } else {
                            s.put(RECS, &key, &Rec { n: j }).unwrap();
                            assert_eq!(s.get(RECS, &key).unwrap(), Some(Rec { n: j }));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Lazy writes are durable with the next durable commit.
        s.put(OTHER, "last", &Rec { n: 0 }).unwrap();
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(
            s.list(RECS).unwrap().len(),
            8 * 20,
            "every successful write is durable"
        );
    }

    /// Waits (bounded: 60 s) until `cond` holds.
    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Where the crash test's writer process writes its database.
    const CRASH_DB_ENV: &str = "CRIUS_TEST_STORE_CRASH_DB";

    /// The writer of `a_killed_writer_loses_no_acknowledged_write`, run as
    /// a process of its own (ignored unless that test starts it): threads
    /// write pairs of records in one transaction each, durably or lazily,
    /// and print `durable KEY` or `lazy KEY` once each write has returned.
    #[test]
    #[ignore]
    fn crash_writer() {
        let Some(path) = std::env::var_os(CRASH_DB_ENV) else {
            return;
        };
        let s = Arc::new(Store::open(Path::new(&path)).unwrap());
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0.. {
                        let key = format!("{t}-{i}");
                        let durable = i % 3 != 0;
                        let pair = |txn: &mut Txn<'_>| -> Result<()> {
                            txn.put(RECS, &key, &Rec { n: i })?;
                            txn.put(OTHER, &key, &Rec { n: i })
                        };
                        if durable {
                            s.write(pair).unwrap();
                        } else {
                            s.write_lazy(pair).unwrap();
                        }
                        let kind = if durable { "durable" } else { "lazy" };
                        let mut out = std::io::stdout().lock();
                        std::io::Write::write_all(&mut out, format!("{kind} {key}\n").as_bytes())
                            .unwrap();
                        std::io::Write::flush(&mut out).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    /// A writer process killed (SIGKILL) amid concurrent group commits:
    /// every durable write it reported as returned is in the reopened
    /// database, and every transaction is there whole or not at all (both
    /// records of a pair, or neither), lazy ones included.
    #[test]
    fn a_killed_writer_loses_no_acknowledged_write() {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::tests::crash_writer",
                "--ignored",
                "--nocapture",
            ])
            .args(["--test-threads", "1"])
            .env(CRASH_DB_ENV, &path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = seen.clone();
        let reader = std::thread::spawn(move || {
            let mut acked = Vec::new();
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some((kind, key)) = line.split_once(' ')
                    && (kind == "durable" || kind == "lazy")
                {
                    acked.push((kind == "durable", key.to_string()));
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
            acked
        });
        // Killed amid its writes, once it has made 200 (bounded wait).
        wait_until("the writer's first 200 writes", || {
            seen.load(std::sync::atomic::Ordering::SeqCst) >= 200
        });
        child.kill().unwrap();
        child.wait().unwrap();
        let acked = reader.join().unwrap();
        let durable = acked.iter().filter(|(d, _)| *d).count();
        assert!(durable >= 50, "{durable} durable writes acknowledged");
        let s = Store::open(&path).unwrap();
        let recs: BTreeMap<String, Rec> = s.list(RECS).unwrap().into_iter().collect();
        let other: BTreeMap<String, Rec> = s.list(OTHER).unwrap().into_iter().collect();
        assert_eq!(
            recs, other,
            "every transaction is whole: both records of each pair or neither"
        );
        for (is_durable, key) in &acked {
            if *is_durable {
                assert!(
                    recs.contains_key(key),
                    "acknowledged durable write {key} lost"
                );
            }
        }
    }
}
