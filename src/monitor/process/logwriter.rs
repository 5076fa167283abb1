//! The pod's log writer: a child of the monitor that does the writes to
//! the containers' CRI log files, so that a slow or stuck disk stalls it,
//! never the monitor's loop (a write to a regular file cannot be made
//! non-blocking, and the monitor has no threads).
//!
//! The monitor formats records ([`super::log::Formatter`]) and hands them
//! over a SOCK_SEQPACKET socket, one message per chunk of whole records,
//! through a bounded queue ([`LogWriter`]). While the writer keeps up the
//! queue stays short; when it falls [`HIGH_WATER`] bytes behind the monitor
//! stops reading the containers' output (their pipes fill and they wait, as
//! with a slow disk before) as long as the writer still makes progress.
//! Once the writer has taken nothing for [`STALL`] (a stuck disk) the
//! monitor reads again and drops what does not fit under [`HARD_LIMIT`],
//! counting the records; a write the writer sees fail (a full disk) drops
//! and counts its records too ([`Event::Dropped`]). A sync marker
//! ([`LogWriter::sync`]) comes back once everything before it is written:
//! the monitor publishes a container's exit after its last records.
//!
//! The writer runs only while there is something to write: it is forked
//! for the first records after a quiet spell and ends after [`IDLE`] with
//! nothing to do, so a pod whose containers are quiet costs no process.
//! The monitor keeps a copy of every open log fd ([`LogWriter::open`]) and
//! hands them all to each writer it starts, before any record; a rotation
//! (ReopenContainerLog) while no writer runs only replaces that copy. The
//! end is the monitor's decision, so nothing sent is ever lost to it: the
//! idle writer offers to end, telling how many messages it has taken (all
//! written by then); the monitor closes the socket only when that is every
//! message it sent and nothing is queued, else the offer is stale and
//! records are on their way. The writer ends at that EOF; the monitor
//! reaps it like any child ([`LogWriter::reaped`]). A writer whose socket
//! closes without that (it died) is replaced at the next records: what it
//! had not taken is counted as dropped.
//!
//! Messages, monitor to writer: `O slot` with the file's fd (SCM_RIGHTS),
//! `C slot`, `W slot records`, `S slot token`; writer to monitor:
//! `S slot token`, `D slot count`, `I 0 taken` (the offer to end). Slots
//! and numbers are u64, little-endian.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, socketpair};

use crate::sys::process::{Forked, SingleThreaded, exit_immediately, fork_into};

/// Bytes queued for the writer above which the monitor stops reading the
/// containers' output (while the writer makes progress).
pub const HIGH_WATER: usize = 1 << 20;
/// Bytes queued above which records are dropped.
pub const HARD_LIMIT: usize = 2 * HIGH_WATER;
/// How long the writer may take nothing before it counts as stuck.
pub const STALL: Duration = Duration::from_secs(2);
/// How long a writer waits with nothing to do before it offers to end.
pub const IDLE: Duration = Duration::from_secs(5);
/// Largest message: whole records up to this size (a record is at most
/// 16 KiB plus its header, [`super::log::MAX_LINE`]).
const CHUNK: usize = 64 << 10;
/// Largest message the writer reads.
const MAX_MESSAGE: usize = CHUNK + (32 << 10);

/// What the writer reports back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Everything queued for `slot` before marker `token` is written.
    Synced { slot: u64, token: u64 },
    /// `count` records of `slot` could not be written.
    Dropped { slot: u64, count: u64 },
}

/// A message from the writer: an event, or its offer to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Report {
    Event(Event),
    /// Idle: it has taken (and written) `taken` messages.
    Idle {
        taken: u64,
    },
}

fn header(kind: u8, slot: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(17);
    m.push(kind);
    m.extend_from_slice(&slot.to_le_bytes());
    m
}

fn number(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

fn records(data: &[u8]) -> u64 {
    data.iter().filter(|&&b| b == b'\n').count() as u64
}

struct Message {
    data: Vec<u8>,
    fd: Option<OwnedFd>,
    /// Counts against the queue's bound (records; not control messages).
    bulk: bool,
}

/// How many writers may die (or fail to start) over a monitor's life
/// before it stops starting them (a writer that keeps dying is not
/// restarted for ever). Writers that end idle do not count.
const MAX_DEATHS: u32 = 10;

/// Starts a writer: the monitor's end of its socket and its pid (0: not a
/// child process).
type Start = Box<dyn FnMut() -> crate::sys::Result<(OwnedFd, i32)>>;

/// The monitor's side: the open files, the socket, the queue, the
/// writer's pid. A writer is forked for records when none runs (by then
/// the daemon has put the monitor in its cgroup, which the writer shares).
pub struct LogWriter {
    start: Start,
    /// The file each slot writes to (the monitor's copies), handed to
    /// every writer it starts.
    files: Vec<(u64, OwnedFd)>,
    sock: Option<OwnedFd>,
    /// The last writer started.
    pub pid: i32,
    /// Writers started and not yet reaped.
    pids: Vec<i32>,
    deaths: u32,
    queue: VecDeque<Message>,
    queued: usize,
    /// When the writer last took a message (or the queue was empty).
    progress: Instant,
    next_token: u64,
    /// Messages the running writer has been sent.
    sent: u64,
    /// The writer's socket has closed (it died): nothing is queued any more.
    gone: bool,
}

impl LogWriter {
    /// No writer yet: the first records start one.
    pub fn new(one: SingleThreaded) -> LogWriter {
        LogWriter::starting_with(Box::new(move || spawn(one, IDLE)))
    }

    fn starting_with(start: Start) -> LogWriter {
        LogWriter {
            start,
            files: Vec::new(),
            sock: None,
            pid: 0,
            pids: Vec::new(),
            deaths: 0,
            queue: VecDeque::new(),
            queued: 0,
            progress: Instant::now(),
            next_token: 0,
            sent: 0,
            gone: false,
        }
    }

    /// Whether a writer runs and takes messages.
    fn running(&self) -> bool {
        self.sock.is_some() && !self.gone
    }

    /// Starts a writer if none runs (and not too many died) and hands it
    /// every open file; whether one runs now.
    fn ensure(&mut self) -> bool {
        if self.sock.is_some() || self.deaths >= MAX_DEATHS {
            return self.running();
        }
        match (self.start)() {
            Ok((sock, pid)) => {
                let flags = nix::fcntl::OFlag::O_NONBLOCK;
                let _ = nix::fcntl::fcntl(&sock, nix::fcntl::FcntlArg::F_SETFL(flags));
                self.sock = Some(sock);
                self.pid = pid;
                if pid > 0 {
                    self.pids.push(pid);
                }
                self.gone = false;
                self.sent = 0;
                self.progress = Instant::now();
                let slots: Vec<u64> = self.files.iter().map(|(s, _)| *s).collect();
                for slot in slots {
                    self.push_open(slot);
                }
            }
            Err(e) => {
                self.deaths += 1;
                eprintln!(
                    "start the log writer: {}; log records are dropped",
                    crate::error::chain(&e)
                );
            }
        }
        self.running()
    }

    /// Forgets a writer that died (after [`LogWriter::take_queued`]): the
    /// next records start another, which gets every open file.
    pub fn reset(&mut self) {
        self.sock = None;
        self.gone = false;
        self.deaths += 1;
        self.queue.clear();
        self.queued = 0;
    }

    /// Whether `pid`, just reaped, was one of the writers (forgotten now).
    pub fn reaped(&mut self, pid: i32) -> bool {
        match self.pids.iter().position(|&p| p == pid) {
            Some(i) => {
                self.pids.swap_remove(i);
                true
            }
            None => false,
        }
    }
}

/// Forks a writer that ends after `idle` with nothing to do. Its only fds:
/// /dev/null on 0 and 1, the monitor's stderr (monitor.log) on 2, its
/// socket on 3.
fn spawn(one: SingleThreaded, idle: Duration) -> crate::sys::Result<(OwnedFd, i32)> {
    let (mine, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(crate::sys::sys("log writer socketpair"))?;
    let null = File::open("/dev/null").map_err(crate::sys::io("open", "/dev/null"))?;
    let pid = match fork_into(one, nix::sched::CloneFlags::empty())? {
        Forked::Child => {
            drop(mine);
            let fds = (|| {
                let out = null.try_clone()?;
                let err = std::io::stderr().as_fd().try_clone_to_owned()?;
                Ok::<_, std::io::Error>(vec![OwnedFd::from(null), OwnedFd::from(out), err, theirs])
            })();
            let Ok(fds) = fds else { exit_immediately(1) };
            let Ok(mut fds) = crate::sys::process::install_fds(one, fds) else {
                exit_immediately(1)
            };
            let sock = fds.pop().unwrap_or_else(|| exit_immediately(1));
            crate::sys::process::set_name("crius-logwriter");
            serve(&sock, idle);
            exit_immediately(0)
        }
        Forked::Parent(pid) => pid.as_raw(),
    };
    drop(theirs);
    Ok((mine, pid))
}

impl LogWriter {
    /// The writer's socket while one runs.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.sock.as_ref().map(|s| s.as_fd())
    }

    /// Whether messages wait for room in the socket (poll POLLOUT).
    pub fn pending(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Whether the monitor should read the containers' output now: the
    /// queue is short, or the writer is stuck (then records are dropped).
    pub fn accepting(&self) -> bool {
        self.queued < HIGH_WATER || self.stalled()
    }

    fn stalled(&self) -> bool {
        self.gone || (self.pending() && self.progress.elapsed() >= STALL)
    }

    /// When the loop must look again whether the writer is stuck.
    pub fn stall_deadline(&self) -> Option<Instant> {
        (self.queued >= HIGH_WATER && !self.stalled()).then(|| self.progress + STALL)
    }

    fn push(&mut self, m: Message) {
        if !self.running() {
            return;
        }
        if m.bulk {
            self.queued += m.data.len();
        }
        if self.queue.is_empty() {
            self.progress = Instant::now();
        }
        self.queue.push_back(m);
        self.flush();
    }

    /// Queues the file of `slot` (or its close, when it has none) for
    /// the running writer.
    fn push_open(&mut self, slot: u64) {
        let file = self.files.iter().find(|(s, _)| *s == slot);
        let m = match file.map(|(_, f)| f.try_clone()) {
            Some(Ok(fd)) => Message {
                data: header(b'O', slot),
                fd: Some(fd),
                bulk: false,
            },
            Some(Err(e)) => {
                eprintln!("log writer: dup the log fd of slot {slot}: {e}");
                Message {
                    data: header(b'C', slot),
                    fd: None,
                    bulk: false,
                }
            }
            None => Message {
                data: header(b'C', slot),
                fd: None,
                bulk: false,
            },
        };
        self.push(m);
    }

    /// Makes `file` the one `slot` writes to (replacing what it had),
    /// now if a writer runs, else for the next one.
    pub fn open(&mut self, slot: u64, file: &File) {
        self.files.retain(|(s, _)| *s != slot);
        match file.as_fd().try_clone_to_owned() {
            Ok(fd) => self.files.push((slot, fd)),
            Err(e) => eprintln!("log writer: dup the log fd of slot {slot}: {e}"),
        }
        if self.running() {
            self.push_open(slot);
        }
    }

    /// Closes `slot`: its records are dropped and counted from now on.
    pub fn close(&mut self, slot: u64) {
        self.files.retain(|(s, _)| *s != slot);
        if self.running() {
            self.push_open(slot);
        }
    }

    /// Queues `data` (whole records) for `slot`, starting a writer if none
    /// runs; returns how many records were dropped for want of room (or
    /// of a writer).
    pub fn write(&mut self, slot: u64, mut data: &[u8]) -> u64 {
        let live = !data.is_empty() && self.ensure();
        let mut dropped = 0;
        while !data.is_empty() {
            // Whole records up to CHUNK (a record is never longer).
            let cut = match data.len() <= CHUNK {
                true => data.len(),
                false => data[..CHUNK]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(CHUNK, |i| i + 1),
            };
            let (chunk, rest) = data.split_at(cut);
            data = rest;
            if !live || !self.running() || self.queued + chunk.len() > HARD_LIMIT {
                dropped += records(chunk);
                continue;
            }
            let mut m = header(b'W', slot);
            m.extend_from_slice(chunk);
            self.push(Message {
                data: m,
                fd: None,
                bulk: true,
            });
        }
        dropped
    }

    /// Queues a marker while a writer runs; [`Event::Synced`] with the
    /// returned token comes back once everything queued before it is
    /// written. `None`: no writer runs, so nothing is left to write.
    pub fn sync(&mut self, slot: u64) -> Option<u64> {
        if !self.running() {
            return None;
        }
        self.next_token += 1;
        let mut m = header(b'S', slot);
        m.extend_from_slice(&self.next_token.to_le_bytes());
        self.push(Message {
            data: m,
            fd: None,
            bulk: false,
        });
        Some(self.next_token)
    }

    /// Sends what the socket takes now.
    pub fn flush(&mut self) {
        let Some(sock) = &self.sock else { return };
        while !self.gone
            && let Some(m) = self.queue.front()
        {
            let fds: Vec<i32> = m.fd.iter().map(|f| f.as_raw_fd()).collect();
            match crate::sys::fds::send_with_fds(sock.as_fd(), &m.data, &fds) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                // The writer is gone: the queue waits for take_queued.
                Err(_) => {
                    self.gone = true;
                    return;
                }
            }
            self.sent += 1;
            if let Some(m) = self.queue.pop_front()
                && m.bulk
            {
                self.queued -= m.data.len();
            }
            self.progress = Instant::now();
        }
    }

    /// Records still queued per slot, dropped when the writer is replaced.
    pub fn take_queued(&mut self) -> Vec<(u64, u64)> {
        let mut lost: Vec<(u64, u64)> = Vec::new();
        for m in self.queue.drain(..) {
            if m.bulk
                && let Some(slot) = number(&m.data[1..])
            {
                lost.push((slot, records(&m.data[9..])));
            }
        }
        self.queued = 0;
        lost
    }

    /// What the writer reported since last asked; `gone` is set when the
    /// socket has closed (the writer died). An idle writer that has taken
    /// every message sent, with nothing queued, is let go: its socket is
    /// closed, and it ends.
    pub fn events(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        let mut buf = [0u8; 64];
        while !self.gone
            && let Some(sock) = &self.sock
        {
            match nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => self.gone = true,
                Ok(n) => match decode(&buf[..n]) {
                    Some(Report::Event(e)) => events.push(e),
                    // A stale offer (messages crossed it) is ignored: the
                    // writer takes them and offers again later.
                    Some(Report::Idle { taken }) if taken == self.sent && !self.pending() => {
                        self.sock = None;
                    }
                    _ => {}
                },
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => break,
                Err(_) => self.gone = true,
            }
        }
        events
    }

    /// Whether the writer's socket has closed.
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// At the monitor's end: sends what is queued, waiting at most
    /// `limit` for room.
    pub fn finish(&mut self, limit: Duration) {
        let until = Instant::now() + limit;
        while self.pending() && !self.gone && Instant::now() < until {
            self.flush();
            if self.pending()
                && let Some(sock) = &self.sock
            {
                let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLOUT)];
                let _ = nix::poll::poll(&mut fds, PollTimeout::from(100u16));
            }
        }
    }
}

fn decode(m: &[u8]) -> Option<Report> {
    let slot = number(m.get(1..)?)?;
    let n = number(m.get(9..)?)?;
    match m.first()? {
        b'S' => Some(Report::Event(Event::Synced { slot, token: n })),
        b'D' => Some(Report::Event(Event::Dropped { slot, count: n })),
        b'I' => Some(Report::Idle { taken: n }),
        _ => None,
    }
}

/// Whether `sock` has a message (or its EOF) within `wait`.
fn readable_within(sock: &OwnedFd, wait: Duration) -> bool {
    let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
    // EINTR counts as "not yet": the wait starts again.
    matches!(nix::poll::poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0)
}

/// The writer's loop, on its end of the socket (blocking): every message
/// in order; after `idle` with none it offers to end (`I`); returns when
/// the monitor has closed the socket (EOF) and all is written.
pub fn serve(sock: &OwnedFd, idle: Duration) {
    let mut files: Vec<(u64, File)> = Vec::new();
    // Drop counts not yet told (the monitor's socket was full).
    let mut untold: Vec<(u64, u64)> = Vec::new();
    // Mapped, not allocated: a page costs memory only once a message
    // reached it, so the writer keeps what its largest message needed, not
    // MAX_MESSAGE (a zeroed heap buffer made every writer hold 96 KiB).
    let Ok(mut buf) = crate::sys::pages::ZeroPages::new(MAX_MESSAGE) else {
        return;
    };
    let mut fds = Vec::new();
    // Messages taken: the count an offer to end carries.
    let mut taken: u64 = 0;
    loop {
        if !readable_within(sock, idle) {
            // Everything taken is written; drop counts go first (an offer
            // waits until they are told).
            if untold.is_empty() {
                let mut m = header(b'I', 0);
                m.extend_from_slice(&taken.to_le_bytes());
                let _ = nix::sys::socket::send(sock.as_raw_fd(), &m, MsgFlags::MSG_DONTWAIT);
            }
        } else {
            fds.clear();
            let data = match crate::sys::fds::recv_into(sock, &mut buf, &mut fds) {
                Ok(0) => return,
                Ok(n) => &buf[..n],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            taken += 1;
            handle(data, &mut fds, &mut files, &mut untold, sock);
        }
        untold.retain(|&(slot, count)| {
            let mut m = header(b'D', slot);
            m.extend_from_slice(&count.to_le_bytes());
            nix::sys::socket::send(sock.as_raw_fd(), &m, MsgFlags::MSG_DONTWAIT).is_err()
        });
    }
}

/// Acts on one message the writer took.
fn handle(
    data: &[u8],
    fds: &mut Vec<OwnedFd>,
    files: &mut Vec<(u64, File)>,
    untold: &mut Vec<(u64, u64)>,
    sock: &OwnedFd,
) {
    let (Some(&kind), Some(slot)) = (data.first(), number(data.get(1..).unwrap_or(&[]))) else {
        return;
    };
    match kind {
        b'O' => {
            files.retain(|(s, _)| *s != slot);
            if let Some(fd) = fds.pop() {
                files.push((slot, File::from(fd)));
            }
        }
        b'C' => files.retain(|(s, _)| *s != slot),
        b'W' => {
            let recs = &data[9..];
            let written = match files.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, f)) => f.write_all(recs).is_ok(),
                None => false,
            };
            if !written {
                match untold.iter_mut().find(|(s, _)| *s == slot) {
                    Some((_, n)) => *n += records(recs),
                    None => untold.push((slot, records(recs))),
                }
            }
        }
        b'S' => {
            let Some(token) = number(data.get(9..).unwrap_or(&[])) else {
                return;
            };
            let mut m = header(b'S', slot);
            m.extend_from_slice(&token.to_le_bytes());
            // A lost marker only makes the monitor wait its bound.
            let _ = nix::sys::socket::send(sock.as_raw_fd(), &m, MsgFlags::MSG_DONTWAIT);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Writers' ends of the sockets of the writers a test's LogWriter
    /// started, not yet served.
    type Ends = Rc<RefCell<Vec<OwnedFd>>>;

    /// A LogWriter whose writers the test serves on threads (the
    /// process's own fork is the monitor's business): each start leaves
    /// the writer's end in the returned list for [`serve_started`].
    fn unserved() -> (LogWriter, Ends) {
        let ends: Ends = Rc::default();
        let e = ends.clone();
        let w = LogWriter::starting_with(Box::new(move || {
            let (mine, theirs) = socketpair(
                AddressFamily::Unix,
                SockType::SeqPacket,
                None,
                SockFlag::SOCK_CLOEXEC,
            )
            .map_err(crate::sys::sys("socketpair"))?;
            e.borrow_mut().push(theirs);
            Ok((mine, 0))
        }));
        (w, ends)
    }

    /// Serves every writer started so far, each on a thread, ending after
    /// `idle` with nothing to do.
    fn serve_started(ends: &Ends, idle: Duration) -> Vec<std::thread::JoinHandle<()>> {
        ends.borrow_mut()
            .drain(..)
            .map(|end| std::thread::spawn(move || serve(&end, idle)))
            .collect()
    }

    fn wait_for(w: &mut LogWriter, want: Event) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            w.flush();
            if w.events().contains(&want) {
                return;
            }
            assert!(Instant::now() < until, "no {want:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the writer has been let go (its socket closed).
    fn wait_until_let_go(w: &mut LogWriter) {
        let until = Instant::now() + Duration::from_secs(10);
        while w.fd().is_some() {
            w.flush();
            w.events();
            assert!(!w.is_gone(), "the writer died");
            assert!(Instant::now() < until, "the writer never went idle");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn lines(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..n {
            v.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        v
    }

    #[test]
    fn records_reach_their_files_in_order_and_a_marker_follows_them() {
        let dir = tempfile::tempdir().unwrap();
        let a = File::create(dir.path().join("a.log")).unwrap();
        let b = File::create(dir.path().join("b.log")).unwrap();
        let (mut w, ends) = unserved();
        w.open(1, &a);
        w.open(2, &b);
        assert!(w.fd().is_none(), "no writer before there are records");
        assert_eq!(w.sync(1), None, "nothing to wait for without a writer");
        let big = lines(20_000);
        assert_eq!(w.write(1, &big), 0);
        assert_eq!(w.write(2, b"b one\nb two\n"), 0);
        let t = serve_started(&ends, IDLE);
        assert_eq!(t.len(), 1, "one writer for both files");
        let token = w.sync(1).expect("a writer runs");
        wait_for(&mut w, Event::Synced { slot: 1, token });
        assert_eq!(std::fs::read(dir.path().join("a.log")).unwrap(), big);
        assert_eq!(
            std::fs::read(dir.path().join("b.log")).unwrap(),
            b"b one\nb two\n"
        );
        // Records of a closed slot are counted, not written.
        w.close(2);
        w.write(2, b"late\n");
        wait_for(&mut w, Event::Dropped { slot: 2, count: 1 });
        drop(w);
        for t in t {
            t.join().unwrap();
        }
    }

    #[test]
    fn a_full_disk_drops_and_counts() {
        let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
            return;
        };
        let (mut w, ends) = unserved();
        w.open(7, &full);
        w.write(7, b"a\nb\nc\n");
        let t = serve_started(&ends, IDLE);
        wait_for(&mut w, Event::Dropped { slot: 7, count: 3 });
        drop(w);
        for t in t {
            t.join().unwrap();
        }
    }

    /// A writer stuck on its disk (here: a pipe nobody reads): the queue
    /// holds at most HARD_LIMIT, the monitor never waits, records beyond
    /// are dropped and counted, and output is read again after STALL.
    #[test]
    fn a_stuck_writer_never_blocks_the_monitor() {
        let (_reader, stuck) = std::io::pipe().unwrap();
        let (mut w, ends) = unserved();
        w.open(1, &File::from(OwnedFd::from(stuck)));
        let chunk = vec![b'x'; 1000]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<_>>();
        let began = Instant::now();
        let mut dropped = w.write(1, &chunk);
        let _t = serve_started(&ends, IDLE);
        let mut sent = 1u64;
        while dropped == 0 {
            dropped += w.write(1, &chunk);
            sent += 1;
            assert!(sent < 100_000, "never dropped");
        }
        assert!(
            began.elapsed() < Duration::from_secs(2),
            "{:?}",
            began.elapsed()
        );
        assert!(w.queued <= HARD_LIMIT);
        assert!(!w.accepting(), "the queue is over its high water");
        // The writer takes a little more until the pipe is full, then
        // nothing: STALL after that, output is read (and dropped) again.
        let until = Instant::now() + 4 * STALL;
        while !w.accepting() {
            assert!(Instant::now() < until, "still held back");
            std::thread::sleep(Duration::from_millis(100));
            w.flush();
        }
        assert!(w.stalled());
        // The thread stays blocked on the pipe; the test process ends it.
    }

    /// A writer with nothing to do ends; a rotation while none runs only
    /// changes the file the next one gets; output queued for that next
    /// writer (more than its socket holds) lands after the file it goes
    /// to, in order.
    #[test]
    fn an_idle_writer_ends_and_the_next_records_start_another() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let (mut w, ends) = unserved();
        w.open(1, &File::create(&path).unwrap());
        assert_eq!(w.write(1, b"one\n"), 0);
        let first = serve_started(&ends, Duration::from_millis(100));
        let token = w.sync(1).unwrap();
        wait_for(&mut w, Event::Synced { slot: 1, token });
        wait_until_let_go(&mut w);
        // Its socket closed, the writer ends.
        for t in first {
            t.join().unwrap();
        }
        assert_eq!(w.sync(1), None);

        // kubelet's rotation while no writer runs.
        std::fs::rename(&path, dir.path().join("c.log.1")).unwrap();
        w.open(1, &File::create(&path).unwrap());
        assert!(w.fd().is_none(), "a reopen starts no writer");

        // The next records start a writer; they wait in the queue until
        // it reads (it is not served yet).
        let big = lines(150_000);
        assert!(big.len() < HARD_LIMIT);
        assert_eq!(w.write(1, &big), 0);
        assert!(w.fd().is_some(), "records start a writer");
        assert!(w.pending(), "more is queued than the socket holds");
        let token = w.sync(1).unwrap();
        let second = serve_started(&ends, Duration::from_millis(100));
        assert_eq!(second.len(), 1);
        wait_for(&mut w, Event::Synced { slot: 1, token });
        assert_eq!(std::fs::read(dir.path().join("c.log.1")).unwrap(), b"one\n");
        assert_eq!(std::fs::read(&path).unwrap(), big);
        wait_until_let_go(&mut w);
        for t in second {
            t.join().unwrap();
        }
    }

    /// An idle writer's offer to end that crossed new records is stale:
    /// the writer is kept and writes them.
    #[test]
    fn a_stale_offer_to_end_keeps_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let (mut w, ends) = unserved();
        w.open(1, &File::create(&path).unwrap());
        w.write(1, b"one\n");
        let t = serve_started(&ends, Duration::from_millis(50));
        // The writer's only message is its offer: wait until it is there.
        let mut fds = [PollFd::new(w.fd().unwrap(), PollFlags::POLLIN)];
        assert_eq!(
            nix::poll::poll(&mut fds, PollTimeout::from(10_000u16)),
            Ok(1)
        );
        assert_eq!(w.write(1, b"late\n"), 0);
        assert!(w.events().is_empty());
        assert!(
            w.fd().is_some(),
            "the writer was let go with records on their way"
        );
        let token = w.sync(1).unwrap();
        wait_for(&mut w, Event::Synced { slot: 1, token });
        assert_eq!(std::fs::read(&path).unwrap(), b"one\nlate\n");
        drop(w);
        for t in t {
            t.join().unwrap();
        }
    }

    /// A writer that dies: what it had not taken is counted, and the next
    /// records start another that gets the open files first.
    #[test]
    fn a_dead_writer_is_replaced_with_the_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let (mut w, ends) = unserved();
        w.open(3, &File::create(&path).unwrap());
        w.write(3, &lines(150_000));
        assert!(w.pending());
        // It dies before reading anything.
        ends.borrow_mut().clear();
        w.flush();
        w.events();
        assert!(w.is_gone());
        let lost: u64 = w.take_queued().iter().map(|(_, n)| n).sum();
        assert!(lost > 0 && lost < 150_000, "{lost}");
        w.reset();
        assert_eq!(w.write(3, b"after\n"), 0);
        let t = serve_started(&ends, IDLE);
        let token = w.sync(3).unwrap();
        wait_for(&mut w, Event::Synced { slot: 3, token });
        assert_eq!(std::fs::read(&path).unwrap(), b"after\n");
        drop(w);
        for t in t {
            t.join().unwrap();
        }
    }

    #[test]
    fn a_writer_that_keeps_dying_is_not_restarted_for_ever() {
        let (mut w, ends) = unserved();
        for _ in 0..MAX_DEATHS {
            assert_eq!(w.write(1, b"x\n"), 0);
            ends.borrow_mut().clear();
            w.flush();
            w.events();
            assert!(w.is_gone());
            w.take_queued();
            w.reset();
        }
        assert_eq!(w.write(1, b"a\nb\n"), 2, "dropped without a writer");
        assert!(w.fd().is_none());
    }
}
