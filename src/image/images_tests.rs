//! The image store without a registry: records written directly, then
//! looked up, pinned, refused while in use, removed with their content, and
//! crash leftovers collected at open.

use super::*;
use crate::error::Classify;

const CFG: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const MAN: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const LAYER: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
const DIFF: &str = "sha256:4444444444444444444444444444444444444444444444444444444444444444";

fn setup(sandbox: &str) -> (tempfile::TempDir, Config, Arc<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        root: dir.path().to_path_buf(),
        registry: crate::config::RegistryConfig {
            sandbox_image: sandbox.into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
    (dir, config, store)
}

fn record() -> ImageRecord {
    ImageRecord {
        id: CFG.into(),
        repo_tags: vec!["docker.io/library/busybox:latest".into()],
        repo_digests: vec![format!("docker.io/library/busybox@{MAN}")],
        size: 10,
        manifests: vec![MAN.into()],
        layers: vec![LayerRef {
            digest: LAYER.into(),
            diff_id: DIFF.into(),
            chain_id: DIFF.into(),
        }],
        config: ImageConfig {
            user: "nobody:nogroup".into(),
            ..ImageConfig::default()
        },
        annotations: BTreeMap::new(),
    }
}

/// Stores `record()` with its blobs (the layer blob too, as crius did
/// before it unpacked layers as they download) and layer dir 7.
fn store_image(images: &Images) {
    let dirs = images.dirs();
    for d in [CFG, MAN, LAYER] {
        std::fs::write(dirs.blob(d), d).unwrap();
    }
    std::fs::create_dir_all(dirs.layer(7).join("bin")).unwrap();
    let layer = LayerRecord {
        dir: 7,
        diff_id: DIFF.into(),
        parent: None,
    };
    images.inner.store.put(LAYERS, DIFF, &layer).unwrap();
    images.inner.store.put(IMAGES, CFG, &record()).unwrap();
}

#[test]
fn lookup_by_id_prefix_tag_and_digest() {
    let (_dir, config, store) = setup("busybox");
    let images = Images::open(&config, store).unwrap();
    store_image(&images);
    for name in [
        CFG,
        "1111111",
        "sha256:11111",
        "busybox",
        "docker.io/library/busybox:latest",
        &format!("busybox@{MAN}"),
    ] {
        assert_eq!(images.lookup(name).unwrap(), Some(record()), "{name}");
    }
    for name in ["busybox:2", "2222", "other"] {
        assert_eq!(images.lookup(name).unwrap(), None, "{name}");
    }
    assert_eq!(images.list(Some("busybox")).unwrap().len(), 1);
    assert_eq!(images.list(None).unwrap().len(), 1);
    assert!(images.is_pinned(&record()), "the sandbox image is pinned");
    assert_eq!(record().user(), (None, "nobody".to_string()));
    let with_user = |user: &str| {
        let mut r = record();
        r.config.user = user.into();
        r.user()
    };
    assert_eq!(with_user(""), (None, String::new()));
    assert_eq!(with_user("1000:1000"), (Some(1000), String::new()));
    assert_eq!(with_user("www:staff"), (None, "www".to_string()));
    // Not valid uids: reported as names, so kubelet never takes them for
    // non-root (4294967296 would run as uid 0 once truncated).
    assert_eq!(with_user("4294967296"), (None, "4294967296".to_string()));
    assert_eq!(with_user("-1:0"), (None, "-1".to_string()));
    let dirs = images.layer_dirs(&record()).unwrap();
    assert_eq!(dirs, [images.dirs().layer(7)]);
}

#[tokio::test]
async fn remove_is_refused_while_in_use_then_deletes_content() {
    let (_dir, config, store) = setup("registry.k8s.io/pause:3.10");
    let images = Images::open(&config, store).unwrap();
    store_image(&images);
    assert!(!images.is_pinned(&record()));
    let used = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let u = used.clone();
    images.set_in_use(move |id| id == CFG && u.load(std::sync::atomic::Ordering::SeqCst));
    let err = images.remove("busybox").await.unwrap_err();
    assert_eq!(err.kind(), Kind::FailedPrecondition, "{err}");
    assert!(images.lookup(CFG).unwrap().is_some());
    let before = images.fs_usage().await.unwrap();
    assert!(before.inodes_used >= 5, "{before:?}");
    assert_eq!(images.fs_usage().await.unwrap(), before, "cached");
    used.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(images.remove("busybox").await.unwrap());
    let after = images.fs_usage().await.unwrap();
    assert!(
        after.inodes_used < before.inodes_used,
        "a removal refreshes the usage"
    );
    assert!(!images.remove("busybox").await.unwrap(), "idempotent");
    assert!(!images.dirs().layer(7).exists());
    assert_eq!(std::fs::read_dir(&images.dirs().blobs).unwrap().count(), 0);
    assert_eq!(images.inner.store.list(LAYERS).unwrap().len(), 0);
}

#[test]
fn open_collects_crash_leftovers() {
    let (_dir, config, store) = setup("busybox");
    let images = Images::open(&config, store.clone()).unwrap();
    store_image(&images);
    let dirs = images.dirs().clone();
    std::fs::write(dirs.tmp.join("blob-partial"), "x").unwrap();
    std::fs::create_dir_all(dirs.layer(99).join("etc")).unwrap();
    std::fs::write(dirs.blob(&format!("sha256:{}", "5".repeat(64))), "x").unwrap();
    drop(images);
    let images = Images::open(&config, store).unwrap();
    assert_eq!(std::fs::read_dir(&dirs.tmp).unwrap().count(), 0);
    assert!(!dirs.layer(99).exists(), "unrecorded layer dir removed");
    assert!(dirs.layer(7).exists(), "recorded layer kept");
    // Config and manifest kept; the layer blob an older crius stored is
    // dropped: the unpacked layer is the layer.
    assert!(dirs.blob(CFG).exists() && dirs.blob(MAN).exists());
    assert!(!dirs.blob(LAYER).exists());
    assert_eq!(std::fs::read_dir(&dirs.blobs).unwrap().count(), 2);
    assert!(images.lookup(CFG).unwrap().is_some());
}
