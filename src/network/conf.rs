//! Which CNI network a pod joins: the first configuration file in the conf
//! dir, or crius's built-in bridge network on a fresh machine.
//!
//! Files are taken in lexical order, as libcni and containerd do; `.conflist`
//! files hold a network list, `.conf` files a single plugin configuration that
//! is wrapped into a one-plugin list. `.json` files may be either (a top-level
//! `plugins` array makes it a list). An invalid first file is an error, not a
//! reason to silently try the next one: the node's network must be what the
//! administrator configured. Spec: CNI SPEC.md, "Section 1: Network
//! configuration format".

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::Error;

/// File name extensions of CNI configuration files.
pub const EXTENSIONS: &[&str] = &["conflist", "conf", "json"];

/// Name of the built-in network (also host-local's per-network lease dir).
pub const BUILTIN_NAME: &str = "crius";

/// CNI version of the built-in network: the newest
/// one Debian 12's containernetworking-plugins (1.1.1) speak.
pub const BUILTIN_CNI_VERSION: &str = "1.0.0";

/// A network configuration list, validated: name, version and plugins.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    /// Each plugin's own configuration object (with its `type`).
    pub plugins: Vec<Map<String, Value>>,
    /// The whole list as JSON: cached with the ADD result, so DEL runs with
    /// the configuration ADD used even if the conf dir changed since.
    pub raw: Value,
    /// Where it came from, for messages: a file path or "built-in".
    pub source: String,
}

/// What the built-in network is made of; see [`builtin`].
#[derive(Debug, Clone)]
pub struct Builtin<'a> {
    pub bridge: &'a str,
    pub subnet: &'a str,
    /// host-local's lease directory (its `dataDir`).
    pub ipam_dir: &'a Path,
}

/// The built-in network: a bridge with host-local IPAM, masquerading and
/// hairpin mode, followed by portmap for hostPort mappings. Loopback is not
/// in the list: the pod monitor brings lo up when it creates the netns.
pub fn builtin(b: &Builtin) -> NetworkList {
    // kubelet sends a dual-stack pod CIDR as "v4cidr,v6cidr": one range set
    // (and one default route) per family.
    let subnets: Vec<&str> = b
        .subnet
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let ranges: Vec<Value> = subnets.iter().map(|s| json!([{ "subnet": s }])).collect();
    let mut routes = Vec::new();
    if subnets.iter().any(|s| !s.contains(':')) {
        routes.push(json!({ "dst": "0.0.0.0/0" }));
    }
    if subnets.iter().any(|s| s.contains(':')) {
        routes.push(json!({ "dst": "::/0" }));
    }
    let raw = json!({
        "cniVersion": BUILTIN_CNI_VERSION,
        "name": BUILTIN_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": b.bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": ranges,
                    "routes": routes,
                    "dataDir": b.ipam_dir,
                }
            },
            {
                "type": "portmap",
                "capabilities": { "portMappings": true }
            }
        ]
    });
    parse_list(raw, "built-in network").expect("the built-in network is valid")
}

/// The first configuration file in `dir` (lexical order), or `None` when
/// the dir holds none (or does not exist).
pub fn first_file(dir: &Path) -> Result<Option<PathBuf>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                op: "read CNI config dir",
                path: dir.into(),
                source,
            });
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            op: "read CNI config dir",
            path: dir.into(),
            source,
        })?;
        let path = entry.path();
        let ext_ok = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e));
        // Follow symlinks (config management tools link files in).
        if ext_ok && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files.into_iter().next())
}

/// Reads and validates one configuration file.
pub fn load_file(path: &Path) -> Result<NetworkList, Error> {
    let text = std::fs::read(path).map_err(|source| Error::Io {
        op: "read CNI config",
        path: path.into(),
        source,
    })?;
    let source = path.display().to_string();
    let value: Value = serde_json::from_slice(&text).map_err(|e| Error::InvalidConfig {
        file: source.clone(),
        reason: format!("not JSON: {e}"),
    })?;
    let is_list =
        path.extension().is_some_and(|e| e == "conflist") || value.get("plugins").is_some();
    let value = if is_list { value } else { wrap(value) };
    parse_list(value, &source)
}

/// Wraps a single plugin configuration into a one-plugin list, keeping the
/// plugin's object whole (as libcni's ConfListFromConf does).
fn wrap(conf: Value) -> Value {
    let mut list = Map::new();
    if let Some(obj) = conf.as_object() {
        for key in ["cniVersion", "name"] {
            if let Some(v) = obj.get(key) {
                list.insert(key.into(), v.clone());
            }
        }
    }
    list.insert("plugins".into(), Value::Array(vec![conf]));
    Value::Object(list)
}

/// Validates a network list.
pub fn parse_list(raw: Value, source: &str) -> Result<NetworkList, Error> {
    let invalid = |reason: String| Error::InvalidConfig {
        file: source.into(),
        reason,
    };
    let obj = raw
        .as_object()
        .ok_or_else(|| invalid("not a JSON object".into()))?;
    let name = match obj.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(invalid("\"name\" must be a non-empty string".into())),
    };
    let cni_version = match obj.get("cniVersion") {
        Some(Value::String(s)) if valid_version(s) => s.clone(),
        Some(v) => return Err(invalid(format!("invalid \"cniVersion\" {v}"))),
        None => return Err(invalid("\"cniVersion\" is missing".into())),
    };
    let list = match obj.get("plugins") {
        Some(Value::Array(list)) if !list.is_empty() => list,
        _ => return Err(invalid("\"plugins\" must be a non-empty array".into())),
    };
    let mut plugins = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let p = p
            .as_object()
            .ok_or_else(|| invalid(format!("plugin {i} is not an object")))?;
        match p.get("type") {
            Some(Value::String(t)) if valid_type(t) => {}
            _ => {
                return Err(invalid(format!(
                    "plugin {i}: \"type\" must be a plugin file name"
                )));
            }
        }
        if let Some(ipam) = p.get("ipam")
            && let Some(t) = ipam.get("type")
            && !t.as_str().is_some_and(valid_type)
        {
            return Err(invalid(format!(
                "plugin {i}: \"ipam.type\" must be a plugin file name"
            )));
        }
        plugins.push(p.clone());
    }
    Ok(NetworkList {
        name,
        cni_version,
        plugins,
        raw,
        source: source.into(),
    })
}

/// A plugin `type` names a file in a bin dir: no path separators.
fn valid_type(t: &str) -> bool {
    !t.is_empty() && t != "." && t != ".." && !t.contains('/') && !t.contains('\0')
}

/// `major.minor.patch`, digits only.
fn valid_version(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

impl NetworkList {
    /// The plugin binaries this list needs: each plugin's type and the IPAM
    /// plugins they delegate to, in order, without duplicates.
    pub fn binaries(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for p in &self.plugins {
            let main = p.get("type").and_then(|t| t.as_str());
            let ipam = p
                .get("ipam")
                .and_then(|i| i.get("type"))
                .and_then(|t| t.as_str());
            for name in [main, ipam].into_iter().flatten() {
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
            }
        }
        names
    }

    pub fn plugin_type(&self, i: usize) -> &str {
        self.plugins[i]
            .get("type")
            .and_then(|t| t.as_str())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    const BRIDGE_CONF: &str = r#"{"cniVersion":"1.0.0","name":"one","type":"bridge",
        "ipam":{"type":"host-local","subnet":"10.1.0.0/16"}}"#;

    #[test]
    fn first_file_is_lexical_and_ignores_other_extensions() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(first_file(dir.path()).unwrap(), None);
        assert_eq!(first_file(&dir.path().join("absent")).unwrap(), None);
        write(dir.path(), "00-notes.txt", "x");
        write(dir.path(), "20-b.conflist", "{}");
        write(dir.path(), "10-a.conf", "{}");
        write(dir.path(), "30-c.json", "{}");
        std::fs::create_dir(dir.path().join("05-dir.conf")).unwrap();
        assert_eq!(
            first_file(dir.path()).unwrap(),
            Some(dir.path().join("10-a.conf"))
        );
    }

    #[test]
    fn single_conf_is_wrapped_into_a_list() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "10-one.conf", BRIDGE_CONF);
        let list = load_file(&dir.path().join("10-one.conf")).unwrap();
        assert_eq!(list.name, "one");
        assert_eq!(list.cni_version, "1.0.0");
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(list.plugin_type(0), "bridge");
        assert_eq!(list.binaries(), vec!["bridge", "host-local"]);
        assert_eq!(list.raw["plugins"][0]["ipam"]["subnet"], "10.1.0.0/16");
    }

    #[test]
    fn json_file_may_hold_a_list_or_a_conf() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.json",
            r#"{"cniVersion":"0.4.0","name":"l","plugins":[{"type":"ptp"},{"type":"portmap"}]}"#,
        );
        write(dir.path(), "b.json", BRIDGE_CONF);
        let a = load_file(&dir.path().join("a.json")).unwrap();
        assert_eq!(a.plugins.len(), 2);
        assert_eq!(a.binaries(), vec!["ptp", "portmap"]);
        let b = load_file(&dir.path().join("b.json")).unwrap();
        assert_eq!(b.plugins.len(), 1);
    }

    #[test]
    fn invalid_configs_say_why_and_where() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("not json", "not JSON"),
            ("[1]", "not a JSON object"),
            (r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#, "name"),
            (r#"{"name":"n","plugins":[{"type":"x"}]}"#, "cniVersion"),
            (
                r#"{"cniVersion":"one","name":"n","plugins":[{"type":"x"}]}"#,
                "cniVersion",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
                "plugins",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../x"}]}"#,
                "type",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"b","ipam":{"type":"/bin/sh"}}]}"#,
                "ipam.type",
            ),
        ];
        for (text, want) in cases {
            let path = dir.path().join("x.conflist");
            std::fs::write(&path, text).unwrap();
            let err = crate::error::chain(&load_file(&path).unwrap_err());
            assert!(err.contains(want), "{text}: {err}");
            assert!(err.contains("x.conflist"), "{text}: {err}");
        }
    }

    #[test]
    fn builtin_network_is_bridge_host_local_portmap() {
        let ipam = Path::new("/state/cni/ipam");
        let list = builtin(&Builtin {
            bridge: "crius0",
            subnet: "10.99.0.0/16",
            ipam_dir: ipam,
        });
        assert_eq!(list.cni_version, "1.0.0");
        assert_eq!(list.binaries(), vec!["bridge", "host-local", "portmap"]);
        let bridge = &list.raw["plugins"][0];
        assert_eq!(bridge["bridge"], "crius0");
        assert_eq!(bridge["isGateway"], true);
        assert_eq!(bridge["ipMasq"], true);
        assert_eq!(bridge["hairpinMode"], true);
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.99.0.0/16");
        assert_eq!(bridge["ipam"]["dataDir"], "/state/cni/ipam");
        assert_eq!(list.raw["plugins"][1]["capabilities"]["portMappings"], true);
        assert_eq!(bridge["ipam"]["routes"], json!([{"dst": "0.0.0.0/0"}]));
    }

    #[test]
    fn builtin_network_takes_a_dual_stack_pod_cidr() {
        let list = builtin(&Builtin {
            bridge: "crius0",
            subnet: "10.244.1.0/24,fd00:10:244:1::/64",
            ipam_dir: Path::new("/x"),
        });
        let ipam = &list.raw["plugins"][0]["ipam"];
        assert_eq!(
            ipam["ranges"],
            json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]])
        );
        assert_eq!(
            ipam["routes"],
            json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
        );
    }
}
