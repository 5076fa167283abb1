//! What crius does about containers when it starts, and in the background.
//!
//! At start (after the pods are reconciled): intents (CREATING records)
//! left by a crash, and containers whose creation finished after their
//! caller gave up, are rolled back ([`crate::record::reconcile`]); a RUNNING container whose init still
//! lives gets its exit watcher back; one that exited while crius was down
//! shows the exit code its monitor wrote (`<pod dir>/exits/<id>`), or 255
//! when its monitor died too; container directories without a record are
//! removed — only names crius itself makes, only under its own root — and
//! so is whatever the trash still holds (removals deleting in the
//! background when crius stopped: [`crate::record::trash`]).
//!
//! In the background: containers whose CreateContainer caller gave up and
//! that no retry claimed within the bound are removed ([`crate::record`]'s
//! reaper).

use std::sync::Arc;

use super::record::{CONTAINERS, State};
use super::{Containers, Error};

/// Reconciles the records with the host, then starts the reaper.
pub async fn start(containers: &Arc<Containers>) -> Result<(), Error> {
    // Intents and containers nobody claimed: no caller can still be waiting.
    let records = crate::record::reconcile(containers).await?;
    for rec in records {
        let id = rec.id.clone();
        match rec.state {
            State::Creating => {}
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
    crate::record::start_reaper(containers);
    Ok(())
}

/// Removes container directories that no record owns.
async fn sweep_orphans(containers: &Arc<Containers>) -> Result<(), Error> {
    let known: std::collections::HashSet<String> = containers
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
        let ours = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if !ours || known.contains(&name) {
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
