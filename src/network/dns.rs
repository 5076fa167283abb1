//! The pod's name-resolution files, which every container of the pod
//! bind-mounts: `resolv.conf` (resolv.conf(5)) from the pod's DNS config,
//! the `hostname` file, and an `/etc/hosts` (hosts(5)) in kubelet's format
//! for clients that do not bring their own (kubelet mounts its managed one).
//!
//! kubelet computes the DNS config itself for every dnsPolicy (ClusterFirst,
//! Default, None) and sends it; when none is sent (crictl, critest) the
//! host's resolv.conf is copied, as containerd and CRI-O do. Entries are
//! checked for whitespace and control characters, since one entry must not
//! be able to add lines of its own to the file.

use std::io::Write;
use std::path::Path;

use super::Error;

/// A pod's DNS settings (CRI DNSConfig).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// Nameserver addresses.
    pub servers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// resolv.conf options, e.g. `ndots:5`.
    pub options: Vec<String>,
}

impl DnsConfig {
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.searches.is_empty() && self.options.is_empty()
    }
}

/// resolv.conf text for `config`.
pub fn render_resolv_conf(config: &DnsConfig) -> Result<String, Error> {
    for (what, list) in [
        ("server", &config.servers),
        ("search domain", &config.searches),
        ("option", &config.options),
    ] {
        for entry in list {
            if entry.is_empty() || entry.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(Error::InvalidDns(format!(
                    "{what} {entry:?} is empty or contains whitespace"
                )));
            }
        }
    }
    let mut text = String::new();
    if !config.searches.is_empty() {
        text.push_str(&format!("search {}\n", config.searches.join(" ")));
    }
    for server in &config.servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !config.options.is_empty() {
        text.push_str(&format!("options {}\n", config.options.join(" ")));
    }
    Ok(text)
}

/// Writes `path` from `config`, or copies `host_resolv` when there is no
/// (or an empty) config. A host without a resolv.conf gives an empty file.
pub fn write_resolv_conf(
    path: &Path,
    config: Option<&DnsConfig>,
    host_resolv: &Path,
) -> Result<(), Error> {
    let text = match config {
        Some(c) if !c.is_empty() => render_resolv_conf(c)?.into_bytes(),
        _ => match std::fs::read(host_resolv) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %host_resolv.display(), "host resolv.conf is missing; pod gets an empty one");
                Vec::new()
            }
            Err(source) => {
                return Err(Error::Io {
                    op: "read host resolv.conf",
                    path: host_resolv.into(),
                    source,
                });
            }
        },
    };
    write_file(path, &text)
}

/// Writes the pod's hostname file (`name` and a newline).
pub fn write_hostname(path: &Path, name: &str) -> Result<(), Error> {
    if name.is_empty()
        || name.len() > 64
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::InvalidDns(format!("invalid hostname {name:?}")));
    }
    write_file(path, format!("{name}\n").as_bytes())
}

/// Writes an /etc/hosts for the pod: localhost entries and the pod's
/// addresses under its hostname, as kubelet's managed hosts file has them.
pub fn write_hosts(path: &Path, hostname: &str, ips: &[std::net::IpAddr]) -> Result<(), Error> {
    if hostname
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::InvalidDns(format!("invalid hostname {hostname:?}")));
    }
    let mut text = String::from(
        "# crius-managed hosts file.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    if !hostname.is_empty() {
        for ip in ips {
            text.push_str(&format!("{ip}\t{hostname}\n"));
        }
    }
    write_file(path, text.as_bytes())
}

/// Atomic write with mode 0644 (containers read these as any user).
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| Error::Io {
            op,
            path: p,
            source,
        }
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    file.write_all(bytes).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename into place", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn cfg(servers: &[&str], searches: &[&str], options: &[&str]) -> DnsConfig {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        DnsConfig {
            servers: v(servers),
            searches: v(searches),
            options: v(options),
        }
    }

    #[test]
    fn renders_kubelet_cluster_first_config() {
        let c = cfg(
            &["10.96.0.10", "fd00::a"],
            &[
                "default.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
            ],
            &["ndots:5", "edns0"],
        );
        assert_eq!(
            render_resolv_conf(&c).unwrap(),
            "search default.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5 edns0\n"
        );
        assert_eq!(
            render_resolv_conf(&cfg(&["1.1.1.1"], &[], &[])).unwrap(),
            "nameserver 1.1.1.1\n"
        );
    }

    #[test]
    fn entries_cannot_inject_lines() {
        for c in [
            cfg(&["1.1.1.1\nnameserver 6.6.6.6"], &[], &[]),
            cfg(&[], &["a b"], &[]),
            cfg(&[], &[], &[""]),
        ] {
            let e = render_resolv_conf(&c).unwrap_err();
            assert!(matches!(e, Error::InvalidDns(_)), "{e}");
        }
    }

    #[test]
    fn writes_config_or_copies_the_host_file() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host-resolv.conf");
        std::fs::write(&host, "nameserver 192.0.2.53\n").unwrap();
        let out = dir.path().join("resolv.conf");
        write_resolv_conf(&out, Some(&cfg(&["8.8.8.8"], &["x"], &[])), &host).unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "search x\nnameserver 8.8.8.8\n"
        );
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o644
        );
        write_resolv_conf(&out, None, &host).unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "nameserver 192.0.2.53\n"
        );
        write_resolv_conf(&out, Some(&DnsConfig::default()), &host).unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "nameserver 192.0.2.53\n"
        );
        write_resolv_conf(&out, None, &dir.path().join("absent")).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "");
        // Only the output file remains besides the host file.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn hosts_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("hosts");
        let ips = ["10.1.0.4".parse().unwrap(), "fd00::4".parse().unwrap()];
        write_hosts(&out, "web-0", &ips).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.contains("127.0.0.1\tlocalhost\n"), "{text}");
        assert!(
            text.contains("::1\tlocalhost ip6-localhost ip6-loopback\n"),
            "{text}"
        );
        assert!(
            text.ends_with("10.1.0.4\tweb-0\nfd00::4\tweb-0\n"),
            "{text}"
        );
        assert!(write_hosts(&out, "a b", &ips).is_err());
    }

    #[test]
    fn hostname_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("hostname");
        write_hostname(&out, "web-0").unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "web-0\n");
        assert!(write_hostname(&out, "a\nb").is_err());
        assert!(write_hostname(&out, "").is_err());
    }
}
