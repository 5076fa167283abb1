//! Memory a hostile client makes the daemon take must come back (issue 17):
//! pods at the label + annotation bound, 14 MiB requests refused over it,
//! and thousands of connections that never send a byte. Each test measures
//! the daemon's resident set before, with and after, prints the numbers and
//! checks that what was taken is returned.
//!
//! To compare allocators on the same workload, `CRIUS_E2E_DAEMON_LD_PRELOAD`
//! is handed to the daemon as `LD_PRELOAD` (e.g. Debian's libjemalloc.so.2
//! or libmimalloc.so.2; a library whose `mallopt` does nothing shows glibc
//! untuned).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crius::cri::proto::*;
use tonic::Code;

use crate::harness::{self, TestDaemon};
use crate::pod;

async fn start(toml: &str) -> TestDaemon {
    match std::env::var("CRIUS_E2E_DAEMON_LD_PRELOAD") {
        Ok(lib) if !lib.is_empty() => harness::start_with_env(toml, &[("LD_PRELOAD", &lib)]).await,
        _ => TestDaemon::start(toml).await,
    }
}

/// (VmRSS, RssAnon) of `pid` in KiB.
pub fn rss(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|r| r.count())
        .unwrap_or(0)
}

/// Waits up to `limit` for the daemon's anonymous memory to come back to
/// at most `bound` KiB; the last (VmRSS, RssAnon) seen.
async fn settles_under(pid: i32, bound: u64, limit: Duration) -> (u64, u64) {
    let deadline = Instant::now() + limit;
    loop {
        let now = rss(pid);
        if now.1 <= bound || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Labels and annotations that fill `limit` bytes (encoded) up to 100.
fn fill(c: &mut PodSandboxConfig, limit: usize) {
    let size = |c: &PodSandboxConfig| {
        crius::cri::validate::map_bytes(&c.labels) + crius::cri::validate::map_bytes(&c.annotations)
    };
    for i in 0usize.. {
        let key = format!("example.com/key-{i:03}");
        fn map(c: &mut PodSandboxConfig, i: usize) -> &mut HashMap<String, String> {
            if i.is_multiple_of(2) {
                &mut c.labels
            } else {
                &mut c.annotations
            }
        }
        map(c, i).insert(key.clone(), "v".repeat(1000));
        let over = size(c).saturating_sub(limit);
        if over > 0 {
            map(c, i).get_mut(&key).unwrap().truncate(1000 - over - 100);
            break;
        }
    }
    assert!(size(c) <= limit && size(c) > limit - 200);
}

/// Memory the daemon may keep after a test, over what it held before.
const KEPT_KIB: u64 = 8 << 10;

/// Three pods at the label + annotation bound (64 KiB each), then 14 MiB
/// requests refused over it, three at once, as one label and as 200,000
/// small ones (as the campaign sent them). After the pods are removed the
/// daemon's anonymous memory is back within 8 MiB of where it started.
#[tokio::test(flavor = "multi_thread")]
async fn memory_taken_by_big_requests_is_given_back() {
    let d = start("").await;
    let pid = d.pid();
    let mut rt = d.runtime().await;
    // One pod made and removed first: lazily built state is in the baseline.
    let warm = pod::run(&mut rt, pod::config("warm")).await.unwrap();
    pod::stop_remove(&mut rt, &warm).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss(pid);

    let limit = crius::config::GrpcConfig::default().max_pod_labels_bytes as usize;
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut c = pod::config(&format!("big{i}"));
        fill(&mut c, limit);
        ids.push(pod::run(&mut rt, c).await.unwrap());
    }
    let with_pods = rss(pid);

    let one = HashMap::from([("big".to_string(), "v".repeat(14 << 20))]);
    let many: HashMap<String, String> = (0..200_000)
        .map(|i| (format!("label-{i:06}"), "v".repeat(56)))
        .collect();
    let mut peak = 0;
    for labels in [&one, &many, &one, &many] {
        let mut calls = Vec::new();
        for i in 0..3 {
            let mut c = pod::config(&format!("over{i}"));
            c.labels = labels.clone();
            let mut rt = d.runtime().await;
            calls.push(tokio::spawn(async move { pod::run(&mut rt, c).await }));
        }
        for call in calls {
            let e = call.await.unwrap().unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
            assert!(e.message().contains("max_pod_labels_bytes"));
        }
        peak = peak.max(rss(pid).0);
    }
    let refused = rss(pid);
    assert_eq!(pod::list(&mut rt, None).await.len(), 3);
    for id in &ids {
        pod::stop_remove(&mut rt, id).await;
    }
    pod::assert_no_trace(&d);
    let after = settles_under(pid, before.1 + KEPT_KIB, Duration::from_secs(30)).await;
    eprintln!(
        "daemon (VmRSS, RssAnon) KiB: before {before:?}, with 3 pods at {limit} B of labels \
         {with_pods:?}, after 12 refused 14 MiB requests {refused:?} (peak VmRSS {peak}), \
         after removal {after:?}"
    );
    assert!(
        after.1 <= before.1 + KEPT_KIB,
        "anonymous memory {} KiB after, {} KiB before",
        after.1,
        before.1
    );
}

/// Connections that never send a byte (`CRIUS_IDLE_CONNECTIONS`, 2,000 by
/// default; the test process and the daemon need that many fds): each
/// costs a bounded amount while open, all are closed by the keepalive and
/// idle timeouts, and their memory goes back.
#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_cost_little_and_give_it_back() {
    let n: usize = std::env::var("CRIUS_IDLE_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    // Short timeouts, long enough that every connection is open at once
    // (connecting 20,000 takes several seconds).
    let secs = (n as u64 / 1000).max(2);
    let d = start(&format!(
        "[grpc]\nkeepalive_interval_secs = {secs}\nkeepalive_timeout_secs = {secs}\n\
         idle_timeout_secs = {}\n",
        2 * secs + 1
    ))
    .await;
    let pid = d.pid();
    let mut rt = d.runtime().await;
    rt.version(VersionRequest::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, fds) = (rss(pid), open_fds(pid));

    let start = Instant::now();
    let mut conns = Vec::with_capacity(n);
    while conns.len() < n {
        match tokio::net::UnixStream::connect(&d.socket).await {
            Ok(c) => conns.push(c),
            // The listen backlog is full: the daemon is still accepting.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            Err(e) => panic!("connection {}: {e}", conns.len()),
        }
    }
    // Every connection accepted (and its SETTINGS sent) before measuring.
    let deadline = Instant::now() + Duration::from_secs(30);
    while open_fds(pid) < fds + n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let with = rss(pid);
    let accepted = open_fds(pid).saturating_sub(fds);
    let per_conn = (with.1.saturating_sub(before.1) * 1024) / n as u64;

    // Closed by the server: read each to its end.
    let mut closed = 0;
    for mut c in conns {
        let left = Duration::from_secs(60 + 3 * secs).saturating_sub(start.elapsed());
        let mut buf = Vec::new();
        let end =
            tokio::time::timeout(left, tokio::io::AsyncReadExt::read_to_end(&mut c, &mut buf))
                .await;
        if end.is_ok() {
            closed += 1;
        }
    }
    let closed_after = start.elapsed();
    // The daemon still serves.
    rt.version(VersionRequest::default()).await.unwrap();
    let after = settles_under(pid, before.1 + KEPT_KIB, Duration::from_secs(30)).await;
    eprintln!(
        "{n} silent connections: daemon (VmRSS, RssAnon) KiB before {before:?}, with {with:?} \
         ({per_conn} B anonymous each, {accepted} accepted), all closed after {closed_after:?}, \
         after {after:?}"
    );
    assert!(accepted >= n, "{accepted} of {n} accepted");
    assert_eq!(closed, n, "connections the server never closed");
    assert!(per_conn < 32 << 10, "{per_conn} B per connection");
    assert!(
        after.1 <= before.1 + KEPT_KIB,
        "anonymous memory {} KiB after, {} KiB before",
        after.1,
        before.1
    );
}
