//! The `[streaming]` section of the daemon's config: where the streaming server (Exec, Attach,
//! PortForward URLs) listens, and its TLS files.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[streaming]` in the daemon's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamingConfig {
    /// The address the streaming server listens on (default 127.0.0.1: only local clients,
    /// as kubelet reaches it; set the node's address for an API server elsewhere).
    #[serde(default = "default_address")]
    pub address: IpAddr,
    /// TCP port; 0 = any free port (as containerd's default).
    #[serde(default)]
    pub port: u16,
    /// TLS: the server's certificate chain (PEM) and its PKCS#8 key (PEM), both or neither
    /// ([`tls`]); with them the URLs are `https://`.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
}

fn default_address() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: default_address(),
            port: 0,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl StreamingConfig {
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_to_loopback_any_port() {
        let c: StreamingConfig = toml::from_str("").unwrap();
        assert_eq!(c, StreamingConfig::default());
        assert_eq!(c.socket_addr().to_string(), "127.0.0.1:0");
        let c: StreamingConfig = toml::from_str("address = \"::1\"\nport = 10010").unwrap();
        assert_eq!(c.socket_addr().to_string(), "[::1]:10010");
        assert!(toml::from_str::<StreamingConfig>("adress = \"::1\"").is_err());
        let c: StreamingConfig =
            toml::from_str("tls_cert_file = \"/c.pem\"\ntls_key_file = \"/k.pem\"").unwrap();
        assert_eq!(c.tls_key_file, Some(PathBuf::from("/k.pem")));
    }
}
