//! The monitor's side of the pod's log writer
//! ([`crate::monitor::process::logwriter`]): what it reports, a
//! container's exit told (exit file, waiters) only once its last records
//! are written or [`PUBLISH_LIMIT`] passed, and a new writer when one dies
//! (writers that end idle are let go in
//! [`crate::monitor::process::logwriter::LogWriter::events`]).

use std::time::{Duration, Instant};

use super::{Monitor, write_atomic};
use crate::monitor::process::logwriter::Event;
use crate::monitor::process::workload::{State, Unpublished};
use crate::monitor::protocol::{Exit, Reply};

/// How long a container's exit waits for its last records to be written.
pub(super) const PUBLISH_LIMIT: Duration = Duration::from_secs(2);

impl Monitor {
    /// Container `id`'s init was reaped (its output drained): the exit is
    /// told now without a log, else after the writer's marker.
    pub(super) fn exit_container(&mut self, id: &str, exit: Exit) {
        let Some(c) = self.containers.get_mut(id) else {
            return;
        };
        c.state = State::Exited(exit);
        // No writer running: nothing of it is left to write.
        match c.has_log().then(|| self.logs.sync(c.slot)).flatten() {
            Some(token) => {
                c.unpublished = Some(Unpublished {
                    token,
                    deadline: Instant::now() + PUBLISH_LIMIT,
                })
            }
            None => self.publish(id),
        }
    }

    /// Writes container `id`'s exit file and answers its waiters.
    pub(super) fn publish(&mut self, id: &str) {
        let Some(c) = self.containers.get_mut(id) else {
            return;
        };
        let State::Exited(exit) = c.state else {
            return;
        };
        c.unpublished = None;
        if c.dropped > 0 {
            eprintln!("container {id}: {} log records were dropped", c.dropped);
        }
        let path = self.pod.exit_file(id);
        if let Err(e) = write_atomic(&path, &serde_json::to_vec(&exit).expect("serializable")) {
            eprintln!("write exit file {}: {e}", path.display());
        }
        for w in c.waiters.drain(..) {
            self.outbox.push((w, Reply::Exited { exit }, Vec::new()));
        }
    }

    /// The containers whose exit still waits to be told.
    fn unpublished(&self, due: impl Fn(&Unpublished) -> bool) -> Vec<String> {
        self.containers
            .iter()
            .filter(|(_, c)| c.unpublished.as_ref().is_some_and(&due))
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn by_slot(&mut self, slot: u64) -> Option<&mut super::Container> {
        self.containers.values_mut().find(|c| c.slot == slot)
    }

    /// Sends what the writer's socket takes and acts on what it reported;
    /// a writer that has gone is replaced.
    pub(super) fn log_events(&mut self) {
        self.logs.flush();
        for event in self.logs.events() {
            match event {
                Event::Synced { slot, token } => {
                    let id = self.containers.iter().find_map(|(id, c)| {
                        let due = c.slot == slot
                            && c.unpublished.as_ref().is_some_and(|u| u.token == token);
                        due.then(|| id.clone())
                    });
                    if let Some(id) = id {
                        self.publish(&id);
                    }
                }
                Event::Dropped { slot, count } => {
                    if let Some(c) = self.by_slot(slot) {
                        c.count_dropped(count);
                    }
                }
            }
        }
        if self.logs.is_gone() {
            self.replace_log_writer();
        }
    }

    /// The writer died: what it had not taken is counted as dropped, the
    /// exits waiting for it are told, and the next records start a new
    /// writer (up to a bound), which gets every open log file.
    fn replace_log_writer(&mut self) {
        for (slot, count) in self.logs.take_queued() {
            if let Some(c) = self.by_slot(slot) {
                c.count_dropped(count);
            }
        }
        for id in self.unpublished(|_| true) {
            self.publish(&id);
        }
        eprintln!("log writer {} ended", self.logs.pid);
        self.logs.reset();
    }

    /// Tells the exits whose bound passed.
    pub(super) fn expire_exits(&mut self) {
        let now = Instant::now();
        for id in self.unpublished(|u| u.deadline <= now) {
            self.publish(&id);
        }
    }

    /// The next time the loop must wake up for the log writer.
    pub(super) fn logs_deadline(&self) -> Option<Instant> {
        let exits = self
            .containers
            .values()
            .filter_map(|c| c.unpublished.as_ref().map(|u| u.deadline));
        exits.chain(self.logs.stall_deadline()).min()
    }

    /// At shutdown: every exit told, what is queued handed to the writer
    /// (which writes it and exits at the monitor's end).
    pub(super) fn finish_logs(&mut self) {
        for id in self.unpublished(|_| true) {
            self.publish(&id);
        }
        self.logs.finish(Duration::from_secs(1));
    }
}
