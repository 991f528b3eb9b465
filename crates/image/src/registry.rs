//! HTTP to one registry endpoint (distribution API v2): the token handshake, manifest and blob
//! GETs. Registries are untrusted, so every response body is read with a cap from
//! [`PullLimits`] and a cap that is hit fails with [`ImageError::LimitExceeded`] naming its
//! setting: token answers (`max_token_bytes`), error answers (`max_error_body_bytes`),
//! manifests and indexes (`max_manifest_bytes`), blobs (their descriptor's size, itself bounded
//! by `max_config_bytes` / `max_layer_bytes`). Bodies are never read whole by a library.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tracing::debug;

use crate::auth::Credentials;
use crate::config::PullLimits;
use crate::digest::{Digest, Hasher};
use crate::error::{ImageError, Result};
use crate::manifest::ACCEPTED;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A registry that stops sending fails the pull instead of hanging it (containerd gives up
/// after a similar time without progress).
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// How requests to the registry are authorised.
#[derive(Clone)]
enum Authorization {
    None,
    Basic(String, String),
    Bearer(String),
}

/// One endpoint (registry or mirror) and repository, authorised for pulling.
pub(crate) struct Session {
    http: reqwest::Client,
    /// `http://host[:port]` or `https://host[:port]`.
    base: String,
    /// `host[:port]`, for messages.
    pub(crate) host: String,
    repository: String,
    /// The image as the client named it, for messages.
    image: String,
    auth: Authorization,
    limits: PullLimits,
}

/// What a body read is for: names the cap's setting and the thing read in messages.
struct Cap<'a> {
    what: &'a str,
    max: u64,
    setting: &'static str,
}

impl Session {
    /// Pings `/v2/` and, when the registry answers with a bearer challenge, gets a pull token
    /// for `repository` from the realm it names (with `creds` when they are a user and password).
    pub(crate) async fn open(
        host: &str,
        plain_http: bool,
        repository: &str,
        image: &str,
        creds: &Credentials,
        limits: &PullLimits,
    ) -> Result<Session> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(|e| ImageError::Registry {
                registry: host.into(),
                detail: format!("HTTP client: {e}"),
            })?;
        let mut s = Session {
            http,
            base: format!("{}://{host}", if plain_http { "http" } else { "https" }),
            host: host.to_string(),
            repository: repository.to_string(),
            image: image.to_string(),
            auth: Authorization::None,
            limits: limits.clone(),
        };
        s.auth = match creds {
            Credentials::Bearer(t) => Authorization::Bearer(t.clone()),
            Credentials::Anonymous | Credentials::Basic { .. } => s.authorize(creds).await?,
        };
        Ok(s)
    }

    async fn authorize(&self, creds: &Credentials) -> Result<Authorization> {
        let basic = match creds {
            Credentials::Basic { username, password } => {
                Authorization::Basic(username.clone(), password.clone())
            }
            _ => Authorization::None,
        };
        let url = format!("{}/v2/", self.base);
        let resp = self.send(self.http.get(&url), &url).await?;
        let challenge = resp
            .headers()
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(BearerChallenge::parse);
        // The ping's body is never read.
        drop(resp);
        let Some(challenge) = challenge else { return Ok(basic) };
        let scope = format!("repository:{}:pull", self.repository);
        let mut query = vec![("scope", scope.as_str())];
        if let Some(s) = &challenge.service {
            query.push(("service", s));
        }
        debug!(realm = %challenge.realm, %scope, "getting a registry token");
        let req = self.http.get(&challenge.realm).query(&query);
        let req = match &basic {
            Authorization::Basic(u, p) => req.basic_auth(u, Some(p)),
            _ => req,
        };
        let what = format!("token answer from {}", challenge.realm);
        let mut resp = self.send(req, &challenge.realm).await?;
        let status = resp.status().as_u16();
        if status != 200 {
            let detail = self.error_detail(&mut resp, &what).await?.text;
            return Err(self.unauthenticated(format!("{what}: HTTP {status}: {detail}")));
        }
        let cap = Cap { what: &what, max: self.limits.max_token_bytes, setting: "max_token_bytes" };
        let body = self.read_capped(&mut resp, &cap).await?;
        let token: TokenAnswer =
            serde_json::from_slice(&body).map_err(|e| ImageError::invalid(&what, e))?;
        match token.token.or(token.access_token).filter(|t| !t.is_empty()) {
            Some(t) => Ok(Authorization::Bearer(t)),
            None => Err(ImageError::invalid(what, "no token in the answer")),
        }
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Authorization::None => req,
            Authorization::Basic(u, p) => req.basic_auth(u, Some(p)),
            Authorization::Bearer(t) => req.bearer_auth(t),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder, url: &str) -> Result<reqwest::Response> {
        req.send().await.map_err(|e| self.registry_err(format!("GET {url}: {e}")))
    }

    /// GETs manifest `reference` (a tag or digest; `query` is appended to the URL) with its
    /// body bounded by `max_manifest_bytes`.
    pub(crate) async fn manifest(
        &self,
        reference: &str,
        query: &str,
        what: &str,
    ) -> Result<bytes::Bytes> {
        let url = format!("{}/v2/{}/manifests/{reference}{query}", self.base, self.repository);
        let req = self.http.get(&url).header(reqwest::header::ACCEPT, ACCEPTED.join(", "));
        let mut resp = self.send(self.authorized(req), &url).await?;
        self.check_status(&mut resp, what, &url).await?;
        let cap = Cap { what, max: self.limits.max_manifest_bytes, setting: "max_manifest_bytes" };
        Ok(bytes::Bytes::from(self.read_capped(&mut resp, &cap).await?))
    }

    /// Streams blob `d` into `out`: never more than the descriptor's `size` bytes are accepted
    /// (a longer body fails as soon as it passes `size`), then size and digest must match.
    pub(crate) async fn blob<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        d: &Digest,
        size: u64,
        what: &str,
        out: &mut W,
    ) -> Result<()> {
        let url = format!("{}/v2/{}/blobs/{d}", self.base, self.repository);
        let mut resp = self.send(self.authorized(self.http.get(&url)), &url).await?;
        self.check_status(&mut resp, what, &url).await?;
        let mismatch =
            |actual| ImageError::SizeMismatch { what: what.into(), expected: size, actual };
        if let Some(len) = resp.content_length().filter(|&l| l != size) {
            return Err(mismatch(len));
        }
        let mut hasher = Hasher::default();
        while let Some(chunk) = self.chunk(&mut resp, what).await? {
            hasher.update(&chunk);
            if hasher.len() > size {
                return Err(mismatch(hasher.len()));
            }
            out.write_all(&chunk)
                .await
                .map_err(|e| ImageError::Io { context: format!("writing {what}"), source: e })?;
        }
        if hasher.len() != size {
            return Err(mismatch(hasher.len()));
        }
        let actual = hasher.finish();
        if &actual != d {
            return Err(ImageError::DigestMismatch {
                what: what.into(),
                expected: d.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(())
    }

    async fn chunk(
        &self,
        resp: &mut reqwest::Response,
        what: &str,
    ) -> Result<Option<bytes::Bytes>> {
        resp.chunk().await.map_err(|e| self.registry_err(format!("reading {what}: {e}")))
    }

    /// Reads the body, failing as soon as it passes `cap.max` (or says it will).
    async fn read_capped(&self, resp: &mut reqwest::Response, cap: &Cap<'_>) -> Result<Vec<u8>> {
        let too_big =
            |n: u64| ImageError::limit(cap.what, cap.setting, cap.max, format!("{n} bytes"));
        if let Some(len) = resp.content_length().filter(|&l| l > cap.max) {
            return Err(too_big(len));
        }
        let mut body = Vec::new();
        while let Some(chunk) = self.chunk(resp, cap.what).await? {
            let n = (body.len() + chunk.len()) as u64;
            if n > cap.max {
                return Err(too_big(n));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Turns a non-200 answer into the service's error: 401/403 or a distribution
    /// UNAUTHORIZED/DENIED code -> Unauthenticated, 404 or a distribution "unknown" code ->
    /// NotFound, else Registry with the registry's own words.
    async fn check_status(
        &self,
        resp: &mut reqwest::Response,
        what: &str,
        url: &str,
    ) -> Result<()> {
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok(());
        }
        let err = self.error_detail(resp, &format!("error answer to GET {url}")).await?;
        let has = |codes: &[&str]| err.codes.iter().any(|c| codes.contains(&c.as_str()));
        let detail = err.text;
        if matches!(status, 401 | 403) || has(&["UNAUTHORIZED", "DENIED"]) {
            return Err(self.unauthenticated(format!("{what}: HTTP {status}: {detail}")));
        }
        if status == 404 || has(&["MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN", "NOT_FOUND"])
        {
            return Err(ImageError::NotFound {
                registry: self.host.clone(),
                image: self.image.clone(),
            });
        }
        Err(self.registry_err(format!("GET {url}: HTTP {status}: {detail}")))
    }

    /// The registry's error, read up to `max_error_body_bytes`: the codes and messages of a
    /// distribution error document, else the body as (printable) text.
    async fn error_detail(
        &self,
        resp: &mut reqwest::Response,
        what: &str,
    ) -> Result<RegistryError> {
        let cap =
            Cap { what, max: self.limits.max_error_body_bytes, setting: "max_error_body_bytes" };
        let body = self.read_capped(resp, &cap).await?;
        if let Ok(doc) = serde_json::from_slice::<ErrorDocument>(&body) {
            if !doc.errors.is_empty() {
                let parts: Vec<String> =
                    doc.errors.iter().map(|e| format!("{} {}", e.code, e.message)).collect();
                return Ok(RegistryError {
                    codes: doc.errors.into_iter().map(|e| e.code).collect(),
                    text: printable(&parts.join("; ")),
                });
            }
        }
        Ok(RegistryError { codes: Vec::new(), text: printable(&String::from_utf8_lossy(&body)) })
    }

    fn registry_err(&self, detail: String) -> ImageError {
        ImageError::Registry { registry: self.host.clone(), detail }
    }

    fn unauthenticated(&self, detail: String) -> ImageError {
        ImageError::Unauthenticated {
            registry: self.host.clone(),
            image: self.image.clone(),
            detail,
        }
    }
}

/// At most 512 characters, control characters replaced: a registry's words go into logs and
/// gRPC statuses.
fn printable(s: &str) -> String {
    s.trim().chars().take(512).map(|c| if c.is_control() { ' ' } else { c }).collect()
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// A registry's error answer: its distribution error codes and its words for messages.
struct RegistryError {
    codes: Vec<String>,
    text: String,
}

#[derive(serde::Deserialize)]
struct ErrorDocument {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(serde::Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// `WWW-Authenticate: Bearer realm="...",service="...",scope="..."`.
#[derive(Debug, PartialEq, Eq)]
struct BearerChallenge {
    realm: String,
    service: Option<String>,
}

impl BearerChallenge {
    fn parse(header: &str) -> Option<BearerChallenge> {
        let (scheme, rest) = header.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = auth_params(rest)?;
        let get = |k: &str| params.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|p| &p.1);
        let realm = get("realm")?.clone();
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return None;
        }
        Some(BearerChallenge { realm, service: get("service").cloned() })
    }
}

/// `k1="v, 1", k2=v2` -> pairs (RFC 7235 auth-params; quoted strings with `\` escapes).
fn auth_params(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=') {
            key.push(c);
        }
        chars.next()?; // '='
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                value.push(c);
            }
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges() {
        let c = BearerChallenge::parse(concat!(
            r#"Bearer realm="https://auth.docker.io/token","#,
            r#"service="registry.docker.io",scope="repository:library/busybox:pull""#
        ))
        .unwrap();
        assert_eq!(c.realm, "https://auth.docker.io/token");
        assert_eq!(c.service.as_deref(), Some("registry.docker.io"));
        let c = BearerChallenge::parse(r#"bearer service="a,\"b", realm=http://x/t"#).unwrap();
        assert_eq!(
            c,
            BearerChallenge { realm: "http://x/t".into(), service: Some("a,\"b".into()) }
        );
        assert_eq!(BearerChallenge::parse(r#"Basic realm="x""#), None);
        assert_eq!(BearerChallenge::parse(r#"Bearer realm="file:///etc/passwd""#), None);
        assert_eq!(BearerChallenge::parse(r#"Bearer realm="https://x"#), None);
        assert_eq!(BearerChallenge::parse("Bearer service=x"), None);
    }

    #[test]
    fn printable_cuts_and_cleans() {
        assert_eq!(printable(" a\nb\x1b "), "a b ");
        assert_eq!(printable(&"x".repeat(2000)).len(), 512);
    }
}
