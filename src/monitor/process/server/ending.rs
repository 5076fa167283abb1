//! Removing a running container and shutting the pod down without waiting
//! in the loop: the SIGKILL goes out at once, the reply when the poll loop
//! has reaped what was killed, or an error once [`KILL_LIMIT`] passed (a
//! process in uninterruptible sleep, a frozen v1 cgroup). Meanwhile every
//! other container's logs, exits and execs go on; the requesting
//! connection reads no further request until its reply (replies stay in
//! order).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::Monitor;
use crate::monitor::process::workload::State;
use crate::monitor::protocol::{AttachEnd, Reply};
use crate::monitor::sync::Step;

/// How long a kill may take before its requester hears it failed: under
/// the daemon's 10 s call timeout.
pub(super) const KILL_LIMIT: Duration = Duration::from_secs(5);

/// Kills whose reply waits for the reap.
#[derive(Default)]
pub(super) struct Endings {
    /// Containers being removed, by id.
    removals: HashMap<String, Ending>,
    /// The pod being shut down.
    shutdown: Option<Ending>,
}

/// Who waits for one kill, and until when.
struct Ending {
    conns: Vec<u64>,
    deadline: Instant,
}

impl Ending {
    fn new() -> Ending {
        Ending {
            conns: Vec::new(),
            deadline: Instant::now() + KILL_LIMIT,
        }
    }
}

impl Endings {
    /// The earliest bound the loop must wake up for.
    pub fn next_deadline(&self) -> Option<Instant> {
        let removals = self.removals.values().map(|e| e.deadline);
        removals
            .chain(self.shutdown.as_ref().map(|e| e.deadline))
            .min()
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_some()
    }
}

impl Monitor {
    /// RemoveContainer from connection `i`: done at once unless the
    /// container still runs; then SIGKILLed, and answered by [`Monitor::settle_kills`].
    pub(super) fn remove_container(&mut self, i: usize, id: &str) -> Option<Reply> {
        self.cancel_container(id);
        let Some(c) = self.containers.get(id) else {
            return Some(Reply::Ok);
        };
        if matches!(c.state, State::Exited(_)) {
            self.forget_container(id);
            return Some(Reply::Ok);
        }
        let pid = c.init.pid;
        let ending = self
            .endings
            .removals
            .entry(id.to_string())
            .or_insert_with(|| {
                // Not reaped yet, so the pid cannot have been reused.
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                Ending::new()
            });
        ending.conns.push(self.conns[i].id);
        self.conns[i].busy = true;
        None
    }

    /// Shutdown from connection `i`: every child SIGKILLed; answered by
    /// [`Monitor::settle_kills`] once all are reaped (or the bound passed), which ends the
    /// loop.
    pub(super) fn shutdown(&mut self, i: usize) -> Option<Reply> {
        if self.endings.shutdown.is_none() {
            for pid in self.children.keys() {
                let _ = nix::sys::signal::kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
        let ending = self.endings.shutdown.get_or_insert_with(Ending::new);
        ending.conns.push(self.conns[i].id);
        self.conns[i].busy = true;
        None
    }

    /// Answers the kills whose processes have been reaped or whose bound
    /// passed; ends the loop after a shutdown.
    pub(super) fn settle_kills(&mut self) {
        let now = Instant::now();
        let done: Vec<String> = self
            .endings
            .removals
            .iter()
            .filter(|(id, e)| self.gone(id) || e.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in done {
            let Some(e) = self.endings.removals.remove(&id) else {
                continue;
            };
            let reply = if self.gone(&id) {
                self.forget_container(&id);
                Reply::Ok
            } else {
                // Kept: a later RemoveContainer kills and waits again.
                Reply::Failed {
                    step: Step::Signal,
                    message: format!(
                        "container {id:?} did not exit within {KILL_LIMIT:?} of SIGKILL"
                    ),
                }
            };
            for conn in e.conns {
                self.outbox.push((conn, reply.clone(), Vec::new()));
            }
        }
        let Some(s) = &self.endings.shutdown else {
            return;
        };
        if !self.children.is_empty() && s.deadline > now {
            return;
        }
        if !self.children.is_empty() {
            eprintln!(
                "shutdown: {} children did not exit within {KILL_LIMIT:?} of SIGKILL",
                self.children.len()
            );
        }
        let s = self.endings.shutdown.take().expect("checked");
        self.reap();
        // The log writer (no entry in `children`) writes what is left and
        // ends when we do.
        self.finish_logs();
        self.shutting_down = true;
        for conn in s.conns {
            self.outbox.push((conn, Reply::Ok, Vec::new()));
        }
    }

    /// Whether container `id` has been reaped (or is unknown).
    fn gone(&self, id: &str) -> bool {
        self.containers
            .get(id)
            .is_none_or(|c| matches!(c.state, State::Exited(_)))
    }

    /// Forgets an exited container: its exit told if it was still held
    /// back, its finished execs, attachments, log slot and exit file.
    pub(super) fn forget_container(&mut self, id: &str) {
        let execs: Vec<String> = self
            .execs
            .iter()
            .filter(|(_, e)| e.container == id && e.exit.is_some() && e.waiters.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for e in execs {
            self.execs.remove(&e);
        }
        if self
            .containers
            .get(id)
            .is_some_and(|c| c.unpublished.is_some())
        {
            self.publish(id);
        }
        if let Some(mut c) = self.containers.remove(id) {
            c.end_attachments(AttachEnd::Exited);
            self.logs.close(c.slot);
        }
        let _ = std::fs::remove_file(self.pod.exit_file(id));
    }
}
