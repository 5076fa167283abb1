//! Checks behind NetworkReady that need the plugins to run: does every
//! plugin of the list speak the list's `cniVersion` (VERSION), and, for lists
//! of CNI 1.1.0 or later whose plugins all advertise 1.1.0, is the plugin
//! ready (STATUS, CNI SPEC.md "STATUS: Check plugin status").
//!
//! kubelet asks for Status every few seconds and Status must never wait on a
//! plugin, so the check runs in a background task; `readiness` reports the
//! last verdict for the current configuration and starts a new check when
//! that verdict is older than [`REFRESH`] (or the configuration changed).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Map;

use super::conf::NetworkList;
use super::input::plugin_config;
use super::plugin::{self, Call};

/// How long a verdict is reused.
pub const REFRESH: Duration = Duration::from_secs(30);

#[derive(Default)]
struct State {
    /// The configuration the verdict is about (the list's JSON).
    key: String,
    checked: Option<Instant>,
    running: bool,
    /// The last check's failure, if it failed.
    failure: Option<String>,
}

#[derive(Default, Clone)]
pub struct Prober {
    state: Arc<Mutex<State>>,
}

/// What a check needs, owned (it runs in a spawned task).
pub struct Job {
    pub list: NetworkList,
    /// (plugin type, binary) of each plugin of the list, in order.
    pub plugins: Vec<(String, PathBuf)>,
    pub cni_path: String,
    pub timeout: Duration,
}

impl Prober {
    /// The last verdict for `job.list` (Ok while none is known), starting a
    /// check in the background when due and a tokio runtime is at hand.
    pub fn poll(&self, job: Job) -> Result<(), String> {
        let key = job.list.raw.to_string();
        let mut st = self.state.lock().expect("lock poisoned");
        let fresh = st.key == key && st.checked.is_some_and(|t| t.elapsed() < REFRESH);
        if !fresh
            && !st.running
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            st.running = true;
            let state = self.state.clone();
            let key = key.clone();
            handle.spawn(async move {
                let verdict = check(&job).await;
                let mut st = state.lock().expect("lock poisoned");
                st.key = key;
                st.checked = Some(Instant::now());
                st.failure = verdict.err();
                st.running = false;
            });
        }
        match &st.failure {
            Some(message) if st.key == key => Err(message.clone()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
impl Prober {
    /// Whether a background check has finished.
    pub fn checked(&self) -> bool {
        let st = self.state.lock().expect("lock poisoned");
        st.checked.is_some() && !st.running
    }
}

/// `major.minor.patch` as numbers (invalid parts count as 0).
pub fn parse_version(v: &str) -> (u32, u32, u32) {
    let mut parts = v.split('.').map(|p| p.parse().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// Runs the checks now.
pub async fn check(job: &Job) -> Result<(), String> {
    let list = &job.list;
    let mut all_1_1 = true;
    for (name, binary) in &job.plugins {
        let versions = plugin::versions(binary, job.timeout, &job.cni_path)
            .await
            .map_err(|e| format!("CNI plugin {name}: VERSION failed: {e}"))?;
        if !versions.iter().any(|v| v == &list.cni_version) {
            return Err(format!(
                "CNI plugin {name} ({}) does not support cniVersion {} of network {} ({}); it supports {}",
                binary.display(),
                list.cni_version,
                list.name,
                list.source,
                versions.join(", ")
            ));
        }
        all_1_1 &= versions.iter().any(|v| v == "1.1.0");
    }
    if parse_version(&list.cni_version) < (1, 1, 0) || !all_1_1 {
        return Ok(());
    }
    for (i, (name, binary)) in job.plugins.iter().enumerate() {
        let stdin = plugin_config(list, &list.plugins[i], None, &Map::new());
        let call = Call {
            command: "STATUS",
            container_id: "",
            netns: "",
            if_name: "",
            args: "",
            path: &job.cni_path,
        };
        plugin::exec(binary, &call, stdin.to_string().as_bytes(), job.timeout)
            .await
            .map_err(|e| {
                format!(
                    "CNI plugin {name} of network {} is not ready: {e}",
                    list.name
                )
            })?;
    }
    Ok(())
}

/// Whether GC may be sent to this list (CNI >= 1.1.0, every plugin
/// advertising 1.1.0).
pub async fn supports_gc(job: &Job) -> bool {
    if parse_version(&job.list.cni_version) < (1, 1, 0) {
        return false;
    }
    for (_, binary) in &job.plugins {
        match plugin::versions(binary, job.timeout, &job.cni_path).await {
            Ok(v) if v.iter().any(|v| v == "1.1.0") => {}
            _ => return false,
        }
    }
    true
}

/// The plugin types a list runs directly (not the IPAM plugins they exec).
pub fn direct_plugins(list: &NetworkList) -> Vec<String> {
    (0..list.plugins.len())
        .map(|i| list.plugin_type(i).to_string())
        .collect()
}
