//! AppArmor and SELinux requests (the Linux security modules a CRI security
//! context can name). crius applies an AppArmor profile that is already
//! loaded on the node (Localhost) by asking for it at execve, through
//! `/proc/self/attr/apparmor/exec`, as runc does; it loads no profile of its
//! own, so RuntimeDefault and Unconfined leave the process as it is. It
//! applies no SELinux labels. A request crius cannot honour on this host is
//! refused, never ignored: a Localhost AppArmor profile where AppArmor is
//! off, and any SELinux options.

use std::path::Path;

use super::spec::{AppArmor, Security};

/// Which security modules the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    pub apparmor: bool,
    pub selinux: bool,
}

impl Host {
    /// This machine, as the kernel reports it.
    pub fn current() -> Host {
        let apparmor = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|v| v.trim() == "Y");
        Host {
            apparmor,
            selinux: Path::new("/sys/fs/selinux/enforce").exists(),
        }
    }
}

/// The AppArmor profile the container's process asks for at execve
/// (`None`: none), or why the request cannot be honoured.
pub fn apparmor_profile(security: &Security, host: Host) -> Result<Option<String>, String> {
    if security.selinux {
        return Err(if host.selinux {
            "selinux_options: crius does not apply SELinux labels".into()
        } else {
            "selinux_options: SELinux is not enabled on this host".into()
        });
    }
    match &security.apparmor {
        AppArmor::RuntimeDefault | AppArmor::Unconfined => Ok(None),
        AppArmor::Localhost(name) if !host.apparmor => Err(format!(
            "apparmor: profile {name:?} requested, but AppArmor is not enabled on this host"
        )),
        AppArmor::Localhost(name) if name.is_empty() || name.contains(['\n', '\0']) => {
            Err(format!("apparmor: {name:?} is not a profile name"))
        }
        AppArmor::Localhost(name) => Ok(Some(name.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_honoured_or_refused() {
        let none = Host {
            apparmor: false,
            selinux: false,
        };
        let aa = Host {
            apparmor: true,
            selinux: false,
        };
        let mut s = Security::default();
        assert_eq!(apparmor_profile(&s, none), Ok(None));
        s.apparmor = AppArmor::Unconfined;
        assert_eq!(apparmor_profile(&s, none), Ok(None));
        s.apparmor = AppArmor::Localhost("k8s-nginx".into());
        let e = apparmor_profile(&s, none).unwrap_err();
        assert!(e.contains("AppArmor is not enabled"), "{e}");
        assert_eq!(apparmor_profile(&s, aa), Ok(Some("k8s-nginx".into())));
        s.apparmor = AppArmor::RuntimeDefault;
        s.selinux = true;
        let e = apparmor_profile(&s, none).unwrap_err();
        assert!(e.contains("SELinux is not enabled"), "{e}");
    }
}
