//! Exec and PortForward end to end through the streaming server, with
//! clients written here: SPDY/3.1 (frames and header compression from
//! crius's framer, whose bytes are pinned by its unit tests) and WebSocket
//! (tokio-tungstenite). The SPDY client never sends WINDOW_UPDATE, like the
//! Go client kubelet and crictl use.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crius::cri::proto::*;
use crius::streaming::spdy::frame::{self, Frame};
use crius::streaming::spdy::headers::{Deflater, Inflater};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tonic::Code;

use crate::container::{Setup, container, create, pod_config, setup_with, start};
use crate::pod::{self, Client};
use crate::require_registry_tools;

pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// `http://host:port/path` → (host:port, /path).
fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').expect("path");
    (host.to_string(), format!("/{path}"))
}

/// Sends an upgrade request; returns the connection, the status code and
/// the response head.
pub(crate) async fn upgrade(url: &str, headers: &[(&str, &str)]) -> (TcpStream, u16, String) {
    let (host, path) = split_url(url);
    let mut tcp = TcpStream::connect(&host).await.unwrap();
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (tcp, code, head)
}

/// The client side of a SPDY session.
pub(crate) struct Spdy {
    io: Box<dyn Io>,
    deflate: Deflater,
    inflate: Inflater,
    buf: Vec<u8>,
    next_id: u32,
}

impl Spdy {
    pub(crate) fn new(io: Box<dyn Io>) -> Spdy {
        Spdy {
            io,
            deflate: Deflater::new(),
            inflate: Inflater::new(),
            buf: Vec::new(),
            next_id: 1,
        }
    }

    async fn send(&mut self, f: Frame) {
        let mut wire = Vec::new();
        frame::encode(&f, &mut wire);
        self.io.write_all(&wire).await.unwrap();
    }

    pub(crate) async fn open(&mut self, headers: &[(&str, &str)]) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        let h = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let block = self.deflate.compress(&h).into();
        self.send(Frame::SynStream {
            stream_id: id,
            associated_id: 0,
            priority: 0,
            flags: 0,
            block,
        })
        .await;
        id
    }

    pub(crate) async fn data(&mut self, id: u32, data: &[u8], fin: bool) {
        self.send(Frame::Data {
            stream_id: id,
            fin,
            data: Bytes::copy_from_slice(data),
        })
        .await;
    }

    /// The next frame; `None` at the end of the connection.
    pub(crate) async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some((f, used)) = frame::parse(&self.buf).unwrap() {
                self.buf.drain(..used);
                if let Frame::SynReply { block, .. } | Frame::Headers { block, .. } = &f {
                    self.inflate.decompress(block).unwrap();
                }
                return Some(f);
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = self.io.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads frames until every stream in `until` has ended (or the
    /// connection did); returns the data of each stream.
    pub(crate) async fn collect(&mut self, until: &[u32]) -> HashMap<u32, Vec<u8>> {
        let mut out: HashMap<u32, Vec<u8>> = HashMap::new();
        let mut open: Vec<u32> = until.to_vec();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !open.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = tokio::time::timeout(left, self.next())
                .await
                .expect("streams ended in time");
            match f {
                None => break,
                Some(Frame::Data {
                    stream_id,
                    fin,
                    data,
                }) => {
                    out.entry(stream_id).or_default().extend_from_slice(&data);
                    if fin {
                        open.retain(|id| *id != stream_id);
                    }
                }
                Some(Frame::RstStream { stream_id, .. }) => open.retain(|id| *id != stream_id),
                Some(_) => {}
            }
        }
        out
    }
}

#[derive(Default)]
pub(crate) struct Opts<'a> {
    pub(crate) stdin: Option<&'a [u8]>,
    pub(crate) tty: bool,
    pub(crate) resize: Option<(u16, u16)>,
}

#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    pub(crate) error: Vec<u8>,
}

impl Outcome {
    pub(crate) fn status(&self) -> serde_json::Value {
        serde_json::from_slice(&self.error).unwrap_or_else(|e| {
            panic!(
                "error stream {:?}: {e}",
                String::from_utf8_lossy(&self.error)
            )
        })
    }

    fn exit_code(&self) -> i32 {
        let s = self.status();
        if s["status"] == "Success" {
            return 0;
        }
        assert_eq!(s["reason"], "NonZeroExitCode", "{s}");
        s["details"]["causes"][0]["message"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }
}

/// Runs an exec URL over SPDY with `protocol`, as client-go does: error,
/// resize, stdin, stdout, stderr streams.
pub(crate) async fn spdy_exec(url: &str, protocol: &str, opts: Opts<'_>) -> Outcome {
    let (tcp, code, head) = upgrade(
        url,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", protocol),
        ],
    )
    .await;
    assert_eq!(code, 101, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("x-stream-protocol-version: {protocol}")),
        "{head}"
    );
    let mut s = Spdy::new(Box::new(tcp));
    let error = s.open(&[("streamType", "error")]).await;
    let resize = if opts.tty {
        Some(s.open(&[("streamType", "resize")]).await)
    } else {
        None
    };
    let stdin = match opts.stdin {
        Some(_) => Some(s.open(&[("streamType", "stdin")]).await),
        None => None,
    };
    let stdout = s.open(&[("streamType", "stdout")]).await;
    let stderr = if opts.tty {
        None
    } else {
        Some(s.open(&[("streamType", "stderr")]).await)
    };
    if let (Some(id), Some((w, h))) = (resize, opts.resize) {
        let msg = format!("{{\"Width\":{w},\"Height\":{h}}}\n");
        s.data(id, msg.as_bytes(), false).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if let (Some(id), Some(data)) = (stdin, opts.stdin) {
        s.data(id, data, !opts.tty).await;
    }
    let mut until = vec![error, stdout];
    until.extend(stderr);
    let mut data = s.collect(&until).await;
    Outcome {
        stdout: data.remove(&stdout).unwrap_or_default(),
        stderr: stderr.and_then(|id| data.remove(&id)).unwrap_or_default(),
        error: data.remove(&error).unwrap_or_default(),
    }
}

pub(crate) async fn ws_connect(
    url: &str,
    protocol: &str,
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let (host, _) = split_url(url);
    let tcp = TcpStream::connect(&host).await.unwrap();
    let mut req = url
        .replacen("http://", "ws://", 1)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some(protocol)
    );
    ws
}

/// Runs an exec URL over WebSocket; with v5 stdin is closed by the close
/// message after the data.
pub(crate) async fn ws_exec(url: &str, protocol: &str, stdin: Option<&[u8]>) -> Outcome {
    let mut ws = ws_connect(url, protocol).await;
    if let Some(data) = stdin {
        let mut msg = vec![0u8];
        msg.extend_from_slice(data);
        ws.send(Message::Binary(msg.into())).await.unwrap();
        ws.send(Message::Binary(vec![255u8, 0].into()))
            .await
            .unwrap();
    }
    let mut out = Outcome::default();
    let read = async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Binary(data) = msg {
                match data.first() {
                    Some(1) => out.stdout.extend_from_slice(&data[1..]),
                    Some(2) => out.stderr.extend_from_slice(&data[1..]),
                    Some(3) => out.error.extend_from_slice(&data[1..]),
                    _ => {}
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("websocket session ended in time");
    out
}

pub(crate) async fn exec_url(
    rt: &mut Client,
    id: &str,
    cmd: &[&str],
    stdin: bool,
    tty: bool,
) -> String {
    rt.exec(ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    })
    .await
    .unwrap()
    .into_inner()
    .url
}

/// A pod with one running busybox container running `cmd`.
async fn running(
    s: &Setup,
    rt: &mut Client,
    name: &str,
    cmd: &[&str],
    host_net: bool,
) -> (String, String) {
    let logs = s.d.dir.path().join("logs");
    let mut config = pod_config(name, NamespaceMode::Container, &logs);
    if host_net {
        config = pod::with_namespaces(
            config,
            NamespaceMode::Node,
            NamespaceMode::Container,
            NamespaceMode::Pod,
        );
        config.hostname = String::new();
    }
    let pod = pod::run(rt, config).await.unwrap();
    let id = create(
        rt,
        &pod,
        container(name, &s.busybox, cmd, NamespaceMode::Container),
    )
    .await
    .unwrap();
    start(rt, &id).await;
    (pod, id)
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_exec_over_spdy_and_websocket() {
    require_registry_tools!();
    let s = setup_with("\n[streaming]\ntoken_ttl_secs = 2\n", &[]).await;
    let mut rt = s.d.runtime().await;
    let (_pod, id) = running(&s, &mut rt, "exec", &["sleep", "3600"], false).await;

    // Bad requests are refused at the RPC, naming the problem.
    let mut req = ExecRequest {
        container_id: "nosuchcontainer".into(),
        cmd: vec!["true".into()],
        stdout: true,
        ..Default::default()
    };
    assert_eq!(
        rt.exec(req.clone()).await.unwrap_err().code(),
        Code::NotFound
    );
    req.container_id = id.clone();
    req.tty = true;
    req.stderr = true;
    let err = rt.exec(req.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("tty"), "{err:?}");
    req.cmd.clear();
    let err = rt.exec(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("cmd"), "{err:?}");

    // Output, error output and the exit code over SPDY v4.
    let script = ["sh", "-c", "echo out; echo err >&2; exit 3"];
    let url = exec_url(&mut rt, &id, &script, false, false).await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(url.contains("/exec/"), "{url}");
    let out = spdy_exec(&url, "v4.channel.k8s.io", Opts::default()).await;
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.exit_code(), 3);

    // A spent token, and one that never was, are 404.
    let (_, code, _) = upgrade(&url, &[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]).await;
    assert_eq!(code, 404);
    let base = url.rsplit_once('/').unwrap().0;
    let (_, code, _) = upgrade(&format!("{base}/{}", "0".repeat(64)), &[]).await;
    assert_eq!(code, 404);
    // An expired one too (token_ttl_secs = 2).
    let late = exec_url(&mut rt, &id, &["true"], false, false).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, code, _) = upgrade(&late, &[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]).await;
    assert_eq!(code, 404);

    // More than 1 MiB of output with no WINDOW_UPDATE from the client.
    let url = exec_url(
        &mut rt,
        &id,
        &["head", "-c", "3000000", "/dev/zero"],
        false,
        false,
    )
    .await;
    let out = spdy_exec(&url, "v4.channel.k8s.io", Opts::default()).await;
    assert_eq!(out.stdout.len(), 3_000_000);
    assert_eq!(out.exit_code(), 0);

    // stdin reaches the process and its EOF ends it.
    let url = exec_url(&mut rt, &id, &["cat"], true, false).await;
    let out = spdy_exec(
        &url,
        "v4.channel.k8s.io",
        Opts {
            stdin: Some(b"hello stdin\n"),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(out.stdout, b"hello stdin\n");
    assert_eq!(out.exit_code(), 0);

    // A terminal: the size the client sends is what `stty size` sees.
    let url = exec_url(&mut rt, &id, &["sh", "-c", "read x; stty size"], true, true).await;
    let out = spdy_exec(
        &url,
        "v4.channel.k8s.io",
        Opts {
            stdin: Some(b"go\n"),
            tty: true,
            resize: Some((123, 45)),
        },
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("45 123"), "{text:?}");
    assert_eq!(out.exit_code(), 0);

    // An older protocol: no JSON, and nothing on success.
    let url = exec_url(&mut rt, &id, &["true"], false, false).await;
    let out = spdy_exec(&url, "v2.channel.k8s.io", Opts::default()).await;
    assert!(out.error.is_empty(), "{:?}", out.error);

    // A protocol the server does not speak is refused.
    let url = exec_url(&mut rt, &id, &["true"], false, false).await;
    let (_, code, head) = upgrade(
        &url,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v9.channel.k8s.io"),
        ],
    )
    .await;
    assert_eq!(code, 403, "{head}");

    // WebSocket v5 and v4: output, exit codes, stdin closed by message.
    let url = exec_url(&mut rt, &id, &script, false, false).await;
    let out = ws_exec(&url, "v5.channel.k8s.io", None).await;
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.exit_code(), 3);
    let url = exec_url(&mut rt, &id, &["cat"], true, false).await;
    let out = ws_exec(&url, "v5.channel.k8s.io", Some(b"over websocket")).await;
    assert_eq!(out.stdout, b"over websocket");
    assert_eq!(out.exit_code(), 0);
    let url = exec_url(&mut rt, &id, &["sh", "-c", "exit 7"], false, false).await;
    let out = ws_exec(&url, "v4.channel.k8s.io", None).await;
    assert_eq!(out.exit_code(), 7);

    // A command that does not exist: a failure status, not a hang.
    let url = exec_url(&mut rt, &id, &["/no/such/command"], false, false).await;
    let out = spdy_exec(&url, "v4.channel.k8s.io", Opts::default()).await;
    assert_eq!(out.status()["status"], "Failure", "{}", out.status());
}

/// A port-forward session over `io`: every request (port, expected text in
/// the answer or the error) is made on the same session.
async fn port_forward_session(io: Box<dyn Io>, requests: &[(u16, Result<&str, &str>)]) {
    let mut s = Spdy::new(io);
    for (n, (port, expect)) in requests.iter().enumerate() {
        let port_s = port.to_string();
        let rid = n.to_string();
        let error = s
            .open(&[
                ("streamType", "error"),
                ("port", &port_s),
                ("requestID", &rid),
            ])
            .await;
        let data = s
            .open(&[
                ("streamType", "data"),
                ("port", &port_s),
                ("requestID", &rid),
            ])
            .await;
        s.data(data, b"GET /index.html HTTP/1.0\r\n\r\n", false)
            .await;
        let got = s.collect(&[error, data]).await;
        let text =
            |id| String::from_utf8_lossy(got.get(&id).map(|v| &v[..]).unwrap_or(b"")).into_owned();
        match expect {
            Ok(body) => {
                assert!(
                    text(data).contains(body),
                    "data {:?} error {:?}",
                    text(data),
                    text(error)
                );
                assert!(text(error).is_empty(), "{}", text(error));
            }
            Err(msg) => assert!(text(error).contains(msg), "error stream {:?}", text(error)),
        }
        // The client closes its half as kubectl does when its side ends.
        s.data(data, b"", true).await;
    }
}

/// A byte pipe through binary WebSocket messages (the client side of
/// `SPDY/3.1+portforward.k8s.io`).
fn ws_pipe(ws: tokio_tungstenite::WebSocketStream<TcpStream>) -> tokio::io::DuplexStream {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut rd, mut wr) = tokio::io::split(ours);
    let (mut sink, mut stream) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            if let Message::Binary(d) = msg
                && wr.write_all(&d).await.is_err()
            {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0
                || sink
                    .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
            {
                break;
            }
        }
    });
    theirs
}

async fn pf_url(rt: &mut Client, pod: &str) -> String {
    rt.port_forward(PortForwardRequest {
        pod_sandbox_id: pod.into(),
        port: vec![],
    })
    .await
    .unwrap()
    .into_inner()
    .url
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_port_forward_pod_and_host_network() {
    require_registry_tools!();
    let s = setup_with("", &[]).await;
    let mut rt = s.d.runtime().await;
    let serve = |port: u16| {
        format!(
            "echo hello-from-{port} > /tmp/index.html; exec httpd -f -p 127.0.0.1:{port} -h /tmp"
        )
    };
    let web = serve(8080);
    let (pod, id) = running(&s, &mut rt, "web", &["sh", "-c", &web], false).await;
    let host_port = free_port();
    let host_web = serve(host_port);
    let (host_pod, _) = running(&s, &mut rt, "hostweb", &["sh", "-c", &host_web], true).await;
    // httpd is up once an ExecSync can reach it.
    for _ in 0..100 {
        let probe = ["sh", "-c", "nc 127.0.0.1 8080 </dev/null"];
        let r = crate::container::exec(&mut rt, &id, &probe, 5)
            .await
            .unwrap();
        if r.exit_code == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", host_port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An unknown pod is NotFound at the RPC.
    let err = rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: "nosuchpod".into(),
            port: vec![80],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // SPDY: the pod's port 8080 (not reachable from the host), a closed
    // port reported on the error stream, then the same session goes on.
    let url = pf_url(&mut rt, &pod).await;
    assert!(url.contains("/portforward/"), "{url}");
    let (tcp, code, head) = upgrade(
        &url,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "portforward.k8s.io"),
        ],
    )
    .await;
    assert_eq!(code, 101, "{head}");
    port_forward_session(
        Box::new(tcp),
        &[
            (8080, Ok("hello-from-8080")),
            (9, Err("error forwarding port 9")),
            (8080, Ok("hello-from-8080")),
        ],
    )
    .await;

    // SPDY tunnelled in WebSocket messages.
    let url = pf_url(&mut rt, &pod).await;
    let ws = ws_connect(&url, "SPDY/3.1+portforward.k8s.io").await;
    port_forward_session(Box::new(ws_pipe(ws)), &[(8080, Ok("hello-from-8080"))]).await;

    // A host-network pod's port is the host's.
    let url = pf_url(&mut rt, &host_pod).await;
    let (tcp, code, _) = upgrade(
        &url,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "portforward.k8s.io"),
        ],
    )
    .await;
    assert_eq!(code, 101);
    let expect = format!("hello-from-{host_port}");
    port_forward_session(Box::new(tcp), &[(host_port, Ok(&expect))]).await;
}

pub(crate) fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_killed_sessions_leave_nothing_behind() {
    require_registry_tools!();
    let s = setup_with("", &[]).await;
    let mut rt = s.d.runtime().await;
    let (_pod, id) = running(&s, &mut rt, "killed", &["sleep", "3600"], false).await;
    let monitors = crate::harness::monitor_pids(&s.d.state);
    assert_eq!(monitors.len(), 1);
    let monitor = monitors[0];
    let daemon = s.d.pid();

    // One session first, so lazily created state (threads, buffers) exists.
    let url = exec_url(&mut rt, &id, &["true"], false, false).await;
    spdy_exec(&url, "v4.channel.k8s.io", Opts::default()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = (fd_count(daemon), fd_count(monitor), rss_kib(daemon));
    let children_before = crate::harness::children_of(monitor).len();

    // 200 sessions whose client vanishes while the command runs.
    for round in 0..20 {
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let url = exec_url(
                &mut rt,
                &id,
                &["sh", "-c", "echo started; exec sleep 1000"],
                true,
                false,
            )
            .await;
            tasks.push(tokio::spawn(async move {
                let (tcp, code, _) = upgrade(
                    &url,
                    &[
                        ("Connection", "Upgrade"),
                        ("Upgrade", "SPDY/3.1"),
                        ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
                    ],
                )
                .await;
                assert_eq!(code, 101);
                let mut s = Spdy::new(Box::new(tcp));
                s.open(&[("streamType", "error")]).await;
                s.open(&[("streamType", "stdin")]).await;
                let stdout = s.open(&[("streamType", "stdout")]).await;
                s.open(&[("streamType", "stderr")]).await;
                // Wait until the command runs, then vanish.
                loop {
                    match s.next().await {
                        Some(Frame::Data { stream_id, .. }) if stream_id == stdout => break,
                        Some(_) => {}
                        None => panic!("session ended early"),
                    }
                }
                drop(s);
            }));
        }
        for t in tasks {
            t.await.unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }
    // Every killed exec is reaped and every fd closed.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = (
            fd_count(daemon),
            fd_count(monitor),
            crate::harness::children_of(monitor).len(),
        );
        if now.0 <= before.0 + 2 && now.1 <= before.1 + 2 && now.2 <= children_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 200 killed sessions: daemon fds {} (before {}), monitor fds {} (before {}), monitor children {} (before {children_before})",
            now.0,
            before.0,
            now.1,
            before.1,
            now.2
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rss_after = rss_kib(daemon);
    eprintln!(
        "200 killed sessions: daemon fds {} -> {}, monitor fds {} -> {}, daemon RSS {} KiB -> {} KiB",
        before.0,
        fd_count(daemon),
        before.1,
        fd_count(monitor),
        before.2,
        rss_after
    );
    assert!(
        rss_after < before.2 + 32 * 1024,
        "daemon RSS grew from {} KiB to {rss_after} KiB",
        before.2
    );
    // The container itself still runs and answers.
    let url = exec_url(&mut rt, &id, &["echo", "alive"], false, false).await;
    let out = spdy_exec(&url, "v4.channel.k8s.io", Opts::default()).await;
    assert_eq!(out.stdout, b"alive\n");
}
