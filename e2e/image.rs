//! The ImageService against a real local registry: pull by tag and digest,
//! gzip and zstd layers, whiteouts, mirrors from hosts.toml, auth, hostile
//! layers, digest mismatches, concurrent pulls, deadlines, List/Status/
//! Remove semantics and ImageFsInfo.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crius::cri::proto::image_service_client::ImageServiceClient;
use crius::cri::proto::*;
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::TestDaemon;
use crate::registry::{Registry, Tar};
use crate::require_registry_tools;

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

/// A daemon without registry hosts configuration (`extra` goes into its
/// [registry] table).
async fn daemon(extra: &str) -> TestDaemon {
    TestDaemon::start(&format!(
        "[registry]\nconfig_path = \"/nonexistent/crius-e2e-certs.d\"\n{extra}"
    ))
    .await
}

async fn pull(c: &mut ImageServiceClient<Channel>, image: &str) -> Result<String, tonic::Status> {
    pull_auth(c, image, None).await
}

async fn pull_auth(
    c: &mut ImageServiceClient<Channel>,
    image: &str,
    auth: Option<AuthConfig>,
) -> Result<String, tonic::Status> {
    let r = c
        .pull_image(PullImageRequest {
            image: spec(image),
            auth,
            sandbox_config: None,
        })
        .await?;
    Ok(r.into_inner().image_ref)
}

async fn status(c: &mut ImageServiceClient<Channel>, image: &str) -> ImageStatusResponse {
    c.image_status(ImageStatusRequest {
        image: spec(image),
        verbose: true,
    })
    .await
    .unwrap()
    .into_inner()
}

async fn remove(c: &mut ImageServiceClient<Channel>, image: &str) {
    c.remove_image(RemoveImageRequest { image: spec(image) })
        .await
        .unwrap();
}

async fn list(c: &mut ImageServiceClient<Channel>) -> Vec<Image> {
    c.list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images
}

/// The layer directories ImageStatus(verbose) reports, lowest first.
async fn layer_dirs(c: &mut ImageServiceClient<Channel>, image: &str) -> Vec<PathBuf> {
    let s = status(c, image).await;
    let info: serde_json::Value = serde_json::from_str(&s.info["info"]).unwrap();
    info["layerDirs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| PathBuf::from(v.as_str().unwrap()))
        .collect()
}

/// Every path under `dir` (recursively).
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_by_tag_and_digest_then_list_status_remove() {
    require_registry_tools!();
    let reg = Registry::with_test_images(None);
    let mut d = daemon("").await;
    let mut c = d.images().await;
    let busybox = reg.image("busybox");

    let id = pull(&mut c, &busybox).await.unwrap();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let s = status(&mut c, &busybox).await;
    let image = s.image.clone().unwrap();
    assert_eq!(image.id, id, "image_ref is the image id (config digest)");
    assert_eq!(image.repo_tags, [format!("{busybox}:latest")]);
    assert_eq!(image.repo_digests.len(), 1);
    assert!(image.repo_digests[0].starts_with(&format!("{busybox}@sha256:")));
    assert!(image.size > 1_000_000, "{}", image.size);
    assert!(!image.pinned);
    let info: serde_json::Value = serde_json::from_str(&s.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["config"]["Cmd"][0], "sh");

    // Every way of naming it gives the identical answer.
    let digest_ref = image.repo_digests[0].clone();
    for name in [
        id.clone(),
        id[7..19].to_string(),
        format!("{busybox}:latest"),
        digest_ref.clone(),
    ] {
        assert_eq!(
            status(&mut c, &name).await.image,
            Some(image.clone()),
            "{name}"
        );
    }
    // By digest: same id, no new image; a second tag joins the same image.
    assert_eq!(pull(&mut c, &digest_ref).await.unwrap(), id);
    assert_eq!(pull(&mut c, &format!("{busybox}:1.35")).await.unwrap(), id);
    let images = list(&mut c).await;
    assert_eq!(images.len(), 1);
    let mut tags = images[0].repo_tags.clone();
    tags.sort();
    assert_eq!(
        tags,
        [format!("{busybox}:1.35"), format!("{busybox}:latest")]
    );
    let filtered = c
        .list_images(ListImagesRequest {
            filter: Some(ImageFilter {
                image: spec(&format!("{busybox}:1.35")),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);
    let mut streamed = c
        .stream_images(StreamImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = streamed.message().await.unwrap().unwrap();
    assert_eq!(first.images, images);
    assert!(streamed.message().await.unwrap().is_none());

    let dirs = layer_dirs(&mut c, &id).await;
    assert_eq!(dirs.len(), 1);
    assert!(dirs[0].join("bin/busybox").is_file());
    assert_eq!(
        std::fs::metadata(dirs[0].join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    // The content store keeps the manifest and the config, never a layer
    // blob: the unpacked layer is the layer.
    let blobs = d.root.join("image/blobs/sha256");
    let kept: Vec<String> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    assert!(kept.contains(&id), "{kept:?}");
    let manifest_digest = digest_ref.rsplit('@').next().unwrap().to_string();
    assert!(kept.contains(&manifest_digest), "{kept:?}");
    for blob in &kept {
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(blobs.join(&blob[7..])).unwrap()).unwrap();
        for layer in json["layers"].as_array().into_iter().flatten() {
            let digest = layer["digest"].as_str().unwrap().to_string();
            assert!(!kept.contains(&digest), "layer blob {digest} kept");
        }
    }

    // ImageFsInfo sees the content.
    let fs = c
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let usage = &fs.image_filesystems[0];
    assert!(usage.used_bytes.unwrap().value > 1_000_000);
    assert!(usage.inodes_used.unwrap().value > 10);
    assert!(
        usage
            .fs_id
            .as_ref()
            .unwrap()
            .mountpoint
            .starts_with(&d.root.display().to_string())
    );

    // The image survives a restart.
    d.signal_and_wait(15, Duration::from_secs(10));
    d.spawn();
    d.wait_ready().await;
    let mut c = d.images().await;
    assert_eq!(
        status(&mut c, &id).await.image,
        Some(image.clone().tap_tags(&tags))
    );

    // Remove by one tag removes the image and all its tags; again is fine.
    remove(&mut c, &format!("{busybox}:1.35")).await;
    assert_eq!(status(&mut c, &id).await, ImageStatusResponse::default());
    assert!(list(&mut c).await.is_empty());
    remove(&mut c, &id).await;
    assert!(!dirs[0].exists(), "unreferenced layers are deleted");
    let blobs = d.root.join("image/blobs/sha256");
    assert_eq!(std::fs::read_dir(blobs).unwrap().count(), 0, "and blobs");
}

trait TapTags {
    fn tap_tags(self, tags: &[String]) -> Self;
}
impl TapTags for Image {
    fn tap_tags(mut self, tags: &[String]) -> Self {
        self.repo_tags = tags.to_vec();
        self
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_and_malformed_images() {
    require_registry_tools!();
    let reg = Registry::with_test_images(None);
    let d = daemon("").await;
    let mut c = d.images().await;
    assert_eq!(
        status(&mut c, "nosuch:latest").await,
        ImageStatusResponse::default()
    );
    remove(&mut c, "nosuch:latest").await;
    for bad in ["Upper/Case", "busybox@sha256:123", "a:b:c"] {
        let err = pull(&mut c, bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
        assert!(err.message().contains("invalid image reference"), "{err:?}");
    }
    let err = pull(&mut c, &reg.image("nosuch:latest")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = c.pull_image(PullImageRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread")]
async fn nonroot_user_zstd_layers_and_pinned_sandbox_image() {
    require_registry_tools!();
    let reg = Registry::with_test_images(None);
    let d = daemon(&format!(
        "sandbox_image = \"{}\"\n",
        reg.image("busybox:stable")
    ))
    .await;
    let mut c = d.images().await;
    pull(&mut c, &reg.image("nonroot")).await.unwrap();
    let img = status(&mut c, &reg.image("nonroot")).await.image.unwrap();
    assert_eq!(img.uid, Some(Int64Value { value: 1000 }));
    assert_eq!(img.username, "");

    let zid = pull(&mut c, &reg.image("busybox-zstd")).await.unwrap();
    let dirs = layer_dirs(&mut c, &zid).await;
    assert!(dirs[0].join("bin/busybox").is_file(), "zstd layer unpacked");
    assert!(!status(&mut c, &zid).await.image.unwrap().pinned);

    // The sandbox image is never pulled by crius, but pinned once present.
    assert!(list(&mut c).await.iter().all(|i| !i.pinned));
    pull(&mut c, &reg.image("busybox:stable")).await.unwrap();
    let pinned = status(&mut c, &reg.image("busybox:stable"))
        .await
        .image
        .unwrap();
    assert!(pinned.pinned);
}

#[tokio::test(flavor = "multi_thread")]
async fn layer_whiteouts_and_opaque_dirs_yield_the_right_tree() {
    require_registry_tools!();
    let reg = Registry::with_test_images(None);
    let d = daemon("").await;
    let mut c = d.images().await;
    let id = pull(&mut c, &reg.image("layered")).await.unwrap();
    let dirs = layer_dirs(&mut c, &id).await;
    assert_eq!(dirs.len(), 2);
    let (lower, upper) = (&dirs[0], &dirs[1]);
    assert_eq!(
        std::fs::read_to_string(lower.join("data/replaced")).unwrap(),
        "old\n"
    );
    assert_eq!(
        std::fs::read_to_string(upper.join("data/replaced")).unwrap(),
        "new\n"
    );
    let gone = std::fs::symlink_metadata(upper.join("data/gone")).unwrap();
    assert!(
        gone.file_type().is_char_device() && gone.rdev() == 0,
        "whiteout"
    );
    let mut buf = [0u8; 4];
    let n =
        rustix::fs::getxattr(upper.join("data/dir"), "trusted.overlay.opaque", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"y");
    assert!(upper.join("data/dir/new").is_file());
    assert!(!upper.join("data/dir/.wh..wh..opq").exists());
    // The implicit /data of the upper layer carries the lower's metadata.
    let (lm, um) = (
        std::fs::metadata(lower.join("data")).unwrap(),
        std::fs::metadata(upper.join("data")).unwrap(),
    );
    assert_eq!(
        (lm.mode(), lm.uid(), lm.mtime()),
        (um.mode(), um.uid(), um.mtime())
    );
    // The overlay view, as a container will see it.
    let view = d.dir.path().join("view");
    std::fs::create_dir(&view).unwrap();
    let opts = format!("lowerdir={}:{}", upper.display(), lower.display());
    let mounted = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&view)
        .status()
        .unwrap();
    if mounted.success() {
        let mut names: Vec<_> = std::fs::read_dir(view.join("data"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let dir_names: Vec<_> = std::fs::read_dir(view.join("data/dir"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let replaced = std::fs::read_to_string(view.join("data/replaced")).unwrap();
        let _ = std::process::Command::new("umount").arg(&view).status();
        assert_eq!(names, ["dir", "replaced"]);
        assert_eq!(dir_names, ["new"]);
        assert_eq!(replaced, "new\n");
    } else {
        eprintln!("overlay mount not possible here; checked the layer dirs only");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_through_a_mirror_from_hosts_toml() {
    require_registry_tools!();
    let reg = Registry::with_test_images(None);
    let certs = tempfile::tempdir().unwrap();
    let host_dir = certs.path().join("upstream.invalid");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"https://upstream.invalid\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            reg.addr
        ),
    )
    .unwrap();
    let d = TestDaemon::start(&format!(
        "[registry]\nconfig_path = \"{}\"\n",
        certs.path().display()
    ))
    .await;
    let mut c = d.images().await;
    let id = pull(&mut c, "upstream.invalid/busybox:1.35").await.unwrap();
    let img = status(&mut c, "upstream.invalid/busybox:1.35")
        .await
        .image
        .unwrap();
    assert_eq!(img.id, id);
    assert_eq!(img.repo_tags, ["upstream.invalid/busybox:1.35"]);
    // Without the mirror the upstream does not exist.
    let err = pull(&mut c, "other.invalid/busybox:1.35")
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_with_credentials_from_a_htpasswd_registry() {
    require_registry_tools!();
    let reg = Registry::with_test_images(Some("alice:s3cret-pw"));
    let d = daemon("").await;
    let mut c = d.images().await;
    let image = reg.image("busybox");
    let err = pull(&mut c, &image).await.unwrap_err();
    assert!(
        err.message().contains("authoriz") || err.message().contains("401"),
        "{err:?}"
    );
    let wrong = AuthConfig {
        username: "alice".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    assert!(pull_auth(&mut c, &image, Some(wrong)).await.is_err());
    let good = AuthConfig {
        username: "alice".into(),
        password: "s3cret-pw".into(),
        ..Default::default()
    };
    let id = pull_auth(&mut c, &image, Some(good)).await.unwrap();
    remove(&mut c, &id).await;
    use base64::Engine;
    let encoded = AuthConfig {
        auth: base64::engine::general_purpose::STANDARD.encode("alice:s3cret-pw"),
        ..Default::default()
    };
    assert_eq!(pull_auth(&mut c, &image, Some(encoded)).await.unwrap(), id);
    assert!(
        !d.log().contains("s3cret-pw"),
        "credentials are never logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_layers_are_rejected_and_nothing_lands_outside() {
    require_registry_tools!();
    let reg = Registry::start(None);
    let d = daemon("").await;
    let mut c = d.images().await;
    let marker = format!("crius-escape-{}", std::process::id());
    use tar::EntryType::{Link, Regular, Symlink};
    let layers = [
        (
            "dotdot",
            Tar::default().add(
                Regular,
                &format!("../../../../../../../../tmp/{marker}"),
                "",
                b"x",
            ),
        ),
        (
            "linkout",
            Tar::default().add(Link, "passwd", "../../../../../../../../etc/passwd", b""),
        ),
        (
            "symlinkparent",
            Tar::default()
                .add(Symlink, "up", "../../../../../../../../tmp", b"")
                .add(Regular, &format!("up/{marker}"), "", b"x")
                .add(Link, "hard", "up/../etc/passwd", b""),
        ),
    ];
    for (name, layer) in layers {
        reg.push_layer_image(name, &layer.bytes());
        let err = pull(&mut c, &reg.image(name)).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{name}: {err:?}");
        assert!(err.message().contains("unpack layer"), "{name}: {err:?}");
    }
    assert!(!Path::new("/tmp").join(&marker).exists());
    assert!(!Path::new("/").join(&marker).exists());
    let stray: Vec<_> = tree(d.dir.path())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == marker.as_str()))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
    assert!(list(&mut c).await.is_empty());
    let layers_dir = d.root.join("image/layers");
    assert_eq!(
        std::fs::read_dir(&layers_dir).unwrap().count(),
        0,
        "nothing half-stored"
    );
    assert_eq!(
        std::fs::read_dir(d.root.join("image/tmp")).unwrap().count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_blob_is_rejected() {
    require_registry_tools!();
    let reg = Registry::start(None);
    let layer = Tar::default()
        .add(tar::EntryType::Regular, "file", "", b"content")
        .bytes();
    let manifest_digest = reg.push_layer_image("corrupt", &layer);
    // Corrupt the layer blob in the registry's storage (same size).
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reg.blob_path(&manifest_digest)).unwrap()).unwrap();
    let digest = manifest["layers"][0]["digest"].as_str().unwrap();
    let path = reg.blob_path(digest);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 5;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let d = daemon("").await;
    let mut c = d.images().await;
    let err = pull(&mut c, &reg.image("corrupt")).await.unwrap_err();
    assert!(err.message().to_lowercase().contains("digest"), "{err:?}");
    assert!(list(&mut c).await.is_empty());
    assert_eq!(
        std::fs::read_dir(d.root.join("image/tmp")).unwrap().count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(d.root.join("image/layers"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_share_one_download_and_removes_all_succeed() {
    require_registry_tools!();
    let reg = Registry::with_test_images(None);
    let d = daemon("").await;
    let image = reg.image("layered");
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut c = d.images().await;
        let image = image.clone();
        tasks.push(tokio::spawn(async move { pull(&mut c, &image).await }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        std::fs::read_dir(d.root.join("image/layers"))
            .unwrap()
            .count(),
        2
    );
    let log = d.log();
    assert_eq!(log.matches("pulled").count(), 4, "{log}");
    // Each layer blob left the registry once (the small config blob may be
    // fetched by each pull).
    let reg_log = std::fs::read_to_string(reg.dir.path().join("log")).unwrap();
    let mut gets = std::collections::HashMap::<String, usize>::new();
    for line in reg_log
        .lines()
        .filter(|l| l.contains("response completed") && l.contains("http.request.method=GET"))
    {
        if let Some(i) = line.find("/blobs/sha256:") {
            let digest = line[i + "/blobs/".len()..][..71].to_string();
            *gets.entry(digest).or_default() += 1;
        }
    }
    gets.remove(&ids[0]);
    assert_eq!(gets.len(), 2, "two layer blobs: {gets:?}\n{reg_log}");
    assert!(
        gets.values().all(|&n| n == 1),
        "one download per layer: {gets:?}"
    );

    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut c = d.images().await;
        let image = image.clone();
        tasks.push(tokio::spawn(async move {
            c.remove_image(RemoveImageRequest {
                image: spec(&image),
            })
            .await?;
            Ok::<_, tonic::Status>(status(&mut c, &image).await)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), ImageStatusResponse::default());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_deadline_answers_deadline_exceeded_and_stores_nothing_partial() {
    require_registry_tools!();
    let reg = Registry::with_test_images(None);
    let d = daemon("").await;
    let mut c = d.images().await;
    // Raw HTTP/2: a tonic client would enforce the deadline itself.
    let code = raw_pull_with_timeout(&d.socket, &reg.image("layered"), "1m").await;
    assert_eq!(code, Code::DeadlineExceeded as i32);
    // The pull finishes or fails on its own: either a whole image or none.
    // Up to 60 s: under software emulation (the VM tier) the pull alone
    // can take longer than 5 s, and its temporary dir is then still there.
    for _ in 0..1200 {
        if d.log().contains("pulled") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let images = list(&mut c).await;
    if let Some(img) = images.first() {
        assert_eq!(layer_dirs(&mut c, &img.id).await.len(), 2);
    }
    assert_eq!(
        std::fs::read_dir(d.root.join("image/tmp")).unwrap().count(),
        0
    );
}

/// A PullImage call over raw HTTP/2 with `grpc-timeout: timeout`; returns
/// the grpc-status the server answered.
async fn raw_pull_with_timeout(socket: &Path, image: &str, timeout: &str) -> i32 {
    use prost::Message;
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let msg = PullImageRequest {
        image: spec(image),
        ..Default::default()
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    let req = http::Request::post("http://crius/runtime.v1.ImageService/PullImage")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.headers().get("grpc-status").cloned();
    match status {
        Some(s) => s.to_str().unwrap().parse().unwrap(),
        None => {
            use http_body_util::BodyExt;
            let body = resp.into_body().collect().await.unwrap();
            let trailers = body.trailers().cloned().unwrap_or_default();
            trailers["grpc-status"].to_str().unwrap().parse().unwrap()
        }
    }
}

/// A registry that answers /v2/ and then never sends a manifest.
async fn stalling_registry() -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = conn.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    if !head.starts_with("GET ") {
                        return; // TLS or anything else: hang up
                    }
                    if head.starts_with("GET /v2/ ") {
                        let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                        if conn.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    } else {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_without_progress_is_cancelled_and_says_so() {
    let (addr, server) = stalling_registry().await;
    let d = daemon("pull_progress_timeout_secs = 1\n").await;
    let mut c = d.images().await;
    let start = std::time::Instant::now();
    let err = pull(&mut c, &format!("{addr}/stall:latest"))
        .await
        .unwrap_err();
    server.abort();
    assert!(err.message().contains("no progress for 1 s"), "{err:?}");
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(list(&mut c).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_through_a_bearer_token_challenge() {
    require_registry_tools!();
    let reg = Registry::with_test_images(None);
    let (front, server) =
        crate::registry::bearer_front(reg.addr.clone(), "bob:pw-9", "tok-42").await;
    let d = daemon("").await;
    let mut c = d.images().await;
    let image = format!("{front}/busybox:latest");
    let err = pull(&mut c, &image).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::FailedPrecondition,
        "anonymous is refused: {err:?}"
    );
    let good = AuthConfig {
        username: "bob".into(),
        password: "pw-9".into(),
        ..Default::default()
    };
    let id = pull_auth(&mut c, &image, Some(good)).await.unwrap();
    assert_eq!(status(&mut c, &image).await.image.unwrap().id, id);
    // A token given directly is used as is.
    remove(&mut c, &id).await;
    let token = AuthConfig {
        registry_token: "tok-42".into(),
        ..Default::default()
    };
    assert_eq!(pull_auth(&mut c, &image, Some(token)).await.unwrap(), id);
    server.abort();
    assert!(
        !d.log().contains("pw-9") && !d.log().contains("tok-42"),
        "secrets are never logged"
    );
}

/// A daemon whose registry hosts configuration is `certs`.
async fn daemon_with_hosts(certs: &Path) -> TestDaemon {
    TestDaemon::start(&format!(
        "[registry]\nconfig_path = \"{}\"\n",
        certs.display()
    ))
    .await
}

fn write_hosts(certs: &Path, addr: &str, settings: &str) {
    let dir = certs.join(addr);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hosts.toml"),
        format!("[host.\"https://{addr}\"]\n  capabilities = [\"pull\", \"resolve\"]\n{settings}"),
    )
    .unwrap();
}

/// A registry serving HTTPS with a certificate from a CA of the test's own:
/// pulled through `ca` in hosts.toml, then through `skip_verify`; without
/// either the pull fails naming the host and the certificate problem.
#[tokio::test(flavor = "multi_thread")]
async fn pull_from_a_tls_registry_through_ca_and_skip_verify() {
    require_registry_tools!();
    let tls = crate::registry::Tls::new();
    let reg = Registry::start_tls(&tls);
    let tar = Tar::default()
        .add(tar::EntryType::Regular, "hello", "", b"tls\n")
        .bytes();
    reg.push_layer_image("tls", &tar);
    let image = reg.image("tls:latest");
    let certs = tempfile::tempdir().unwrap();
    let d = daemon_with_hosts(certs.path()).await;
    let mut c = d.images().await;

    // Untrusted: no hosts.toml, so the default HTTPS then HTTP attempts.
    let err = pull(&mut c, &image).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::Unavailable | Code::Unknown),
        "{err:?}"
    );
    assert!(err.message().contains(&reg.addr), "{err:?}");
    assert!(
        err.message().to_lowercase().contains("certificate")
            && err.message().contains("UnknownIssuer"),
        "{err:?}"
    );
    assert!(list(&mut c).await.is_empty());

    // Through `ca`, given relative to the hosts.toml directory.
    write_hosts(certs.path(), &reg.addr, "  ca = \"ca.pem\"\n");
    std::fs::copy(
        tls.path("ca.pem"),
        certs.path().join(&reg.addr).join("ca.pem"),
    )
    .unwrap();
    let id = pull(&mut c, &image).await.unwrap();
    assert_eq!(status(&mut c, &image).await.image.unwrap().id, id);
    remove(&mut c, &id).await;

    // A `ca` that is not the one that signed the certificate.
    let other = crate::registry::Tls::new();
    write_hosts(
        certs.path(),
        &reg.addr,
        &format!("  ca = \"{}\"\n", other.path("ca.pem").display()),
    );
    let err = pull(&mut c, &image).await.unwrap_err();
    assert!(
        err.message().contains(&format!("https://{}: ", reg.addr))
            && err.message().contains("invalid peer certificate"),
        "{err:?}"
    );

    // Through `skip_verify`.
    write_hosts(certs.path(), &reg.addr, "  skip_verify = true\n");
    assert_eq!(pull(&mut c, &image).await.unwrap(), id);

    // Self-signed certificates named in `ca`: without CA:TRUE pulled from;
    // with it (`openssl req -x509`'s default) refused by rustls, and the
    // error says what to do.
    for (cert, ok) in [("self", true), ("selfca", false)] {
        let own = Registry::start_tls_with(&tls, cert);
        own.push_layer_image("tls", &tar);
        let ca = format!(
            "  ca = \"{}\"\n",
            tls.path(&format!("{cert}.pem")).display()
        );
        write_hosts(certs.path(), &own.addr, &ca);
        let result = pull(&mut c, &own.image("tls:latest")).await;
        if ok {
            assert_eq!(result.unwrap(), id, "{cert}");
            continue;
        }
        let err = result.unwrap_err();
        assert!(
            err.message().contains("CaUsedAsEndEntity")
                && err.message().contains("or set skip_verify"),
            "{err:?}"
        );
        write_hosts(certs.path(), &own.addr, "  skip_verify = true\n");
        assert_eq!(pull(&mut c, &own.image("tls:latest")).await.unwrap(), id);
    }
}

/// A loopback port that accepts connections and never answers a TLS
/// handshake (here: a front that keeps TLS connections open and silent,
/// and passes plain HTTP on to a registry): the pull falls back to plain
/// HTTP after a short bound, not after the progress timeout.
#[tokio::test(flavor = "multi_thread")]
async fn silent_tls_handshake_on_loopback_falls_back_to_http_quickly() {
    require_registry_tools!();
    let reg = Registry::start(None);
    let tar = Tar::default()
        .add(tar::EntryType::Regular, "hello", "", b"silent\n")
        .bytes();
    reg.push_layer_image("silent", &tar);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = listener.local_addr().unwrap().to_string();
    let upstream = reg.addr.clone();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let held2 = held.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let mut first = [0u8; 1];
            if conn.peek(&mut first).await.is_err() {
                continue;
            }
            if first[0] == 0x16 {
                // A TLS ClientHello: keep the connection, say nothing.
                held2.lock().unwrap().push(conn);
                continue;
            }
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
                }
            });
        }
    });
    let d = daemon("").await;
    let mut c = d.images().await;
    let started = std::time::Instant::now();
    let result = pull(&mut c, &format!("{front}/silent:latest")).await;
    let took = started.elapsed();
    task.abort();
    result.unwrap();
    assert!(
        !held.lock().unwrap().is_empty(),
        "the TLS attempt reached the front"
    );
    eprintln!("pull through a silent TLS port took {took:?}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
}
