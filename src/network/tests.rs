//! Network with fake plugins: shell scripts in a temp bin dir that log their
//! environment and stdin and print a result, steered by marker files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;

struct Fixture {
    dir: tempfile::TempDir,
    net: Network,
}

const NETNS: &str = "/proc/self/ns/net";

impl Fixture {
    /// Fake plugins `names` (no loopback: crius runs none) and a network
    /// config of `conf` (a conflist) unless `None`.
    fn new(names: &[&str], conf: Option<Value>, default_network: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let confd = dir.path().join("net.d");
        let log = dir.path().join("log");
        for d in [&bin, &confd, &log] {
            std::fs::create_dir(d).unwrap();
        }
        for name in names {
            fake_plugin(&bin, name, &log);
        }
        if let Some(conf) = conf {
            std::fs::write(confd.join("10-test.conflist"), conf.to_string()).unwrap();
        }
        let config = crate::config::NetworkConfig {
            conf_dir: confd,
            bin_dirs: vec![dir.path().join("empty-bin"), bin],
            default_network,
            default_subnet: "10.77.0.0/16".into(),
            default_bridge: "crt0".into(),
            plugin_timeout_secs: 2,
        };
        let net = Network::new(&config, &dir.path().join("state"));
        Fixture { dir, net }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    fn touch(&self, marker: &str) {
        std::fs::write(self.log().join(marker), "").unwrap();
    }

    fn set_result(&self, plugin: &str, result: &Value) {
        std::fs::write(
            self.log().join(format!("result-{plugin}")),
            result.to_string(),
        )
        .unwrap();
    }

    /// "plugin COMMAND IFNAME" per call, in order.
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.log().join("calls"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    fn clear_calls(&self) {
        let _ = std::fs::remove_file(self.log().join("calls"));
    }

    fn stdin(&self, plugin: &str, command: &str) -> Value {
        let text =
            std::fs::read_to_string(self.log().join(format!("{plugin}.{command}.stdin"))).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn env(&self, plugin: &str, command: &str, var: &str) -> String {
        let text =
            std::fs::read_to_string(self.log().join(format!("{plugin}.{command}.env"))).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{var}=")))
            .unwrap_or_else(|| panic!("{var} not in env of {plugin} {command}"))
            .to_string()
    }

    fn cache_file(&self, pod_id: &str) -> PathBuf {
        self.dir
            .path()
            .join(format!("state/cni/results/{pod_id}.json"))
    }
}

fn fake_plugin(bin: &Path, name: &str, log: &Path) {
    let body = format!(
        r#"#!/bin/sh
n={name}
d={log}
echo "$n $CNI_COMMAND $CNI_IFNAME" >> $d/calls
cat > $d/$n.$CNI_COMMAND.stdin
env | grep '^CNI_' | sort > $d/$n.$CNI_COMMAND.env
if [ "$CNI_COMMAND" = VERSION ]; then
  if [ -e $d/versions-$n ]; then cat $d/versions-$n
  else echo '{{"cniVersion":"1.0.0","supportedVersions":["0.3.1","0.4.0","1.0.0"]}}'; fi
  exit 0
fi
if [ -e $d/hang-$n-$CNI_COMMAND ]; then sleep 600; fi
if [ -e $d/fail-$n-$CNI_COMMAND ]; then
  echo '{{"cniVersion":"1.0.0","code":7,"msg":"'$n' broke"}}'; exit 1
fi
if [ "$CNI_COMMAND" = ADD ]; then
  if [ -e $d/result-$n ]; then cat $d/result-$n; else echo '{{"cniVersion":"1.0.0"}}'; fi
fi
exit 0
"#,
        log = log.display()
    );
    let path = bin.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn two_plugin_list() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "testnet",
        "plugins": [
            {"type": "addr", "ipam": {"type": "ipam"}},
            {"type": "pm", "capabilities": {"portMappings": true, "bandwidth": true}},
            {"type": "plain", "capabilities": {"portMappings": false}}
        ]
    })
}

fn addr_result() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "br"}, {"name": "eth0", "sandbox": NETNS}],
        "ips": [
            {"address": "fd00::7/64", "interface": 1},
            {"address": "10.5.0.7/24", "gateway": "10.5.0.1", "interface": 1}
        ]
    })
}

fn pod(id: &str) -> PodNetwork {
    PodNetwork {
        pod_id: id.into(),
        name: "web".into(),
        namespace: "default".into(),
        uid: "u-1".into(),
        netns: NETNS.into(),
        port_mappings: vec![
            PortMapping {
                protocol: Protocol::Tcp,
                container_port: 80,
                host_port: 8080,
                host_ip: String::new(),
            },
            PortMapping {
                protocol: Protocol::Udp,
                container_port: 53,
                host_port: 0,
                host_ip: String::new(),
            },
        ],
        pod_cidr: String::new(),
    }
}

const PLUGINS: &[&str] = &["addr", "ipam", "pm", "plain"];

#[tokio::test]
async fn setup_chains_plugins_and_teardown_reverses_them() {
    let f = Fixture::new(PLUGINS, Some(two_plugin_list()), false);
    f.set_result("addr", &addr_result());
    let mut pm_result = addr_result();
    pm_result["dns"] = json!({});
    f.set_result("pm", &pm_result);
    f.set_result("plain", &pm_result);

    let status = f.net.setup(&pod("pod1")).await.unwrap();
    assert_eq!(
        f.calls(),
        ["addr ADD eth0", "pm ADD eth0", "plain ADD eth0"]
    );
    assert_eq!(status.ip, Some("10.5.0.7".parse().unwrap()));
    assert_eq!(
        status.additional_ips,
        vec!["fd00::7".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(status.result, pm_result);

    // Environment.
    assert_eq!(f.env("addr", "ADD", "CNI_CONTAINERID"), "pod1");
    assert_eq!(f.env("addr", "ADD", "CNI_NETNS"), NETNS);
    assert_eq!(f.env("addr", "ADD", "CNI_IFNAME"), "eth0");
    assert_eq!(
        f.env("addr", "ADD", "CNI_ARGS"),
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;\
         K8S_POD_INFRA_CONTAINER_ID=pod1;K8S_POD_UID=u-1"
    );
    let path = f.env("addr", "ADD", "CNI_PATH");
    assert!(
        path.ends_with("/empty-bin:") || path.contains("/empty-bin:"),
        "{path}"
    );
    assert!(path.ends_with("/bin"), "{path}");

    // Stdin: name/version, prevResult chaining, runtimeConfig only for the
    // capabilities a plugin asks for and only mappings with a host port.
    let addr = f.stdin("addr", "ADD");
    assert_eq!(addr["name"], "testnet");
    assert_eq!(addr["cniVersion"], "1.0.0");
    assert_eq!(addr["ipam"]["type"], "ipam");
    assert!(addr.get("prevResult").is_none());
    assert!(addr.get("runtimeConfig").is_none());
    let pm = f.stdin("pm", "ADD");
    assert_eq!(pm["prevResult"], addr_result());
    assert_eq!(
        pm["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]})
    );
    let plain = f.stdin("plain", "ADD");
    assert_eq!(plain["prevResult"], pm_result);
    assert!(plain.get("runtimeConfig").is_none());

    // Cache: config and result, readable by a new instance (daemon restart).
    assert!(f.cache_file("pod1").exists());
    assert_eq!(f.net.cached_status("pod1"), Some(status.clone()));
    assert_eq!(f.net.cached_pods().unwrap(), vec!["pod1"]);
    let config = f.net.config.clone();
    let restarted = Network::new(&config, &f.dir.path().join("state"));
    // The conf dir changes meanwhile: DEL still uses what ADD used.
    std::fs::remove_file(config.conf_dir.join("10-test.conflist")).unwrap();

    f.clear_calls();
    restarted.teardown("pod1", Path::new(NETNS)).await.unwrap();
    assert_eq!(
        f.calls(),
        ["plain DEL eth0", "pm DEL eth0", "addr DEL eth0"]
    );
    for p in ["addr", "pm", "plain"] {
        let stdin = f.stdin(p, "DEL");
        assert_eq!(stdin["prevResult"], pm_result, "{p}");
        assert_eq!(stdin["name"], "testnet");
    }
    assert_eq!(f.stdin("pm", "DEL")["runtimeConfig"], pm["runtimeConfig"]);
    assert_eq!(f.env("addr", "DEL", "CNI_NETNS"), NETNS);
    assert_eq!(
        f.env("addr", "DEL", "CNI_ARGS"),
        f.env("addr", "ADD", "CNI_ARGS")
    );
    assert!(!f.cache_file("pod1").exists());
    assert_eq!(restarted.cached_status("pod1"), None);

    // Idempotent: no cache, nothing to run.
    f.clear_calls();
    restarted.teardown("pod1", Path::new(NETNS)).await.unwrap();
    assert!(f.calls().is_empty());
}

#[tokio::test]
async fn del_with_a_vanished_netns_still_runs_with_empty_netns() {
    let f = Fixture::new(PLUGINS, Some(two_plugin_list()), false);
    f.set_result("addr", &addr_result());
    f.net.setup(&pod("pod2")).await.unwrap();
    f.clear_calls();
    let gone = f.dir.path().join("ns-gone");
    f.net.teardown("pod2", &gone).await.unwrap();
    assert_eq!(f.calls().len(), 3);
    assert_eq!(f.env("addr", "DEL", "CNI_NETNS"), "");
    // A path that exists but is no namespace (an unmounted pin file).
    std::fs::write(&gone, "").unwrap();
    f.net.setup(&pod("pod3")).await.unwrap();
    f.net.teardown("pod3", &gone).await.unwrap();
    assert_eq!(f.env("addr", "DEL", "CNI_NETNS"), "");
}

#[tokio::test]
async fn failed_add_is_rolled_back_and_names_the_plugin() {
    let f = Fixture::new(PLUGINS, Some(two_plugin_list()), false);
    f.set_result("addr", &addr_result());
    f.touch("fail-pm-ADD");
    let err = f.net.setup(&pod("pod4")).await.unwrap_err();
    let msg = crate::error::chain(&err);
    assert!(
        msg.contains("plugin pm") && msg.contains("pm broke"),
        "{msg}"
    );
    assert!(msg.contains("pod4"), "{msg}");
    assert_eq!(err.kind(), Kind::Internal);
    assert_eq!(
        f.calls(),
        [
            "addr ADD eth0",
            "pm ADD eth0",
            "plain DEL eth0",
            "pm DEL eth0",
            "addr DEL eth0"
        ]
    );
    // DEL got the partial result of the last plugin that succeeded.
    assert_eq!(f.stdin("addr", "DEL")["prevResult"], addr_result());
    assert!(!f.cache_file("pod4").exists());
}

#[tokio::test]
async fn failed_rollback_keeps_the_cache_for_a_later_teardown() {
    let f = Fixture::new(PLUGINS, Some(two_plugin_list()), false);
    f.touch("fail-plain-ADD");
    f.touch("fail-addr-DEL");
    let msg = crate::error::chain(&f.net.setup(&pod("pod5")).await.unwrap_err());
    assert!(
        msg.contains("plain broke") && msg.contains("addr broke"),
        "{msg}"
    );
    assert!(f.cache_file("pod5").exists());
    assert_eq!(f.net.cached_status("pod5"), None);
    // Every plugin got its DEL despite addr's failure.
    assert_eq!(f.calls().iter().filter(|c| c.contains("DEL")).count(), 3);
    std::fs::remove_file(f.log().join("fail-addr-DEL")).unwrap();
    f.net.teardown("pod5", Path::new(NETNS)).await.unwrap();
    assert!(!f.cache_file("pod5").exists());
}

#[tokio::test]
async fn hanging_plugin_is_killed_at_the_timeout_and_rolled_back() {
    let f = Fixture::new(PLUGINS, Some(two_plugin_list()), false);
    f.touch("hang-pm-ADD");
    let started = Instant::now();
    let msg = crate::error::chain(&f.net.setup(&pod("pod6")).await.unwrap_err());
    let elapsed = started.elapsed();
    assert!(
        msg.contains("plugin pm") && msg.contains("timed out"),
        "{msg}"
    );
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
    assert_eq!(f.calls().iter().filter(|c| c.contains("DEL")).count(), 3);
    assert!(!f.cache_file("pod6").exists());
}

#[tokio::test]
async fn missing_plugin_fails_before_any_call() {
    let f = Fixture::new(&["addr", "ipam", "pm"], Some(two_plugin_list()), false);
    let err = f.net.setup(&pod("pod7")).await.unwrap_err();
    assert_eq!(err.kind(), Kind::FailedPrecondition);
    assert!(err.to_string().contains("\"plain\""), "{err}");
    assert!(f.calls().is_empty());
    assert!(!f.cache_file("pod7").exists());
}

#[tokio::test]
async fn bad_requests_are_refused() {
    let f = Fixture::new(PLUGINS, Some(two_plugin_list()), false);
    let mut p = pod("pod8");
    p.name = "a;K8S_POD_UID=x".into();
    assert_eq!(
        f.net.setup(&p).await.unwrap_err().kind(),
        Kind::InvalidArgument
    );
    let p = pod("../etc");
    assert_eq!(
        f.net.setup(&p).await.unwrap_err().kind(),
        Kind::InvalidArgument
    );
    let mut p = pod("pod8");
    p.netns = f.dir.path().join("no-netns");
    assert_eq!(
        f.net.setup(&p).await.unwrap_err().kind(),
        Kind::InvalidArgument
    );
    assert!(f.calls().is_empty());
}

#[tokio::test]
async fn invalid_result_is_an_error_and_rolled_back() {
    let f = Fixture::new(PLUGINS, Some(two_plugin_list()), false);
    std::fs::write(f.log().join("result-plain"), "not json").unwrap();
    let msg = crate::error::chain(&f.net.setup(&pod("pod9")).await.unwrap_err());
    assert!(
        msg.contains("plain") && msg.contains("invalid result"),
        "{msg}"
    );
    assert_eq!(f.calls().iter().filter(|c| c.contains("DEL")).count(), 3);
}

#[tokio::test]
async fn builtin_network_uses_the_pod_cidr_when_kubelet_set_one() {
    let f = Fixture::new(&["bridge", "host-local", "portmap"], None, true);
    f.set_result("bridge", &addr_result());
    let mut p = pod("pod10");
    f.net.setup(&p).await.unwrap();
    let bridge = f.stdin("bridge", "ADD");
    assert_eq!(bridge["name"], "crius");
    assert_eq!(bridge["bridge"], "crt0");
    assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.77.0.0/16");
    assert_eq!(
        bridge["ipam"]["dataDir"],
        f.dir.path().join("state/cni/ipam").display().to_string()
    );
    assert!(f.stdin("portmap", "ADD")["runtimeConfig"]["portMappings"].is_array());
    p.pod_id = "pod11".into();
    p.pod_cidr = "10.244.3.0/24".into();
    f.net.setup(&p).await.unwrap();
    let bridge = f.stdin("bridge", "ADD");
    assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.244.3.0/24");
}

#[test]
fn readiness_says_what_is_missing() {
    // No config, built-in disabled.
    let f = Fixture::new(PLUGINS, None, false);
    let e = f.net.readiness().unwrap_err();
    assert!(e.contains("no CNI config") && e.contains("net.d"), "{e}");
    // Built-in enabled but its plugins are missing.
    let f = Fixture::new(&["bridge", "host-local"], None, true);
    let e = f.net.readiness().unwrap_err();
    assert!(e.contains("\"portmap\"") && e.contains("not found"), "{e}");
    let f = Fixture::new(&["bridge", "host-local", "portmap"], None, true);
    f.net.readiness().unwrap();
    // A configured list's IPAM plugin is needed too.
    let f = Fixture::new(&["addr", "pm", "plain"], Some(two_plugin_list()), false);
    let e = f.net.readiness().unwrap_err();
    assert!(e.contains("\"ipam\""), "{e}");
    // An invalid config is reported, not skipped.
    let f = Fixture::new(PLUGINS, Some(two_plugin_list()), false);
    f.net.readiness().unwrap();
    std::fs::write(f.net.config.conf_dir.join("05-bad.conf"), "{").unwrap();
    let e = f.net.readiness().unwrap_err();
    assert!(e.contains("05-bad.conf") && e.contains("not JSON"), "{e}");
}

#[tokio::test]
async fn single_conf_file_is_run_as_a_one_plugin_list() {
    let f = Fixture::new(PLUGINS, None, false);
    std::fs::write(
        f.net.config.conf_dir.join("50-one.conf"),
        r#"{"cniVersion":"0.4.0","name":"single","type":"addr","ipam":{"type":"ipam"}}"#,
    )
    .unwrap();
    f.set_result("addr", &addr_result());
    let status = f.net.setup(&pod("pod12")).await.unwrap();
    assert_eq!(status.ip, Some("10.5.0.7".parse().unwrap()));
    assert_eq!(f.calls(), ["addr ADD eth0"]);
    let stdin = f.stdin("addr", "ADD");
    assert_eq!(stdin["name"], "single");
    assert_eq!(stdin["cniVersion"], "0.4.0");
}

#[tokio::test]
async fn setup_again_deletes_the_earlier_attachment_first() {
    let f = Fixture::new(PLUGINS, Some(two_plugin_list()), false);
    f.set_result("addr", &addr_result());
    f.net.setup(&pod("pod13")).await.unwrap();
    f.clear_calls();
    f.net.setup(&pod("pod13")).await.unwrap();
    assert_eq!(
        f.calls(),
        [
            "plain DEL eth0",
            "pm DEL eth0",
            "addr DEL eth0",
            "addr ADD eth0",
            "pm ADD eth0",
            "plain ADD eth0"
        ]
    );
    assert!(f.net.cached_status("pod13").is_some());
}

fn versions(f: &Fixture, plugin: &str, list: &[&str]) {
    std::fs::write(
        f.log().join(format!("versions-{plugin}")),
        json!({"cniVersion": "1.0.0", "supportedVersions": list}).to_string(),
    )
    .unwrap();
}

fn list_of_version(v: &str) -> Value {
    let mut l = two_plugin_list();
    l["cniVersion"] = json!(v);
    l
}

/// Polls readiness until the background check has answered.
async fn settled_readiness(net: &Network) -> Result<(), String> {
    let job = net.probe_job(net.load("").unwrap()).unwrap();
    let direct = probe::check(&job).await;
    // The background path must come to the same verdict.
    for _ in 0..100 {
        if net.readiness() == direct && net.prober_checked() {
            return direct;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("background readiness never matched {direct:?}");
}

#[tokio::test]
async fn readiness_checks_plugin_versions_and_status_in_the_background() {
    // 1.0.0 list, 1.0.0 plugins: ready, no STATUS sent.
    let f = Fixture::new(PLUGINS, Some(two_plugin_list()), false);
    settled_readiness(&f.net).await.unwrap();
    assert!(
        f.calls().iter().all(|c| c.contains("VERSION")),
        "{:?}",
        f.calls()
    );

    // A 1.1.0 list on plugins that only speak 1.0.0 (Debian 12's).
    let f = Fixture::new(PLUGINS, Some(list_of_version("1.1.0")), false);
    let e = settled_readiness(&f.net).await.unwrap_err();
    assert!(
        e.contains("does not support cniVersion 1.1.0") && e.contains("addr"),
        "{e}"
    );

    // 1.1.0 everywhere: STATUS decides.
    let f = Fixture::new(PLUGINS, Some(list_of_version("1.1.0")), false);
    for p in ["addr", "pm", "plain"] {
        versions(&f, p, &["1.0.0", "1.1.0"]);
    }
    settled_readiness(&f.net).await.unwrap();
    // Three plugins, checked directly and once in the background.
    assert_eq!(f.calls().iter().filter(|c| c.contains("STATUS")).count(), 6);
    assert_eq!(f.stdin("pm", "STATUS")["name"], "testnet");
    f.touch("fail-pm-STATUS");
    let e = probe::check(&f.net.probe_job(f.net.load("").unwrap()).unwrap())
        .await
        .unwrap_err();
    assert!(
        e.contains("pm") && e.contains("not ready") && e.contains("pm broke"),
        "{e}"
    );
}

#[tokio::test]
async fn gc_deletes_attachments_of_unknown_pods_and_sends_gc_to_1_1_plugins() {
    let f = Fixture::new(PLUGINS, Some(two_plugin_list()), false);
    f.set_result("addr", &addr_result());
    for id in ["live", "stale1", "stale2"] {
        f.net.setup(&pod(id)).await.unwrap();
    }
    f.clear_calls();
    assert_eq!(f.net.gc(&["live".to_string()]).await.unwrap(), 2);
    assert_eq!(f.net.cached_pods().unwrap(), vec!["live"]);
    let calls = f.calls();
    assert_eq!(calls.iter().filter(|c| c.contains("DEL")).count(), 6);
    // 1.0.0 plugins get no GC.
    assert!(!calls.iter().any(|c| c.contains(" GC ")), "{calls:?}");

    let f = Fixture::new(PLUGINS, Some(list_of_version("1.1.0")), false);
    for p in ["addr", "pm", "plain"] {
        versions(&f, p, &["1.0.0", "1.1.0"]);
    }
    f.net.setup(&pod("keep")).await.unwrap();
    assert_eq!(f.net.gc(&["keep".to_string()]).await.unwrap(), 0);
    let gc = f.stdin("addr", "GC");
    assert_eq!(
        gc["cni.dev/valid-attachments"],
        json!([{"containerID": "keep", "ifname": "eth0"}])
    );
    assert_eq!(f.env("addr", "GC", "CNI_COMMAND"), "GC");
    assert_eq!(f.calls().iter().filter(|c| c.contains(" GC ")).count(), 3);
}

#[tokio::test]
async fn del_without_a_cached_result_uses_the_current_config_and_the_pod_id() {
    let f = Fixture::new(PLUGINS, Some(two_plugin_list()), false);
    f.net
        .teardown_uncached("lost", Path::new(""))
        .await
        .unwrap();
    let calls = f.calls();
    for plugin in ["addr", "pm", "plain"] {
        let del = format!("{plugin} DEL eth0");
        assert!(calls.contains(&del), "every plugin of the list: {calls:?}");
    }
    assert_eq!(f.env("addr", "DEL", "CNI_CONTAINERID"), "lost");
    assert!(
        f.stdin("addr", "DEL").get("prevResult").is_none(),
        "no result"
    );
    assert!(f.net.cached_pods().unwrap().is_empty());
    assert!(
        f.net
            .teardown_uncached("../x", Path::new(""))
            .await
            .is_err(),
        "ids are checked"
    );
}
