//! Per-interface network counters of a pod, read inside its pinned network
//! namespace.
//!
//! A pod may have no running process to read them through (`/proc/<pid>/net`),
//! so crius joins the pinned namespace file itself: setns(2) changes the
//! network namespace of the calling *thread*, which would poison a tokio
//! worker or a pooled blocking thread for every later task. Each read is
//! therefore done by a fresh OS thread that joins the namespaces one after
//! the other and then ends (its namespace goes with it); it reads
//! `/proc/thread-self/net/dev`, which shows the thread's own namespace
//! (`/proc/self/net` follows the main thread's).

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The counters of one interface (proc(5), /proc/net/dev).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("open network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("join network namespace {path}")]
    Join {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("read /proc/thread-self/net/dev in {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected line {0:?} in /proc/net/dev")]
    Parse(String),
    #[error("the network namespace reader thread failed: {0}")]
    Thread(String),
}

/// Reads the interfaces (loopback left out) of each `(key, netns pin)`
/// on a new OS thread; one result per key.
pub fn read_all(
    pins: Vec<(String, PathBuf)>,
) -> Result<HashMap<String, Result<Vec<Interface>, Error>>, Error> {
    if pins.is_empty() {
        return Ok(HashMap::new());
    }
    let reader = std::thread::Builder::new()
        .name("crius-netns".into())
        .spawn(move || {
            pins.into_iter()
                .map(|(key, path)| {
                    let r = read_in(&path);
                    (key, r)
                })
                .collect()
        })
        .map_err(|e| Error::Thread(e.to_string()))?;
    reader
        .join()
        .map_err(|_| Error::Thread("it panicked".into()))
}

/// Joins `path` on the current thread and reads its counters. Only for the
/// dedicated thread of [`read_all`].
fn read_in(path: &PathBuf) -> Result<Vec<Interface>, Error> {
    let file = std::fs::File::open(path).map_err(|source| Error::Open {
        path: path.clone(),
        source,
    })?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| {
        Error::Join {
            path: path.clone(),
            source,
        }
    })?;
    let text =
        std::fs::read_to_string("/proc/thread-self/net/dev").map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
    parse(&text)
}

/// Parses /proc/net/dev: two header lines, then `name: 16 counters`
/// (rx bytes packets errs drop fifo frame compressed multicast, tx bytes
/// packets errs drop fifo colls carrier compressed).
pub fn parse(text: &str) -> Result<Vec<Interface>, Error> {
    let mut out = Vec::new();
    for line in text.lines().skip(2) {
        let bad = || Error::Parse(line.to_string());
        let (name, counters) = line.split_once(':').ok_or_else(bad)?;
        let name = name.trim();
        let values: Vec<u64> = counters
            .split_whitespace()
            .map(|v| v.parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        if values.len() < 16 {
            return Err(bad());
        }
        if name == "lo" {
            continue;
        }
        out.push(Interface {
            name: name.to_string(),
            rx_bytes: values[0],
            rx_packets: values[1],
            rx_errors: values[2],
            rx_dropped: values[3],
            tx_bytes: values[8],
            tx_packets: values[9],
            tx_errors: values[10],
            tx_dropped: values[11],
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
  eth0: 1234567    890    1    2    0     0          0         0   765432     321    3    4    0     0       0          0
";

    #[test]
    fn parses_counters_without_loopback() {
        let ifs = parse(SAMPLE).unwrap();
        assert_eq!(
            ifs,
            vec![Interface {
                name: "eth0".into(),
                rx_bytes: 1234567,
                rx_packets: 890,
                rx_errors: 1,
                rx_dropped: 2,
                tx_bytes: 765432,
                tx_packets: 321,
                tx_errors: 3,
                tx_dropped: 4,
            }]
        );
        assert!(parse("a\nb\neth0: 1 2 3\n").is_err());
        assert!(parse("a\nb\neth0 1 2\n").is_err());
    }

    #[test]
    fn reads_this_namespace_on_its_own_thread() {
        // Our own network namespace, joined again: it works without root
        // only when setns is permitted; skip otherwise.
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: setns needs CAP_SYS_ADMIN");
            return;
        }
        let pin = PathBuf::from("/proc/self/ns/net");
        let mut out = read_all(vec![("self".into(), pin)]).unwrap();
        let ifs = out.remove("self").unwrap().unwrap();
        assert!(ifs.iter().all(|i| i.name != "lo"));
        let missing = read_all(vec![("x".into(), "/nonexistent/net".into())]).unwrap();
        assert!(matches!(missing["x"], Err(Error::Open { .. })));
    }
}
