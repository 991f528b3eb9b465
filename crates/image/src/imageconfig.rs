//! The parts of an OCI / Docker image config the runtime needs, and the user split CRI wants.

use serde::{Deserialize, Serialize};

use crate::error::ImageError;

/// The runtime settings of an image (the config's `config` object).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    #[serde(rename = "User", default)]
    pub user: String,
    #[serde(rename = "Env", default, deserialize_with = "null_as_default")]
    pub env: Vec<String>,
    #[serde(rename = "Entrypoint", default, deserialize_with = "null_as_default")]
    pub entrypoint: Vec<String>,
    #[serde(rename = "Cmd", default, deserialize_with = "null_as_default")]
    pub cmd: Vec<String>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: String,
    #[serde(rename = "StopSignal", default)]
    pub stop_signal: String,
    #[serde(rename = "Volumes", default, deserialize_with = "null_as_default")]
    pub volumes: std::collections::BTreeMap<String, serde_json::Value>,
    #[serde(rename = "Labels", default, deserialize_with = "null_as_default")]
    pub labels: std::collections::BTreeMap<String, String>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The image config document.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub config: RuntimeConfig,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

impl ConfigFile {
    pub(crate) fn parse(data: &[u8]) -> Result<Self, ImageError> {
        let c: ConfigFile =
            serde_json::from_slice(data).map_err(|e| ImageError::invalid("image config", e))?;
        if c.rootfs.kind != "layers" {
            return Err(ImageError::invalid(
                "image config",
                format!("rootfs type {:?}", c.rootfs.kind),
            ));
        }
        Ok(c)
    }
}

/// How CRI reports an image's user: a numeric uid, or a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageUser {
    None,
    Uid(i64),
    Name(String),
}

impl RuntimeConfig {
    /// `USER` split the way containerd does: the part before `:`; numeric -> uid, else name.
    pub fn image_user(&self) -> ImageUser {
        let user = self.user.split(':').next().unwrap_or("");
        if user.is_empty() {
            ImageUser::None
        } else if let Ok(uid) = user.parse::<i64>() {
            ImageUser::Uid(uid)
        } else {
            ImageUser::Name(user.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_config_with_nulls() {
        let c = ConfigFile::parse(
            br#"{"architecture":"amd64","os":"linux",
            "config":{"User":"1000:1000","Env":["PATH=/bin"],
            "Entrypoint":null,"Cmd":["sh"],"WorkingDir":"/w","Volumes":null,"Labels":null},
            "rootfs":{"type":"layers","diff_ids":["sha256:aa"]}}"#,
        )
        .unwrap();
        assert_eq!(c.config.cmd, vec!["sh"]);
        assert!(c.config.entrypoint.is_empty());
        assert_eq!(c.config.working_dir, "/w");
        assert_eq!(c.config.image_user(), ImageUser::Uid(1000));
        assert_eq!(c.rootfs.diff_ids.len(), 1);
    }

    #[test]
    fn users() {
        let u = |s: &str| RuntimeConfig { user: s.into(), ..Default::default() }.image_user();
        assert_eq!(u(""), ImageUser::None);
        assert_eq!(u("0"), ImageUser::Uid(0));
        assert_eq!(u("nobody"), ImageUser::Name("nobody".into()));
        assert_eq!(u("app:staff"), ImageUser::Name("app".into()));
    }

    #[test]
    fn refuses_non_layer_rootfs_and_junk() {
        assert!(ConfigFile::parse(br#"{"rootfs":{"type":"x","diff_ids":[]}}"#).is_err());
        assert!(ConfigFile::parse(b"not json").is_err());
        assert!(ConfigFile::parse(br#"{"config":{}}"#).is_err());
    }
}
