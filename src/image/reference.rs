//! Image references as kubelet and crictl send them, normalised the way the
//! Docker distribution library does: `busybox` is
//! `docker.io/library/busybox:latest`, `host:port/path:tag`,
//! `name@sha256:<hex>` and `name:tag@sha256:<hex>` (the digest wins for
//! fetching, the tag is kept as a name). See the distribution `reference`
//! grammar (github.com/distribution/reference, reference.go).

use std::fmt;

use super::Error;

pub const DOCKER_HUB: &str = "docker.io";

/// A parsed, normalised reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `docker.io`, `registry.k8s.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// `library/busybox`.
    pub repository: String,
    /// The tag (`latest` when neither tag nor digest was given).
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(input: &str) -> Result<Reference, Error> {
        let bad = |why: &str| Error::BadReference(input.to_string(), why.to_string());
        if input.is_empty() {
            return Err(bad("empty reference"));
        }
        if input.len() > 4096 {
            return Err(bad("reference is too long"));
        }
        let (name, digest) = match input.split_once('@') {
            Some((name, digest)) => {
                check_digest(digest).map_err(|why| bad(&why))?;
                (name, Some(digest.to_string()))
            }
            None => (input, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&name[..at], Some(name[at + 1..].to_string()))
            }
            None => (name, None),
        };
        if let Some(tag) = &tag {
            check_tag(tag).map_err(|why| bad(&why))?;
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        check_registry(&registry).map_err(|why| bad(&why))?;
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        check_path(&repository).map_err(|why| bad(&why))?;
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (tag, _) => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`, the name repo tags and digests start with.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `name:tag`, when the reference has a tag.
    pub fn repo_tag(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `name@digest` for a manifest digest.
    pub fn repo_digest(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name())
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Checks a `sha256:<64 lower-case hex>` digest (the only algorithm crius
/// verifies).
pub fn check_digest(digest: &str) -> Result<(), String> {
    let Some(hex) = digest.strip_prefix("sha256:") else {
        return Err(format!("digest {digest:?} is not sha256:<hex>"));
    };
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "digest {digest:?} must have 64 lower-case hex digits"
        ));
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid tag {tag:?}"))
    }
}

fn check_registry(registry: &str) -> Result<(), String> {
    let ok = !registry.is_empty()
        && registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid registry host {registry:?}"))
    }
}

fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty repository name".into());
    }
    if path.len() > 255 {
        return Err("repository name is longer than 255 characters".into());
    }
    for component in path.split('/') {
        if component.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("repository name {path:?} must be lower-case"));
        }
        let valid = !component.is_empty()
            && component.as_bytes()[0].is_ascii_alphanumeric()
            && component.as_bytes()[component.len() - 1].is_ascii_alphanumeric()
            && component.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            });
        if !valid {
            return Err(format!("invalid repository path component {component:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(p("busybox").to_string(), "docker.io/library/busybox:latest");
        assert_eq!(p("user/app:1").to_string(), "docker.io/user/app:1");
        assert_eq!(
            p("index.docker.io/library/busybox").to_string(),
            "docker.io/library/busybox:latest"
        );
        let r = p("127.0.0.1:5000/a/b:v1.2");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "a/b");
        assert_eq!(r.tag.as_deref(), Some("v1.2"));
        assert_eq!(p("localhost/x").registry, "localhost");
        assert_eq!(p("localhost:5000/x").registry, "localhost:5000");
        let r = p(&format!("busybox@{D}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.repo_digest(D), format!("docker.io/library/busybox@{D}"));
        let r = p(&format!("reg.io:443/busybox:1@{D}"));
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.repo_tag().unwrap(), "reg.io:443/busybox:1");
        assert_eq!(r.to_string(), format!("reg.io:443/busybox:1@{D}"));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "busybox@sha256:abc",
            "busybox@md5:0123",
            "a//b",
            "-a",
            "a/b-",
            "bad host!/x",
        ] {
            let err = Reference::parse(bad).unwrap_err().to_string();
            assert!(err.contains("invalid image reference"), "{bad}: {err}");
        }
    }
}
