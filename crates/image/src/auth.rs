//! Registry credentials from a CRI `AuthConfig`.

use base64::Engine as _;
use k8s_cri::v1::AuthConfig;
use tracing::warn;

/// Credentials for one pull.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// A registry bearer token used as is.
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => write!(f, "Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::Bearer(_) => write!(f, "Bearer(***)"),
        }
    }
}

impl Credentials {
    /// username/password, else `auth` (base64 `user:password`), else `registry_token`.
    /// `identity_token` (an OAuth refresh token) is not supported and is ignored.
    pub fn from_cri(auth: Option<&AuthConfig>) -> Self {
        let Some(a) = auth else { return Credentials::Anonymous };
        if !a.username.is_empty() || !a.password.is_empty() {
            return Credentials::Basic {
                username: a.username.clone(),
                password: a.password.clone(),
            };
        }
        if !a.auth.is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(a.auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            match decoded.as_deref().and_then(|s| s.split_once(':')) {
                Some((u, p)) => {
                    return Credentials::Basic { username: u.to_string(), password: p.to_string() }
                }
                None => warn!("AuthConfig.auth is not base64 of user:password, ignored"),
            }
        }
        if !a.registry_token.is_empty() {
            return Credentials::Bearer(a.registry_token.clone());
        }
        if !a.identity_token.is_empty() {
            warn!("AuthConfig.identity_token is not supported, pulling anonymously");
        }
        Credentials::Anonymous
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_cri_auth_config() {
        assert_eq!(Credentials::from_cri(None), Credentials::Anonymous);
        let a = AuthConfig { username: "u".into(), password: "p".into(), ..Default::default() };
        assert_eq!(
            Credentials::from_cri(Some(&a)),
            Credentials::Basic { username: "u".into(), password: "p".into() }
        );
        let a = AuthConfig { auth: "dTpwOng=".into(), ..Default::default() }; // u:p:x
        assert_eq!(
            Credentials::from_cri(Some(&a)),
            Credentials::Basic { username: "u".into(), password: "p:x".into() }
        );
        let a =
            AuthConfig { auth: "!!".into(), registry_token: "tok".into(), ..Default::default() };
        assert_eq!(Credentials::from_cri(Some(&a)), Credentials::Bearer("tok".into()));
        let a = AuthConfig { identity_token: "x".into(), ..Default::default() };
        assert_eq!(Credentials::from_cri(Some(&a)), Credentials::Anonymous);
        assert!(!format!("{:?}", Credentials::Bearer("secret".into())).contains("secret"));
    }
}
