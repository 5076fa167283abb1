//! Loading a compiled seccomp filter (seccomp(2), SECCOMP_SET_MODE_FILTER).
//! The program comes from [`crate::seccomp`], compiled in the daemon; this
//! side only hands it to the kernel. Loading needs no_new_privs or
//! CAP_SYS_ADMIN, which is why the init orders it as runc does.

use super::{Result, sys};

/// `struct sock_filter` is 8 bytes; the kernel takes at most BPF_MAXINSNS.
const INSTRUCTION: usize = 8;
const MAX_INSTRUCTIONS: usize = 4096;
const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;

/// Installs `program` (a `struct sock_filter` array) on the calling thread
/// with the SECCOMP_FILTER_FLAG_* `flags`. Allocates nothing unless it
/// fails, so a forked child of a threaded process may call it.
pub fn load(program: &[u8], flags: u32) -> Result<()> {
    let len = program.len() / INSTRUCTION;
    if !program.len().is_multiple_of(INSTRUCTION) || len == 0 || len > MAX_INSTRUCTIONS {
        return Err(sys(format!(
            "seccomp: a program of {} bytes is not 1..={MAX_INSTRUCTIONS} instructions",
            program.len()
        ))(nix::Error::EINVAL));
    }
    let prog = libc::sock_fprog {
        len: len as libc::c_ushort,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: seccomp(2) reads `prog` and the `len` instructions it points
    // to (checked to lie within `program`); both outlive the call, and the
    // kernel copies them (no alignment is required of user memory).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            flags as libc::c_ulong,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(sys("seccomp(SECCOMP_SET_MODE_FILTER)")(nix::Error::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The compiled filters, loaded in a forked child: what a process
    //! under them really gets.
    use std::collections::HashSet;

    use super::*;
    use crate::seccomp::{self, Filter};
    use crate::sys::process::exit_immediately;

    fn compile_json(json: &str) -> Filter {
        let profile: seccomp::Profile = serde_json::from_str(json).unwrap();
        seccomp::compile(&profile, "test", &HashSet::new(), &seccomp::Host::current()).unwrap()
    }

    /// Forks a child that loads `filter` (with no_new_privs) and runs `check`,
    /// which answers 0 or the number of the failed expectation; returns the
    /// child's exit code.
    fn in_filtered_child(filter: &Filter, check: fn() -> i32) -> i32 {
        // SAFETY: the test process has threads, so the child makes only
        // system calls (no allocation, no lock) until it exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // Only system calls from here: the test process has threads.
                if nix::sys::prctl::set_no_new_privs().is_err() {
                    exit_immediately(100);
                }
                if load(&filter.program, filter.flags).is_err() {
                    exit_immediately(101);
                }
                exit_immediately(check())
            }
            nix::unistd::ForkResult::Parent { child: pid } => {
                match nix::sys::wait::waitpid(pid, None).unwrap() {
                    nix::sys::wait::WaitStatus::Exited(_, code) => code,
                    other => panic!("child ended with {other:?}"),
                }
            }
        }
    }

    /// The errno of a failed raw syscall, 0 if it succeeded.
    fn errno_of(rc: libc::c_long) -> i32 {
        if rc == -1 {
            nix::Error::last() as i32
        } else {
            0
        }
    }

    #[test]
    fn runtime_default_filter_denies_in_a_child() {
        let filter = seccomp::prepare(
            &seccomp::Request::RuntimeDefault,
            false,
            ["CHOWN", "SETUID"],
        )
        .unwrap()
        .unwrap();
        let code = in_filtered_child(&filter, || {
            let checks = [
                (errno_of(unsafe_syscall(libc::SYS_getpid, 0, 0)), 0),
                (
                    errno_of(unsafe_syscall(
                        libc::SYS_unshare,
                        libc::CLONE_NEWUSER as i64,
                        0,
                    )),
                    libc::EPERM,
                ),
                (
                    errno_of(unsafe_syscall(libc::SYS_keyctl, 0, 0)),
                    libc::EPERM,
                ),
                (
                    errno_of(unsafe_syscall(libc::SYS_clone3, 0, 0)),
                    libc::ENOSYS,
                ),
                (
                    errno_of(unsafe_syscall(
                        libc::SYS_socket,
                        libc::AF_VSOCK as i64,
                        libc::SOCK_STREAM as i64,
                    )),
                    libc::EPERM,
                ),
                (
                    errno_of(unsafe_syscall(libc::SYS_personality, 0x0400_0000, 0)),
                    libc::EPERM,
                ),
            ];
            for (i, (got, want)) in checks.iter().enumerate() {
                if got != want {
                    return 10 + i as i32 * 10 + (*got).min(9);
                }
            }
            0
        });
        assert_eq!(
            code, 0,
            "a check failed in the filtered child (10*(n+1) + errno)"
        );
    }

    #[test]
    fn localhost_errno_ret_reaches_the_caller() {
        let filter = compile_json(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42},
            {"names": ["getpgid"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 7, "op": "SCMP_CMP_EQ"}]}
        ]}"#,
        );
        let code = in_filtered_child(&filter, || {
            if errno_of(unsafe_syscall(libc::SYS_getppid, 0, 0)) != 42 {
                return 1;
            }
            if errno_of(unsafe_syscall(libc::SYS_getpgid, 7, 0)) != libc::EPERM {
                return 2;
            }
            if errno_of(unsafe_syscall(libc::SYS_getpgid, 0, 0)) != 0 {
                return 3;
            }
            0
        });
        assert_eq!(code, 0);
    }

    /// A raw two-argument syscall for the filtered children.
    fn unsafe_syscall(nr: libc::c_long, a: i64, b: i64) -> libc::c_long {
        // SAFETY: the syscalls tested take integers (or NULL) only.
        unsafe { libc::syscall(nr, a, b) }
    }
}
