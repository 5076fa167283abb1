//! The CRI container log format, as kubelet reads it
//! (`<RFC3339Nano time> <stdout|stderr> <F|P> <content>\n`): each output line
//! becomes one record tagged F (full); a line longer than [`MAX_LINE`] is cut
//! into P (partial) records followed by the F record that ends it.
//!
//! [`Formatter`] is the pure part (bytes in, records out) so it is tested
//! without files; [`LogFile`] appends records and reopens after kubelet's
//! rotation.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest content of one record (containerd's and CRI-O's 16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// `time` as RFC 3339 with nanoseconds, in UTC.
pub fn rfc3339_nano(time: SystemTime) -> String {
    let d = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn record(out: &mut Vec<u8>, time: &str, stream: Stream, partial: bool, content: &[u8]) {
    out.extend_from_slice(time.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.name().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// Turns a stream's raw output into log records, keeping an unfinished line
/// (at most [`MAX_LINE`] bytes) per stream between reads.
#[derive(Debug, Default)]
pub struct Formatter {
    pending: [Vec<u8>; 2],
}

impl Formatter {
    fn pending(&mut self, stream: Stream) -> &mut Vec<u8> {
        &mut self.pending[stream as usize]
    }

    /// Appends to `out` the records that `data` completes.
    pub fn feed(&mut self, stream: Stream, data: &[u8], now: SystemTime, out: &mut Vec<u8>) {
        let time = rfc3339_nano(now);
        let mut rest = data;
        while !rest.is_empty() {
            let pending = &mut self.pending[stream as usize];
            let room = MAX_LINE - pending.len();
            match rest.iter().take(room).position(|&b| b == b'\n') {
                Some(nl) => {
                    pending.extend_from_slice(&rest[..nl]);
                    record(out, &time, stream, false, pending);
                    pending.clear();
                    rest = &rest[nl + 1..];
                }
                None if rest.len() >= room => {
                    pending.extend_from_slice(&rest[..room]);
                    record(out, &time, stream, true, pending);
                    pending.clear();
                    rest = &rest[room..];
                }
                None => {
                    pending.extend_from_slice(rest);
                    rest = &[];
                }
            }
        }
    }

    /// At the end of a stream: an unfinished last line is a full record.
    pub fn finish(&mut self, stream: Stream, now: SystemTime, out: &mut Vec<u8>) {
        let pending = std::mem::take(self.pending(stream));
        if !pending.is_empty() {
            record(out, &rfc3339_nano(now), stream, false, &pending);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("container log {path}")]
pub struct Error {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// A CRI log file: a relative path (no `..`, checked by CreateContainer)
/// beneath the pod's log directory. It is only ever opened through the
/// directory with RESOLVE_BENEATH and O_NOFOLLOW, so a symlink planted in
/// the log directory cannot make crius (root) write elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogPath {
    pub dir: PathBuf,
    pub rel: PathBuf,
}

impl LogPath {
    /// The whole path, as ContainerStatus reports it.
    pub fn full(&self) -> PathBuf {
        self.dir.join(&self.rel)
    }

    /// Creates the log directory (kubelet's, absolute) and the
    /// directories of `rel` beneath it (kubelet usually made them all),
    /// never following a symlink below the log directory.
    pub fn create_parent(&self) -> Result<(), Error> {
        let err = |source: rustix::io::Errno| Error {
            path: self.full(),
            source: source.into(),
        };
        std::fs::create_dir_all(&self.dir).map_err(|source| Error {
            path: self.dir.clone(),
            source,
        })?;
        let mut at = open_dir(&self.dir).map_err(err)?;
        for part in self.rel.parent().into_iter().flat_map(Path::components) {
            match rustix::fs::mkdirat(&at, part.as_os_str(), Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(err(e)),
            }
            at = rustix::fs::openat2(
                &at,
                part.as_os_str(),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
            )
            .map_err(err)?;
        }
        Ok(())
    }

    /// Opens the file for appending (created 0640 when missing).
    fn open(&self) -> Result<File, Error> {
        let err = |source: rustix::io::Errno| Error {
            path: self.full(),
            source: source.into(),
        };
        let dir = open_dir(&self.dir).map_err(err)?;
        // O_NONBLOCK for the open only: a FIFO planted at the path with no
        // reader fails (ENXIO) instead of blocking the monitor; writes
        // (the log writer's) block as on any file.
        let flags = OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::NOFOLLOW;
        let fd = rustix::fs::openat2(
            &dir,
            &self.rel,
            flags | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::from_raw_mode(0o640),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(err)?;
        rustix::fs::fcntl_setfl(&fd, flags).map_err(err)?;
        Ok(File::from(fd))
    }
}

fn open_dir(dir: &Path) -> rustix::io::Result<std::os::fd::OwnedFd> {
    rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The container's log file, appended to. After a failed reopen it stays
/// closed: it never creates a file kubelet did not expect.
#[derive(Debug)]
pub struct LogFile {
    path: LogPath,
    file: Option<File>,
}

impl LogFile {
    pub fn open(path: &LogPath) -> Result<LogFile, Error> {
        Ok(LogFile {
            file: Some(path.open()?),
            path: path.clone(),
        })
    }

    /// Writes records; an error (a full disk) drops them rather than stall
    /// the writer: logs are best effort, the container must keep running.
    pub fn write(&mut self, records: &[u8]) -> Result<(), Error> {
        match &mut self.file {
            Some(f) => f.write_all(records).map_err(|source| Error {
                path: self.path.full(),
                source,
            }),
            None => Ok(()),
        }
    }

    /// Reopens the path after rotation (kubelet renamed the old file).
    pub fn reopen(&mut self) -> Result<(), Error> {
        self.file = None;
        self.file = Some(self.path.open()?);
        Ok(())
    }

    pub fn is_open(&self) -> bool {
        self.file.is_some()
    }

    /// The open file (for the log writer to write to).
    pub fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn timestamps_are_rfc3339_nano_utc() {
        assert_eq!(rfc3339_nano(at(0, 0)), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_nano(at(951_782_400, 5)),
            "2000-02-29T00:00:00.000000005Z"
        );
        assert_eq!(
            rfc3339_nano(at(1_795_919_738, 123_456_789)),
            "2026-11-29T02:35:38.123456789Z"
        );
    }

    #[test]
    fn full_lines_partial_reads_and_both_streams() {
        let mut f = Formatter::default();
        let mut out = Vec::new();
        let t = at(0, 0);
        f.feed(Stream::Stdout, b"hello\nwor", t, &mut out);
        f.feed(Stream::Stderr, b"oops\n", t, &mut out);
        f.feed(Stream::Stdout, b"ld\n\n", t, &mut out);
        let text = String::from_utf8(out).unwrap();
        let ts = "1970-01-01T00:00:00.000000000Z";
        assert_eq!(
            text,
            format!(
                "{ts} stdout F hello\n{ts} stderr F oops\n{ts} stdout F world\n{ts} stdout F \n"
            )
        );
    }

    #[test]
    fn long_lines_are_split_with_p_records() {
        let mut f = Formatter::default();
        let mut out = Vec::new();
        let mut line = vec![b'a'; MAX_LINE * 2 + 10];
        line.push(b'\n');
        f.feed(Stream::Stdout, &line, at(0, 0), &mut out);
        let records: Vec<&[u8]> = out
            .split(|&b| b == b'\n')
            .filter(|r| !r.is_empty())
            .collect();
        assert_eq!(records.len(), 3);
        let tag = |r: &[u8]| r[38..39].to_vec();
        assert_eq!(tag(records[0]), b"P");
        assert_eq!(tag(records[1]), b"P");
        assert_eq!(tag(records[2]), b"F");
        assert_eq!(records[0].len() - 40, MAX_LINE);
        assert_eq!(records[2].len() - 40, 10);
    }

    #[test]
    fn an_unfinished_last_line_is_flushed_full() {
        let mut f = Formatter::default();
        let mut out = Vec::new();
        f.feed(Stream::Stdout, b"no newline", at(0, 0), &mut out);
        assert!(out.is_empty());
        f.finish(Stream::Stdout, at(0, 0), &mut out);
        assert!(out.ends_with(b"stdout F no newline\n"));
        f.finish(Stream::Stdout, at(0, 0), &mut Vec::new());
    }

    #[test]
    fn reopen_follows_rotation_and_fails_without_creating_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let mut log = LogFile::open(&beneath(dir.path(), "c.log")).unwrap();
        log.write(b"one\n").unwrap();
        std::fs::rename(&path, dir.path().join("c.log.1")).unwrap();
        log.reopen().unwrap();
        log.write(b"two\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two\n");
        assert_eq!(std::fs::read(dir.path().join("c.log.1")).unwrap(), b"one\n");

        let gone = dir.path().join("gone");
        std::fs::create_dir(&gone).unwrap();
        let mut log = LogFile::open(&beneath(&gone, "c.log")).unwrap();
        std::fs::remove_dir_all(&gone).unwrap();
        assert!(log.reopen().is_err());
        assert!(!log.is_open());
        log.write(b"dropped\n").unwrap();
        assert!(!gone.exists(), "nothing was created");
    }

    /// A FIFO at the log path with nobody reading fails at once instead
    /// of blocking the monitor's open; with a reader it opens, blocking.
    #[test]
    fn a_fifo_without_a_reader_never_blocks_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("c.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = LogFile::open(&beneath(dir.path(), "c.log")).unwrap_err();
        assert_eq!(e.source.raw_os_error(), Some(libc::ENXIO), "{e}");
        use std::os::unix::fs::OpenOptionsExt;
        let _reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let log = LogFile::open(&beneath(dir.path(), "c.log")).unwrap();
        let flags = rustix::fs::fcntl_getfl(log.file().unwrap()).unwrap();
        assert!(!flags.contains(OFlags::NONBLOCK), "{flags:?}");
    }

    fn beneath(dir: &Path, rel: &str) -> LogPath {
        LogPath {
            dir: dir.into(),
            rel: rel.into(),
        }
    }

    /// A symlink planted in the log directory (to a host file, or a
    /// directory symlink leading out) is never followed.
    #[test]
    fn planted_symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "host file\n").unwrap();
        std::os::unix::fs::symlink(&victim, logs.join("c.log")).unwrap();
        let e = LogFile::open(&beneath(&logs, "c.log")).unwrap_err();
        assert_eq!(e.source.raw_os_error(), Some(libc::ELOOP), "{e}");
        std::os::unix::fs::symlink(dir.path(), logs.join("out")).unwrap();
        let e = LogFile::open(&beneath(&logs, "out/victim")).unwrap_err();
        assert_eq!(e.source.raw_os_error(), Some(libc::EXDEV), "{e}");
        assert!(beneath(&logs, "out/new/c.log").create_parent().is_err());
        assert!(!dir.path().join("new").exists());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host file\n");
        // A directory made below the log dir is fine.
        let ok = beneath(&logs, "web/0.log");
        ok.create_parent().unwrap();
        LogFile::open(&ok).unwrap().write(b"x\n").unwrap();
        assert_eq!(std::fs::read(logs.join("web/0.log")).unwrap(), b"x\n");
    }
}
