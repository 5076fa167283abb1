//! Unpacking one layer tar (gzip, zstd or plain) into its own directory in
//! overlayfs format, confined beneath that directory whatever the tar says.
//!
//! Confinement: every parent directory is resolved with `openat2` and
//! `RESOLVE_IN_ROOT` (symlinks, absolute or `..`, resolve as if the layer dir
//! were `/`, as they will inside the container), `..` components in entry
//! names are refused, and the final component is created with `*at` calls
//! relative to that parent fd that never follow a symlink. Hardlink targets
//! are resolved the same way (see openat2(2), the OCI image-spec
//! layer.md "Changesets" and overlayfs.rst "whiteouts and opaque
//! directories").
//!
//! Overlay format: a whiteout `.wh.NAME` becomes a 0/0 character device
//! NAME, `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory. A
//! parent directory the tar omits is created with the metadata of the same
//! directory in the lower layers (else overlayfs would show 0755 root for,
//! say, /tmp), and a hardlink to a file of a lower layer becomes a copy.
//!
//! Two steps, so that the layers of an image unpack in parallel while they
//! download: [`unpack`] needs only the layer's own bytes; what depends on
//! the lower layers (those implicit parents and hardlinks) is left as
//! [`Pending`] work that [`Pending::finish`] does once the lower layers are
//! in place (`unpack_lowers.rs`), before one `syncfs` makes the layer
//! durable. Each file's writeback starts as soon as it is written
//! (`sys::writeback`), so the disk works while the layer still unpacks.

use std::fs::File;
use std::io::{self, BufRead, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

pub use lowers::Pending;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timestamps, XattrFlags, openat2};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("{0}")]
    Bad(String),
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("layer content digest is {actual}, the config says {expected}")]
    DiffId { expected: String, actual: String },
}

type R<T> = Result<T, UnpackError>;

fn ioe<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |e| UnpackError::Io {
        op,
        path: path.display().to_string(),
        source: e.into(),
    }
}

fn stdioe<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

/// Reads through and hashes everything it reads.
struct HashReader<T> {
    inner: T,
    hasher: Sha256,
}

impl<T: Read> Read for HashReader<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// `src` decompressed, by its magic number. The decoders read `src`'s own
/// buffers (no copy on the way in).
fn decompressed<'a>(src: &'a mut dyn BufRead, target: &Path) -> R<Box<dyn Read + 'a>> {
    let mut magic = Vec::with_capacity(4);
    while magic.len() < 4 {
        let have = src.fill_buf().map_err(stdioe("read layer for", target))?;
        if have.is_empty() {
            break;
        }
        let n = have.len().min(4 - magic.len());
        magic.extend_from_slice(&have[..n]);
        src.consume(n);
    }
    let kind = match magic[..] {
        [0x1f, 0x8b, ..] => 1,
        [0x28, 0xb5, 0x2f, 0xfd] => 2,
        _ => 0,
    };
    let src = io::Cursor::new(magic).chain(src);
    Ok(match kind {
        1 => Box::new(flate2::bufread::MultiGzDecoder::new(src)),
        2 => {
            Box::new(zstd::stream::read::Decoder::with_buffer(src).map_err(stdioe("zstd", target))?)
        }
        _ => Box::new(src),
    })
}

/// Bounds on what one layer may unpack to (`registry.max_layer_*`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub entries: u64,
    pub bytes: u64,
}

/// The longest entry name accepted, in bytes (PATH_MAX).
const MAX_PATH: usize = 4096;

/// Unpacks the layer tar (compressed or not) that `src` reads into the new
/// directory `target`, reading `src` to the end of the tar stream, and
/// checks the tar's digest against `diff_id`. What needs the lower layers
/// is returned as [`Pending`].
pub fn unpack(src: &mut dyn BufRead, target: &Path, diff_id: &str, limits: Limits) -> R<Pending> {
    std::fs::create_dir(target).map_err(stdioe("create", target))?;
    let root = open_dir(target)?;
    let mut reader = HashReader {
        inner: decompressed(src, target)?,
        hasher: Sha256::new(),
    };
    let dir_times;
    let pending;
    {
        let mut archive = tar::Archive::new(&mut reader);
        let mut u = Unpacker {
            root: &root,
            root_path: fd_path(&root, target)?,
            pending: Pending::default(),
            dir_times: Vec::new(),
            limits,
            bytes: 0,
            buf: vec![0; COPY_BUF],
        };
        for (n, entry) in archive
            .entries()
            .map_err(stdioe("read tar", target))?
            .enumerate()
        {
            let mut entry = entry.map_err(stdioe("read tar", target))?;
            if n as u64 >= limits.entries {
                return Err(UnpackError::Bad(format!(
                    "the layer has more than {} entries (registry.max_layer_entries)",
                    limits.entries
                )));
            }
            if let Some(t) = u.entry(&mut entry)? {
                u.dir_times.push(t);
            }
        }
        dir_times = u.dir_times;
        pending = u.pending;
    }
    // Directory times last: creating entries changed them. The last entry
    // for a path wins (a later explicit entry over an implicit parent).
    let dir_times: std::collections::BTreeMap<_, _> = dir_times.into_iter().collect();
    for (path, ts) in dir_times {
        let fd = resolve(&root, &path).map_err(ioe("open", &path))?;
        rustix::fs::utimensat(&fd, "", &ts, AtFlags::EMPTY_PATH)
            .map_err(ioe("set times", &path))?;
    }
    io::copy(&mut reader, &mut io::sink()).map_err(stdioe("read layer for", target))?;
    let actual = format!("sha256:{}", crate::ids::hex(&reader.hasher.finalize()));
    if actual != diff_id {
        return Err(UnpackError::DiffId {
            expected: diff_id.to_string(),
            actual,
        });
    }
    Ok(pending)
}

/// The buffer file contents are copied through: large enough that a
/// layer's bytes cost few read and write calls.
const COPY_BUF: usize = 256 << 10;

fn open_dir(path: &Path) -> R<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(ioe("open", path))
}

/// The path `fd` was opened at, as the kernel knows it now.
fn fd_path(fd: &OwnedFd, path: &Path) -> R<PathBuf> {
    let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd));
    std::fs::read_link(&link).map_err(stdioe("read the path of", path))
}

/// `io::copy` through `buf` (std's copies 8 KiB at a time).
fn copy_through(buf: &mut [u8], src: &mut impl Read, dst: &mut File) -> io::Result<u64> {
    use std::io::Write;
    let mut total = 0;
    loop {
        let n = match src.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Opens `path` (relative, already checked) beneath `root`, following
/// symlinks as if `root` were `/`.
fn resolve(root: &OwnedFd, path: &Path) -> rustix::io::Result<OwnedFd> {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    openat2(
        root,
        path,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
}

/// The entry name as relative path components; `..` is refused.
fn clean(path: &Path) -> R<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(UnpackError::Bad(format!(
                    "entry {path:?} has a '..' component"
                )));
            }
        }
    }
    Ok(out)
}

struct Unpacker<'a> {
    root: &'a OwnedFd,
    /// The root's path as the kernel names it (for [`Self::canonical`]).
    root_path: PathBuf,
    /// Implicit parents and hardlinks that wait for the lower layers.
    pending: Pending,
    /// Directory times to set once every entry is in place.
    dir_times: Vec<(PathBuf, Timestamps)>,
    limits: Limits,
    /// File content written so far.
    bytes: u64,
    /// What file contents are copied through.
    buf: Vec<u8>,
}

struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    ts: Timestamps,
}

fn timestamps(secs: i64, nsecs: i64) -> Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: nsecs as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

impl Unpacker<'_> {
    /// Applies one entry; returns the directory times to set at the end.
    fn entry<T: Read>(&mut self, entry: &mut tar::Entry<T>) -> R<Option<(PathBuf, Timestamps)>> {
        let raw = entry
            .path()
            .map_err(|e| UnpackError::Bad(format!("bad entry name: {e}")))?
            .into_owned();
        if raw.as_os_str().len() > MAX_PATH {
            return Err(UnpackError::Bad(format!(
                "entry name of {} bytes is longer than {MAX_PATH}",
                raw.as_os_str().len()
            )));
        }
        let path = clean(&raw)?;
        let header = entry.header().clone();
        let kind = header.entry_type();
        let meta = Meta {
            uid: header.uid().unwrap_or(0) as u32,
            gid: header.gid().unwrap_or(0) as u32,
            mode: header.mode().unwrap_or(0o644) & 0o7777,
            ts: timestamps(header.mtime().unwrap_or(0) as i64, 0),
        };
        let Some(name) = path.file_name().map(|n| n.to_owned()) else {
            // The layer root itself ("./").
            if kind.is_dir() {
                let fd = rustix::fs::openat(
                    self.root,
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(ioe("open", &path))?;
                set_meta_fd(&fd, &meta, &path)?;
                return Ok(Some((path, meta.ts)));
            }
            return Err(UnpackError::Bad(format!("entry {raw:?} has no name")));
        };
        let parent_path = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let parent = self.ensure_dir(&parent_path)?;
        let name_str = name.to_string_lossy().into_owned();

        if name_str == OPAQUE {
            let fd = rustix::fs::openat(
                &parent,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(ioe("open", &parent_path))?;
            rustix::fs::fsetxattr(&fd, OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(ioe("set opaque xattr on", &parent_path))?;
            return Ok(None);
        }
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(UnpackError::Bad(format!("bad whiteout {raw:?}")));
            }
            if remove_existing(&parent, hidden, &path, false)? {
                self.forget(&parent, hidden.as_ref(), &path)?;
            }
            rustix::fs::mknodat(
                &parent,
                hidden,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(ioe("create whiteout", &path))?;
            return Ok(None);
        }

        let is_dir = kind.is_dir();
        if remove_existing(&parent, &name, &path, is_dir)? {
            self.forget(&parent, &name, &path)?;
        }
        let xattrs = xattrs(entry)?;
        match kind {
            tar::EntryType::Directory => {
                match rustix::fs::mkdirat(&parent, &name, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(ioe("create directory", &path)(e)),
                }
                let fd = rustix::fs::openat(
                    &parent,
                    &name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(ioe("open", &path))?;
                set_meta_fd(&fd, &meta, &path)?;
                set_xattrs(&fd, &xattrs, &path)?;
                // Its own metadata now, not the lower layers'.
                if self.pending.has_dirs() {
                    let at = self.canonical(&parent, &name, &path)?;
                    self.pending.explicit_dir(&at);
                }
                return Ok(Some((path, meta.ts)));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let fd = rustix::fs::openat(
                    &parent,
                    &name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(ioe("create", &path))?;
                let mut file = File::from(fd);
                // Stop a decompression bomb at the limit, whatever the
                // header says (sparse entries expand).
                let room = self.limits.bytes.saturating_sub(self.bytes);
                let written = copy_through(
                    &mut self.buf,
                    &mut entry.take(room.saturating_add(1)),
                    &mut file,
                )
                .map_err(stdioe("write", &path))?;
                self.bytes += written;
                if self.bytes > self.limits.bytes {
                    return Err(UnpackError::Bad(format!(
                        "the layer unpacks to more than {} bytes (registry.max_layer_bytes)",
                        self.limits.bytes
                    )));
                }
                // The disk writes the file while the rest of the layer
                // downloads and unpacks: `finish`'s syncfs has less to wait for.
                if written > 0 {
                    crate::sys::writeback::start(&file);
                }
                set_meta_fd(&file, &meta, &path)?;
                set_xattrs(&file, &xattrs, &path)?;
                rustix::fs::futimens(&file, &meta.ts).map_err(ioe("set times", &path))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| UnpackError::Bad(format!("bad link name of {raw:?}: {e}")))?
                    .ok_or_else(|| UnpackError::Bad(format!("symlink {raw:?} has no target")))?;
                rustix::fs::symlinkat(target.as_ref(), &parent, &name)
                    .map_err(ioe("create symlink", &path))?;
                rustix::fs::chownat(
                    &parent,
                    &name,
                    Some(uid(meta.uid)),
                    Some(gid(meta.gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(ioe("chown", &path))?;
                rustix::fs::utimensat(&parent, &name, &meta.ts, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(ioe("set times", &path))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| UnpackError::Bad(format!("bad link name of {raw:?}: {e}")))?
                    .ok_or_else(|| UnpackError::Bad(format!("hardlink {raw:?} has no target")))?;
                self.hardlink(&clean(&target)?, &parent, &name, &path)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let ft = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let dev = rustix::fs::makedev(
                    header.device_major().ok().flatten().unwrap_or(0),
                    header.device_minor().ok().flatten().unwrap_or(0),
                );
                rustix::fs::mknodat(&parent, &name, ft, Mode::from_raw_mode(0o600), dev)
                    .map_err(ioe("create device", &path))?;
                let fd = rustix::fs::openat(
                    &parent,
                    &name,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(ioe("open", &path))?;
                rustix::fs::chownat(
                    &fd,
                    "",
                    Some(uid(meta.uid)),
                    Some(gid(meta.gid)),
                    AtFlags::EMPTY_PATH,
                )
                .map_err(ioe("chown", &path))?;
                rustix::fs::chmodat(
                    &parent,
                    &name,
                    Mode::from_raw_mode(meta.mode),
                    AtFlags::empty(),
                )
                .map_err(ioe("chmod", &path))?;
                rustix::fs::utimensat(&parent, &name, &meta.ts, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(ioe("set times", &path))?;
            }
            // PAX and GNU long-name headers are consumed by the tar crate;
            // other types carry nothing to unpack.
            _ => {}
        }
        Ok(None)
    }

    /// Opens directory `path` beneath the root, creating missing
    /// components with the metadata the lower layers give them.
    fn ensure_dir(&mut self, path: &Path) -> R<OwnedFd> {
        let mut current = PathBuf::new();
        let mut fd = resolve(self.root, &current).map_err(ioe("open", path))?;
        for c in path.components() {
            current.push(c);
            match resolve(self.root, &current) {
                Ok(next) => fd = next,
                Err(Errno::NOENT) => {
                    // Root's and 0700 until `Pending::finish` gives it the
                    // lower layers' metadata.
                    let at = self.canonical(&fd, c.as_os_str(), &current)?;
                    rustix::fs::mkdirat(&fd, c.as_os_str(), Mode::from_raw_mode(0o700))
                        .map_err(ioe("create directory", &current))?;
                    fd = resolve(self.root, &current).map_err(ioe("open", &current))?;
                    let st = rustix::fs::fstat(&fd).map_err(ioe("stat", &current))?;
                    self.pending.implicit_dir(at, st.st_ino);
                }
                Err(e) => return Err(ioe("open", &current)(e)),
            }
            let st = rustix::fs::fstat(&fd).map_err(ioe("stat", &current))?;
            if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                return Err(UnpackError::Bad(format!(
                    "{} is not a directory",
                    current.display()
                )));
            }
        }
        Ok(fd)
    }

    /// A hardlink to `target`: linked within this layer, else a
    /// placeholder that `Pending::finish` fills with a copy of the lower
    /// layers' file.
    fn hardlink(
        &mut self,
        target: &Path,
        parent: &OwnedFd,
        name: &std::ffi::OsStr,
        path: &Path,
    ) -> R<()> {
        let tname = target.file_name().ok_or_else(|| {
            UnpackError::Bad(format!("hardlink {} has no target", path.display()))
        })?;
        let tparent = target.parent().unwrap_or(Path::new(""));
        if let Ok(dir) = resolve(self.root, tparent)
            && let Ok(st) = rustix::fs::statat(&dir, tname, AtFlags::SYMLINK_NOFOLLOW)
        {
            rustix::fs::linkat(&dir, tname, parent, name, AtFlags::empty())
                .map_err(ioe("hardlink", path))?;
            if self.pending.is_lower_link(st.st_ino) {
                let at = self.canonical(parent, name, path)?;
                self.pending.linked(st.st_ino, at);
            }
            return Ok(());
        }
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(ioe("create", path))?;
        let st = rustix::fs::fstat(&fd).map_err(ioe("stat", path))?;
        let at = self.canonical(parent, name, path)?;
        self.pending.lower_link(st.st_ino, at, target);
        Ok(())
    }

    /// Where `name` in directory `parent` is beneath the root, without
    /// symlinks: the key of pending work, which is found again later by
    /// walking that path without following any symlink.
    fn canonical(&self, parent: &OwnedFd, name: &std::ffi::OsStr, path: &Path) -> R<PathBuf> {
        let dir = fd_path(parent, path)?;
        let rel = dir.strip_prefix(&self.root_path).map_err(|_| {
            UnpackError::Bad(format!("{} resolved outside the layer", path.display()))
        })?;
        Ok(rel.join(name))
    }

    /// `name` in `parent` was removed with everything beneath it: pending
    /// work there is void.
    fn forget(&mut self, parent: &OwnedFd, name: &std::ffi::OsStr, path: &Path) -> R<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let at = self.canonical(parent, name, path)?;
        self.pending.forget(&at);
        Ok(())
    }
}

fn uid(n: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(n)
}
fn gid(n: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(n)
}

fn set_meta_fd(fd: impl AsFd, meta: &Meta, path: &Path) -> R<()> {
    rustix::fs::fchown(&fd, Some(uid(meta.uid)), Some(gid(meta.gid)))
        .map_err(ioe("chown", path))?;
    // After chown, which clears set-id bits.
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode)).map_err(ioe("chmod", path))
}

/// Removes what is at `name` unless both it and the new entry are
/// directories (a directory entry then only updates metadata); `true` if
/// something was removed.
fn remove_existing(
    parent: &OwnedFd,
    name: impl AsRef<std::ffi::OsStr>,
    path: &Path,
    new_is_dir: bool,
) -> R<bool> {
    let name = name.as_ref();
    let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(ioe("stat", path)(e)),
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        if new_is_dir {
            return Ok(false);
        }
        // std's remove_dir_all never follows symlinks; the /proc path of
        // the parent fd names the already-resolved directory.
        let full = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(parent)
        ))
        .join(name);
        std::fs::remove_dir_all(&full).map_err(stdioe("remove", path))?;
        return Ok(true);
    }
    rustix::fs::unlinkat(parent, name, AtFlags::empty()).map_err(ioe("remove", path))?;
    Ok(true)
}

/// The entry's extended attributes (PAX `SCHILY.xattr.*`); overlay's own
/// `trusted.overlay.*` are not taken from a layer (they would forge
/// whiteouts and redirects).
fn xattrs<T: Read>(entry: &mut tar::Entry<T>) -> R<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let Some(exts) = entry
        .pax_extensions()
        .map_err(|e| UnpackError::Bad(format!("bad pax header: {e}")))?
    else {
        return Ok(out);
    };
    for ext in exts {
        let ext = ext.map_err(|e| UnpackError::Bad(format!("bad pax header: {e}")))?;
        let Ok(key) = ext.key() else { continue };
        if let Some(name) = key.strip_prefix("SCHILY.xattr.")
            && !name.starts_with("trusted.overlay.")
        {
            out.push((name.to_string(), ext.value_bytes().to_vec()));
        }
    }
    Ok(out)
}

fn set_xattrs(fd: impl AsFd, xattrs: &[(String, Vec<u8>)], path: &Path) -> R<()> {
    for (name, value) in xattrs {
        match rustix::fs::fsetxattr(&fd, name.as_str(), value, XattrFlags::empty()) {
            Ok(()) => {}
            // A filesystem without user xattrs: not worth failing the pull.
            Err(Errno::OPNOTSUPP) => {
                tracing::debug!(path = %path.display(), %name, "xattr not supported")
            }
            Err(e) => return Err(ioe("set xattr on", path)(e)),
        }
    }
    Ok(())
}

#[path = "unpack_lowers.rs"]
mod lowers;

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
