//! Images as attacks on the node: a USER that only looks non-root
//! (`4294967296` is uid 0 once truncated to 32 bits, and the image's
//! /etc/passwd names a user so), and device nodes shipped in a layer
//! (crius keeps them, as containerd does when it runs as root; the device
//! cgroup is what stops them being opened).

use crius::cri::proto::*;
use tonic::Code;

use crate::container::{container, create, exec, pod_config, setup_with_env, start};
use crate::pod;
use crate::require_registry_tools;

/// A tar entry with raw header fields.
fn entry(
    b: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    path: &str,
    mode: u32,
    dev: (u32, u32),
    data: &[u8],
) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(data.len() as u64);
    h.set_mtime(1);
    if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
        h.set_device_major(dev.0).unwrap();
        h.set_device_minor(dev.1).unwrap();
    }
    b.append_data(&mut h, path, data).unwrap();
}

/// The host's static busybox, an /etc/passwd with a user named
/// `4294967296` whose uid is 0, and two world-writable device nodes:
/// /nodes/kmsg (c 1:11, the host's kernel log) and /nodes/loop (b 7:0).
fn layer() -> Vec<u8> {
    use tar::EntryType::{Block, Char, Directory, Regular};
    let mut b = tar::Builder::new(Vec::new());
    let busybox = std::fs::read("/bin/busybox").unwrap();
    entry(&mut b, Directory, "bin", 0o755, (0, 0), b"");
    entry(&mut b, Regular, "bin/busybox", 0o755, (0, 0), &busybox);
    entry(&mut b, Directory, "etc", 0o755, (0, 0), b"");
    entry(
        &mut b,
        Regular,
        "etc/passwd",
        0o644,
        (0, 0),
        b"root:x:0:0:root:/root:/bin/sh\n4294967296:x:0:0:root:/:/bin/sh\n",
    );
    entry(&mut b, Directory, "nodes", 0o755, (0, 0), b"");
    entry(&mut b, Char, "nodes/kmsg", 0o666, (1, 11), b"");
    entry(&mut b, Block, "nodes/loop", 0o666, (7, 0), b"");
    b.into_inner().unwrap()
}

/// `script` run by the image's busybox sh in an exec of `id`: (exit code,
/// stdout, stderr).
async fn bb(rt: &mut pod::Client, id: &str, script: &str) -> (i32, String, String) {
    let out = exec(rt, id, &["/bin/busybox", "sh", "-c", script], 10)
        .await
        .unwrap();
    (
        out.exit_code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// ImageStatus reports a USER that is no valid uid as a name (kubelet then
/// refuses runAsNonRoot: "non-numeric user"), never as the non-root uid it
/// seems to be, and CreateContainer refuses it with InvalidArgument naming
/// the image's User; the init never looks it up in /etc/passwd.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_image_user_beyond_u32_is_never_taken_for_non_root() {
    require_registry_tools!();
    let s = setup_with_env(&[]).await;
    let layer = layer();
    let mut images = s.d.images().await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(
        &mut rt,
        pod_config("users", NamespaceMode::Container, &logs),
    )
    .await
    .unwrap();
    let cases = [
        ("user-wrap", "4294967296", "out of range"),
        ("user-max", "4294967295", "out of range"),
        ("user-negative", "-1:0", "negative"),
        ("user-group-wrap", "0:4294967296", "out of range"),
    ];
    for (name, user, says) in cases {
        s.reg.push_image(
            name,
            &layer,
            serde_json::json!({"Cmd": ["/bin/busybox", "sleep", "3600"], "User": user}),
        );
        let image = s.reg.image(name);
        s.pull(&image).await;
        let st = images
            .image_status(ImageStatusRequest {
                image: Some(ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .image
            .unwrap();
        let user_part = user.split(':').next().unwrap();
        // Any invalid USER, even with only the group bad.
        assert_eq!(st.uid, None, "{name}: no uid for kubelet to trust");
        assert_eq!(st.username, user_part, "{name}");
        let c = container(
            name,
            &image,
            &["/bin/busybox", "sleep", "3600"],
            NamespaceMode::Container,
        );
        let err = create(&mut rt, &pod, c).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert!(
            err.message().contains("image config User"),
            "{name}: {err:?}"
        );
        assert!(err.message().contains(says), "{name}: {err:?}");
    }
    pod::stop_remove(&mut rt, &pod).await;
    pod::assert_no_trace(&s.d);
}

/// Device nodes shipped in an image layer are kept (with their numbers and
/// mode 0666) and cannot be opened from the container, by root or by
/// another uid, from the workload or an exec: the device cgroup denies
/// every node but runc's defaults.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_image_device_nodes_cannot_be_opened() {
    require_registry_tools!();
    let s = setup_with_env(&[]).await;
    s.reg.push_image(
        "devnodes",
        &layer(),
        serde_json::json!({"Cmd": ["/bin/busybox", "sleep", "3600"]}),
    );
    let image = s.reg.image("devnodes");
    s.pull(&image).await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(&mut rt, pod_config("dev", NamespaceMode::Pod, &logs))
        .await
        .unwrap();
    for (name, uid) in [("as-root", None), ("as-1000", Some(1000))] {
        let mut c = container(
            name,
            &image,
            &["/bin/busybox", "sleep", "3600"],
            NamespaceMode::Container,
        );
        if let Some(uid) = uid {
            let sc = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
            sc.run_as_user = Some(Int64Value { value: uid });
        }
        let id = create(&mut rt, &pod, c).await.unwrap();
        start(&mut rt, &id).await;
        // The nodes are there as the layer made them...
        let (code, out, err) = bb(
            &mut rt,
            &id,
            "/bin/busybox stat -c '%F %t:%T %a' /nodes/kmsg /nodes/loop",
        )
        .await;
        assert_eq!(code, 0, "{name}: {err}");
        assert_eq!(
            out, "character special file 1:b 666\nblock special file 7:0 666\n",
            "{name}"
        );
        // ...an allowed node opens (the exec works at all)...
        assert_eq!(bb(&mut rt, &id, ": >/dev/null").await.0, 0, "{name}");
        // ...and neither shipped node does. Writing /dev/kmsg needs no
        // capability, so only the device cgroup refuses it.
        let (code, _, err) = bb(&mut rt, &id, ": >/nodes/kmsg").await;
        assert_ne!(code, 0, "{name}: the host's /dev/kmsg opened for writing");
        assert!(err.contains("Operation not permitted"), "{name}: {err}");
        let (code, _, err) = bb(&mut rt, &id, ": </nodes/loop").await;
        assert_ne!(code, 0, "{name}: a block device opened");
        assert!(err.contains("Operation not permitted"), "{name}: {err}");
    }
    pod::stop_remove(&mut rt, &pod).await;
    pod::assert_no_trace(&s.d);
}
