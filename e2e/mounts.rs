//! Image volumes (KEP-4639) and recursive read-only mounts (KEP-3857) end
//! to end: what the container sees (read-only, executable, the sub path,
//! whiteouts honoured, symlinks confined to the image), the refusals, the
//! ContainerStatus echo, RemoveImage refused while a volume uses the
//! image, a recursive read-only bind whose submount refuses writes where a
//! plain read-only bind lets them through, and no mount left in any
//! namespace after removal, also after a kill -9 of the daemon.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crius::cri::proto::*;
use tonic::Code;

use crate::container::{
    Setup, container, create, exec, pod_config, refused, setup_with_env, start, status,
};
use crate::pod::{self, wait_for};
use crate::registry::Tar;
use crate::require_registry_tools;

/// Every mountinfo line of every process that names `needle` (a daemon's
/// storage root: the rootfs overlays and the image volumes name it).
fn mount_lines_naming(needle: &Path) -> Vec<String> {
    let needle = needle.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<i32>().is_err() {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path().join("mountinfo")) else {
            continue;
        };
        out.extend(
            text.lines()
                .filter(|l| l.contains(&needle))
                .map(|l| format!("{}: {l}", e.file_name().to_string_lossy())),
        );
    }
    out
}

fn image_mount(path: &str, image: &str, sub_path: &str) -> Mount {
    Mount {
        container_path: path.into(),
        readonly: true,
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        image_sub_path: sub_path.into(),
        ..Default::default()
    }
}

fn bind(host: &Path, path: &str, readonly: bool, rro: bool) -> Mount {
    Mount {
        container_path: path.into(),
        host_path: host.display().to_string(),
        readonly,
        recursive_read_only: rro,
        ..Default::default()
    }
}

fn container_dirs(s: &Setup) -> usize {
    std::fs::read_dir(s.d.root.join("containers"))
        .map(|r| r.count())
        .unwrap_or(0)
}

async fn sh(rt: &mut crate::pod::Client, id: &str, script: &str) -> (i32, String) {
    let out = exec(rt, id, &["sh", "-c", script], 10).await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.exit_code, text)
}

#[tokio::test(flavor = "multi_thread")]
async fn image_volumes_whole_and_sub_path_read_only_executable_and_in_use() {
    require_registry_tools!();
    let s = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    let layered = s.reg.image("layered");
    let layered_id = s.pull(&layered).await;
    // An image whose symlinks point out of it, and a marker at its root.
    s.reg.push_layer_image(
        "links",
        &Tar::default()
            .add(tar::EntryType::Regular, "marker", "", b"image root\n")
            .add(tar::EntryType::Symlink, "up", "../../../../../../..", b"")
            .add(tar::EntryType::Symlink, "abs", "/", b"")
            .bytes(),
    );
    let links = s.reg.image("links");
    s.pull(&links).await;
    let layers_dir = s.d.root.join("image/layers");
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(&mut rt, pod_config("vols", NamespaceMode::Container, &logs))
        .await
        .unwrap();
    let mut c = container(
        "v",
        &s.busybox,
        &["sleep", "1000"],
        NamespaceMode::Container,
    );
    c.mounts = vec![
        // busybox as rootfs and as a volume: one layer, bound read-only.
        image_mount("/vol", &s.busybox, ""),
        image_mount("/etcvol", &s.image_id, "etc"),
        // Two layers with a whiteout and an opaque dir: a read-only overlay.
        image_mount("/lay", &layered, ""),
        image_mount("/up", &links, "up"),
        image_mount("/abs", &links, "abs/"),
    ];
    let id = create(&mut rt, &pod, c).await.unwrap();
    start(&mut rt, &id).await;

    let (code, out) = sh(
        &mut rt,
        &id,
        "/vol/bin/ls /vol/bin/sh && ls /etcvol/passwd && test ! -e /etcvol/etc",
    )
    .await;
    assert_eq!(
        code, 0,
        "whole image executable, sub path at the target: {out}"
    );
    for dir in ["/vol", "/lay", "/etcvol", "/up"] {
        let (code, out) = sh(&mut rt, &id, &format!("touch {dir}/x")).await;
        assert_ne!(code, 0, "{dir} written");
        assert!(out.contains("Read-only file system"), "{dir}: {out}");
    }
    let (code, out) = sh(
        &mut rt,
        &id,
        "test ! -e /lay/data/gone && test -e /lay/data/dir/new && /lay/bin/true",
    )
    .await;
    assert_eq!(code, 0, "the overlay honours whiteouts and runs: {out}");
    for dir in ["/up", "/abs"] {
        let (code, out) = sh(
            &mut rt,
            &id,
            &format!("cat {dir}/marker && test ! -e {dir}/etc"),
        )
        .await;
        assert_eq!(code, 0, "{dir}: symlinks resolve inside the image: {out}");
        assert_eq!(out, "image root\n");
    }
    // The volumes use the image store's layer dirs (shared with every
    // rootfs of the image), never a copy.
    let (_, info) = sh(&mut rt, &id, "cat /proc/self/mountinfo").await;
    let lay = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/lay"))
        .unwrap_or_else(|| panic!("no /lay mount: {info}"));
    let lower = lay
        .split("lowerdir=")
        .nth(1)
        .unwrap_or_else(|| panic!("/lay is not an overlay: {lay}"));
    let lower: Vec<PathBuf> = lower
        .split([',', ' '])
        .next()
        .unwrap()
        .split(':')
        .map(PathBuf::from)
        .collect();
    assert_eq!(lower.len(), 2, "{lay}");
    assert!(
        lower
            .iter()
            .all(|l| l.starts_with(&layers_dir) && l.is_dir()),
        "{lay}"
    );
    assert!(!lay.contains("upperdir"), "no upper dir: {lay}");

    let (st, _) = status(&mut rt, &id).await;
    let echoed: Vec<_> = st
        .mounts
        .iter()
        .map(|m| {
            let i = m.image.clone().unwrap_or_default();
            (
                m.container_path.as_str(),
                i.image_ref,
                m.image_sub_path.as_str(),
                m.readonly,
            )
        })
        .collect();
    assert_eq!(echoed[0], ("/vol", s.image_id.clone(), "", true));
    assert_eq!(echoed[1], ("/etcvol", s.image_id.clone(), "etc", true));
    assert_eq!(echoed[2], ("/lay", layered_id.clone(), "", true));

    // The image of a volume is in use.
    let mut images = s.d.images().await;
    let remove = |image: &str| RemoveImageRequest {
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
    };
    let err = images.remove_image(remove(&layered)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        mount_lines_naming(&layers_dir).len() >= 2,
        "the volumes are seen"
    );

    rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    rt.remove_container(RemoveContainerRequest { container_id: id })
        .await
        .unwrap();
    let left = mount_lines_naming(&s.d.root);
    assert!(left.is_empty(), "mounts left: {left:#?}");
    images.remove_image(remove(&layered)).await.unwrap();
    pod::stop_remove(&mut rt, &pod).await;
    pod::assert_no_trace(&s.d);
}

#[tokio::test(flavor = "multi_thread")]
async fn image_volume_and_rro_refusals_leave_nothing() {
    require_registry_tools!();
    let s = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(
        &mut rt,
        pod_config("refuse", NamespaceMode::Container, &logs),
    )
    .await
    .unwrap();
    let host = s.d.dir.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let writable = Mount {
        readonly: false,
        ..image_mount("/v", &s.busybox, "")
    };
    let propagated = Mount {
        propagation: MountPropagation::PropagationHostToContainer as i32,
        ..bind(&host, "/m", true, true)
    };
    let bidirectional = Mount {
        propagation: MountPropagation::PropagationBidirectional as i32,
        ..bind(&host, "/m", true, true)
    };
    let cases: Vec<(Mount, Code, &str)> = vec![
        (writable, Code::InvalidArgument, "must be readonly"),
        (
            image_mount("/v", &s.busybox, "not-existing"),
            Code::InvalidArgument,
            "image_sub_path \"not-existing\" does not exist",
        ),
        (
            image_mount("/v", &s.busybox, "etc/../.."),
            Code::InvalidArgument,
            "image_sub_path \"etc/../..\" contains \"..\"",
        ),
        (
            image_mount("/v", &s.busybox, "/etc"),
            Code::InvalidArgument,
            "image_sub_path \"/etc\" is absolute",
        ),
        (
            image_mount("/v", &format!("{}-not-pulled", s.busybox), ""),
            Code::NotFound,
            "is not present: pull it first",
        ),
        (
            bind(&host, "/m", false, true),
            Code::InvalidArgument,
            "recursive_read_only requires readonly",
        ),
        (
            propagated,
            Code::InvalidArgument,
            "recursive_read_only requires private propagation",
        ),
        (
            bidirectional,
            Code::InvalidArgument,
            "recursive_read_only requires private propagation",
        ),
    ];
    for (i, (mount, code, message)) in cases.into_iter().enumerate() {
        let mut c = container(
            &format!("c{i}"),
            &s.busybox,
            &["sleep", "1000"],
            NamespaceMode::Container,
        );
        c.mounts = vec![mount];
        let err = refused(&mut rt, &pod, c).await;
        assert_eq!(err.code(), code, "case {i}: {err:?}");
        assert!(err.message().contains(message), "case {i}: {err:?}");
        wait_for(
            "the refused container's removal",
            Duration::from_secs(10),
            || container_dirs(&s) == 0,
        )
        .await;
    }
    let left = mount_lines_naming(&s.d.root);
    assert!(left.is_empty(), "mounts left: {left:#?}");
    pod::stop_remove(&mut rt, &pod).await;
    pod::assert_no_trace(&s.d);
}

/// A host dir with a tmpfs mounted at `tmpfs/` inside it (critest's
/// layout), unmounted on drop.
struct HostDirWithSubmount(PathBuf);

impl HostDirWithSubmount {
    fn new(at: PathBuf) -> Self {
        std::fs::create_dir_all(at.join("tmpfs")).unwrap();
        nix::mount::mount(
            Some("none"),
            &at.join("tmpfs"),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=64k"),
        )
        .unwrap();
        HostDirWithSubmount(at)
    }
}

impl Drop for HostDirWithSubmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0.join("tmpfs"), nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn recursive_read_only_bind_covers_submounts_a_plain_one_does_not() {
    require_registry_tools!();
    let mut s = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    let features = pod::handler_features(&mut rt).await;
    assert!(
        features.recursive_read_only_mounts,
        "mount_setattr exists on this kernel ({})",
        nix::sys::utsname::uname()
            .unwrap()
            .release()
            .to_string_lossy()
    );
    let host = HostDirWithSubmount::new(s.d.dir.path().join("host"));
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(&mut rt, pod_config("rro", NamespaceMode::Container, &logs))
        .await
        .unwrap();
    let mut c = container(
        "r",
        &s.busybox,
        &["sleep", "1000"],
        NamespaceMode::Container,
    );
    c.mounts = vec![
        bind(&host.0, "/rro", true, true),
        bind(&host.0, "/ro", true, false),
        image_mount("/vol", &s.busybox, "bin"),
    ];
    let id = create(&mut rt, &pod, c).await.unwrap();
    start(&mut rt, &id).await;
    let (code, out) = sh(&mut rt, &id, "touch /rro/tmpfs/x").await;
    assert_ne!(
        code, 0,
        "the submount of a recursive read-only bind written"
    );
    assert!(out.contains("Read-only file system"), "{out}");
    let (code, out) = sh(&mut rt, &id, "touch /rro/y").await;
    assert!(code != 0 && out.contains("Read-only file system"), "{out}");
    let (code, out) = sh(&mut rt, &id, "touch /ro/y").await;
    assert!(code != 0 && out.contains("Read-only file system"), "{out}");
    let (code, out) = sh(&mut rt, &id, "touch /ro/tmpfs/x").await;
    assert_eq!(
        code, 0,
        "a plain read-only bind leaves its submount writable: {out}"
    );
    assert!(host.0.join("tmpfs/x").exists());
    let (st, _) = status(&mut rt, &id).await;
    let rro: Vec<_> = st
        .mounts
        .iter()
        .map(|m| (m.container_path.as_str(), m.recursive_read_only))
        .collect();
    assert_eq!(rro, [("/rro", true), ("/ro", false), ("/vol", false)]);

    // kill -9 of the daemon: the container keeps its mounts in its own
    // namespace; the restarted daemon removes it and nothing stays.
    let before = mount_lines_naming(&s.d.root);
    assert!(!before.is_empty(), "the rootfs and the volume are seen");
    s.d.signal_and_wait(9, Duration::from_secs(10))
        .expect("daemon dies");
    s.d.spawn();
    s.d.wait_ready().await;
    let mut rt = s.d.runtime().await;
    let (code, _) = sh(&mut rt, &id, "test -x /vol/sh && ! touch /rro/tmpfs/z").await;
    assert_eq!(code, 0, "the mounts survive the daemon");
    let host_ns: Vec<_> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&*s.d.root.to_string_lossy()))
        .map(String::from)
        .collect();
    assert!(
        host_ns.is_empty(),
        "a volume mounted in the host's namespace: {host_ns:#?}"
    );
    pod::stop_remove(&mut rt, &pod).await;
    let left = mount_lines_naming(&s.d.root);
    assert!(left.is_empty(), "mounts left: {left:#?}");
    drop(host);
    pod::assert_no_trace(&s.d);
}
