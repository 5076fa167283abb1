//! The metadata database: pods, containers and images as records in one
//! embedded transactional store (redb), so a crash never leaves half a record
//! and a multi-record change (an image and its tags, a pod and its intent)
//! commits atomically or not at all.
//!
//! Records are JSON values in named tables keyed by a string (an id). Each
//! module owns its tables: `const PODS: Table<PodRecord> = Table::new("pods");`.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

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
            Ok(Ok(db)) => Ok(Store { db }),
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
    /// or none do when it returns an error.
    pub fn write<R, E>(&self, f: impl FnOnce(&mut Txn) -> Result<R, E>) -> Result<R, E>
    where
        E: From<Error>,
    {
        let txn = self.db.begin_write().map_err(db_err("<transaction>"))?;
        let mut wrapped = Txn { txn };
        let out = f(&mut wrapped)?;
        wrapped.txn.commit().map_err(db_err("<commit>"))?;
        Ok(out)
    }
}

/// A write transaction: see [`Store::write`].
pub struct Txn {
    txn: redb::WriteTransaction,
}

impl Txn {
    pub fn put<T: Serialize>(&mut self, table: Table<T>, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|source| Error::Encode {
            table: table.name,
            key: key.into(),
            source,
        })?;
        let mut t = self
            .txn
            .open_table(table.def())
            .map_err(db_err(table.name))?;
        t.insert(key, bytes.as_slice())
            .map_err(db_err(table.name))?;
        Ok(())
    }

    pub fn get<T: DeserializeOwned>(&mut self, table: Table<T>, key: &str) -> Result<Option<T>> {
        let t = self
            .txn
            .open_table(table.def())
            .map_err(db_err(table.name))?;
        let value = t.get(key).map_err(db_err(table.name))?;
        value.map(|v| decode(table, key, v.value())).transpose()
    }

    /// Every record of a table, in key order, as this transaction sees it.
    pub fn list<T: DeserializeOwned>(&mut self, table: Table<T>) -> Result<Vec<(String, T)>> {
        let t = self
            .txn
            .open_table(table.def())
            .map_err(db_err(table.name))?;
        read_all(table, &t)
    }

    pub fn delete<T>(&mut self, table: Table<T>, key: &str) -> Result<bool> {
        let mut t = self
            .txn
            .open_table(table.def())
            .map_err(db_err(table.name))?;
        let existed = t.remove(key).map_err(db_err(table.name))?.is_some();
        Ok(existed)
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
}
