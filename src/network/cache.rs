//! The on-disk record of a pod's network attachment: `<state>/cni/results/
//! <pod-id>.json`, holding the network list, CNI_ARGS, port mappings and
//! (once ADD finished) the result.
//!
//! It is written *before* the first plugin runs and again with the result,
//! each time atomically (temp file + rename), so DEL can always run with the
//! exact configuration ADD used: after a daemon restart, after the conf dir
//! changed, and after a crash in the middle of ADD (then without a result).
//!
//! Only the first write is made durable (fsync before the rename): after a
//! crash of crius alone the page cache keeps the second one; after a crash
//! of the machine the pod's namespaces, veths and NAT rules are gone, and
//! the DEL that releases what is left (the IPAM lease, kept on disk by the
//! plugin) needs the configuration and CNI_ARGS only, which the first write
//! holds. The durable pod record keeps the result from its claim on.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Error, PortMapping};

/// Bumped when the layout changes incompatibly.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub format: u32,
    pub pod_id: String,
    pub netns: PathBuf,
    pub if_name: String,
    pub cni_args: String,
    pub port_mappings: Vec<PortMapping>,
    /// The network list ADD used.
    pub config: Value,
    /// The final ADD result; `None` while ADD runs (or if it was cut short).
    pub result: Option<Value>,
}

pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: PathBuf) -> Cache {
        Cache { dir }
    }

    pub fn path(&self, pod_id: &str) -> PathBuf {
        self.dir.join(format!("{pod_id}.json"))
    }

    /// The entry of a pod; `None` when there is none.
    pub fn read(&self, pod_id: &str) -> Result<Option<Entry>, Error> {
        let path = self.path(pod_id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    op: "read CNI cache",
                    path,
                    source,
                });
            }
        };
        let entry: Entry = serde_json::from_slice(&bytes).map_err(|e| Error::Cache {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if entry.format != FORMAT {
            return Err(Error::Cache {
                path,
                reason: format!("unknown format {}", entry.format),
            });
        }
        Ok(Some(entry))
    }

    /// Writes an entry atomically: readers see the old or the new one;
    /// with `durable`, it is on disk (fsync) before it replaces the old.
    pub fn write(&self, entry: &Entry, durable: bool) -> Result<(), Error> {
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { op, path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io("create CNI cache dir", &self.dir))?;
        let path = self.path(&entry.pod_id);
        let tmp = self.dir.join(format!(".{}.json.tmp", entry.pod_id));
        let bytes = serde_json::to_vec_pretty(entry).expect("cache entry serializes");
        let mut file = std::fs::File::create(&tmp).map_err(io("create CNI cache", &tmp))?;
        file.write_all(&bytes)
            .and_then(|()| if durable { file.sync_all() } else { Ok(()) })
            .map_err(io("write CNI cache", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("rename CNI cache into place", &path))
    }

    pub fn remove(&self, pod_id: &str) -> Result<(), Error> {
        let path = self.path(pod_id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io {
                op: "remove CNI cache",
                path,
                source,
            }),
        }
    }

    /// Pod ids that have an entry (for reconciliation at start).
    pub fn pod_ids(&self) -> Result<Vec<String>, Error> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => {
                return Err(Error::Io {
                    op: "read CNI cache dir",
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut ids = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name.strip_suffix(".json")
                && !id.starts_with('.')
            {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn write_read_remove_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("results"));
        assert_eq!(cache.read("p1").unwrap(), None);
        assert!(cache.pod_ids().unwrap().is_empty());
        let mut entry = Entry {
            format: FORMAT,
            pod_id: "p1".into(),
            netns: "/run/ns/p1/net".into(),
            if_name: "eth0".into(),
            cni_args: "IgnoreUnknown=1".into(),
            port_mappings: vec![],
            config: json!({"name": "n"}),
            result: None,
        };
        cache.write(&entry, true).unwrap();
        entry.result = Some(json!({"ips": []}));
        cache.write(&entry, false).unwrap();
        assert_eq!(cache.read("p1").unwrap(), Some(entry));
        assert_eq!(cache.pod_ids().unwrap(), vec!["p1"]);
        cache.remove("p1").unwrap();
        cache.remove("p1").unwrap();
        assert_eq!(cache.read("p1").unwrap(), None);
        // No temp files left behind.
        assert_eq!(
            std::fs::read_dir(dir.path().join("results"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn corrupt_entry_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().into());
        std::fs::write(cache.path("p"), "{").unwrap();
        let e = cache.read("p").unwrap_err().to_string();
        assert!(e.contains("p.json"), "{e}");
    }
}
