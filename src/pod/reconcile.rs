//! What crius does about pods when it starts, and in the background.
//!
//! At start: intents (CREATING records) left by a crash are rolled back;
//! READY pods are reattached to their monitors (pid + start time checked,
//! then the versioned handshake), or marked NOTREADY with their processes
//! killed when the monitor is gone; a changed boot id (the state dir is not
//! necessarily tmpfs) means every monitor is gone. Then pod directories and
//! namespace pins under crius's own state dir that no record owns are
//! removed — never anything outside it.
//!
//! In the background: pods whose RunPodSandbox caller gave up and that no
//! retry claimed within the bound are removed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::lifecycle::read_pid_file;
use super::record::{PODS, State};
use super::{Error, Pods, now_ns};
use crate::monitor::PodDir;
use crate::monitor::client::Connection;
use crate::sys::mount::{Host, detach_all, mounts_under};
use crate::sys::ns;

/// The file remembering the boot the state dir belongs to.
const BOOT_ID_FILE: &str = "boot_id";

/// Reconciles the state dir with the records, then starts the reaper of
/// unclaimed pods.
pub async fn start(pods: &Arc<Pods>) -> Result<(), Error> {
    let state = pods.settings.state.clone();
    let boot_file = state.join(BOOT_ID_FILE);
    let previous = std::fs::read_to_string(&boot_file).ok();
    let rebooted = previous.is_some_and(|b| b.trim() != pods.boot_id);
    let _ = std::fs::create_dir_all(&state);
    if let Err(e) = std::fs::write(&boot_file, &pods.boot_id) {
        tracing::warn!(path = %boot_file.display(), error = %e, "write boot id");
    }
    if rebooted {
        tracing::warn!("the machine rebooted since the last start: every pod monitor is gone");
    }

    let records = pods.store.list(PODS)?;
    for (id, mut rec) in records.iter().cloned() {
        match rec.state {
            State::Creating => {
                tracing::warn!(pod_id = %id, "rolling back a pod whose creation was interrupted");
                let _ = pods.teardown(&rec, false).await;
                pods.remove_files(&rec).await;
                pods.store.delete(PODS, &id)?;
            }
            State::Ready => {
                let monitor = rec.monitor.filter(|m| !rebooted && m.alive());
                let attached = match monitor {
                    Some(m) => match Connection::open(&rec.dir).await {
                        Ok(conn) if conn.monitor == m => true,
                        Ok(conn) => {
                            tracing::warn!(pod_id = %id, pid = conn.monitor.pid, "monitor socket answered for another process");
                            false
                        }
                        Err(e) => {
                            tracing::warn!(pod_id = %id, error = %crate::error::chain(&e), "monitor did not answer");
                            false
                        }
                    },
                    None => false,
                };
                if let (true, Some(m)) = (attached, monitor) {
                    tracing::info!(pod_id = %id, pid = m.pid, "reattached to pod monitor");
                    pods.watch(&id, m);
                } else {
                    tracing::warn!(pod_id = %id, "pod monitor is gone: the pod is NOTREADY");
                    if !rebooted {
                        let _ = pods.teardown(&rec, false).await;
                    } else {
                        release_stale(&rec.dir);
                    }
                    rec.state = State::NotReady;
                    rec.reason = if rebooted {
                        "the machine rebooted".into()
                    } else {
                        "the pod's monitor was lost while crius was not running".into()
                    };
                    rec.monitor = None;
                    pods.store.put(PODS, &id, &rec)?;
                }
            }
            State::NotReady => {}
        }
    }

    sweep_orphans(pods, &state).await?;

    let this = pods.clone();
    tokio::spawn(async move { reap_unclaimed(this).await });
    Ok(())
}

/// After a reboot the pins are plain files and nothing is mounted.
fn release_stale(dir: &PodDir) {
    for kind in [ns::Kind::Net, ns::Kind::Ipc, ns::Kind::Uts] {
        let _ = ns::unpin(&Host, &dir.ns(kind));
    }
    let _ = std::fs::remove_dir(&dir.ns_dir);
}

/// Removes pod directories and pins under the state dir that no record owns.
async fn sweep_orphans(pods: &Arc<Pods>, state: &Path) -> Result<(), Error> {
    let known: std::collections::HashSet<String> = pods
        .store
        .list(PODS)?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    for sub in ["pods", "ns"] {
        let Ok(entries) = std::fs::read_dir(state.join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if known.contains(&name) || !is_pod_id(&name) {
                continue;
            }
            tracing::warn!(pod_id = %name, "removing the leftovers of a pod without a record");
            let dir = PodDir::new(state, &name);
            if let Some(m) = read_pid_file(&dir).filter(|m| m.alive()) {
                let _ = crate::monitor::client::shutdown(&dir).await;
                m.signal(nix::sys::signal::Signal::SIGKILL);
            }
            for mount in mounts_under(&dir.dir)
                .into_iter()
                .chain(mounts_under(&dir.ns_dir))
            {
                let _ = detach_all(&Host, &mount);
            }
            release_stale(&dir);
            let _ = std::fs::remove_dir_all(&dir.dir);
            let _ = std::fs::remove_dir_all(&dir.ns_dir);
        }
    }
    // CNI attachments (cached ADD results) whose pod has no record: DEL
    // releases their addresses (the netns is gone; DEL still runs), then
    // GC where the plugins support it.
    let live: Vec<String> = known.iter().cloned().collect();
    match pods.network.gc(&live).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(count = n, "released the networks of pods without a record"),
        Err(e) => tracing::warn!(error = %crate::error::chain(&e), "CNI garbage collection"),
    }
    // Pod cgroups crius made under its default parent with no record.
    for (id, path) in orphan_cgroups(pods, &known) {
        tracing::warn!(pod_id = %id, cgroup = %path, "removing the cgroup of a pod without a record");
        let cg = pods.cgroups.clone();
        let removed = super::lifecycle::blocking(move || {
            cg.kill_all(&path)?;
            cg.remove(&path)
        })
        .await;
        if let Err(e) = removed {
            tracing::warn!(pod_id = %id, error = %crate::error::chain(&e), "remove orphan cgroup");
        }
    }
    Ok(())
}

/// Children of crius's default cgroup parent that are pod cgroups of
/// crius's own making (their name holds a pod id) and have no record.
fn orphan_cgroups(
    pods: &Pods,
    known: &std::collections::HashSet<String>,
) -> Vec<(String, crate::cgroups::CgroupPath)> {
    let probe = "0".repeat(64);
    let Ok(sample) = pods.cgroups.pod_path("", &probe) else {
        return Vec::new();
    };
    let parent = match sample.path.rsplit_once('/') {
        Some(("", _)) | None => "/".to_string(),
        Some((p, _)) => p.to_string(),
    };
    let dir = pods.cgroups.layout().reference().dir(&parent);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = embedded_id(&name) else {
            continue;
        };
        if known.contains(id) {
            continue;
        }
        // Only a name crius itself would give this pod's cgroup.
        if let Ok(path) = pods.cgroups.pod_path("", id)
            && path.path.rsplit('/').next() == Some(name.as_str())
        {
            out.push((id.to_string(), path));
        }
    }
    out
}

/// The 64-hex-digit pod id inside a cgroup name (`pod-<id>`,
/// `crius-pod<id>.slice`).
fn embedded_id(name: &str) -> Option<&str> {
    let start = name.find("pod")? + 3;
    let rest = name[start..].trim_start_matches('-');
    let id = rest.get(..64)?;
    is_pod_id(id).then_some(id)
}

/// Only names crius itself makes (64 hex digits) are ever swept.
fn is_pod_id(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Removes pods nobody claimed within the bound.
async fn reap_unclaimed(pods: Arc<Pods>) {
    let ttl = pods.settings.unclaimed_ttl;
    let period = (ttl / 2).clamp(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        tokio::time::sleep(period).await;
        let Ok(records) = pods.store.list(PODS) else {
            continue;
        };
        let limit = now_ns() - ttl.as_nanos() as i64;
        for (id, rec) in records {
            if rec.claimed || rec.state == State::Creating || rec.finished_at > limit {
                continue;
            }
            let lock = pods.lock_of(&id);
            let guard = lock.lock().await;
            // Atomically take it away from retries (they claim READY pods
            // only), unless one claimed it meanwhile.
            let taken = pods.store.write(|txn| {
                let Some(mut r) = txn.get(PODS, &id)? else {
                    return Ok::<_, crate::store::Error>(None);
                };
                if r.claimed {
                    return Ok(None);
                }
                r.state = State::NotReady;
                r.reason = "never claimed".into();
                txn.put(PODS, &id, &r)?;
                Ok(Some(r))
            });
            if let Ok(Some(r)) = taken {
                tracing::warn!(pod_id = %id, "removing a pod that no RunPodSandbox retry claimed");
                let _ = pods.teardown(&r, false).await;
                pods.remove_files(&r).await;
                let _ = pods.store.delete(PODS, &id);
            }
            drop(guard);
            pods.forget_lock(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_cgroup_names() {
        let id = "ab".repeat(32);
        assert_eq!(embedded_id(&format!("pod-{id}")), Some(id.as_str()));
        assert_eq!(
            embedded_id(&format!("crius-pod{id}.slice")),
            Some(id.as_str())
        );
        assert_eq!(embedded_id("pod-short"), None);
        assert_eq!(embedded_id("kubepods"), None);
    }

    #[test]
    fn only_crius_ids_are_swept() {
        assert!(is_pod_id(&"a".repeat(64)));
        assert!(!is_pod_id("kubepods"));
        assert!(!is_pod_id(&"g".repeat(64)));
    }
}
