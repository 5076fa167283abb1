//! What crius does about pods when it starts, and in the background.
//!
//! At start: intents (CREATING records) left by a crash, and pods whose
//! creation finished after their caller gave up (no caller of a previous
//! run can claim them), are rolled back ([`crate::record::reconcile`]);
//! READY pods are reattached to their monitors (pid + start time checked,
//! then the versioned handshake), or marked NOTREADY with their processes
//! killed when the monitor is gone; a changed boot id (the state dir is not
//! necessarily tmpfs) means every monitor is gone. Then what pods without
//! a record left is found from the kernel and the disk and removed
//! ([`sweep_orphans`]) — only under crius's own prefixes, never anything
//! outside them. What the trash holds (removed pods' directories being
//! deleted in the background when crius stopped) is deleted too.
//!
//! In the background: pods whose RunPodSandbox caller gave up and that no
//! retry claimed within the bound are removed ([`crate::record`]'s reaper).

use std::path::Path;
use std::sync::Arc;

use super::record::State;
use super::{Error, Pods};
use crate::monitor::PodDir;
use crate::sys::mount::{Host, detach_all, mounts_under};
use crate::sys::ns;
use crate::sys::process::ProcRef;

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

    // What removals left in the trash when crius stopped.
    pods.trash.reap();
    // Intents and pods nobody claimed: no caller can still be waiting.
    let kept = crate::record::reconcile(pods).await?;
    for mut rec in kept {
        if rec.state != State::Ready {
            continue;
        }
        let id = rec.id.clone();
        let monitor = rec.monitor.filter(|m| !rebooted && m.alive());
        let attached = match monitor {
            Some(m) => match pods.engine.attach(&rec.dir).await {
                Ok(answered) if answered == m => true,
                Ok(answered) => {
                    tracing::warn!(pod_id = %id, pid = answered.pid, "monitor socket answered for another process");
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
            pods.records.put(&rec)?;
            pods.events.pod(crate::events::Type::Stopped, &rec);
        }
    }

    sweep_orphans(pods, &state, rebooted).await?;
    crate::record::start_reaper(pods);
    Ok(())
}

/// After a reboot the pins are plain files and nothing is mounted.
fn release_stale(dir: &PodDir) {
    for kind in [ns::Kind::Net, ns::Kind::Ipc, ns::Kind::Uts, ns::Kind::User] {
        let _ = ns::unpin(&Host, &dir.ns(kind));
    }
    let _ = std::fs::remove_dir(&dir.ns_dir);
}

/// Removes what pods without a record left on the host, found from what
/// the kernel and the disk still show (the store may be lost): every
/// process in crius's monitors cgroup that is not a recorded pod's live
/// monitor (with its children: pod init, container inits), pod directories
/// and namespace pins under the state dir, cached CNI results (DEL with the
/// cached result releases the address), pod cgroups under the default
/// parent (every process in them killed first).
async fn sweep_orphans(pods: &Arc<Pods>, state: &Path, rebooted: bool) -> Result<(), Error> {
    let records = pods.records.list()?;
    let known: std::collections::HashSet<String> = records.iter().map(|r| r.id.clone()).collect();
    // Attachments with a cached result get their DEL from the network's gc.
    let cached = pods.network.cached_pods().unwrap_or_default();
    // Pods the kernel or the disk shows and no record owns.
    let mut orphans = std::collections::BTreeSet::new();
    if !rebooted {
        let live: Vec<ProcRef> = records.iter().filter_map(|r| r.monitor).collect();
        orphans.extend(kill_orphan_monitors(pods, state, &live).await);
    }
    // Pod directories and namespace pins no record owns.
    let mut dirs = std::collections::BTreeSet::new();
    for sub in ["pods", "ns"] {
        let Ok(entries) = std::fs::read_dir(state.join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) && is_pod_id(&name) {
                dirs.insert(name);
            }
        }
    }
    for name in &dirs {
        tracing::warn!(pod_id = %name, "removing the leftovers of a pod without a record");
        orphans.insert(name.clone());
        let dir = PodDir::new(state, name);
        pods.engine.stop(&dir, None).await;
        if rebooted {
            // The pins are plain files: a DEL must not be given them.
            release_stale(&dir);
        }
    }
    // CNI attachments (cached ADD results) whose pod has no record: DEL
    // releases their addresses, then GC where the plugins support it. The
    // netns pins are still mounted, so the plugins delete the interfaces
    // themselves instead of leaving them to the kernel's asynchronous
    // netns teardown.
    let live: Vec<String> = known.iter().cloned().collect();
    match pods.network.gc(&live).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(count = n, "released the networks of pods without a record"),
        Err(e) => tracing::warn!(error = %crate::error::chain(&e), "CNI garbage collection"),
    }
    // Attachments whose cached result is lost too (the state dir was
    // wiped): DEL with the current config releases their addresses.
    let cgroups = orphan_cgroups(pods, &known);
    orphans.extend(cgroups.iter().map(|(id, _)| id.clone()));
    if !rebooted {
        for id in orphans.iter().filter(|id| !cached.contains(id)) {
            // The pin, while it is still mounted: the plugins then delete
            // the interfaces too, not only the addresses.
            let pin = PodDir::new(state, id).ns(ns::Kind::Net);
            let netns = if dirs.contains(id) && pin.exists() {
                pin
            } else {
                std::path::PathBuf::new()
            };
            if let Err(e) = pods.network.teardown_uncached(id, &netns).await {
                tracing::warn!(pod_id = %id, error = %crate::error::chain(&e), "CNI DEL without a cached result");
            }
        }
    }
    for name in &dirs {
        let dir = PodDir::new(state, name);
        for mount in mounts_under(&dir.dir)
            .into_iter()
            .chain(mounts_under(&dir.ns_dir))
        {
            let _ = detach_all(&Host, &mount);
        }
        release_stale(&dir);
        // Through the trash: its walk crosses no mount a failed detach
        // left behind.
        for path in [&dir.dir, &dir.ns_dir] {
            if let Err(e) = pods.trash.put(path) {
                tracing::warn!(pod_id = %name, error = %crate::error::chain(&e), "remove the leftovers of a pod without a record");
            }
        }
    }
    // Pod cgroups crius made under its default parent with no record.
    for (id, path) in cgroups {
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

/// Kills every process in crius's monitors cgroup that is not one of the
/// `live` monitors: a monitor whose pod has no record (the store was lost,
/// or its pod directory with its pid file). Its children first (the pod
/// init and container inits: each is PID 1 of its namespace or a plain
/// child), then the monitor itself, through its socket when its pod
/// directory still answers.
/// The pod ids of the monitors killed.
async fn kill_orphan_monitors(pods: &Arc<Pods>, state: &Path, live: &[ProcRef]) -> Vec<String> {
    let mut killed = Vec::new();
    let Some(cgroup) = pods.monitors_cgroup() else {
        return killed;
    };
    if !pods.cgroups.exists(&cgroup) {
        return killed;
    }
    let pids = match pods.cgroups.procs(&cgroup) {
        Ok(pids) => pids,
        Err(e) => {
            tracing::warn!(cgroup = %cgroup.path, error = %crate::error::chain(&e), "list the monitors' cgroup");
            return killed;
        }
    };
    for pid in pids {
        let Some(m) = ProcRef::of(pid) else {
            continue;
        };
        // A live monitor's own children (its log writer, a setup not yet
        // in its container's cgroup) belong to it.
        let parent = crate::sys::process::parent_of(pid);
        if live.contains(&m) || live.iter().any(|l| Some(l.pid) == parent) {
            continue;
        }
        let pod_id = monitor_pod_id(pid);
        tracing::warn!(pid, pod_id = ?pod_id, "killing a pod monitor without a record, and its children");
        for child in children_of(pid) {
            if let Some(c) = ProcRef::of(child) {
                c.signal(nix::sys::signal::Signal::SIGKILL);
            }
        }
        let dir = PodDir::new(state, pod_id.as_deref().unwrap_or("unknown"));
        pods.engine.stop(&dir, Some(m)).await;
        killed.extend(pod_id);
    }
    killed
}

/// The pod id a monitor was started for: the last argument of its command
/// line is its pod directory, named by the id.
fn monitor_pod_id(pid: i32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let last = cmdline.split(|b| *b == 0).rfind(|a| !a.is_empty())?;
    let name = Path::new(std::str::from_utf8(last).ok()?).file_name()?;
    let name = name.to_str()?;
    is_pod_id(name).then(|| name.to_string())
}

/// The direct children of `pid` (every thread's list).
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
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
