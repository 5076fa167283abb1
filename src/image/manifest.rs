//! Fetching a manifest or index with a bound on its size. A registry is
//! hostile input: oci-client reads a manifest body whole however long it
//! is, so crius sends this one request itself and stops reading at the
//! limit (`registry.max_manifest_bytes`, 4 MiB by default, as
//! containers/image and the OCI distribution spec's recommendation).
//! Authentication still comes from oci-client (`Client::auth`: the bearer
//! token flow), so the blob requests that follow reuse its token.

use oci_client::RegistryOperation;
use oci_client::secrets::RegistryAuth;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, WWW_AUTHENTICATE};

use super::registry::Endpoint;
use super::{Error, Result};
use crate::error::Kind;

/// What a manifest request needs.
pub struct Source<'a> {
    pub endpoint: &'a Endpoint,
    pub http: &'a reqwest::Client,
    pub oci: &'a oci_client::Client,
    pub auth: &'a RegistryAuth,
    /// The image as the user named it, for error messages.
    pub name: &'a str,
}

/// The most of an error body kept for the message.
const ERROR_BODY: usize = 512;

impl Source<'_> {
    fn failed(&self, message: String, kind: Kind) -> Error {
        Error::Registry {
            reference: self.name.to_string(),
            message,
            kind,
        }
    }

    /// The manifest `oref` names (by tag or digest), at most `limit` bytes;
    /// `what` names it in errors.
    pub async fn fetch(
        &self,
        oref: &oci_client::Reference,
        accept: &[&str],
        limit: u64,
        what: &str,
    ) -> Result<Vec<u8>> {
        let url = format!(
            "{}/v2/{}/manifests/{}{}",
            self.endpoint.url(),
            oref.repository(),
            oref.digest().or(oref.tag()).unwrap_or("latest"),
            oref.namespace()
                .map(|ns| format!("?ns={ns}"))
                .unwrap_or_default(),
        );
        let bearer = self
            .oci
            .auth(oref, self.auth, RegistryOperation::Pull)
            .await
            .map_err(|e| super::pull::registry_err(self.name, e))?;
        let send = |basic: bool| {
            let mut req = self.http.get(&url).header(ACCEPT, accept.join(", "));
            if let Some(token) = &bearer {
                req = req.bearer_auth(token);
            } else if let (true, RegistryAuth::Basic(user, pass)) = (basic, self.auth) {
                req = req.basic_auth(user, Some(pass));
            }
            req.send()
        };
        let net = |e: reqwest::Error| {
            self.failed(
                format!("get {url}: {}", crate::error::chain(&e)),
                Kind::Unavailable,
            )
        };
        let mut resp = send(false).await.map_err(net)?;
        // A registry with Basic authentication asks for it.
        if resp.status() == StatusCode::UNAUTHORIZED
            && bearer.is_none()
            && matches!(self.auth, RegistryAuth::Basic(..))
            && resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("basic"))
        {
            resp = send(true).await.map_err(net)?;
        }
        let status = resp.status();
        if !status.is_success() {
            let kind = match status {
                StatusCode::NOT_FOUND => Kind::NotFound,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Kind::FailedPrecondition,
                _ => Kind::Unavailable,
            };
            let body = read_capped(&mut resp, ERROR_BODY as u64, true)
                .await
                .unwrap_or_default();
            return Err(self.failed(
                format!(
                    "get {url}: {status}: {}",
                    String::from_utf8_lossy(&body).trim()
                ),
                kind,
            ));
        }
        let too_large = || Error::TooLarge {
            what: format!("{what} of {}", self.name),
            limit,
            key: "registry.max_manifest_bytes",
        };
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        match read_capped(&mut resp, limit, false).await {
            Ok(body) => Ok(body),
            Err(None) => Err(too_large()),
            Err(Some(e)) => Err(net(e)),
        }
    }
}

/// Reads the body, at most `limit` bytes: longer is `Err(None)`, or the
/// first `limit` bytes when `truncate`.
async fn read_capped(
    resp: &mut reqwest::Response,
    limit: u64,
    truncate: bool,
) -> std::result::Result<Vec<u8>, Option<reqwest::Error>> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(Some)? {
        let room = (limit as usize).saturating_sub(body.len());
        if chunk.len() > room {
            if truncate {
                body.extend_from_slice(&chunk[..room]);
                return Ok(body);
            }
            return Err(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
