//! A hostile registry against the pull's size limits: a 10 MB manifest
//! (with and without Content-Length), an index entry and an image config
//! larger than `registry.max_manifest_bytes`, and a layer blob longer than
//! its descriptor. Each is a clear gRPC error, and nothing is left behind:
//! no blob, no layer directory, no temporary file, no image or layer
//! record in the database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crius::cri::proto::*;
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::harness::TestDaemon;

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", crius::ids::hex(&Sha256::digest(bytes)))
}

/// What the canned registry answers for one path.
struct Route {
    body: Vec<u8>,
    /// Send a Content-Length header (else the body ends at close).
    length: bool,
    content_type: &'static str,
}

/// A registry over plain HTTP that answers `/v2/` and the given paths,
/// one request per connection, and records every path asked for.
async fn canned_registry(
    routes: HashMap<String, Route>,
) -> (String, Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let routes = Arc::new(routes);
    let asked = Arc::new(Mutex::new(Vec::new()));
    let asked2 = asked.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let (routes, asked) = (routes.clone(), asked2.clone());
            tokio::spawn(async move {
                let Some(head) = crate::registry::read_head(&mut conn).await else {
                    return;
                };
                let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                asked.lock().unwrap().push(path.clone());
                let (status, route) = match routes.get(&path) {
                    _ if path == "/v2/" => ("200 OK", None),
                    Some(r) => ("200 OK", Some(r)),
                    None => ("404 Not Found", None),
                };
                let (body, length, ctype): (&[u8], bool, &str) = match route {
                    Some(r) => (&r.body, r.length, r.content_type),
                    None => (b"{}", true, "application/json"),
                };
                let mut head =
                    format!("HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\nconnection: close\r\n");
                if length {
                    head.push_str(&format!("content-length: {}\r\n", body.len()));
                }
                head.push_str("\r\n");
                if conn.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let _ = conn.write_all(body).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (addr, asked, task)
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn route(body: Vec<u8>, content_type: &'static str) -> Route {
    Route {
        body,
        length: true,
        content_type,
    }
}

/// A manifest whose config and layer descriptors say `config_size` and
/// `layer_size`.
fn manifest(config: &str, config_size: usize, layer: &str, layer_size: usize) -> Vec<u8> {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer, "size": layer_size}],
    })
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_manifests_configs_and_blobs_are_refused_and_leave_nothing() {
    let mut routes = HashMap::new();
    // 1. A 10 MB manifest, with and without Content-Length.
    let padding = "x".repeat(10 << 20);
    let big = serde_json::json!({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "annotations": {"pad": padding},
    })
    .to_string()
    .into_bytes();
    routes.insert(
        "/v2/big/manifests/latest".into(),
        route(big.clone(), MANIFEST),
    );
    routes.insert(
        "/v2/bigstream/manifests/latest".into(),
        Route {
            body: big.clone(),
            length: false,
            content_type: MANIFEST,
        },
    );
    // 2. An index whose linux/amd64 entry declares 5 MiB.
    let huge_child = digest(b"never served");
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": INDEX,
        "manifests": [{"mediaType": MANIFEST, "digest": huge_child, "size": 5 << 20,
                       "platform": {"architecture": "amd64", "os": "linux"}},
                      {"mediaType": MANIFEST, "digest": huge_child, "size": 5 << 20,
                       "platform": {"architecture": "arm64", "os": "linux"}}],
    })
    .to_string()
    .into_bytes();
    routes.insert("/v2/bigindex/manifests/latest".into(), route(index, INDEX));
    // 3. A config descriptor of 5 MiB.
    let big_config = digest(b"config never served");
    let layer = digest(b"layer never served");
    routes.insert(
        "/v2/bigconfig/manifests/latest".into(),
        route(manifest(&big_config, 5 << 20, &layer, 10), MANIFEST),
    );
    // 4. A layer blob longer than its descriptor (100 bytes declared,
    //    1 MiB sent; the digest is the real one of what is sent).
    let tar_bytes = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1 << 20);
        h.set_mode(0o644);
        b.append_data(&mut h, "filler", &vec![0u8; 1 << 20][..])
            .unwrap();
        b.into_inner().unwrap()
    };
    let layer = digest(&tar_bytes);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer]},
    })
    .to_string()
    .into_bytes();
    let config_digest = digest(&config);
    routes.insert(
        "/v2/longblob/manifests/latest".into(),
        route(
            manifest(&config_digest, config.len(), &layer, 100),
            MANIFEST,
        ),
    );
    routes.insert(
        format!("/v2/longblob/blobs/{config_digest}"),
        route(config, "application/octet-stream"),
    );
    routes.insert(
        format!("/v2/longblob/blobs/{layer}"),
        route(tar_bytes, "application/octet-stream"),
    );

    let (addr, asked, server) = canned_registry(routes).await;
    let mut d =
        TestDaemon::start("[registry]\nconfig_path = \"/nonexistent/crius-e2e-certs.d\"\n").await;
    let mut c = d.images().await;
    let cases = [
        ("big", "manifest of"),
        ("bigstream", "manifest of"),
        ("bigindex", "platform manifest"),
        ("bigconfig", "image config"),
        (
            "longblob",
            "more than the 100 bytes its descriptor declares",
        ),
    ];
    for (name, says) in cases {
        let err = c
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: format!("{addr}/{name}:latest"),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{name}: {err:?}");
        assert!(err.message().contains(says), "{name}: {err:?}");
        if name != "longblob" {
            assert!(
                err.message()
                    .contains("4194304-byte limit (registry.max_manifest_bytes)"),
                "{name}: {err:?}"
            );
        }
    }
    server.abort();
    let asked = asked.lock().unwrap().clone();
    assert!(
        !asked
            .iter()
            .any(|p| p.contains(&huge_child) || p.contains(&big_config)),
        "oversized descriptors are refused before any request: {asked:?}"
    );
    let images = c
        .list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(images.is_empty(), "{images:?}");
    let store = d.root.join("image");
    for sub in ["blobs/sha256", "layers", "tmp"] {
        let left: Vec<_> = std::fs::read_dir(store.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "{sub}: {left:?}");
    }
    // The database, read once the daemon has stopped.
    drop(c);
    d.signal_and_wait(15, std::time::Duration::from_secs(20))
        .expect("crius stops on SIGTERM");
    let db = crius::store::Store::open(&d.root.join("crius.redb")).unwrap();
    for table in ["images", "layers"] {
        let rows = db
            .list(crius::store::Table::<serde_json::Value>::new(table))
            .unwrap();
        assert!(rows.is_empty(), "{table}: {rows:?}");
    }
}
