//! The pod init: PID 1 of a pod's PID namespace, the monitor's forked
//! child. It only reaps: processes of the pod's containers that are
//! orphaned inside the namespace are re-parented to it. When it dies the
//! kernel kills every process of the namespace, so the sandbox is READY
//! only while it lives.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

use crate::sys::process::{close_fds_from, set_name};

/// Runs the init loop forever. SIGCHLD is blocked (inherited from the
/// monitor), so a child that exits between the reap and the wait is never
/// missed: its signal stays pending for `sigwait`.
pub fn run() -> ! {
    set_name("crius-init");
    close_fds_from(3);
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    let _ = chld.thread_block();
    loop {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        let _ = chld.wait();
    }
}
