//! Version, Status, RuntimeConfig and UpdateRuntimeConfig: what the runtime
//! is, whether it is ready, and the node settings kubelet exchanges with it.

use std::collections::HashMap;

use tonic::{Response, Status};

use super::Cri;
use super::proto::*;
use crate::config::CgroupDriver as ConfigDriver;
use crate::daemon::RuntimeConfig as NodeRuntimeConfig;

pub const RUNTIME_NAME: &str = "crius";
pub const RUNTIME_API_VERSION: &str = "v1";

/// Handler name the CRI uses for "the default runtime": kubelet's
/// user-namespace support check fails when it is missing from Status.
pub const DEFAULT_HANDLER: &str = "";

impl Cri {
    pub(super) fn version_info(
        &self,
        _req: VersionRequest,
    ) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: RUNTIME_API_VERSION.into(),
        }))
    }

    pub(super) fn runtime_status(
        &self,
        req: StatusRequest,
    ) -> Result<Response<StatusResponse>, Status> {
        let network = self.daemon.network_readiness();
        let conditions = vec![
            RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: network.is_ok(),
                reason: if network.is_ok() {
                    ""
                } else {
                    "NetworkPluginNotReady"
                }
                .into(),
                message: network.err().unwrap_or_default(),
            },
        ];
        let mut info = HashMap::new();
        if req.verbose {
            info.insert("config".to_string(), self.config_json());
        }
        Ok(Response::new(StatusResponse {
            status: Some(RuntimeStatus { conditions }),
            info,
            runtime_handlers: vec![RuntimeHandler {
                name: DEFAULT_HANDLER.into(),
                features: Some(RuntimeHandlerFeatures {
                    // Only where mount_setattr(2) exists (probed once).
                    recursive_read_only_mounts: crate::sys::mount::recursive_readonly_supported(),
                    // Only where the probes succeeded: kubelet then sends
                    // hostUsers:false pods here.
                    user_namespaces: self.daemon.userns.supported(),
                }),
            }],
            features: Some(RuntimeFeatures {
                supplemental_groups_policy: true,
                user_namespaces_host_network: false,
                mount_options: false,
            }),
        }))
    }

    /// The effective configuration as JSON, with the keys critest reads
    /// (`stateDir`, the directory container state lives under).
    fn config_json(&self) -> String {
        let config = &self.daemon.config;
        let mut value = serde_json::to_value(config).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("stateDir".into(), config.state.display().to_string().into());
            map.insert("rootDir".into(), config.root.display().to_string().into());
            map.insert(
                "podCIDR".into(),
                self.daemon.runtime_config().pod_cidr.into(),
            );
        }
        value.to_string()
    }

    pub(super) fn runtime_config_info(&self) -> Result<Response<RuntimeConfigResponse>, Status> {
        let cgroup_driver = match self.daemon.config.cgroup.driver {
            ConfigDriver::Systemd => CgroupDriver::Systemd,
            ConfigDriver::Cgroupfs => CgroupDriver::Cgroupfs,
        };
        Ok(Response::new(RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration {
                cgroup_driver: cgroup_driver as i32,
            }),
        }))
    }

    pub(super) fn set_runtime_config(
        &self,
        req: UpdateRuntimeConfigRequest,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        let pod_cidr = req
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        if !pod_cidr.is_empty() {
            validate_cidr(&pod_cidr).map_err(Status::invalid_argument)?;
        }
        tracing::info!(pod_cidr, "runtime config updated");
        self.daemon
            .update_runtime_config(NodeRuntimeConfig { pod_cidr });
        Ok(Response::new(UpdateRuntimeConfigResponse {}))
    }
}

/// Checks `addr/len` (IPv4 or IPv6; kubelet may send a comma-separated
/// dual-stack pair).
fn validate_cidr(cidrs: &str) -> Result<(), String> {
    for cidr in cidrs.split(',') {
        let bad = || format!("invalid pod CIDR {cidr:?}");
        let (addr, len) = cidr.trim().split_once('/').ok_or_else(bad)?;
        let addr: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(bad());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_cidr;

    #[test]
    fn cidrs() {
        assert!(validate_cidr("10.244.0.0/24").is_ok());
        assert!(validate_cidr("10.244.0.0/24,fd00::/64").is_ok());
        assert!(validate_cidr("10.244.0.0").is_err());
        assert!(validate_cidr("10.244.0.0/33").is_err());
        assert!(validate_cidr("banana/8").is_err());
    }
}
