//! Starting a file's writeback early (sync_file_range(2)).

use std::os::fd::{AsFd, AsRawFd};

/// Starts writing `file`'s dirty pages to disk without waiting for them
/// (`SYNC_FILE_RANGE_WRITE`). Advisory: it makes nothing durable (metadata
/// and completion need an fsync or syncfs after it), so an error, such as
/// a filesystem without it, is ignored.
pub fn start(file: impl AsFd) {
    let fd = file.as_fd().as_raw_fd();
    // SAFETY: a system call on a descriptor borrowed for the call; it reads
    // and writes no memory of this process.
    let _ = unsafe { libc::sync_file_range(fd, 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}
