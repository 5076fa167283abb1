//! Attach to a container's own stdio, terminals from the container's
//! devpts, and execs whose client vanished, end to end with the in-tree
//! SPDY and WebSocket clients of `streaming.rs`.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crius::cri::proto::*;
use crius::streaming::spdy::frame::Frame;
use futures::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::container::{Setup, container, create, pod_config, setup_with, start, status};
use crate::pod::{self, Client};
use crate::require_registry_tools;
use crate::streaming::{Opts, Outcome, Spdy, exec_url, spdy_exec, upgrade, ws_connect, ws_exec};

/// A running busybox container with the given stdio settings; returns
/// (pod id, container id, its CRI log file).
async fn running_with(
    s: &Setup,
    rt: &mut Client,
    name: &str,
    cmd: &[&str],
    stdin: bool,
    stdin_once: bool,
    tty: bool,
) -> (String, String, std::path::PathBuf) {
    let logs = s.d.dir.path().join(format!("logs-{name}"));
    let pod = pod::run(rt, pod_config(name, NamespaceMode::Container, &logs))
        .await
        .unwrap();
    let mut c = container(name, &s.busybox, cmd, NamespaceMode::Container);
    c.stdin = stdin;
    c.stdin_once = stdin_once;
    c.tty = tty;
    let id = create(rt, &pod, c).await.unwrap();
    start(rt, &id).await;
    (pod, id, logs.join(format!("{name}.log")))
}

pub(crate) async fn attach_url(rt: &mut Client, id: &str, stdin: bool, tty: bool) -> String {
    rt.attach(AttachRequest {
        container_id: id.into(),
        stdin,
        tty,
        stdout: true,
        stderr: !tty,
    })
    .await
    .unwrap()
    .into_inner()
    .url
}

/// An attach session over SPDY v4 as client-go opens it; returns the
/// session and the ids of (error, stdin, stdout, stderr, resize).
pub(crate) async fn spdy_attach(url: &str, stdin: bool, tty: bool) -> (Spdy, [Option<u32>; 5]) {
    let (tcp, code, head) = upgrade(
        url,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
        ],
    )
    .await;
    assert_eq!(code, 101, "{head}");
    let mut s = Spdy::new(Box::new(tcp));
    let error = s.open(&[("streamType", "error")]).await;
    let resize = match tty {
        true => Some(s.open(&[("streamType", "resize")]).await),
        false => None,
    };
    let input = match stdin {
        true => Some(s.open(&[("streamType", "stdin")]).await),
        false => None,
    };
    let stdout = s.open(&[("streamType", "stdout")]).await;
    let stderr = match tty {
        true => None,
        false => Some(s.open(&[("streamType", "stderr")]).await),
    };
    (s, [Some(error), input, Some(stdout), stderr, resize])
}

/// Reads frames until stream `id` has carried `want` (or ended).
pub(crate) async fn read_until(s: &mut Spdy, id: u32, want: &str, seen: &mut Vec<u8>) {
    if !read_within(s, id, want, seen, Duration::from_secs(60)).await {
        panic!(
            "no {want:?} within 60s: {:?}",
            String::from_utf8_lossy(seen)
        );
    }
}

/// Reads frames until stream `id` has carried `want`; false if `within`
/// passes first. Frames read are kept in `seen`, so a later call goes on
/// where this one stopped.
async fn read_within(
    s: &mut Spdy,
    id: u32,
    want: &str,
    seen: &mut Vec<u8>,
    within: Duration,
) -> bool {
    let deadline = Instant::now() + within;
    while !String::from_utf8_lossy(seen).contains(want) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.next()).await {
            Ok(Some(Frame::Data {
                stream_id, data, ..
            })) if stream_id == id => seen.extend_from_slice(&data),
            Ok(Some(_)) => {}
            Ok(None) => panic!(
                "session ended before {want:?}: {:?}",
                String::from_utf8_lossy(seen)
            ),
            Err(_) => return false,
        }
    }
    true
}

async fn exit_code_of(rt: &mut Client, id: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, _) = status(rt, id).await;
        if st.state == ContainerState::ContainerExited as i32 {
            return st.exit_code;
        }
        assert!(Instant::now() < deadline, "container {id} still runs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_attach_readers_and_stdin_once() {
    require_registry_tools!();
    let s = setup_with("", &[]).await;
    let mut rt = s.d.runtime().await;
    let script = "while read l; do echo \"got $l\"; done; echo bye";
    let (_pod, id, log) = running_with(
        &s,
        &mut rt,
        "once",
        &["sh", "-c", script],
        true,
        true,
        false,
    )
    .await;

    // An unknown container is NotFound at the RPC; Attach is no longer
    // UNIMPLEMENTED.
    let err = rt
        .attach(AttachRequest {
            container_id: "nosuchcontainer".into(),
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    // Two clients: one reads only, one writes stdin too; both see the
    // container's answers.
    let url = attach_url(&mut rt, &id, false, false).await;
    let (mut reader, [r_err, _, r_out, ..]) = spdy_attach(&url, false, false).await;
    let url = attach_url(&mut rt, &id, true, false).await;
    let (mut writer, [w_err, w_in, w_out, w_stderr, _]) = spdy_attach(&url, true, false).await;
    let (w_in, w_out, r_out) = (w_in.unwrap(), w_out.unwrap(), r_out.unwrap());
    // The attach is served once its streams are open; input sent right
    // away is not lost (the monitor holds the container's stdin). The
    // reader's subscription to the output is made by the server on its
    // own time after its streams are open: nothing in the protocol tells
    // the client when (containerd's attach is the same), and output from
    // before it is not replayed. So the writer sends numbered lines until
    // the reader has seen one answered.
    let (mut seen, mut seen_r) = (Vec::new(), Vec::new());
    let mut lines = 0;
    loop {
        lines += 1;
        let line = format!("sync{lines}\n");
        writer.data(w_in, line.as_bytes(), false).await;
        let answer = format!("got {line}");
        read_until(&mut writer, w_out, &answer, &mut seen).await;
        let wait = Duration::from_secs(2);
        if read_within(&mut reader, r_out, &answer, &mut seen_r, wait).await {
            break;
        }
        assert!(lines < 30, "the reader saw none of {lines} answers");
    }

    // stdin_once: the first client with stdin to leave closes the
    // container's stdin; the loop ends and the container exits.
    writer.data(w_in, b"two\n", true).await;
    let mut until = vec![w_err.unwrap(), w_out];
    until.extend(w_stderr);
    let data = writer.collect(&until).await;
    let out = Outcome {
        stdout: [seen, data.get(&w_out).cloned().unwrap_or_default()].concat(),
        stderr: Vec::new(),
        error: data.get(&w_err.unwrap()).cloned().unwrap_or_default(),
    };
    let answers: String = (1..=lines).map(|n| format!("got sync{n}\n")).collect();
    let all = format!("{answers}got two\nbye\n");
    assert_eq!(String::from_utf8_lossy(&out.stdout), all);
    assert_eq!(out.status()["status"], "Success", "{}", out.status());
    // The reader saw everything from its subscription on, whole lines.
    let rest = reader.collect(&[r_err.unwrap(), r_out]).await;
    seen_r.extend_from_slice(rest.get(&r_out).map(|v| v.as_slice()).unwrap_or(b""));
    let seen_r = String::from_utf8_lossy(&seen_r);
    assert!(
        seen_r.starts_with("got sync") && all.ends_with(&*seen_r),
        "the reader saw {seen_r:?} of {all:?}"
    );
    assert!(
        seen_r.contains(&format!("got sync{lines}\ngot two\n")),
        "{seen_r:?}"
    );
    assert_eq!(exit_code_of(&mut rt, &id).await, 0);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(" stdout F got two"), "{text}");
    assert!(text.contains(" stdout F bye"), "{text}");

    // The same over WebSocket v5: stdin closed by the close message.
    let (_pod, id, _) = running_with(
        &s,
        &mut rt,
        "wsonce",
        &["sh", "-c", script],
        true,
        true,
        false,
    )
    .await;
    let url = attach_url(&mut rt, &id, true, false).await;
    let out = ws_exec(&url, "v5.channel.k8s.io", Some(b"ws\n")).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got ws\nbye\n");
    assert_eq!(out.status()["status"], "Success");
    assert_eq!(exit_code_of(&mut rt, &id).await, 0);

    // A container without stdin: attaching with stdin gives the outputs
    // only (what containerd and CRI-O do); what the client types is dropped.
    let (_pod, id, _) = running_with(
        &s,
        &mut rt,
        "nostdin",
        &["sh", "-c", "sleep 2; echo tick; sleep 3600"],
        false,
        false,
        false,
    )
    .await;
    let url = attach_url(&mut rt, &id, true, false).await;
    let (mut a, [_, a_in, a_out, ..]) = spdy_attach(&url, true, false).await;
    let chunk = vec![b'z'; 32 << 10];
    for _ in 0..128 {
        a.data(a_in.unwrap(), &chunk, false).await;
    }
    let mut seen = Vec::new();
    read_until(&mut a, a_out.unwrap(), "tick\n", &mut seen).await;
}

/// The device number of the devpts instance a path's terminal lives on.
fn dev_of(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .dev()
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_attach_tty_container_logs_resize_and_devpts() {
    require_registry_tools!();
    let s = setup_with("", &[]).await;
    let mut rt = s.d.runtime().await;
    let script = "read x; stty size; tty; echo \"x=$x\"; sleep 3600";
    let (_pod, id, log) = running_with(
        &s,
        &mut rt,
        "term",
        &["sh", "-c", script],
        true,
        false,
        true,
    )
    .await;

    // The container's terminal is from its own devpts instance: the init's
    // stdin is a pts on the devpts mounted in the container, not the host's.
    let (st, info) = status(&mut rt, &id).await;
    assert_eq!(st.state, ContainerState::ContainerRunning as i32);
    let pid = info["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("verbose status has no pid: {info}"));
    let fd0 = Path::new("/proc").join(pid.to_string()).join("fd/0");
    let container_pts = Path::new("/proc")
        .join(pid.to_string())
        .join("root/dev/pts/ptmx");
    assert_eq!(
        dev_of(&fd0),
        dev_of(&container_pts),
        "the tty is on the container's devpts"
    );
    assert_ne!(
        dev_of(&fd0),
        dev_of(Path::new("/dev/pts/ptmx")),
        "not on the host's"
    );

    // Attach with a terminal: the size reaches the container's tty (held by
    // the monitor), the input its stdin.
    let url = attach_url(&mut rt, &id, true, true).await;
    let (mut a, [_, a_in, a_out, _, a_resize]) = spdy_attach(&url, true, true).await;
    a.data(a_resize.unwrap(), b"{\"Width\":77,\"Height\":33}\n", false)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.data(a_in.unwrap(), b"typed\n", false).await;
    let mut seen = Vec::new();
    read_until(&mut a, a_out.unwrap(), "x=typed", &mut seen).await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("33 77"), "{text:?}");
    assert!(text.contains("/dev/pts/0"), "{text:?}");
    drop(a);

    // The CRI log holds the terminal's output, in the CRI format.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("stdout F x=typed") {
            assert!(text.contains("stdout F 33 77"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "log: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Exec with a terminal: also from the container's devpts.
    let url = exec_url(
        &mut rt,
        &id,
        &["sh", "-c", "tty; ls /dev/pts; [ \"$(stat -L -c %d /proc/self/fd/0)\" = \"$(stat -c %d /dev/pts/ptmx)\" ] && echo same-devpts"],
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
    assert!(text.contains("/dev/pts/1"), "{text:?}");
    assert!(text.contains("same-devpts"), "{text:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_attach_slow_reader_does_not_stall_logs() {
    require_registry_tools!();
    let s = setup_with("", &[]).await;
    let mut rt = s.d.runtime().await;
    // 40 MB of output after a pause (so the client is attached first).
    let script =
        "sleep 2; head -c 40000000 /dev/zero | tr '\\0' x | fold -w 1000; echo done; sleep 3600";
    let (_pod, id, log) = running_with(
        &s,
        &mut rt,
        "flood",
        &["sh", "-c", script],
        false,
        false,
        false,
    )
    .await;
    let url = attach_url(&mut rt, &id, false, false).await;
    // A client that opens its streams and then reads nothing.
    let (mut slow, [s_err, ..]) = spdy_attach(&url, false, false).await;
    let started = Instant::now();
    loop {
        let text = std::fs::read(&log).unwrap_or_default();
        if text.ends_with(b"done\n") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the log stalled at {} bytes behind a client that does not read",
            text.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "40 MB logged in {:?} with a stalled attached client",
        started.elapsed()
    );
    // The slow client was cut off: its session ends with a failure status.
    let s_err = s_err.unwrap();
    let data = slow.collect(&[s_err]).await;
    let out = Outcome {
        error: data.get(&s_err).cloned().unwrap_or_default(),
        ..Default::default()
    };
    assert_eq!(out.status()["status"], "Failure", "{}", out.status());
    assert!(
        out.status()["message"]
            .as_str()
            .unwrap_or("")
            .contains("too far behind"),
        "{}",
        out.status()
    );
    // The container still runs and a new client attaches.
    let (st, _) = status(&mut rt, &id).await;
    assert_eq!(st.state, ContainerState::ContainerRunning as i32);
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_exec_gone_client_with_unread_stdin_is_reaped() {
    require_registry_tools!();
    let s = setup_with("", &[]).await;
    let mut rt = s.d.runtime().await;
    let (_pod, id, _) = running_with(
        &s,
        &mut rt,
        "unread",
        &["sleep", "3600"],
        false,
        false,
        false,
    )
    .await;
    let monitors = crate::harness::monitor_pids(&s.d.state);
    let monitor = monitors[0];
    let before = crate::harness::children_of(monitor).len();
    for transport in ["spdy", "websocket"] {
        let url = exec_url(&mut rt, &id, &["sleep", "1000"], true, false).await;
        if transport == "spdy" {
            let (mut c, [_, c_in, ..]) = spdy_attach(&url, true, false).await;
            // Far more stdin than every buffer on the way holds; the
            // process never reads it.
            let chunk = vec![b'y'; 32 << 10];
            let _ = tokio::time::timeout(Duration::from_secs(3), async {
                for _ in 0..512 {
                    c.data(c_in.unwrap(), &chunk, false).await;
                }
            })
            .await;
            drop(c);
        } else {
            let mut ws = ws_connect(&url, "v5.channel.k8s.io").await;
            let mut msg = vec![0u8];
            msg.extend_from_slice(&[b'y'; 32 << 10]);
            let _ = tokio::time::timeout(Duration::from_secs(3), async {
                for _ in 0..512 {
                    if ws.send(Message::Binary(msg.clone().into())).await.is_err() {
                        break;
                    }
                }
            })
            .await;
            drop(ws);
        }
        let running = crate::harness::children_of(monitor).len();
        assert!(running > before, "{transport}: the exec runs");
        let deadline = Instant::now() + Duration::from_secs(40);
        while crate::harness::children_of(monitor).len() > before {
            assert!(
                Instant::now() < deadline,
                "{transport}: the exec of a vanished client still runs"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A self-signed certificate for 127.0.0.1 made with the openssl CLI:
/// (cert PEM path, key PEM path).
fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("stream.crt"), dir.join("stream.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=crius-e2e"])
        // A leaf (CA:FALSE), its own trust anchor for the test client.
        .args([
            "-extensions",
            "v3_req",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_exec_and_attach_over_tls() {
    require_registry_tools!();
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no openssl CLI to make a certificate (hack/install-deps.sh)");
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path());
    let s = setup_with(
        &format!(
            "\n[streaming]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            cert.display(),
            key.display()
        ),
        &[],
    )
    .await;
    let mut rt = s.d.runtime().await;
    let (_pod, id, _) = running_with(
        &s,
        &mut rt,
        "tls",
        &["sh", "-c", "while read l; do echo \"got $l\"; done"],
        true,
        false,
        false,
    )
    .await;
    let url = exec_url(
        &mut rt,
        &id,
        &["sh", "-c", "echo over-tls; exit 4"],
        false,
        false,
    )
    .await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    // A client that trusts only that certificate.
    let tls = {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&cert).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
    };
    let connect = |url: String| {
        let tls = tls.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let rest = url.strip_prefix("https://").unwrap();
            let (host, path) = rest.split_once('/').unwrap();
            let tcp = tokio::net::TcpStream::connect(host).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let mut io = tls.connect(name, tcp).await.expect("TLS handshake");
            let req = format!(
                "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
            );
            io.write_all(req.as_bytes()).await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                assert_eq!(io.read(&mut byte).await.unwrap(), 1, "response head");
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            Spdy::new(Box::new(io))
        }
    };

    // Exec: output and exit code through TLS.
    let mut c = connect(url).await;
    let error = c.open(&[("streamType", "error")]).await;
    let stdout = c.open(&[("streamType", "stdout")]).await;
    let stderr = c.open(&[("streamType", "stderr")]).await;
    let data = c.collect(&[error, stdout, stderr]).await;
    assert_eq!(
        data.get(&stdout).map(Vec::as_slice),
        Some(&b"over-tls\n"[..])
    );
    let out = Outcome {
        error: data.get(&error).cloned().unwrap_or_default(),
        ..Default::default()
    };
    assert_eq!(out.status()["details"]["causes"][0]["message"], "4");

    // Attach: stdin in, output back, through TLS.
    let url = attach_url(&mut rt, &id, true, false).await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let mut a = connect(url).await;
    a.open(&[("streamType", "error")]).await;
    let input = a.open(&[("streamType", "stdin")]).await;
    let stdout = a.open(&[("streamType", "stdout")]).await;
    a.open(&[("streamType", "stderr")]).await;
    a.data(input, b"secret\n", false).await;
    let mut seen = Vec::new();
    read_until(&mut a, stdout, "got secret\n", &mut seen).await;

    // A client that does not speak TLS gets no session.
    let url = exec_url(&mut rt, &id, &["true"], false, false).await;
    let plain = url.replacen("https://", "http://", 1);
    let (_, code, _) = upgrade(
        &plain,
        &[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")],
    )
    .await;
    assert_ne!(code, 101);
}
