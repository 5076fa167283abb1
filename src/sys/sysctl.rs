//! sysctls (proc(5), /proc/sys): a write goes to the namespace of the
//! writing process, so the pod's network and IPC sysctls are written by a
//! process inside the pod's namespaces.

use std::path::PathBuf;

use super::{Error, Result, io};

/// The /proc/sys file of a dotted (or slashed) sysctl name.
pub fn path(name: &str) -> Result<PathBuf> {
    let valid = !name.is_empty()
        && name
            .split(['.', '/'])
            .all(|part| !part.is_empty() && part != ".." && part != "." && !part.contains('\0'));
    if !valid {
        return Err(Error::SysctlName(name.to_string()));
    }
    // In the slashed form dots are literal (interface names like eth0.100).
    let rel = if name.contains('/') {
        name.to_string()
    } else {
        name.replace('.', "/")
    };
    Ok(PathBuf::from("/proc/sys").join(rel))
}

/// Writes `value` to sysctl `name` in the caller's namespaces.
pub fn write(name: &str, value: &str) -> Result<()> {
    let path = path(name)?;
    std::fs::write(&path, value).map_err(io("write sysctl", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_proc_sys() {
        assert_eq!(
            path("net.ipv4.ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            path("net/ipv4/conf/eth0.100/forwarding").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        for bad in ["", "net..x", "../etc", "net./x", "a/../b"] {
            assert!(path(bad).is_err(), "{bad:?}");
        }
    }
}
