//! Garbage collection of attachments whose pods no longer exist: at daemon
//! start, after a crash, the pod service passes the pods it knows; every
//! other cached attachment gets its DEL. Plugins of CNI 1.1.0 or later that
//! advertise GC then also get a GC call listing the valid attachments
//! (`cni.dev/valid-attachments`, CNI SPEC.md "GC: Clean up any stale
//! resources"), so they can drop what a lost cache entry would leak.

use serde_json::{Map, Value, json};

use super::input::plugin_config;
use super::plugin::{self, Call};
use super::{Error, IF_NAME, Network, Result, probe};

impl Network {
    /// DEL for every cached attachment whose pod is not in `live`, then GC
    /// where supported. Returns how many attachments were deleted; keeps
    /// going after an error and returns the first one at the end.
    pub async fn gc(&self, live: &[String]) -> Result<usize> {
        let mut first_err: Option<Error> = None;
        let mut deleted = 0;
        let mut valid = Vec::new();
        for pod_id in self.cache.pod_ids()? {
            if live.contains(&pod_id) {
                valid.push(json!({"containerID": pod_id, "ifname": IF_NAME}));
                continue;
            }
            let netns = match self.cache.read(&pod_id) {
                Ok(Some(entry)) => entry.netns,
                Ok(None) => continue,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            match self.teardown(&pod_id, &netns).await {
                Ok(()) => deleted += 1,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Err(e) = self.plugin_gc(valid).await {
            first_err.get_or_insert(e);
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(deleted),
        }
    }

    /// GC to each plugin of the current list, if they all speak CNI 1.1.
    async fn plugin_gc(&self, valid: Vec<Value>) -> Result<()> {
        let list = match self.load("") {
            Ok(list) => list,
            // No network configured: nothing to collect from.
            Err(_) => return Ok(()),
        };
        let job = self.probe_job(list)?;
        if !probe::supports_gc(&job).await {
            return Ok(());
        }
        let list = &job.list;
        for (i, (name, binary)) in job.plugins.iter().enumerate() {
            let mut stdin = plugin_config(list, &list.plugins[i], None, &Map::new());
            stdin["cni.dev/valid-attachments"] = Value::Array(valid.clone());
            let call = Call {
                command: "GC",
                container_id: "",
                netns: "",
                if_name: "",
                args: "",
                path: &job.cni_path,
            };
            plugin::exec(binary, &call, stdin.to_string().as_bytes(), job.timeout)
                .await
                .map_err(|source| Error::Plugin {
                    command: "GC",
                    plugin: name.clone(),
                    network: list.name.clone(),
                    pod_id: "(all)".into(),
                    source,
                })?;
        }
        Ok(())
    }
}
