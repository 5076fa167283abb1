//! The monitor's side of the setups it follows without waiting
//! ([`crate::monitor::process::pending`]): starting to follow one, feeding
//! it what its sync socket says, the reply once it is done, failed or out
//! of time, and the kill-then-reply of a failed one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::{Child, Monitor, failed};
use crate::monitor::process::pending::{
    Failing, Follow, Followed, Pending, Progress, Starting, SyncReader, Work, released,
};
use crate::monitor::process::workload::{Failure, SETUP_LIMIT, START_LIMIT, Setup, failure};
use crate::monitor::protocol::{Exit, Reply};
use crate::monitor::sync::Step;

/// How long a failed setup's reply waits for its killed processes to be
/// reaped.
const REAP_LIMIT: Duration = Duration::from_secs(5);
/// Most exits of unknown children kept while a setup's stage 2 pid is
/// still unknown.
const MAX_UNCLAIMED: usize = 4096;

/// Setups, failed setups and released inits, as the loop follows them.
#[derive(Default)]
pub(super) struct Setups {
    pub pending: HashMap<u64, Pending>,
    pub failing: HashMap<u64, Failing>,
    pub starts: HashMap<String, Starting>,
    next: u64,
    /// Exits of children reaped before any setup claimed their pid: a
    /// stage 2 may end before stage 1 said its pid.
    unclaimed: HashMap<i32, Exit>,
}

impl Setups {
    /// The earliest bound the loop must wake up for.
    pub fn next_deadline(&self) -> Option<Instant> {
        let setups = self.pending.values().map(|p| p.deadline);
        let failing = self.failing.values().map(|f| f.deadline);
        let starts = self.starts.values().map(|s| s.deadline);
        setups.chain(failing).chain(starts).min()
    }

    /// Whether container `id` is being created.
    pub fn creating(&self, id: &str) -> bool {
        self.pending
            .values()
            .any(|p| matches!(&p.work, Work::Create(c) if c.launch.id == id))
    }

    /// Whether exec `id` is being set up.
    pub fn execing(&self, exec_id: &str) -> bool {
        self.pending
            .values()
            .any(|p| matches!(&p.work, Work::Exec { id, .. } if id == exec_id))
    }

    fn awaits_a_pid(&self) -> bool {
        self.pending.values().any(|p| !p.stage2_known)
    }

    /// An unknown child was reaped: kept while a setup may claim it.
    pub fn unknown_exit(&mut self, exit: Exit) {
        if self.awaits_a_pid() && self.unclaimed.len() < MAX_UNCLAIMED {
            self.unclaimed.insert(exit.pid, exit);
        }
    }

    /// Forgets unclaimed exits once no setup can claim them.
    pub fn tidy(&mut self) {
        if !self.awaits_a_pid() {
            self.unclaimed.clear();
        }
    }
}

/// Whether `pid` is a child of ours not yet reaped (alive or a zombie).
fn is_child(pid: i32) -> bool {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    waitid(Id::Pid(Pid::from_raw(pid)), flags).is_ok()
}

impl Monitor {
    /// Follows a forked setup; its reply goes to connection `i` later,
    /// which is not read from meanwhile (replies stay in order).
    pub(super) fn follow(&mut self, i: usize, work: Work, setup: Setup, expect_ready: bool) {
        let f = &mut self.setups;
        f.next += 1;
        let key = f.next;
        self.children.insert(setup.stage1, Child::Setup(key));
        f.pending.insert(
            key,
            Pending {
                conn: self.conns[i].id,
                work,
                sync: setup.sync,
                follow: Follow::new(expect_ready),
                deadline: Instant::now() + SETUP_LIMIT,
                stage2_known: false,
                exit: None,
            },
        );
        self.conns[i].busy = true;
    }

    /// Waits for a released init's execve; the reply goes to connection
    /// `i` later.
    pub(super) fn follow_start(&mut self, i: usize, id: String, sync: SyncReader) {
        let conn = self.conns[i].id;
        self.setups.starts.insert(
            id,
            Starting {
                conn,
                sync,
                deadline: Instant::now() + START_LIMIT,
            },
        );
        self.conns[i].busy = true;
    }

    /// Reads what setup `key` said and acts on it.
    pub(super) fn advance_setup(&mut self, key: u64) {
        let Some(p) = self.setups.pending.get_mut(&key) else {
            return;
        };
        let progress = match p.sync.fill() {
            Ok(()) => p.follow.advance(&mut p.sync),
            Err(e) => Progress::Failed(failure(Step::Create, crate::error::chain(&e))),
        };
        if let Some(pid) = p.follow.stage2()
            && !p.stage2_known
        {
            p.stage2_known = true;
            // Reaped before its pid came: the exit is stage 2's only if
            // the pid is not a child of ours now (never reused meanwhile).
            match self.setups.unclaimed.remove(&pid) {
                Some(exit) if !is_child(pid) => p.exit = Some(exit),
                _ => {
                    self.children.insert(pid, Child::Setup(key));
                }
            }
        }
        match progress {
            Progress::Waiting => {}
            Progress::Done(done) => self.setup_done(key, done),
            Progress::Failed(f) => self.setup_failed(key, f),
        }
    }

    fn setup_done(&mut self, key: u64, done: Followed) {
        let Some(p) = self.setups.pending.remove(&key) else {
            return;
        };
        let pid = done.pid;
        let result = match p.work {
            Work::Create(creating) => {
                let id = creating.launch.id.clone();
                self.next_slot += 1;
                let made = match p.exit {
                    Some(_) => Err(failure(Step::Create, "the init ended during setup")),
                    None => creating.finish(done, p.sync, self.next_slot),
                };
                made.map(|c| {
                    let init = c.init;
                    c.open_log(&mut self.logs);
                    self.children.insert(init.pid, Child::Container(id.clone()));
                    self.containers.insert(id, c);
                    (Reply::Created { init }, Vec::new())
                })
            }
            Work::Exec { id, execing } => execing.finish(done, p.exit).map(|(e, fds)| {
                let process = e.process;
                if e.exit.is_none() {
                    self.children.insert(pid, Child::Exec(id.clone()));
                }
                self.execs.insert(id, e);
                let n = fds.len();
                (Reply::ExecStarted { process, fds: n }, fds)
            }),
        };
        match result {
            Ok((reply, fds)) => self.outbox.push((p.conn, reply, fds)),
            Err(f) => self.abandon(key, Some(p.conn), f),
        }
    }

    /// Ends setup `key` with failure `f`: kills its processes; the reply
    /// goes out once they are reaped.
    pub(super) fn setup_failed(&mut self, key: u64, f: Failure) {
        if let Some(p) = self.setups.pending.remove(&key) {
            self.abandon(key, Some(p.conn), f);
        }
    }

    fn abandon(&mut self, key: u64, conn: Option<u64>, f: Failure) {
        // Only pids still registered: never reaped, so never reused.
        for (pid, child) in &self.children {
            if *child == Child::Setup(key) {
                let _ = nix::sys::signal::kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
        self.setups.failing.insert(
            key,
            Failing {
                conn,
                failure: f,
                deadline: Instant::now() + REAP_LIMIT,
            },
        );
        self.settle();
    }

    /// Replies for the failed setups whose processes are all reaped (or
    /// whose bound passed).
    pub(super) fn settle(&mut self) {
        let now = Instant::now();
        let done: Vec<u64> = self
            .setups
            .failing
            .iter()
            .filter(|(key, f)| {
                f.deadline <= now || !self.children.values().any(|c| *c == Child::Setup(**key))
            })
            .map(|(key, _)| *key)
            .collect();
        for key in done {
            if let Some(f) = self.setups.failing.remove(&key)
                && let Some(conn) = f.conn
            {
                self.outbox.push((conn, failed(f.failure), Vec::new()));
            }
        }
    }

    /// A setup's process was reaped.
    pub(super) fn setup_exited(&mut self, key: u64, exit: Exit) {
        if let Some(p) = self.setups.pending.get_mut(&key)
            && p.follow.stage2() == Some(exit.pid)
        {
            p.exit = Some(exit);
        }
    }

    /// Reads what released init `id` said after `start`.
    pub(super) fn advance_start(&mut self, id: &str) {
        let Some(s) = self.setups.starts.get_mut(id) else {
            return;
        };
        let outcome = match s.sync.fill() {
            Ok(()) => released(&mut s.sync),
            Err(e) => Some(Err(failure(Step::Exec, crate::error::chain(&e)))),
        };
        let Some(outcome) = outcome else { return };
        let Some(s) = self.setups.starts.remove(id) else {
            return;
        };
        let reply = match outcome {
            Ok(()) => {
                if let Some(c) = self.containers.get_mut(id) {
                    c.started();
                }
                Reply::Ok
            }
            Err(f) => failed(f),
        };
        self.outbox.push((s.conn, reply, Vec::new()));
    }

    /// Fails what has run out of time.
    pub(super) fn expire(&mut self) {
        let now = Instant::now();
        let late: Vec<u64> = self
            .setups
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in late {
            let why = format!("the setup did not finish within {SETUP_LIMIT:?}");
            self.setup_failed(key, failure(Step::Create, why));
        }
        let late: Vec<String> = self
            .setups
            .starts
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in late {
            if let Some(s) = self.setups.starts.remove(&id) {
                let why = format!("execve did not finish within {START_LIMIT:?}");
                self.outbox
                    .push((s.conn, failed(failure(Step::Exec, why)), Vec::new()));
            }
        }
        self.settle();
    }

    /// Connection `conn` has gone: its setups are cancelled (killed and
    /// reaped, no reply).
    pub(super) fn conn_closed(&mut self, conn: u64) {
        let keys: Vec<u64> = self
            .setups
            .pending
            .iter()
            .filter(|(_, p)| p.conn == conn)
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            self.setups.pending.remove(&key);
            let why = failure(Step::Create, "the requester went away");
            self.abandon(key, None, why);
        }
        for f in self.setups.failing.values_mut() {
            if f.conn == Some(conn) {
                f.conn = None;
            }
        }
    }

    /// Container `id` is being removed: a creation of it is cancelled, a
    /// release of it answered.
    pub(super) fn cancel_container(&mut self, id: &str) {
        let keys: Vec<u64> = self
            .setups
            .pending
            .iter()
            .filter(|(_, p)| matches!(&p.work, Work::Create(c) if c.launch.id == id))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let why = failure(Step::Create, "the container was removed during its setup");
            self.setup_failed(key, why);
        }
        if let Some(s) = self.setups.starts.remove(id) {
            let why = failure(Step::NotRunning, "the container was removed");
            self.outbox.push((s.conn, failed(why), Vec::new()));
        }
    }
}
