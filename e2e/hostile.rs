//! Hostile and unusual clients (issue 17): a socket path as `:authority`
//! (gRPC C-core, grpc-java), connections and request bodies that never
//! arrive, configs over the size bounds, a hundred thousand env vars, and
//! every field the CRI layer must refuse with InvalidArgument leaving
//! nothing on the host.

use std::time::{Duration, Instant};

use crius::cri::proto::*;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::harness::TestDaemon;
use crate::pod::{self, Client, assert_no_trace};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// An HPACK string literal, no Huffman (lengths < 127 here).
fn lit(s: &str) -> Vec<u8> {
    let mut v = vec![s.len() as u8];
    v.extend(s.as_bytes());
    v
}

/// Reads one frame: (kind, flags, stream, payload).
async fn read_frame(s: &mut tokio::net::UnixStream) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut h = [0u8; 9];
    s.read_exact(&mut h).await?;
    let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
    let mut payload = vec![0; len];
    s.read_exact(&mut payload).await?;
    let sid = u32::from_be_bytes(h[5..9].try_into().unwrap()) & 0x7fff_ffff;
    Ok((h[3], h[4], sid, payload))
}

/// Version over hand-made HTTP/2 frames with the `:authority` gRPC C-core
/// sends on a unix socket (percent-encoded path, added to the HPACK table),
/// then grpc-java's raw path, then the table entry again: every call is
/// answered, none is reset.
#[tokio::test(flavor = "multi_thread")]
async fn a_socket_path_as_authority_is_served() {
    let d = TestDaemon::start("").await;
    let mut s = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    let path = "/runtime.v1.RuntimeService/Version";
    let pseudo = |block: &mut Vec<u8>| {
        block.extend([0x83, 0x86, 0x04]); // POST, http, :path (name 4)
        block.extend(lit(path));
    };
    let common = |block: &mut Vec<u8>| {
        block.extend([0x0f, 0x10]); // content-type (name 31)
        block.extend(lit("application/grpc"));
        block.push(0x00);
        block.extend(lit("te"));
        block.extend(lit("trailers"));
    };
    let with_name = |first: u8, value: &str| [vec![first], lit(value)].concat();
    let authorities = [
        // With incremental indexing, name 1 (:authority).
        with_name(0x41, "run%2Fcrius%2Fcrius.sock"),
        with_name(0x01, "/run/crius/crius.sock"),
        // The table entry of the first request.
        vec![0xbe],
    ];
    for (i, authority) in authorities.iter().enumerate() {
        let mut block = Vec::new();
        pseudo(&mut block);
        block.extend(authority);
        common(&mut block);
        let sid = 1 + 2 * i as u32;
        out.extend(frame(0x1, 0x4, sid, &block));
        out.extend(frame(0x0, 0x1, sid, &[0, 0, 0, 0, 0]));
    }
    s.write_all(&out).await.unwrap();

    let mut answered = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while answered.len() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let (kind, flags, sid, payload) = tokio::time::timeout(left, read_frame(&mut s))
            .await
            .expect("answers within 20 s")
            .expect("the connection stays open");
        match kind {
            0x0 => {
                let v = VersionResponse::decode(&payload[5..]).expect("a Version answer");
                assert_eq!(v.runtime_name, "crius");
                answered.push(sid);
            }
            0x3 => panic!("stream {sid} reset: {payload:?}"),
            0x7 => panic!("GOAWAY: {payload:?}"),
            0x4 if flags & 1 == 0 => s.write_all(&frame(0x4, 1, 0, &[])).await.unwrap(),
            _ => {}
        }
    }
    answered.sort();
    assert_eq!(answered, [1, 3, 5]);
}

/// With short timeouts: a connection that sends nothing is closed, a
/// request whose body never comes is ended, and a live client that says
/// nothing but answers the server's PINGs keeps its connection.
#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_and_streams_are_closed_live_ones_kept() {
    let d = TestDaemon::start(
        "[grpc]\nkeepalive_interval_secs = 1\nkeepalive_timeout_secs = 1\nidle_timeout_secs = 3\n",
    )
    .await;
    let start = Instant::now();
    let mut silent = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    // The server's SETTINGS come first, then the end of the connection.
    let mut buf = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(15), silent.read_to_end(&mut buf))
        .await
        .expect("closed within 15 s");
    assert!(buf.len() < 100, "{end:?} after {} bytes", buf.len());
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(3), "closed after {waited:?}");

    // A live HTTP/2 client (hyper answers PINGs) idle for 5 s, then a
    // request whose body never arrives on the same connection.
    use http_body_util::StreamBody;
    let stream = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!conn.is_finished(), "a client answering PINGs is kept");
    let body = StreamBody::new(futures::stream::pending::<
        Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
    >());
    let req = http::Request::post("http://crius/runtime.v1.RuntimeService/Version")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let start = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(20), send.send_request(req))
        .await
        .expect("a stalled request is ended within 20 s");
    let status = match answer {
        Ok(resp) => resp
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_string()),
        Err(_) => None, // reset: ended too
    };
    assert_ne!(
        status.as_deref(),
        Some("0"),
        "a body that never came is no success"
    );
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

async fn refused(rt: &mut Client, c: PodSandboxConfig, field: &str) {
    let e = pod::run(rt, c).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{field}: {}", e.message());
    assert!(e.message().contains(field), "{field}: {}", e.message());
}

/// Every pod field the CRI layer refuses: InvalidArgument naming the field,
/// nothing listed, nothing left on the host.
#[tokio::test(flavor = "multi_thread")]
async fn bad_pod_fields_are_refused_and_leave_nothing() {
    let d = TestDaemon::start("").await;
    let mut rt = d.runtime().await;
    let meta = |f: &dyn Fn(&mut PodSandboxMetadata)| {
        let mut c = pod::config("bad");
        f(c.metadata.as_mut().unwrap());
        c
    };
    refused(&mut rt, meta(&|m| m.uid.clear()), "metadata.uid").await;
    refused(
        &mut rt,
        meta(&|m| m.namespace.clear()),
        "metadata.namespace",
    )
    .await;
    refused(&mut rt, meta(&|m| m.name = "a/b".into()), "metadata.name").await;
    refused(&mut rt, meta(&|m| m.name = "a\0b".into()), "metadata.name").await;
    refused(
        &mut rt,
        meta(&|m| m.name = "n".repeat(254)),
        "metadata.name",
    )
    .await;
    refused(&mut rt, meta(&|m| m.uid = "../x".into()), "metadata.uid").await;
    let mut c = pod::config("ports");
    c.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 80,
        host_port: 8080,
        host_ip: "localhost".into(),
    }];
    refused(&mut rt, c, "host_ip").await;
    let mut c = pod::config("logs");
    c.log_directory = "var/log/pods/x".into();
    refused(&mut rt, c, "log_directory").await;

    // Over the bounds: the sizes are in the message.
    let mut c = pod::config("labels");
    c.labels.insert("big".into(), "v".repeat(14 << 20));
    let size = crius::cri::validate::map_bytes(&c.labels);
    let e = pod::run(&mut rt, c).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    for part in [&size.to_string(), "65536", "max_pod_labels_bytes"] {
        assert!(e.message().contains(part), "{part}: {}", e.message());
    }
    let mut c = pod::config("dns");
    c.dns_config = Some(DnsConfig {
        servers: vec!["1.1.1.1".repeat(1000); 200],
        ..Default::default()
    });
    let e = pod::run(&mut rt, c).await.unwrap_err();
    assert!(e.message().contains("max_config_bytes"), "{}", e.message());

    assert!(pod::list(&mut rt, None).await.is_empty());
    assert_no_trace(&d);
}

/// Container fields refused before anything is created (no image needed:
/// the refusal comes first), and ExecSync with a negative timeout.
#[tokio::test(flavor = "multi_thread")]
async fn bad_container_fields_are_refused_and_leave_nothing() {
    let d = TestDaemon::start("").await;
    let mut rt = d.runtime().await;
    let pod_id = pod::run(&mut rt, pod::config("c")).await.unwrap();
    let base = || crate::container::container("ok", "busybox", &["true"], NamespaceMode::Pod);
    let create = |c: ContainerConfig| CreateContainerRequest {
        pod_sandbox_id: pod_id.clone(),
        config: Some(c),
        sandbox_config: None,
    };
    let named = |n: &str| {
        let mut c = base();
        c.metadata.as_mut().unwrap().name = n.into();
        c
    };
    let mut user = base();
    user.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            run_as_username: "root:0".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut envs = base();
    envs.envs = (0..100_000)
        .map(|i| KeyValue {
            key: format!("VARIABLE_NUMBER_{i:06}"),
            value: b"some value".to_vec(),
        })
        .collect();
    let cases = [
        (named("a/b"), "metadata.name"),
        (named("a\0b"), "metadata.name"),
        (named(&"n".repeat(254)), "metadata.name"),
        (user, "run_as_username"),
        (envs, "100000 env vars"),
    ];
    for (c, field) in cases {
        let start = Instant::now();
        let e = rt.create_container(create(c)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {}", e.message());
        assert!(e.message().contains(field), "{field}: {}", e.message());
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{field}: answered after {:?}",
            start.elapsed()
        );
    }
    let e = rt
        .exec_sync(ExecSyncRequest {
            container_id: "f".repeat(64),
            cmd: vec!["true".into()],
            timeout: -1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("timeout"), "{}", e.message());
    // An error quoting a huge id stays within what clients accept in
    // headers (a longer grpc-message made tonic reset the stream).
    let e = rt
        .start_container(StartContainerRequest {
            container_id: "y".repeat(40_000),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    assert!(e.message().len() < 2100, "{}", e.message().len());
    let listed = rt
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.containers.is_empty());
    assert!(
        std::fs::read_dir(d.root.join("containers"))
            .map(|r| r.count() == 0)
            .unwrap_or(true),
        "container dirs left"
    );
    pod::stop_remove(&mut rt, &pod_id).await;
    assert_no_trace(&d);
}

/// Commands an exec cannot run, sent to a running container: each answer
/// is InvalidArgument (or the exec's own failure), short, and the pod's
/// monitor keeps serving. Found by the campaign in CI: a 9 MiB ExecSync
/// broke the connection to the monitor (INTERNAL "Broken pipe"), and a
/// command the exec could not find, quoted whole in the failure, overflowed
/// the setup's sync line (INTERNAL "oversized message").
#[tokio::test(flavor = "multi_thread")]
async fn commands_no_exec_can_run_are_refused_and_the_monitor_lives() {
    use crate::container::{container, create, exec, pod_config, setup_with_env, start};
    let s = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod_id = pod::run(&mut rt, pod_config("argv", NamespaceMode::Pod, &logs))
        .await
        .unwrap();
    let c = container(
        "sleeper",
        &s.busybox,
        &["sleep", "1000"],
        NamespaceMode::Pod,
    );
    let id = create(&mut rt, &pod_id, c).await.unwrap();
    start(&mut rt, &id).await;
    let long_arg = "a".repeat(200_000);
    let many = vec!["b".repeat(100_000); 90];
    let unknown = format!("/{}", "c".repeat(100_000));
    let cases: [(Vec<&str>, Code, &str); 4] = [
        (vec!["echo", &long_arg], Code::InvalidArgument, "cmd[1]"),
        (
            many.iter().map(String::as_str).collect(),
            Code::InvalidArgument,
            "max_config_bytes",
        ),
        (vec!["echo", "a\0b"], Code::InvalidArgument, "NUL"),
        (vec![&unknown], Code::InvalidArgument, "bytes cut"),
    ];
    for (cmd, code, says) in cases {
        let e = exec(&mut rt, &id, &cmd, 10).await.unwrap_err();
        assert_eq!(e.code(), code, "{says}: {}", e.message());
        assert!(e.message().contains(says), "{says}: {}", e.message());
        assert!(e.message().len() < 2100, "{}", e.message().len());
        let ok = exec(&mut rt, &id, &["echo", "alive"], 10).await.unwrap();
        assert_eq!(ok.stdout, b"alive\n", "after {says}");
    }
    // The same bounds hold for a container's command and args.
    let mut c = container("toolong", &s.busybox, &["echo"], NamespaceMode::Pod);
    c.args = vec![long_arg.clone()];
    let e = create(&mut rt, &pod_id, c).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().starts_with("args[0]"), "{}", e.message());
    pod::stop_remove(&mut rt, &pod_id).await;
    assert_no_trace(&s.d);
}
