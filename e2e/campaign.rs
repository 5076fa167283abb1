//! The hostile campaign (issue 17): random CRI requests generated from the
//! CRI descriptor set (`$OUT_DIR/cri.fds`, written by build.rs) — every
//! unary RPC of RuntimeService and ImageService, random field values
//! (paths, `..`, NUL, huge strings, extreme numbers, unknown enum values),
//! random sizes and repeats, unknown fields nested several levels deep,
//! and plain junk bodies — sent in batches to one daemon. After each batch:
//! the daemon answers Version, its RSS stays under a bound, no request
//! broke the connection (a panic would), and once every pod the batch made
//! is stopped and removed the host shows no leftover: mounts under the
//! test's dirs, pinned namespaces, files under the daemon's root and state
//! dirs, cgroups and their processes under the test's parent in every
//! hierarchy, processes naming the test's dirs, veths on the test's bridge,
//! IP leases and cached CNI results. A batch opens with a mostly valid pod,
//! a busybox container in it (when the registry tools are installed) and
//! its start, random fields merged over each; the ids they got back are
//! used by its later requests.
//!
//! Bounded by `CRIUS_CAMPAIGN_SECS` (default 60); the seed is printed and
//! can be replayed with `CRIUS_CAMPAIGN_SEED`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crius::cri::proto::*;
use http_body_util::{BodyExt, Full};
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};

use crate::harness::TestDaemon;
use crate::pod::{self, assert_no_trace};

const FDS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cri.fds"));

/// Fields that name host paths or host cgroups: left empty, so the
/// campaign never writes outside the test's own directories.
const HOST_FIELDS: &[&str] = &[
    "host_path",
    "cgroup_parent",
    "log_directory",
    "log_path",
    "localhost_ref",
    "seccomp_profile_path",
    "location",
    "output_path",
    "checkpoint_path",
    "image_sub_path",
];

/// RPCs left out: PullImage would reach for random registries.
const SKIPPED: &[&str] = &["PullImage"];

/// The most the daemon's RSS may reach during the campaign: three 60 s
/// runs of a debug build peaked at 41-43 MiB (requests are bounded at
/// 1 MiB per object, and memory is trimmed back), so 160 MiB leaves room
/// for the random mix and still catches memory kept per request.
const RSS_LIMIT_KIB: u64 = 160 << 10;

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: u64, wire: u64) {
    varint(out, (field << 3) | wire);
}

fn delimited(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    tag(out, field, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

struct Generator {
    rng: Rng,
    messages: HashMap<String, DescriptorProto>,
    /// Ids the daemon has handed out, for fields that take one.
    ids: Vec<String>,
    /// Pods and containers the current batch made.
    pods: Vec<String>,
    containers: Vec<String>,
    /// Bytes of strings the current request may still get.
    budget: usize,
    /// Percent of fields left out.
    absent: u64,
}

impl Generator {
    fn new(seed: u64, fds: &FileDescriptorSet) -> Generator {
        let mut messages = HashMap::new();
        fn walk(prefix: &str, m: &DescriptorProto, out: &mut HashMap<String, DescriptorProto>) {
            let name = format!("{prefix}.{}", m.name());
            for nested in &m.nested_type {
                walk(&name, nested, out);
            }
            out.insert(name, m.clone());
        }
        for file in &fds.file {
            for m in &file.message_type {
                walk(&format!(".{}", file.package()), m, &mut messages);
            }
        }
        Generator {
            rng: Rng(seed | 1),
            messages,
            ids: Vec::new(),
            pods: Vec::new(),
            containers: Vec::new(),
            budget: 0,
            absent: 45,
        }
    }

    /// A whole request (message `name`), at most about 12 MiB.
    fn request(&mut self, name: &str) -> Vec<u8> {
        self.budget = 12 << 20;
        self.absent = 45;
        self.message(name, 0)
    }

    /// A valid RunPodSandboxRequest with a few random fields merged over
    /// it (protobuf concatenation merges), so some pods get created.
    fn mutated_pod(&mut self) -> Vec<u8> {
        let name = format!("campaign-{}", self.rng.below(1 << 20));
        let mut body = RunPodSandboxRequest {
            config: Some(pod::config(&name)),
            runtime_handler: String::new(),
        }
        .encode_to_vec();
        self.budget = 1 << 20;
        self.absent = 95;
        let mut config = self.message(".runtime.v1.PodSandboxConfig", 1);
        // Mostly keep the identity valid: drop the random metadata.
        if self.rng.chance(70) {
            config = strip_field(&config, 1);
        }
        delimited(&mut body, 1, &config);
        body
    }

    /// A valid CreateContainerRequest (`image`, `sleep`) in the batch's
    /// last pod with a few random fields merged over its config.
    fn mutated_container(&mut self, image: &str) -> Vec<u8> {
        let name = format!("c-{}", self.rng.below(1 << 20));
        let pod = self.pods.last().cloned().unwrap_or_default();
        let valid = crate::container::container(&name, image, &["sleep", "60"], NamespaceMode::Pod);
        let mut body = CreateContainerRequest {
            pod_sandbox_id: pod,
            config: Some(valid),
            sandbox_config: None,
        }
        .encode_to_vec();
        self.budget = 1 << 20;
        self.absent = 95;
        let mut config = self.message(".runtime.v1.ContainerConfig", 1);
        if self.rng.chance(70) {
            config = strip_field(&config, 1);
        }
        // Field 2: config.
        delimited(&mut body, 2, &config);
        body
    }

    fn string(&mut self, field: &str) -> Vec<u8> {
        let s = self.pick_string(field);
        if s.len() > self.budget {
            return Vec::new();
        }
        self.budget -= s.len();
        s
    }

    fn pick_string(&mut self, field: &str) -> Vec<u8> {
        if field.ends_with("id") && !self.ids.is_empty() && self.rng.chance(60) {
            let id = &self.ids[self.rng.below(self.ids.len() as u64) as usize];
            return id.as_bytes().to_vec();
        }
        let pick = self.rng.below(14);
        match pick {
            0 => Vec::new(),
            1 => b"a".to_vec(),
            2 => b"../../../etc/passwd".to_vec(),
            3 => b"/".to_vec(),
            4 => b"a\0b".to_vec(),
            5 => "é\u{202e}\u{feff}名".as_bytes().to_vec(),
            6 => b"run%2Fcrius%2Fcrius.sock".to_vec(),
            7 => vec![b'x'; 254],
            8 => vec![b'y'; 1 + self.rng.below(70_000) as usize],
            9 if self.rng.chance(10) => vec![b'z'; 1 + self.rng.below(3 << 20) as usize],
            10 => b"kernel.shm_rmid_forced".to_vec(),
            11 => b"0.0.0.0".to_vec(),
            12 => format!("{}", self.rng.next()).into_bytes(),
            _ => {
                let len = self.rng.below(40) as usize;
                (0..len)
                    .map(|_| {
                        b"abcdefghijklmnopqrstuvwxyz0123456789-._"[self.rng.below(39) as usize]
                    })
                    .collect()
            }
        }
    }

    fn number(&mut self) -> u64 {
        match self.rng.below(8) {
            0 => 0,
            1 => 1,
            2 => u64::MAX, // -1 as int64
            3 => i64::MAX as u64,
            4 => i64::MIN as u64,
            5 => u32::MAX as u64,
            6 => self.rng.below(100),
            _ => self.rng.next(),
        }
    }

    /// Unknown fields, nested `depth` levels deep.
    fn unknown(&mut self, out: &mut Vec<u8>, depth: u32) {
        let field = 1000 + self.rng.below(1000);
        if depth == 0 || self.rng.chance(50) {
            tag(out, field, 0);
            let n = self.rng.next();
            varint(out, n);
            return;
        }
        let mut inner = Vec::new();
        self.unknown(&mut inner, depth - 1);
        delimited(out, field, &inner);
    }

    /// A random encoding of message `name`.
    fn message(&mut self, name: &str, depth: u32) -> Vec<u8> {
        let Some(desc) = self.messages.get(name).cloned() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for f in &desc.field {
            if HOST_FIELDS.contains(&f.name()) || self.rng.chance(self.absent) {
                continue;
            }
            let repeats = if f.label() == Label::Repeated {
                match self.rng.below(10) {
                    0 => 200 + self.rng.below(3000),
                    1..=5 => 1,
                    _ => self.rng.below(4),
                }
            } else {
                1
            };
            let number = f.number() as u64;
            for _ in 0..repeats {
                // Every field costs: nested repeats cannot multiply.
                if self.budget < 16 {
                    return out;
                }
                self.budget -= 16;
                match f.r#type() {
                    Type::String | Type::Bytes => {
                        let s = self.string(f.name());
                        delimited(&mut out, number, &s);
                    }
                    Type::Message if depth < 8 => {
                        let inner = self.message(f.type_name(), depth + 1);
                        delimited(&mut out, number, &inner);
                    }
                    Type::Message | Type::Group => {}
                    Type::Double | Type::Fixed64 | Type::Sfixed64 => {
                        tag(&mut out, number, 1);
                        out.extend(self.rng.next().to_le_bytes());
                    }
                    Type::Float | Type::Fixed32 | Type::Sfixed32 => {
                        tag(&mut out, number, 5);
                        out.extend((self.rng.next() as u32).to_le_bytes());
                    }
                    Type::Bool => {
                        tag(&mut out, number, 0);
                        varint(&mut out, self.rng.below(2));
                    }
                    Type::Enum if self.rng.chance(80) => {
                        tag(&mut out, number, 0);
                        varint(&mut out, self.rng.below(6));
                    }
                    _ => {
                        tag(&mut out, number, 0);
                        let n = self.number();
                        varint(&mut out, n);
                    }
                }
            }
        }
        if self.rng.chance(20) {
            let depth = self.rng.below(40) as u32;
            self.unknown(&mut out, depth);
        }
        out
    }
}

/// `message` without its top-level field `number` (re-parses the wire
/// format the generator wrote).
fn strip_field(message: &[u8], number: u64) -> Vec<u8> {
    fn varint_at(b: &[u8], pos: &mut usize) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = b[*pos];
            *pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        v
    }
    let (mut out, mut pos) = (Vec::new(), 0);
    while pos < message.len() {
        let start = pos;
        let key = varint_at(message, &mut pos);
        match key & 7 {
            0 => {
                varint_at(message, &mut pos);
            }
            1 => pos += 8,
            2 => {
                let len = varint_at(message, &mut pos) as usize;
                pos += len;
            }
            _ => pos += 4,
        }
        if key >> 3 != number {
            out.extend_from_slice(&message[start..pos]);
        }
    }
    out
}

/// What one unary call got: its grpc-status (with the message for an
/// INTERNAL that is a crius bug) and the response message, if any.
struct Answer {
    status: Option<String>,
    message: Bytes,
}

/// One unary call over raw HTTP/2; `Err` when the connection failed.
async fn call(
    send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    path: &str,
    body: &[u8],
) -> Result<Answer, String> {
    let mut framed = vec![0u8];
    framed.extend((body.len() as u32).to_be_bytes());
    framed.extend_from_slice(body);
    let req = http::Request::post(format!("http://crius{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "10S")
        .body(Full::new(Bytes::from(framed)))
        .unwrap();
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("{e:?} ({} bytes sent)", body.len()))?;
    let status = |h: &http::HeaderMap| {
        let code = h.get("grpc-status")?.to_str().unwrap_or("?");
        let msg = h.get("grpc-message").map(|m| m.to_str().unwrap_or("?"));
        // INTERNAL only for bodies that are no protobuf of the request
        // type (tonic's answer); anything else is a crius bug.
        if code == "13" && !msg.is_some_and(|m| m.starts_with("failed%20to%20decode")) {
            return Some(format!("13 {path}: {}", msg.unwrap_or_default()));
        }
        Some(code.to_string())
    };
    if let Some(s) = status(resp.headers()) {
        return Ok(Answer {
            status: Some(s),
            message: Bytes::new(),
        });
    }
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let status = collected.trailers().and_then(status);
    let data = collected.to_bytes();
    Ok(Answer {
        status,
        // One length-prefixed message (5-byte header).
        message: data.slice(data.len().min(5)..),
    })
}

/// The id a successful RunPodSandbox or CreateContainer answered with
/// (field 1 of both responses), for the next requests of the batch.
fn new_id(path: &str, answer: &Answer) -> Option<String> {
    if answer.status.as_deref() != Some("0") {
        return None;
    }
    if path.ends_with("/RunPodSandbox") {
        let r = RunPodSandboxResponse::decode(answer.message.clone()).ok()?;
        return Some(r.pod_sandbox_id);
    }
    if path.ends_with("/CreateContainer") {
        let r = CreateContainerResponse::decode(answer.message.clone()).ok()?;
        return Some(r.container_id);
    }
    None
}

async fn connect(d: &TestDaemon) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    send
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn random_requests_from_the_proto_leave_the_daemon_and_host_sound() {
    let fds = FileDescriptorSet::decode(FDS).unwrap();
    let seed = std::env::var("CRIUS_CAMPAIGN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let budget = Duration::from_secs(
        std::env::var("CRIUS_CAMPAIGN_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    eprintln!("campaign seed {seed} (CRIUS_CAMPAIGN_SEED), {budget:?}");
    let mut methods = Vec::new();
    for file in &fds.file {
        for service in &file.service {
            for m in &service.method {
                if m.server_streaming() || m.client_streaming() || SKIPPED.contains(&m.name()) {
                    continue;
                }
                let path = format!("/{}.{}/{}", file.package(), service.name(), m.name());
                methods.push((path, m.input_type().to_string()));
            }
        }
    }
    assert!(methods.len() > 30, "{methods:?}");
    let mut g = Generator::new(seed, &fds);

    // busybox from a local registry when its tools are there, so batches
    // create and start containers too; pods only without.
    let (d, _registry, image) = match crate::registry::tools_missing() {
        None => {
            let s = crate::container::setup_with("", &[]).await;
            (s.d, Some(s.reg), Some(s.busybox))
        }
        Some(why) => {
            eprintln!("{why}: the campaign makes no containers");
            (TestDaemon::start("").await, None, None)
        }
    };
    let pid = d.pid();
    let mut rt = d.runtime().await;
    let mut send = connect(&d).await;
    // What the daemon's dirs hold before any request: whatever a batch
    // adds must be gone once its pods are removed.
    let files_at_start = files_under(&d);
    let mut codes: HashMap<String, u64> = HashMap::new();
    let (mut sent, mut batches, mut peak) = (0u64, 0u32, 0u64);
    let (mut pods_made, mut containers_made, mut started) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < budget {
        for i in 0..BATCH {
            if start.elapsed() > budget {
                break;
            }
            // A batch opens with a mostly valid pod, a container in it and
            // its start (each sometimes), then random requests.
            let (path, input) = &methods[g.rng.below(methods.len() as u64) as usize];
            let (path, body) = match (i, &image) {
                (0, _) if g.rng.chance(70) => (RUN_POD, g.mutated_pod()),
                (1, Some(image)) if !g.pods.is_empty() && g.rng.chance(80) => {
                    (CREATE_CONTAINER, g.mutated_container(image))
                }
                (2, _) if !g.containers.is_empty() && g.rng.chance(80) => {
                    let container_id = g.containers[0].clone();
                    (
                        START_CONTAINER,
                        StartContainerRequest { container_id }.encode_to_vec(),
                    )
                }
                _ if path.ends_with("/RunPodSandbox") && g.rng.chance(50) => {
                    (path.as_str(), g.mutated_pod())
                }
                _ if g.rng.chance(5) => {
                    let len = g.rng.below(200) as usize;
                    (
                        path.as_str(),
                        (0..len).map(|_| g.rng.next() as u8).collect(),
                    )
                }
                _ => (path.as_str(), g.request(input)),
            };
            let answer =
                tokio::time::timeout(Duration::from_secs(20), call(&mut send, path, &body))
                    .await
                    .unwrap_or_else(|_| panic!("{path} not answered in 20 s (seed {seed})"));
            match answer {
                Ok(a) if a.status.as_deref().is_some_and(|c| c.starts_with("13 ")) => panic!(
                    "INTERNAL answer to a decodable request: {:?} (seed {seed})",
                    a.status
                ),
                Ok(a) => {
                    if path == START_CONTAINER && a.status.as_deref() == Some("0") {
                        started += 1;
                    }
                    if let Some(id) = new_id(path, &a) {
                        if path == CREATE_CONTAINER {
                            g.containers.push(id.clone());
                            containers_made += 1;
                        } else {
                            g.pods.push(id.clone());
                            pods_made += 1;
                        }
                        g.ids.push(id);
                    }
                    *codes.entry(a.status.unwrap_or_default()).or_default() += 1;
                }
                Err(e) => panic!("{path}: connection failed: {e} (seed {seed})"),
            }
            sent += 1;
            peak = peak.max(rss_kib(pid));
        }
        batches += 1;
        let sent_at = start.elapsed();
        // 1. The daemon answers and stays within its memory bound.
        rt.version(VersionRequest::default())
            .await
            .unwrap_or_else(|e| panic!("daemon not answering after batch {batches}: {e}"));
        let rss = rss_kib(pid);
        assert!(
            rss < RSS_LIMIT_KIB,
            "RSS {rss} KiB after batch {batches} (seed {seed})"
        );
        // 2. Everything the batch made goes, and the host shows no trace.
        let pods = pod::list(&mut rt, None).await;
        for p in &pods {
            pod::stop_remove(&mut rt, &p.id).await;
        }
        assert!(pod::list(&mut rt, None).await.is_empty());
        let containers = rt
            .list_containers(ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert!(containers.is_empty(), "{containers:?} (seed {seed})");
        assert_no_trace(&d);
        assert_no_leftover(&d, &files_at_start, batches, seed);
        g.ids.clear();
        g.pods.clear();
        g.containers.clear();
        eprintln!(
            "batch {batches}: requests until {sent_at:?}, checks until {:?}, {} pods removed",
            start.elapsed(),
            pods.len()
        );
    }
    let log = d.log();
    assert!(
        !log.contains("panicked"),
        "the daemon panicked (seed {seed})"
    );
    let mut codes: Vec<_> = codes.into_iter().collect();
    codes.sort();
    eprintln!(
        "campaign: {sent} requests in {batches} batches, {:?}; {pods_made} pods and {containers_made} containers made, {started} started; \
         grpc-status counts {codes:?}; peak RSS {peak} KiB, now {} KiB",
        start.elapsed(),
        rss_kib(pid)
    );
}

const RUN_POD: &str = "/runtime.v1.RuntimeService/RunPodSandbox";
const CREATE_CONTAINER: &str = "/runtime.v1.RuntimeService/CreateContainer";
const START_CONTAINER: &str = "/runtime.v1.RuntimeService/StartContainer";

/// Requests per batch; the checks follow each batch.
const BATCH: usize = 40;

/// Every file and directory under the daemon's root and state dirs.
fn files_under(d: &TestDaemon) -> BTreeSet<PathBuf> {
    fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, out);
            }
            out.insert(path);
        }
    }
    let mut out = BTreeSet::new();
    walk(&d.root, &mut out);
    walk(&d.state, &mut out);
    out
}

/// A directory named by a pod or container id (64 hex digits).
fn is_id(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// What [`assert_no_trace`] does not look at: files under the daemon's
/// dirs that were not there before the first batch (and directories named
/// by an id; other directories a first use creates may stay), and the
/// test's cgroups in every hierarchy (children, processes, the monitors'
/// cgroup).
fn assert_no_leftover(d: &TestDaemon, at_start: &BTreeSet<PathBuf>, batch: u32, seed: u64) {
    let new: Vec<_> = files_under(d)
        .into_iter()
        .filter(|p| !at_start.contains(p))
        .filter(|p| !p.is_dir() || is_id(p))
        .collect();
    assert!(
        new.is_empty(),
        "files left under the daemon's dirs after batch {batch} (seed {seed}): {new:?}"
    );
    let Some(parent) = &d.cgroup_parent else {
        return;
    };
    let rel = parent.trim_start_matches('/');
    let mut hierarchies = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(r) = std::fs::read_dir("/sys/fs/cgroup") {
        hierarchies.extend(r.flatten().map(|e| e.path()));
    }
    for h in hierarchies {
        let dir = h.join(rel);
        let children: Vec<_> = std::fs::read_dir(&dir)
            .map(|r| {
                r.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            children.is_empty(),
            "cgroups left under {} after batch {batch} (seed {seed}): {children:?}",
            dir.display()
        );
        for cg in [dir.clone(), h.join(format!("{rel}-monitors"))] {
            let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
            assert!(
                procs.trim().is_empty(),
                "processes left in {} after batch {batch} (seed {seed}): {procs}",
                cg.display()
            );
        }
    }
}
