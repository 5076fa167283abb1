//! Terminals of containers that run as a non-root user, and stdin_once on
//! a terminal: the process's pty (its stdio) belongs to its user, as runc
//! makes it, so the user reopens `/dev/pts/N` by path (an init and an exec
//! alike); when the first attached client with stdin detaches from a
//! stdin_once tty container, the program reads the terminal's end of file
//! (VEOF written by the monitor), where a container without stdin_once
//! keeps reading.

use std::path::Path;
use std::time::{Duration, Instant};

use crius::cri::proto::*;

use crate::container::{Setup, container, create, pod_config, setup_with, start};
use crate::pod::{self, Client};
use crate::require_registry_tools;
use crate::streaming::{Opts, exec_url, spdy_exec};
use crate::streaming_attach::{attach_url, read_until, spdy_attach};

/// The program of the containers: it reports its terminal's owner,
/// reopens the terminal by path, then reads it to its end of file.
const SCRIPT: &str = "stat -c owner=%u $(tty); echo via-path >$(tty) && echo reopened; \
                      cat; echo got-eof; sleep 3600";

/// A running tty container with stdin as uid 1000; (its id, its CRI log).
async fn tty_as_user(
    s: &Setup,
    rt: &mut Client,
    name: &str,
    stdin_once: bool,
) -> (String, std::path::PathBuf) {
    let logs = s.d.dir.path().join(format!("logs-{name}"));
    let pod = pod::run(rt, pod_config(name, NamespaceMode::Container, &logs))
        .await
        .unwrap();
    let mut c = container(
        name,
        &s.busybox,
        &["sh", "-c", SCRIPT],
        NamespaceMode::Container,
    );
    c.tty = true;
    c.stdin = true;
    c.stdin_once = stdin_once;
    let sc = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
    sc.run_as_user = Some(Int64Value { value: 1000 });
    let id = create(rt, &pod, c).await.unwrap();
    start(rt, &id).await;
    (id, logs.join(format!("{name}.log")))
}

/// Waits until the CRI log at `log` holds `want`; its text.
async fn log_with(log: &Path, want: &str, within: Duration) -> Result<String, String> {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(want) {
            return Ok(text);
        }
        if Instant::now() >= deadline {
            return Err(text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Attaches with stdin and a terminal, types a line, sees it echoed, then
/// ends its stdin (which detaches its input).
async fn attach_type_and_leave(rt: &mut Client, id: &str) {
    let url = attach_url(rt, id, true, true).await;
    let (mut a, [_, a_in, a_out, ..]) = spdy_attach(&url, true, true).await;
    let (a_in, a_out) = (a_in.unwrap(), a_out.unwrap());
    a.data(a_in, b"typed\n", false).await;
    let mut seen = Vec::new();
    read_until(&mut a, a_out, "typed", &mut seen).await;
    a.data(a_in, b"", true).await;
    // The session stays up a moment: the end of input is what counts.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_tty_of_a_non_root_user_and_stdin_once_eof() {
    require_registry_tools!();
    let s = setup_with("", &[]).await;
    let mut rt = s.d.runtime().await;

    // 1. The init's terminal is uid 1000's and reopens by path.
    let (id, log) = tty_as_user(&s, &mut rt, "once", true).await;
    let text = log_with(&log, "reopened", Duration::from_secs(30))
        .await
        .unwrap_or_else(|t| panic!("the terminal does not reopen by path: {t}"));
    assert!(text.contains("stdout F owner=1000"), "{text}");
    assert!(text.contains("stdout F via-path"), "{text}");

    // An exec's terminal too (it runs as the container's user).
    let url = exec_url(
        &mut rt,
        &id,
        &[
            "sh",
            "-c",
            "stat -c owner=%u $(tty); echo x >$(tty) && echo exec-reopened",
        ],
        false,
        true,
    )
    .await;
    let out = spdy_exec(
        &url,
        "v4.channel.k8s.io",
        Opts {
            tty: true,
            ..Default::default()
        },
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("owner=1000"), "{text:?}");
    assert!(text.contains("exec-reopened"), "{text:?}");

    // 2. stdin_once: the first client's end of input is the program's EOF.
    attach_type_and_leave(&mut rt, &id).await;
    let text = log_with(&log, "got-eof", Duration::from_secs(20))
        .await
        .unwrap_or_else(|t| panic!("no EOF after the stdin_once client left: {t}"));
    assert!(text.contains("stdout F typed"), "{text}");

    // Without stdin_once the terminal's input stays open after a client
    // leaves: the program keeps reading.
    let (id, log) = tty_as_user(&s, &mut rt, "many", false).await;
    log_with(&log, "reopened", Duration::from_secs(30))
        .await
        .unwrap_or_else(|t| panic!("not started: {t}"));
    attach_type_and_leave(&mut rt, &id).await;
    let text = log_with(&log, "got-eof", Duration::from_secs(3)).await;
    assert!(text.is_err(), "EOF without stdin_once: {text:?}");
}
