//! Optional TLS of the streaming server: `[streaming] tls_cert_file` (PEM, the server's
//! certificate and any intermediates) and `tls_key_file` (PEM, PKCS#8), both or neither. With
//! them the URLs are `https://`; the handshake runs before any HTTP is read, and a client that
//! does not finish it within [`HANDSHAKE_TIMEOUT`] is dropped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_native_tls::TlsAcceptor;

use super::StreamingConfig;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A certificate or key file larger than this is refused (a PEM chain is a few KiB).
const MAX_PEM: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("[streaming] needs both tls_cert_file and tls_key_file for TLS (only {given} is set)")]
    Incomplete { given: &'static str },
    #[error("cannot read the streaming TLS {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("the streaming TLS {what} {path} is larger than {MAX_PEM} bytes")]
    TooLarge { what: &'static str, path: PathBuf },
    #[error(
        "the streaming TLS certificate {cert} and key {key} do not make a server identity \
         (PEM certificate chain, PKCS#8 PEM key that belongs to it): {source}"
    )]
    Identity { cert: PathBuf, key: PathBuf, source: native_tls::Error },
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |source| TlsError::Read { what, path: path.to_path_buf(), source };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_PEM {
        return Err(TlsError::TooLarge { what, path: path.to_path_buf() });
    }
    std::fs::read(path).map_err(read)
}

/// The acceptor `cfg` asks for: `None` without TLS.
pub fn acceptor(cfg: &StreamingConfig) -> Result<Option<TlsAcceptor>, TlsError> {
    let (cert, key) = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(TlsError::Incomplete { given: "tls_cert_file" }),
        (None, Some(_)) => return Err(TlsError::Incomplete { given: "tls_key_file" }),
        (Some(c), Some(k)) => (c, k),
    };
    let identity_err = |source| TlsError::Identity { cert: cert.clone(), key: key.clone(), source };
    let identity =
        native_tls::Identity::from_pkcs8(&read_pem("certificate", cert)?, &read_pem("key", key)?)
            .map_err(identity_err)?;
    let acceptor = native_tls::TlsAcceptor::builder(identity)
        .min_protocol_version(Some(native_tls::Protocol::Tlsv12))
        .build()
        .map_err(identity_err)?;
    Ok(Some(TlsAcceptor::from(acceptor)))
}

/// A self-signed certificate for `localhost` and its key, made by the `openssl` tool (tests).
#[cfg(test)]
pub fn test_identity(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let st = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj"])
        .args(["/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl");
    assert!(st.success(), "openssl req failed");
    (cert, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(cert: Option<&Path>, key: Option<&Path>) -> StreamingConfig {
        StreamingConfig {
            tls_cert_file: cert.map(Path::to_path_buf),
            tls_key_file: key.map(Path::to_path_buf),
            ..StreamingConfig::default()
        }
    }

    #[test]
    fn no_files_no_tls_and_half_a_pair_is_an_error() {
        assert!(acceptor(&cfg(None, None)).unwrap().is_none());
        let e = acceptor(&cfg(Some(Path::new("/c")), None)).err().unwrap();
        assert!(e.to_string().contains("only tls_cert_file is set"), "{e}");
        let e = acceptor(&cfg(None, Some(Path::new("/k")))).err().unwrap();
        assert!(e.to_string().contains("only tls_key_file is set"), "{e}");
    }

    #[test]
    fn a_real_pair_loads_and_bad_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let (cert, key) = test_identity(d.path());
        assert!(acceptor(&cfg(Some(&cert), Some(&key))).unwrap().is_some());

        let missing = d.path().join("missing.pem");
        let e = acceptor(&cfg(Some(&cert), Some(&missing))).err().unwrap();
        assert!(matches!(e, TlsError::Read { what: "key", .. }), "{e}");
        // The key and the certificate swapped: no identity, both files named.
        let e = acceptor(&cfg(Some(&key), Some(&cert))).err().unwrap();
        assert!(matches!(e, TlsError::Identity { .. }), "{e}");
        assert!(e.to_string().contains("cert.pem") && e.to_string().contains("key.pem"));
        let big = d.path().join("big.pem");
        std::fs::write(&big, vec![b'A'; (MAX_PEM + 1) as usize]).unwrap();
        let e = acceptor(&cfg(Some(&big), Some(&key))).err().unwrap();
        assert!(matches!(e, TlsError::TooLarge { .. }), "{e}");
    }
}
