//! Where a registry's content is fetched from: containerd's `hosts.toml`
//! (<https://github.com/containerd/containerd/blob/main/docs/hosts.md>), so
//! users keep the files they have. `<config_path>/<host[:port]>/hosts.toml`,
//! else `<config_path>/_default/hosts.toml`, lists mirrors (`[host."URL"]`,
//! tried in order) and the upstream `server`; each may set `capabilities`
//! (`pull`, `resolve`), `skip_verify` and `ca` (a path or a list).
//!
//! A registry on loopback (localhost, 127.0.0.0/8, [::1]) without a config
//! is tried over HTTPS and then plain HTTP, as containerd does; connecting
//! to loopback (TCP and the TLS handshake) is bounded at
//! [`LOOPBACK_CONNECT_TIMEOUT`], so a port that never answers the handshake
//! sends the pull on to plain HTTP within seconds.
//!
//! `ca` certificates are trusted in addition to the system's roots, for
//! that host only (rustls: a certificate that is its own CA with
//! basicConstraints CA:TRUE is refused as a server's certificate even
//! when listed there; the error says so); `skip_verify` accepts any
//! certificate. A `client`
//! certificate is refused with an error (not supported: oci-client, which
//! fetches the blobs, cannot present one).

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};

use super::Error;
use super::reference::DOCKER_HUB;

/// The bound on connecting (TCP and TLS handshake) to a loopback registry.
pub const LOOPBACK_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The bound on connecting to any other registry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// One place to fetch from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Plain HTTP instead of HTTPS.
    pub http: bool,
    /// `host[:port]` to connect to.
    pub host: String,
    /// May resolve tags (else only content by digest is fetched from it).
    pub resolve: bool,
    pub pull: bool,
    pub skip_verify: bool,
    pub ca: Vec<PathBuf>,
}

impl Endpoint {
    fn from_url(url: &str, path: &Path) -> Result<Endpoint, Error> {
        let bad = |message: String| Error::HostsConfig {
            path: path.into(),
            message,
        };
        let (http, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (false, rest)
        } else {
            (false, url)
        };
        let (host, url_path) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty() {
            return Err(bad(format!("no host in {url:?}")));
        }
        let url_path = url_path.trim_end_matches('/');
        if !url_path.is_empty() && url_path != "v2" {
            return Err(bad(format!(
                "{url:?}: a path other than /v2 is not supported"
            )));
        }
        Ok(Endpoint {
            http,
            host: host.to_string(),
            resolve: true,
            pull: true,
            skip_verify: false,
            ca: Vec::new(),
        })
    }

    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.http { "http" } else { "https" },
            self.host
        )
    }

    /// A client for this endpoint. One per pull: oci-client keeps the
    /// credentials it was first given per registry.
    pub fn client(&self) -> Result<oci_client::Client, Error> {
        install_crypto_provider();
        let extra_root_certificates = self
            .ca_pems()?
            .into_iter()
            .map(|data| Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            })
            .collect();
        let config = ClientConfig {
            protocol: if self.http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: self.skip_verify,
            extra_root_certificates,
            platform_resolver: None,
            // No read timeout here: the pull's own progress timeout
            // covers every request and every chunk, and says so.
            connect_timeout: Some(self.connect_timeout()),
            user_agent: concat!("crius/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        oci_client::Client::try_from(config).map_err(|e| Error::Registry {
            reference: self.url(),
            message: format!("create client: {e}"),
            kind: crate::error::Kind::Internal,
        })
    }
}

fn install_crypto_provider() {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Endpoint {
    fn connect_timeout(&self) -> Duration {
        if is_loopback(&self.host) {
            LOOPBACK_CONNECT_TIMEOUT
        } else {
            CONNECT_TIMEOUT
        }
    }

    fn ca_pems(&self) -> Result<Vec<Vec<u8>>, Error> {
        self.ca
            .iter()
            .map(|ca| std::fs::read(ca).map_err(super::io_err("read CA certificate", ca)))
            .collect()
    }

    /// A plain HTTP client with this endpoint's TLS settings, for the
    /// requests whose response size crius bounds itself (manifests:
    /// oci-client reads a manifest body whole, however long).
    pub fn http_client(&self) -> Result<reqwest::Client, Error> {
        install_crypto_provider();
        let internal = |message: String| Error::Registry {
            reference: self.url(),
            message,
            kind: crate::error::Kind::Internal,
        };
        let mut certs = Vec::new();
        for pem in self.ca_pems()? {
            certs.push(
                reqwest::Certificate::from_pem(&pem)
                    .map_err(|e| internal(format!("parse CA certificate: {e}")))?,
            );
        }
        reqwest::Client::builder()
            .danger_accept_invalid_certs(self.skip_verify)
            .tls_certs_merge(certs)
            .connect_timeout(self.connect_timeout())
            .user_agent(concat!("crius/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| internal(format!("create client: {}", crate::error::chain(&e))))
    }
}

/// What to do about a TLS failure that rustls names in `message`, where
/// the fix is not obvious from its name.
pub fn tls_hint(message: &str) -> Option<&'static str> {
    message.contains("CaUsedAsEndEntity").then_some(
        "the registry presents a CA certificate (basicConstraints CA:TRUE) as its own, \
         which is refused even when listed in `ca`: serve a certificate signed by that CA, \
         or one without CA:TRUE, or set skip_verify",
    )
}

/// Whether `host[:port]` is a loopback address.
pub fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name == "localhost"
        || name == "::1"
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The endpoints to try for `registry`, mirrors first.
pub fn endpoints(config_dir: &Path, registry: &str) -> Result<Vec<Endpoint>, Error> {
    for dir in [registry, "_default"] {
        let path = config_dir.join(dir).join("hosts.toml");
        match std::fs::read_to_string(&path) {
            Ok(text) => return parse_hosts(&text, &path, registry),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(super::io_err("read", &path)(e)),
        }
    }
    Ok(default_endpoints(registry))
}

fn default_endpoints(registry: &str) -> Vec<Endpoint> {
    let host = if registry == DOCKER_HUB {
        "registry-1.docker.io".to_string()
    } else {
        registry.to_string()
    };
    let https = Endpoint {
        http: false,
        host,
        resolve: true,
        pull: true,
        skip_verify: false,
        ca: Vec::new(),
    };
    if is_loopback(registry) {
        let http = Endpoint {
            http: true,
            ..https.clone()
        };
        vec![https, http]
    } else {
        vec![https]
    }
}

fn parse_hosts(text: &str, path: &Path, registry: &str) -> Result<Vec<Endpoint>, Error> {
    let bad = |message: String| Error::HostsConfig {
        path: path.into(),
        message,
    };
    let table: toml::Table = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    if let Some(hosts) = table.get("host") {
        let hosts = hosts
            .as_table()
            .ok_or_else(|| bad("`host` must be a table".into()))?;
        for (url, settings) in hosts {
            let settings = settings
                .as_table()
                .ok_or_else(|| bad(format!("host {url:?} must be a table")))?;
            let mut ep = Endpoint::from_url(url, path)?;
            apply_settings(&mut ep, settings, path)?;
            out.push(ep);
        }
    }
    match table.get("server") {
        Some(server) => {
            let server = server
                .as_str()
                .ok_or_else(|| bad("`server` must be a string".into()))?;
            let mut ep = Endpoint::from_url(server, path)?;
            apply_settings(&mut ep, &table, path)?;
            out.push(ep);
        }
        None => out.extend(default_endpoints(registry)),
    }
    Ok(out)
}

fn apply_settings(ep: &mut Endpoint, t: &toml::Table, path: &Path) -> Result<(), Error> {
    let bad = |message: String| Error::HostsConfig {
        path: path.into(),
        message,
    };
    if let Some(caps) = t.get("capabilities") {
        let caps: Vec<&str> = caps
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .ok_or_else(|| bad("`capabilities` must be a list of strings".into()))?;
        ep.pull = caps.contains(&"pull");
        ep.resolve = caps.contains(&"resolve");
    }
    if let Some(v) = t.get("skip_verify") {
        ep.skip_verify = v
            .as_bool()
            .ok_or_else(|| bad("`skip_verify` must be a boolean".into()))?;
    }
    if t.contains_key("client") {
        return Err(bad(
            "`client` certificates are not supported (crius cannot present one)".into(),
        ));
    }
    if let Some(ca) = t.get("ca") {
        let list: Vec<&toml::Value> = match ca {
            toml::Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        for v in list {
            let p = v
                .as_str()
                .ok_or_else(|| bad("`ca` must be a path or a list of paths".into()))?;
            let p = PathBuf::from(p);
            // Relative paths are relative to the hosts.toml directory.
            ep.ca.push(match path.parent() {
                Some(dir) if p.is_relative() => dir.join(p),
                _ => p,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:1",
            "127.3.4.5",
            "[::1]:5000",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["docker.io", "10.0.0.1:5000", "[::2]:1", "localhost.example"] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn loopback_connects_are_bounded_short() {
        let eps = default_endpoints("127.0.0.1:5000");
        assert!(
            eps.iter()
                .all(|e| e.connect_timeout() == LOOPBACK_CONNECT_TIMEOUT)
        );
        assert_eq!(
            default_endpoints("reg.example")[0].connect_timeout(),
            CONNECT_TIMEOUT
        );
    }

    #[test]
    fn defaults_without_config() {
        let dir = tempfile::tempdir().unwrap();
        let eps = endpoints(dir.path(), "docker.io").unwrap();
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].url(), "https://registry-1.docker.io");
        let eps = endpoints(dir.path(), "127.0.0.1:5000").unwrap();
        let urls: Vec<_> = eps.iter().map(Endpoint::url).collect();
        assert_eq!(urls, ["https://127.0.0.1:5000", "http://127.0.0.1:5000"]);
    }

    #[test]
    fn hosts_toml_mirrors_in_order_then_server() {
        let dir = tempfile::tempdir().unwrap();
        let reg = dir.path().join("reg.example:5000");
        std::fs::create_dir_all(&reg).unwrap();
        std::fs::write(
            reg.join("hosts.toml"),
            r#"
server = "https://reg.example:5000"
ca = "ca.pem"
[host."http://127.0.0.1:7000"]
  capabilities = ["pull"]
[host."https://b.example/v2"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
"#,
        )
        .unwrap();
        let eps = endpoints(dir.path(), "reg.example:5000").unwrap();
        let urls: Vec<_> = eps.iter().map(Endpoint::url).collect();
        assert_eq!(
            urls,
            [
                "http://127.0.0.1:7000",
                "https://b.example",
                "https://reg.example:5000"
            ]
        );
        assert!(eps[0].pull && !eps[0].resolve);
        assert!(eps[1].skip_verify && eps[1].resolve);
        assert_eq!(eps[2].ca, [reg.join("ca.pem")]);

        let fallback = dir.path().join("_default");
        std::fs::create_dir_all(&fallback).unwrap();
        std::fs::write(fallback.join("hosts.toml"), "[host.\"http://m:1\"]\n").unwrap();
        let urls: Vec<_> = endpoints(dir.path(), "other.io")
            .unwrap()
            .iter()
            .map(Endpoint::url)
            .collect();
        assert_eq!(urls, ["http://m:1", "https://other.io"]);

        std::fs::write(
            fallback.join("hosts.toml"),
            "[host.\"https://m:1\"]\nclient = [\"c.pem\", \"c.key\"]\n",
        )
        .unwrap();
        let err = endpoints(dir.path(), "other.io").unwrap_err().to_string();
        assert!(
            err.contains("`client` certificates are not supported"),
            "{err}"
        );

        std::fs::write(fallback.join("hosts.toml"), "[host.\"http://m:1/x\"]\n").unwrap();
        let err = endpoints(dir.path(), "other.io").unwrap_err().to_string();
        assert!(err.contains("path other than /v2"), "{err}");
    }
}
