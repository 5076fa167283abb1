//! Counts over the processes of a cgroup, for the cAdvisor process metrics:
//! threads (`Threads:` of /proc/<pid>/status), open file descriptors and
//! the sockets among them (/proc/<pid>/fd links `socket:[...]`). A process
//! that exits during the count is skipped.

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub processes: u64,
    pub threads: u64,
    pub fds: u64,
    pub sockets: u64,
}

/// Counts for `pids` under the proc filesystem at `proc_root`.
pub fn count(proc_root: &Path, pids: &[i32]) -> Counts {
    let mut c = Counts::default();
    for pid in pids {
        let dir = proc_root.join(pid.to_string());
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue;
        };
        c.processes += 1;
        c.threads += status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(1);
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            c.fds += 1;
            if std::fs::read_link(fd.path())
                .is_ok_and(|t| t.as_os_str().as_encoded_bytes().starts_with(b"socket:"))
            {
                c.sockets += 1;
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_a_fake_proc_tree() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("42");
        std::fs::create_dir_all(p.join("fd")).unwrap();
        std::fs::write(p.join("status"), "Name:\tsh\nThreads:\t3\n").unwrap();
        std::os::unix::fs::symlink("socket:[123]", p.join("fd/3")).unwrap();
        std::os::unix::fs::symlink("/dev/null", p.join("fd/0")).unwrap();
        let c = count(dir.path(), &[42, 43]);
        assert_eq!(
            c,
            Counts {
                processes: 1,
                threads: 3,
                fds: 2,
                sockets: 1
            }
        );
    }

    #[test]
    fn counts_this_process() {
        let me = std::process::id() as i32;
        let c = count(Path::new("/proc"), &[me]);
        assert_eq!(c.processes, 1);
        assert!(c.threads >= 1 && c.fds >= 3, "{c:?}");
    }
}
