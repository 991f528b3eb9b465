//! Sandbox IDs and the rules on pod names.
//!
//! IDs are 64 lowercase hex digits (256 random bits), like containerd's. A request may name a
//! sandbox by a unique prefix of its ID (crictl shows 13-digit prefixes).

use std::fmt::Write as _;

/// Length of a full ID.
pub const ID_LEN: usize = 64;

/// A fresh random ID.
pub fn new_id() -> std::io::Result<String> {
    let mut bytes = [0u8; ID_LEN / 2];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `bytes`.
        let n = unsafe {
            libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    let mut id = String::with_capacity(ID_LEN);
    for b in bytes {
        let _ = write!(id, "{b:02x}");
    }
    Ok(id)
}

/// Whether `s` could be an ID or an ID prefix (non-empty lowercase hex, at most 64 digits).
pub fn is_id_or_prefix(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= ID_LEN
        && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `s` is a full ID (used to validate file names read back from the state dir).
pub fn is_full_id(s: &str) -> bool {
    s.len() == ID_LEN && is_id_or_prefix(s)
}

/// The identity kubelet gives a sandbox; two live sandboxes may not share it.
pub fn sandbox_name(name: &str, namespace: &str, uid: &str, attempt: u32) -> String {
    // Same shape as kubelet's and containerd's names: k8s_POD_<name>_<namespace>_<uid>_<attempt>.
    format!("{name}_{namespace}_{uid}_{attempt}")
}

/// Checks the metadata fields CRI requires; the message says which one is wrong.
pub fn validate_metadata(name: &str, namespace: &str, uid: &str) -> Result<(), String> {
    for (field, value) in [("name", name), ("namespace", namespace), ("uid", uid)] {
        if value.is_empty() {
            return Err(format!("sandbox config metadata.{field} must not be empty"));
        }
        if value.len() > 253 {
            return Err(format!("sandbox config metadata.{field} is longer than 253 bytes"));
        }
        if value.chars().any(|c| c.is_control() || c == '/' || c == '_') {
            return Err(format!(
                "sandbox config metadata.{field} = {value:?} contains '/', '_' or a control \
                 character"
            ));
        }
    }
    Ok(())
}

/// Checks a hostname as the guest will get it (RFC 1123: labels of [a-z0-9-], at most 63 bytes
/// each, 253 in all). The empty hostname means "use the pod name".
pub fn validate_hostname(hostname: &str) -> Result<(), String> {
    if hostname.is_empty() {
        return Ok(());
    }
    let bad = hostname.len() > 253
        || hostname.split('.').any(|label| {
            label.is_empty()
                || label.len() > 63
                || label.starts_with('-')
                || label.ends_with('-')
                || !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if bad {
        return Err(format!("hostname {hostname:?} is not a valid RFC 1123 host name"));
    }
    Ok(())
}

/// The hostname of a pod that asks for none: its name made a valid host name label (lower
/// case, anything outside [a-z0-9-] becomes '-', no leading or trailing '-', at most 63 bytes),
/// "pod" when nothing is left. containerd gives such pods the node's name; a VM has its own.
pub fn hostname_from_pod_name(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' })
        .collect();
    let cut: String = mapped.trim_start_matches('-').chars().take(63).collect();
    let label = cut.trim_end_matches('-');
    if label.is_empty() {
        "pod".to_string()
    } else {
        label.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_without_a_hostname_get_a_valid_one_from_their_name() {
        assert_eq!(hostname_from_pod_name("web-0"), "web-0");
        assert_eq!(hostname_from_pod_name("My.Pod"), "my-pod");
        assert_eq!(hostname_from_pod_name("-x-"), "x");
        assert_eq!(hostname_from_pod_name("..."), "pod");
        let long = format!("{}-{}", "a".repeat(62), "b".repeat(40));
        let h = hostname_from_pod_name(&long);
        assert_eq!(h, "a".repeat(62));
        for name in [long.as_str(), "PodSandbox-ÄÖ-x", "a".repeat(300).as_str()] {
            let h = hostname_from_pod_name(name);
            assert!(validate_hostname(&h).is_ok() && h.len() <= 63, "{name:?} -> {h:?}");
        }
    }

    #[test]
    fn ids_are_64_hex_and_distinct() {
        let a = new_id().unwrap();
        let b = new_id().unwrap();
        assert!(is_full_id(&a), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn prefixes() {
        assert!(is_id_or_prefix("abc123"));
        assert!(!is_id_or_prefix(""));
        assert!(!is_id_or_prefix("ABC"));
        assert!(!is_id_or_prefix("../etc"));
        assert!(!is_full_id("abc"));
        assert!(!is_id_or_prefix(&"a".repeat(65)));
    }

    #[test]
    fn metadata_rules() {
        assert!(validate_metadata("nginx", "default", "1234-abcd").is_ok());
        let e = validate_metadata("", "default", "u").unwrap_err();
        assert!(e.contains("metadata.name"), "{e}");
        let e = validate_metadata("a", "", "u").unwrap_err();
        assert!(e.contains("metadata.namespace"), "{e}");
        let e = validate_metadata("a", "b", "").unwrap_err();
        assert!(e.contains("metadata.uid"), "{e}");
        assert!(validate_metadata("a/b", "ns", "u").is_err());
        assert!(validate_metadata("a_b", "ns", "u").is_err());
        assert!(validate_metadata("a\nb", "ns", "u").is_err());
    }

    #[test]
    fn names_differ_by_attempt() {
        assert_ne!(sandbox_name("a", "b", "c", 0), sandbox_name("a", "b", "c", 1));
    }

    #[test]
    fn hostnames() {
        assert!(validate_hostname("").is_ok());
        assert!(validate_hostname("web-0.svc").is_ok());
        assert!(validate_hostname("-bad").is_err());
        assert!(validate_hostname("a..b").is_err());
        assert!(validate_hostname("under_score").is_err());
        assert!(validate_hostname(&"a".repeat(64)).is_err());
    }
}
