#![allow(dead_code)] // helpers used by some test files only
//! A local registry for the image tests: Debian's docker-registry on a free
//! loopback port (hack/registry.sh), the test images from
//! hack/build-test-images.sh pushed into it, and images built by the tests
//! themselves (hostile layers). Dropping a `Registry` stops it by PID.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The tools the image tests drive; `None` (and a message) when one is
/// missing, so the test can skip.
pub fn tools_missing() -> Option<String> {
    for tool in ["docker-registry", "skopeo", "umoci", "htpasswd", "openssl"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Some(format!(
                "SKIPPED: {tool} is not installed (run hack/install-deps.sh)"
            ));
        }
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("SKIPPED: busybox-static is not installed (run hack/install-deps.sh)".into());
    }
    None
}

/// Skips the calling test (returns) when a tool is missing.
#[macro_export]
macro_rules! require_registry_tools {
    () => {
        if let Some(why) = $crate::registry::tools_missing() {
            eprintln!("{why}");
            return;
        }
    };
}

/// The OCI layout of the test images, built once per test run.
pub fn test_images() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("crius-test-images");
        let out = Command::new(format!("{REPO}/hack/build-test-images.sh"))
            .arg("build")
            .arg(&dir)
            .output()
            .expect("run hack/build-test-images.sh");
        assert!(
            out.status.success(),
            "build-test-images failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

pub struct Registry {
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`
    pub addr: String,
    creds: Option<String>,
}

impl Registry {
    /// Starts an empty registry; with `creds` ("user:pass") it requires
    /// them (htpasswd, bcrypt).
    pub fn start(creds: Option<&str>) -> Registry {
        Registry::start_with(creds, None)
    }

    /// Starts an empty registry serving HTTPS with `tls`'s server
    /// certificate (signed by its CA).
    pub fn start_tls(tls: &Tls) -> Registry {
        Registry::start_tls_with(tls, "server")
    }

    /// Starts an empty registry serving HTTPS with `tls`'s certificate
    /// `name` (`server`, `self` or `selfca`).
    pub fn start_tls_with(tls: &Tls, name: &str) -> Registry {
        Registry::start_with(None, Some((tls, name)))
    }

    fn start_with(creds: Option<&str>, tls: Option<(&Tls, &str)>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("crius-registry-")
            .tempdir()
            .unwrap();
        let mut cmd = Command::new(format!("{REPO}/hack/registry.sh"));
        cmd.arg("start").arg(dir.path());
        if let Some((tls, name)) = tls {
            cmd.env("REGISTRY_TLS_CERT", tls.path(&format!("{name}.pem")))
                .env("REGISTRY_TLS_KEY", tls.path(&format!("{name}.key")));
        }
        if let Some(creds) = creds {
            let (user, pass) = creds.split_once(':').unwrap();
            let htpasswd = dir.path().join("htpasswd");
            let out = Command::new("htpasswd")
                .args(["-Bbc"])
                .arg(&htpasswd)
                .args([user, pass])
                .output()
                .unwrap();
            assert!(out.status.success());
            cmd.arg(&htpasswd);
        }
        let out = cmd.output().expect("run hack/registry.sh");
        assert!(
            out.status.success(),
            "registry did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let addr = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Registry {
            dir,
            addr,
            creds: creds.map(str::to_string),
        }
    }

    /// Starts a registry holding the test images.
    pub fn with_test_images(creds: Option<&str>) -> Registry {
        let images = test_images();
        let r = Registry::start(creds);
        let mut cmd = Command::new(format!("{REPO}/hack/build-test-images.sh"));
        cmd.arg("push").arg(images).arg(&r.addr);
        if let Some(c) = creds {
            cmd.env("REGISTRY_CREDS", c);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "push failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        r
    }

    /// `ADDR/name`
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.addr)
    }

    /// Pushes a one-layer image whose layer is the tar `layer` (gzipped
    /// here) as `name:latest`; returns the manifest digest.
    pub fn push_layer_image(&self, name: &str, layer: &[u8]) -> String {
        self.push_image(name, layer, serde_json::json!({"Cmd": ["sh"]}))
    }

    /// Like [`Registry::push_layer_image`], with `run_config` as the
    /// image config's `config` (Cmd, User, ...).
    pub fn push_image(&self, name: &str, layer: &[u8], run_config: serde_json::Value) -> String {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let put = |bytes: &[u8]| -> String {
            let hex = crius::ids::hex(&Sha256::digest(bytes));
            std::fs::write(blobs.join(&hex), bytes).unwrap();
            format!("sha256:{hex}")
        };
        let diff_id = format!("sha256:{}", crius::ids::hex(&Sha256::digest(layer)));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(layer).unwrap();
        let gz = gz.finish().unwrap();
        let layer_digest = put(&gz);
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": run_config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        })
        .to_string();
        let config_digest = put(config.as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layer_digest, "size": gz.len()}],
        })
        .to_string();
        let manifest_digest = put(manifest.as_bytes());
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": manifest_digest, "size": manifest.len(),
                           "annotations": {"org.opencontainers.image.ref.name": "img"}}],
        });
        std::fs::write(dir.path().join("index.json"), index.to_string()).unwrap();
        std::fs::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--preserve-digests",
        ]);
        if let Some(c) = &self.creds {
            cmd.args(["--dest-creds", c]);
        }
        let out = cmd
            .arg(format!("oci:{}:img", dir.path().display()))
            .arg(format!("docker://{}/{name}:latest", self.addr))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        manifest_digest
    }

    /// The registry's stored copy of a blob (to corrupt it).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir.path().join(format!(
            "data/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = Command::new(format!("{REPO}/hack/registry.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// A throw-away CA and a server certificate it signed for IP 127.0.0.1
/// (ECDSA P-256, valid two days), made with the openssl CLI in a temporary
/// directory: `ca.pem`, `server.pem`, `server.key`; and two self-signed
/// certificates for 127.0.0.1: `self.pem`/`.key` (CA:FALSE) and
/// `selfca.pem`/`.key` (CA:TRUE).
pub struct Tls {
    pub dir: tempfile::TempDir,
}

impl Tls {
    pub fn new() -> Tls {
        let dir = tempfile::Builder::new()
            .prefix("crius-tls-")
            .tempdir()
            .unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca = [
            &["req", "-x509", "-days", "2", "-subj", "/CN=crius-test-ca"][..],
            &key,
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat();
        openssl(&ca);
        let csr = [
            &["req", "-subj", "/CN=127.0.0.1"][..],
            &key,
            &["-keyout", "server.key", "-out", "server.csr"],
        ]
        .concat();
        openssl(&csr);
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
        // Self-signed: `self` without CA:TRUE, `selfca` with it (as
        // `openssl req -x509` makes one by default).
        for (name, ext) in [
            (
                "self",
                &["-addext", "basicConstraints=critical,CA:FALSE"][..],
            ),
            ("selfca", &[]),
        ] {
            let (keyout, out) = (format!("{name}.key"), format!("{name}.pem"));
            let own = [
                &[
                    "req",
                    "-x509",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                ][..],
                ext,
                &key,
                &["-keyout", &keyout, "-out", &out],
            ]
            .concat();
            openssl(&own);
        }
        Tls { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A tar built entry by entry, names written raw (so `..` stays).
pub struct Tar(tar::Builder<Vec<u8>>);

impl Default for Tar {
    fn default() -> Self {
        Tar(tar::Builder::new(Vec::new()))
    }
}

impl Tar {
    pub fn add(mut self, kind: tar::EntryType, path: &str, link: &str, data: &[u8]) -> Tar {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o755);
        h.set_mtime(1);
        h.set_size(data.len() as u64);
        let old = h.as_old_mut();
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    pub fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// The head (request line and headers) of one HTTP request on `conn`;
/// `None` at EOF or for anything but plain HTTP (a TLS hello: the caller
/// hangs up, as a plain HTTP server does).
pub async fn read_head(conn: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if !buf[0].is_ascii_uppercase() {
            return None;
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(String::from_utf8_lossy(&buf[..end]).into_owned());
        }
    }
}

/// A registry front that demands a bearer token, as Docker Hub does: `/v2/`
/// without one answers 401 with a `Bearer realm=".../token"` challenge, the
/// token endpoint hands out `token` for the Basic credentials `creds`, and
/// requests carrying the token are passed to `upstream` (one request per
/// connection, so every request is checked). Returns its address and the
/// number of requests refused and tokens issued.
pub async fn bearer_front(
    upstream: String,
    creds: &'static str,
    token: &'static str,
) -> (String, tokio::task::JoinHandle<()>) {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let realm = format!("http://{addr}/token");
    let basic = base64::engine::general_purpose::STANDARD.encode(creds);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let (upstream, realm, basic) = (upstream.clone(), realm.clone(), basic.clone());
            tokio::spawn(async move {
                let Some(head) = read_head(&mut conn).await else {
                    return;
                };
                let mut lines = head.split("\r\n");
                let request_line = lines.next().unwrap_or_default().to_string();
                let auth = lines
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                    .map(|(_, v)| v.trim().to_string())
                    .unwrap_or_default();
                let path = request_line.split(' ').nth(1).unwrap_or_default();
                let reply = |status: &str, extra: &str, body: &str| {
                    format!(
                        "HTTP/1.1 {status}\r\n{extra}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let answer = if path.starts_with("/token") {
                    let given = auth.split_once(' ');
                    if given.is_some_and(|(scheme, value)| {
                        scheme.eq_ignore_ascii_case("basic") && value == basic
                    }) {
                        reply(
                            "200 OK",
                            "",
                            &format!("{{\"token\":\"{token}\",\"expires_in\":300}}"),
                        )
                    } else {
                        reply("401 Unauthorized", "", "{}")
                    }
                } else if auth != format!("Bearer {token}") {
                    let challenge = format!(
                        "www-authenticate: Bearer realm=\"{realm}\",service=\"crius-test\"\r\n"
                    );
                    reply(
                        "401 Unauthorized",
                        &challenge,
                        "{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"token required\"}]}",
                    )
                } else {
                    // Authorized: pass this one request on, unchanged but
                    // for "connection: close".
                    let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let mut head = head
                        .split("\r\n")
                        .filter(|l| !l.to_lowercase().starts_with("connection:"))
                        .collect::<Vec<_>>()
                        .join("\r\n");
                    head.push_str("\r\nconnection: close\r\n\r\n");
                    if up.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut response = Vec::new();
                    let _ = up.read_to_end(&mut response).await;
                    let _ = conn.write_all(&response).await;
                    return;
                };
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    (addr, task)
}
