//! Disk usage of a container's writable layer (the overlay upper dir):
//! bytes allocated and inodes, like `du` (hard links counted once, other
//! filesystems mounted below not entered, symlinks not followed).
//!
//! A walk costs a stat per entry, so it never runs on an RPC's path: the
//! sampler walks each upper dir at most once per interval, and less often
//! for a tree whose walk is slow ([`due`]), and the RPCs read its result.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Allocated bytes (st_blocks × 512).
    pub bytes: u64,
    pub inodes: u64,
}

/// A finished walk: its result, when it ended and how long it took.
#[derive(Debug, Clone, Copy)]
pub struct Walk {
    pub usage: Usage,
    pub at: Instant,
    pub took: Duration,
}

/// Whether a tree walked as `last` should be walked again now: once per
/// `interval`, and never more often than every 10 walk durations (a walk
/// then costs at most a tenth of a thread).
pub fn due(last: Option<&Walk>, interval: Duration, now: Instant) -> bool {
    match last {
        None => true,
        Some(w) => now.duration_since(w.at) >= interval.max(w.took * 10),
    }
}

/// Walks `root`. A missing root is zero usage (the container's directory
/// is being removed); entries that vanish during the walk are skipped.
pub fn walk(root: &Path) -> std::io::Result<Walk> {
    let started = Instant::now();
    let meta = match std::fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Walk {
                usage: Usage::default(),
                at: Instant::now(),
                took: started.elapsed(),
            });
        }
        Err(e) => return Err(e),
    };
    let dev = meta.dev();
    let mut usage = Usage::default();
    let mut linked = HashSet::new();
    count(&meta, &mut usage, &mut linked);
    let mut todo: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let Ok(meta) = entry.metadata() else { continue };
            if meta.dev() != dev {
                continue;
            }
            count(&meta, &mut usage, &mut linked);
            if meta.is_dir() {
                todo.push(entry.path());
            }
        }
    }
    Ok(Walk {
        usage,
        at: Instant::now(),
        took: started.elapsed(),
    })
}

fn count(meta: &std::fs::Metadata, usage: &mut Usage, linked: &mut HashSet<u64>) {
    if !meta.is_dir() && meta.nlink() > 1 && !linked.insert(meta.ino()) {
        return;
    }
    usage.bytes += meta.blocks() * 512;
    usage.inodes += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_files_dirs_and_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("u");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/big"), vec![1u8; 1 << 20]).unwrap();
        std::fs::write(root.join("small"), b"x").unwrap();
        std::fs::hard_link(root.join("small"), root.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("sym")).unwrap();
        let w = walk(&root).unwrap();
        // root, a, a/b, big, small (= link), sym
        assert_eq!(w.usage.inodes, 6);
        assert!(w.usage.bytes >= 1 << 20, "{:?}", w.usage);
        assert!(w.usage.bytes < 2 << 20, "{:?}", w.usage);
        assert_eq!(
            walk(&dir.path().join("gone")).unwrap().usage,
            Usage::default()
        );
    }

    #[test]
    fn walks_are_spaced_by_interval_and_cost() {
        let now = Instant::now();
        let fast = Walk {
            usage: Usage::default(),
            at: now,
            took: Duration::from_millis(1),
        };
        let i = Duration::from_secs(10);
        assert!(due(None, i, now));
        assert!(!due(Some(&fast), i, now + Duration::from_secs(9)));
        assert!(due(Some(&fast), i, now + Duration::from_secs(10)));
        let slow = Walk {
            took: Duration::from_secs(3),
            ..fast
        };
        assert!(!due(Some(&slow), i, now + Duration::from_secs(20)));
        assert!(due(Some(&slow), i, now + Duration::from_secs(30)));
    }
}
