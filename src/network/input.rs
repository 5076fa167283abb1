//! What each plugin call is given besides the CNI_COMMAND: CNI_ARGS from the
//! pod's identity, CNI_NETNS for DEL, and the per-plugin stdin built from the
//! network list (name, cniVersion, prevResult, runtimeConfig). CNI SPEC.md
//! "Section 3" and libcni's injectRuntimeConfig are the references.

use std::path::Path;

use serde_json::{Map, Value};

use super::cache::Entry;
use super::conf::NetworkList;
use super::{Error, PodNetwork, Result};

/// CNI_NETNS for DEL: the path while it is still a network namespace, else
/// empty (plugins then only release what lives outside it, e.g. the IP).
pub fn del_netns(path: &Path) -> String {
    let is_ns = nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC);
    if is_ns {
        path.display().to_string()
    } else {
        String::new()
    }
}

/// Pod ids name files: no separators, no hidden names.
pub fn validate_id(pod_id: &str) -> Result<()> {
    let ok = !pod_id.is_empty()
        && !pod_id.starts_with('.')
        && pod_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!("invalid pod id {pod_id:?}")))
    }
}

pub fn validate(req: &PodNetwork) -> Result<()> {
    validate_id(&req.pod_id)?;
    for (what, v) in [
        ("name", &req.name),
        ("namespace", &req.namespace),
        ("uid", &req.uid),
    ] {
        if v.contains([';', '=']) || v.chars().any(|c| c.is_control()) {
            return Err(Error::InvalidRequest(format!(
                "pod {what} {v:?} cannot be passed in CNI_ARGS"
            )));
        }
    }
    Ok(())
}

/// CNI_ARGS as kubelet's network plugins expect them.
pub fn cni_args(req: &PodNetwork) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        req.namespace, req.name, req.pod_id, req.uid
    )
}

/// The capability arguments crius can offer plugins.
pub fn runtime_config(entry: &Entry) -> Map<String, Value> {
    let mut rc = Map::new();
    if !entry.port_mappings.is_empty() {
        rc.insert(
            "portMappings".into(),
            serde_json::to_value(&entry.port_mappings).expect("port mappings serialize"),
        );
    }
    rc
}

/// One plugin's stdin: its own configuration plus the list's name and
/// version, the previous result, and `runtimeConfig` with exactly the
/// capabilities the plugin asks for (libcni's injectRuntimeConfig).
pub fn plugin_config(
    list: &NetworkList,
    plugin: &Map<String, Value>,
    prev: Option<&Value>,
    runtime: &Map<String, Value>,
) -> Value {
    let mut conf = plugin.clone();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    }
    let mut rc = Map::new();
    if let Some(caps) = plugin.get("capabilities").and_then(|c| c.as_object()) {
        for (cap, on) in caps {
            if on.as_bool() == Some(true)
                && let Some(v) = runtime.get(cap)
            {
                rc.insert(cap.clone(), v.clone());
            }
        }
    }
    if !rc.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(rc));
    }
    conf.into()
}
