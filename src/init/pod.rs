//! The pod init: PID 1 of a pod's PID namespace, the monitor's forked
//! child. It only reaps: processes of the pod's containers that are
//! orphaned inside the namespace are re-parented to it. When it dies the
//! kernel kills every process of the namespace, so the sandbox is READY
//! only while it lives.
//!
//! Every container of a POD-mode pod sees it as PID 1, so a container with
//! CAP_SYS_PTRACE can read its /proc/1/root, /proc/1/mountinfo and its
//! memory. Before it starts reaping it therefore gives everything up
//! ([`isolate`]): its own mount namespace pivoted into an empty read-only
//! tmpfs, no capabilities (bounding set emptied), uid/gid 65535 (or the
//! highest id its user namespace maps) with no supplementary groups,
//! no_new_privs, non-dumpable.
//!
//! Every pod runs one, so it is built to cost a few pages: this file and
//! [`crate::sys::raw`] are all of `crius-pod-init`, a `#![no_std]` program
//! without libc (src/bin/crius-pod-init.rs includes both with `#[path]`).
//! Hence `core` only, no allocation, no formatting machinery, and an error
//! that is a step and an errno rather than a thiserror enum; the library
//! compiles this file too, for its unit tests.

use core::ffi::CStr;

use crate::sys::raw::{self, Errno};

/// The unprivileged ids the pod init runs as (the "nobody" of 16-bit ids,
/// as CRI-O's pinns and the pause image use).
pub const UID: u32 = 65535;
pub const GID: u32 = 65535;

/// Where the empty root is built, inside the init's own mount namespace
/// only: any directory every host has; the host's view is unchanged.
const SCRATCH: &CStr = c"/proc";

/// Exit code when isolation fails: the monitor sees the init end and marks
/// the sandbox NOTREADY; a pod init that could not shed root must not run.
pub const ISOLATION_FAILED: i32 = 125;

/// A step of [`isolate`] that failed, with the kernel's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    /// What was being done ("pivot_root", "setresuid", ...).
    pub step: &'static str,
    /// The capability or id the step was about, when there is one.
    pub id: Option<u32>,
    pub errno: Errno,
}

/// Runs the init loop forever. SIGCHLD is blocked, so a child that exits
/// between the reap and the wait is never missed: its signal stays pending
/// for the wait.
pub fn run() -> ! {
    let _ = raw::set_name(c"crius-init");
    // A single-threaded program of its own: every fd is its own.
    let _ = raw::close_from(3);
    if let Err(e) = isolate() {
        let mut line = Line::new();
        e.describe(&mut line);
        let _ = raw::write(2, line.bytes());
        raw::exit(ISOLATION_FAILED);
    }
    let chld = raw::sigset(raw::SIGCHLD);
    let _ = raw::block_signals(chld);
    loop {
        // Every exited child (0: none exited yet; ECHILD: no child).
        while let Ok(pid) = raw::reap(-1, raw::WNOHANG)
            && pid > 0
        {}
        let _ = raw::wait_signal(chld);
    }
}

/// Gives up the host's view and every privilege (see the module doc), in
/// the order that keeps the needed privilege until its last use: mounts,
/// then the bounding set (needs CAP_SETPCAP), then the ids (which clear
/// the permitted and effective sets), then no_new_privs and dumpable. The
/// id maps are read first, while /proc is still there.
pub fn isolate() -> Result<(), Failed> {
    let fail = |step| {
        move |errno| Failed {
            step,
            id: None,
            errno,
        }
    };
    // 0. Which ids the pod's user namespace (if any) maps.
    let gid = mapped_id(c"/proc/self/gid_map", GID);
    let uid = mapped_id(c"/proc/self/uid_map", UID);
    // A map that holds only id 0 leaves no unprivileged id: setresuid(0)
    // would keep every capability. Refuse rather than run as root.
    for (step, id) in [
        ("no unprivileged gid in the map", gid),
        ("no unprivileged uid in the map", uid),
    ] {
        if id == 0 {
            return Err(Failed {
                step,
                id: Some(0),
                errno: Errno(1),
            });
        }
    }
    // 1. A mount namespace of its own, detached from the host's.
    raw::unshare(raw::CLONE_NEWNS).map_err(fail("unshare the mount namespace"))?;
    raw::mount(None, c"/", None, raw::MS_REC | raw::MS_PRIVATE, None)
        .map_err(fail("make mounts private"))?;
    // 2. An empty tmpfs becomes the root; the old root is detached.
    let flags = raw::MS_NOSUID | raw::MS_NODEV | raw::MS_NOEXEC;
    raw::mount(
        Some(c"crius-init"),
        SCRATCH,
        Some(c"tmpfs"),
        flags,
        Some(c"size=4k,mode=0555"),
    )
    .map_err(fail("mount an empty root"))?;
    raw::chdir(SCRATCH).map_err(fail("enter the empty root"))?;
    raw::pivot_root(c".", c".").map_err(fail("pivot_root"))?;
    raw::umount2(c".", raw::MNT_DETACH).map_err(fail("detach the host's root"))?;
    raw::chdir(c"/").map_err(fail("chdir /"))?;
    raw::mount(
        None,
        c"/",
        None,
        flags | raw::MS_REMOUNT | raw::MS_RDONLY,
        None,
    )
    .map_err(fail("make the empty root read-only"))?;
    // 3. No capability can ever come back. The kernel's last capability is
    //    probed (PR_CAPBSET_READ fails past it), never read from a file.
    for cap in 0..64u32 {
        match raw::prctl(raw::PR_CAPBSET_READ, cap as usize) {
            Err(_) => break,
            Ok(0) => continue,
            Ok(_) => raw::prctl(raw::PR_CAPBSET_DROP, cap as usize).map_err(|errno| Failed {
                step: "drop from the bounding set capability",
                id: Some(cap),
                errno,
            })?,
        };
    }
    // 4. Unprivileged ids: setuid away from 0 clears the permitted,
    //    effective and ambient sets.
    raw::clear_groups().map_err(fail("setgroups"))?;
    raw::setresgid(gid).map_err(|errno| Failed {
        step: "setresgid",
        id: Some(gid),
        errno,
    })?;
    raw::setresuid(uid).map_err(|errno| Failed {
        step: "setresuid",
        id: Some(uid),
        errno,
    })?;
    // 4b. Whatever the ids did, no capability is left: every set empty,
    //     the ambient set cleared.
    raw::clear_capabilities().map_err(fail("clear the capability sets"))?;
    raw::prctl(raw::PR_CAP_AMBIENT, raw::PR_CAP_AMBIENT_CLEAR_ALL)
        .map_err(fail("clear the ambient capabilities"))?;
    // 5. Nothing gained by exec, nothing readable through ptrace or /proc.
    raw::prctl(raw::PR_SET_NO_NEW_PRIVS, 1).map_err(fail("no_new_privs"))?;
    raw::prctl(raw::PR_SET_DUMPABLE, 0).map_err(fail("non-dumpable"))?;
    Ok(())
}

/// The id to take from the map file `path` (see [`IdMap`]); `want` when it
/// cannot be read.
fn mapped_id(path: &CStr, want: u32) -> u32 {
    let Ok(fd) = raw::open_read(path) else {
        return want;
    };
    let mut map = IdMap::new(want);
    let mut buf = [0u8; 64];
    while let Ok(n) = raw::read(fd, &mut buf)
        && n > 0
    {
        map.feed(buf.get(..n).unwrap_or_default());
    }
    let _ = raw::close(fd);
    map.finish()
}

/// Reads /proc/self/uid_map or gid_map text ("inside outside count" per
/// line) in pieces of any size: `want` if a line maps it, else the highest
/// id the map holds (a pod's user namespace may hold fewer than 65536
/// ids); `want` for an empty map. A line counts when it holds exactly three
/// numbers (words that are not a number are skipped) and maps at least one.
pub struct IdMap {
    want: u64,
    found: bool,
    highest: Option<u64>,
    /// The current line's numbers and how many it had.
    fields: [u64; 3],
    count: usize,
    /// The word being read: `Some(None)` once it is not a number.
    word: Option<Option<u64>>,
}

impl IdMap {
    pub fn new(want: u32) -> IdMap {
        IdMap {
            want: u64::from(want),
            found: false,
            highest: None,
            fields: [0; 3],
            count: 0,
            word: None,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b.is_ascii_digit() {
                let digit = u64::from(b - b'0');
                self.word = Some(match self.word {
                    None => Some(digit),
                    Some(n) => n.and_then(|n| n.checked_mul(10)?.checked_add(digit)),
                });
            } else if b.is_ascii_whitespace() || b == 0x0b {
                self.end_word();
                if b == b'\n' {
                    self.end_line();
                }
            } else {
                self.word = Some(None);
            }
        }
    }

    fn end_word(&mut self) {
        if let Some(Some(n)) = self.word.take() {
            if let Some(slot) = self.fields.get_mut(self.count) {
                *slot = n;
            }
            self.count = self.count.saturating_add(1);
        }
    }

    fn end_line(&mut self) {
        let [inside, _, len] = self.fields;
        if self.count == 3 && len > 0 {
            let top = inside.saturating_add(len - 1);
            if (inside..=top).contains(&self.want) {
                self.found = true;
            }
            self.highest = Some(self.highest.map_or(top, |h| h.max(top)));
        }
        self.count = 0;
    }

    pub fn finish(mut self) -> u32 {
        self.end_word();
        self.end_line();
        let want = self.want as u32;
        if self.found {
            return want;
        }
        self.highest
            .map_or(want, |h| u32::try_from(h).unwrap_or(want))
    }
}

impl Failed {
    /// "crius-init: <step>[ <id>]: <ERRNO> (errno <n>)\n".
    pub fn describe(&self, line: &mut Line) {
        line.push(b"crius-init: ");
        line.push(self.step.as_bytes());
        if let Some(id) = self.id {
            line.push(b" ");
            line.number(u64::from(id));
        }
        line.push(b": ");
        if let Some(name) = self.errno.name() {
            line.push(name.as_bytes());
            line.push(b" ");
        }
        line.push(b"(errno ");
        line.number(self.errno.0.unsigned_abs().into());
        line.push(b")\n");
    }
}

/// A line of text built without allocating (what does not fit is cut).
pub struct Line {
    buf: [u8; 128],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line::new()
    }
}

impl Line {
    pub fn new() -> Line {
        Line {
            buf: [0; 128],
            len: 0,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
    }

    pub fn number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(digits.get(i..).unwrap_or_default());
    }

    pub fn bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(map: &str, want: u32) -> u32 {
        let mut m = IdMap::new(want);
        m.feed(map.as_bytes());
        m.finish()
    }

    #[test]
    fn the_pod_init_takes_65535_or_the_highest_mapped_id() {
        assert_eq!(id("0 0 4294967295\n", 65535), 65535);
        assert_eq!(id("0 100000 65536\n", 65535), 65535);
        assert_eq!(id("0 100000 1000\n", 65535), 999);
        assert_eq!(id("", 65535), 65535);
        // The kernel's own layout: right-aligned columns.
        assert_eq!(id("         0     100000       1000\n", 65535), 999);
        // Several lines: the highest top; a line mapping 65535 wins.
        assert_eq!(id("0 100000 10\n500 200000 20\n", 65535), 519);
        assert_eq!(id("0 1 10\n65000 2 1000\n", 65535), 65535);
        // No final newline; zero-length and malformed lines are skipped,
        // and so are words that are not numbers.
        assert_eq!(id("0 100000 1000", 65535), 999);
        assert_eq!(id("0 1 0\n7 1 1\n", 65535), 7);
        assert_eq!(id("0 1\n0 1 2 3\n99999999999999999999 1 1\n", 65535), 65535);
        assert_eq!(id("x 1 2 3\n", 65535), 3);
        // Only id 0 mapped: 0, which isolate refuses.
        assert_eq!(id("0 1 1\n", 65535), 0);
        // A top beyond u32: the wanted id.
        assert_eq!(id("4294967295 1 2\n", 65535), 65535);
    }

    /// The parser of the std pod init this one replaced (split_whitespace,
    /// parse) as the reference.
    fn reference(map: &str, want: u32) -> u32 {
        let mut highest = None;
        for line in map.lines() {
            let v: Vec<u64> = line
                .split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect();
            let [inside, _, len] = v[..] else { continue };
            if len == 0 {
                continue;
            }
            if (inside..inside.saturating_add(len)).contains(&u64::from(want)) {
                return want;
            }
            let top = inside.saturating_add(len - 1);
            highest = Some(highest.map_or(top, |h: u64| h.max(top)));
        }
        highest.map_or(want, |h| u32::try_from(h).unwrap_or(want))
    }

    proptest::proptest! {
        #[test]
        fn the_streaming_parser_agrees_with_the_reference(
            map in "([0-9]{1,6}|[0-9]{21}| |\t|\n|x|-){0,40}",
            want in 0u32..70000,
            cut in 0usize..200,
        ) {
            let cut = cut.min(map.len());
            let mut m = IdMap::new(want);
            m.feed(&map.as_bytes()[..cut]);
            m.feed(&map.as_bytes()[cut..]);
            proptest::prop_assert_eq!(m.finish(), reference(&map, want));
        }
    }

    #[test]
    fn the_map_may_come_in_pieces() {
        let text = "0 100000 1000\n2000 300000 5\n";
        for cut in 0..text.len() {
            let mut m = IdMap::new(65535);
            m.feed(&text.as_bytes()[..cut]);
            m.feed(&text.as_bytes()[cut..]);
            assert_eq!(m.finish(), 2004, "cut at {cut}");
        }
    }

    #[test]
    fn this_process_maps_its_own_ids() {
        // The test runs in the host's user namespace: everything is mapped.
        assert_eq!(mapped_id(c"/proc/self/uid_map", UID), UID);
        assert_eq!(mapped_id(c"/nonexistent", 7), 7);
    }

    #[test]
    fn a_failure_names_the_step_the_id_and_the_errno() {
        let described = |step, id, errno| {
            let mut line = Line::new();
            Failed { step, id, errno }.describe(&mut line);
            line.bytes().to_vec()
        };
        assert_eq!(
            described("setresuid", Some(65535), Errno(1)),
            b"crius-init: setresuid 65535: EPERM (errno 1)\n"
        );
        assert_eq!(
            described("pivot_root", None, Errno(95)),
            b"crius-init: pivot_root: (errno 95)\n"
        );
        let mut line = Line::new();
        line.number(0);
        line.push(&[b'x'; 200]);
        assert_eq!(line.bytes().len(), 128, "cut, not overflowed");
        assert_eq!(line.bytes()[0], b'0');
    }
}
