//! What crius does about containers when it starts, and in the background.
//!
//! At start (after the pods are reconciled): intents (CREATING records)
//! left by a crash, and containers whose creation finished after their
//! caller gave up, are rolled back ([`crate::record::reconcile`]); a
//! CREATED container whose init crius was making when it stopped is
//! ended (its monitor forgets it, its cgroup is emptied) and records why,
//! for StartContainer to report; a RUNNING container whose init still
//! lives gets its exit watcher back; one that exited while crius was down
//! shows the exit code its monitor wrote (`<pod dir>/exits/<id>`), or 255
//! when its monitor died too; container directories without a record are
//! removed — only names crius itself makes, only under its own root — and
//! so is whatever the trash still holds (removals deleting in the
//! background when crius stopped: [`crate::record::trash`]); what a
//! RemoveContainer that replied had not yet released when crius stopped
//! ([`super::removal`]) is released: the exit files of recorded pods
//! naming no recorded container (their monitors are told to forget those
//! containers first) and the `crius-<id>` cgroups below recorded pods'
//! cgroups whose container has no record.
//!
//! In the background: containers whose CreateContainer caller gave up and
//! that no retry claimed within the bound are removed ([`crate::record`]'s
//! reaper).

use std::sync::Arc;

use std::collections::HashSet;

use super::record::{CONTAINERS, ContainerRecord, State, Unmade};
use super::{Containers, Error, blocking};
use crate::pod::record::PODS;

/// Reconciles the records with the host, then starts the reaper.
pub async fn start(containers: &Arc<Containers>) -> Result<(), Error> {
    // Intents and containers nobody claimed: no caller can still be waiting.
    let records = crate::record::reconcile(containers).await?;
    for rec in records {
        let id = rec.id.clone();
        match rec.state {
            State::Creating => {}
            // crius stopped while it made the init, after the caller had
            // the container: what was made of it ends, and StartContainer
            // reports why there is none.
            State::Created if rec.init.is_none() => {
                if rec.unmade.is_none() {
                    containers.end_interrupted_init(rec).await?;
                }
            }
            State::Running | State::Created => {
                let exited = crate::monitor::read_exit(&rec.exit_file());
                let alive = rec.init.is_some_and(|i| i.alive());
                if exited.is_none() && alive {
                    if rec.state == State::Running {
                        tracing::info!(container_id = %id, "watching a running container again");
                        containers.watch_exit(&rec);
                    }
                    continue;
                }
                // Gone while crius was down: the watcher records the exit
                // file's status (or 255) at once.
                tracing::warn!(container_id = %id, exit = ?exited, "container exited while crius was not running");
                containers.watch_exit(&rec);
            }
            State::Exited => {}
        }
    }
    // What removals left in the trash when crius stopped.
    containers.trash.reap();
    sweep_orphans(containers).await?;
    sweep_released(containers).await?;
    crate::record::start_reaper(containers);
    Ok(())
}

impl Containers {
    /// A CREATED container whose init crius was making when it stopped:
    /// the monitor forgets the init (killing it if it was made), its
    /// cgroup is emptied, and the record says why it has no init.
    async fn end_interrupted_init(&self, mut rec: ContainerRecord) -> Result<(), Error> {
        tracing::warn!(container_id = %rec.id, "crius stopped while it made this container's init");
        if let Err(e) = self.engine.remove(&rec.pod_dir, &rec.id).await {
            tracing::debug!(container_id = %rec.id, error = %crate::error::chain(&e), "engine remove");
        }
        self.kill_leftovers(&rec, true).await;
        rec.unmade = Some(Unmade {
            step: "create container init".into(),
            kind: crate::error::Kind::FailedPrecondition,
            message: "crius stopped while it made the container's init; remove the container and create it again".into(),
        });
        self.store.put(CONTAINERS, &rec.id, &rec)?;
        Ok(())
    }
}

/// Removes container directories that no record owns.
async fn sweep_orphans(containers: &Arc<Containers>) -> Result<(), Error> {
    let known: HashSet<String> = containers
        .store
        .list(CONTAINERS)?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let Ok(entries) = std::fs::read_dir(&containers.settings.dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !crate::ids::is_id(&name) || known.contains(&name) {
            continue;
        }
        tracing::warn!(container_id = %name, "removing the directory of a container without a record");
        let dir = entry.path();
        let _ = crate::sys::mount::detach_all(&crate::sys::mount::Host, &super::rootfs_dir(&dir));
        if let Err(e) = containers.trash.put(&dir) {
            tracing::warn!(dir = %dir.display(), error = %crate::error::chain(&e), "remove orphan container directory");
        }
    }
    Ok(())
}

/// Releases what removals that had replied left when crius stopped
/// ([`super::removal`]): for each recorded pod, its monitor's memory and
/// the exit file of each container it reaped that has no record, and the
/// leaf cgroups of such containers (processes killed first).
async fn sweep_released(containers: &Arc<Containers>) -> Result<(), Error> {
    let known: Arc<HashSet<String>> = Arc::new(
        containers
            .store
            .list(CONTAINERS)?
            .into_iter()
            .map(|(id, _)| id)
            .collect(),
    );
    for (_, pod) in containers.store.list(PODS)? {
        let exits = std::fs::read_dir(pod.dir.exits()).into_iter().flatten();
        for entry in exits.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !crate::ids::is_id(&name) || known.contains(&name) {
                continue;
            }
            tracing::warn!(pod_id = %pod.id, container_id = %name, "releasing a removed container: its monitor forgets it");
            if let Err(e) = containers.engine.remove(&pod.dir, &name).await {
                tracing::debug!(container_id = %name, error = %crate::error::chain(&e), "engine remove");
            }
            let _ = std::fs::remove_file(entry.path());
        }
        let Some(pod_cg) = pod.cgroup.clone() else {
            continue;
        };
        let (cg, known, pod_id) = (containers.cgroups.clone(), known.clone(), pod.id.clone());
        let swept = blocking(move || {
            for leaf in cg.children(&pod_cg)? {
                let name = leaf.path.rsplit('/').next().unwrap_or_default();
                let id = name.strip_prefix("crius-").unwrap_or_default();
                let id = id.strip_suffix(".scope").unwrap_or(id);
                // Exactly the leaf crius makes for that id, and no other.
                if !crate::ids::is_id(id) || known.contains(id) || cg.container_path(&pod_cg, id)? != leaf {
                    continue;
                }
                tracing::warn!(pod_id = %pod_id, container_id = %id, "removing the cgroup of a container without a record");
                if let Err(e) = cg.kill_all(&leaf).and_then(|()| cg.remove(&leaf)) {
                    tracing::warn!(container_id = %id, error = %crate::error::chain(&e), "remove container cgroup");
                }
            }
            Ok::<_, crate::cgroups::Error>(())
        })
        .await;
        if let Err(e) = swept {
            tracing::warn!(pod_id = %pod.id, error = %crate::error::chain(&e), "list the pod's cgroups");
        }
    }
    Ok(())
}
