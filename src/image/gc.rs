//! Garbage collection of the image store (content no image record and no
//! running pull references) and its disk usage for ImageFsInfo.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{Inner, LAYERS, Result, io_err};

impl Inner {
    /// Deletes layers and blobs that no image and no running pull uses, and
    /// layer directories without a record (left by a crash).
    pub(crate) fn collect_garbage(&self) -> Result<()> {
        let busy = self.busy.lock().expect("lock poisoned");
        let mut keep = self.referenced()?;
        keep.extend(busy.keys().cloned());
        let layers = self.store.list(LAYERS)?;
        let mut dirs_kept = HashSet::new();
        for (chain_id, rec) in layers {
            if keep.contains(&chain_id) {
                dirs_kept.insert(rec.dir.to_string());
                continue;
            }
            tracing::debug!(%chain_id, dir = rec.dir, "removing unused layer");
            self.store.delete(LAYERS, &chain_id)?;
            remove_tree(&self.dirs.layer(rec.dir))?;
        }
        for entry in
            std::fs::read_dir(&self.dirs.layers).map_err(io_err("read", &self.dirs.layers))?
        {
            let entry = entry.map_err(io_err("read", &self.dirs.layers))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !dirs_kept.contains(&name) && !keep.contains(&format!("dir:{name}")) {
                tracing::debug!(dir = %name, "removing orphaned layer directory");
                remove_tree(&entry.path())?;
            }
        }
        for entry in
            std::fs::read_dir(&self.dirs.blobs).map_err(io_err("read", &self.dirs.blobs))?
        {
            let entry = entry.map_err(io_err("read", &self.dirs.blobs))?;
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            if !keep.contains(&digest) {
                tracing::debug!(%digest, "removing unused blob");
                std::fs::remove_file(entry.path()).map_err(io_err("remove", entry.path()))?;
            }
        }
        Ok(())
    }
}

fn remove_tree(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Bytes (allocated blocks) and inodes under `root`; hardlinks count once.
pub fn usage(root: &Path) -> Result<super::FsUsage> {
    let mut seen = HashSet::new();
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("read", &dir)(e)),
        };
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            }
            if seen.insert((meta.dev(), meta.ino())) {
                bytes += meta.blocks() * 512;
                inodes += 1;
            }
        }
    }
    let timestamp_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    Ok(super::FsUsage {
        timestamp_ns,
        used_bytes: bytes,
        inodes_used: inodes,
    })
}
