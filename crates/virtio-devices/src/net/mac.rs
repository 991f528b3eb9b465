//! The guest NIC's MAC address, as written in a VM config ("aa:bb:cc:dd:ee:ff").

use std::fmt;
use std::str::FromStr;

/// A unicast Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// Why a MAC address text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    #[error("MAC address {0:?} is not six hex octets separated by ':' (aa:bb:cc:dd:ee:ff)")]
    Syntax(String),
    #[error("MAC address {0} is a multicast address (lowest bit of the first octet set)")]
    Multicast(String),
    #[error("MAC address {0} is all zeroes")]
    Zero(String),
}

impl FromStr for MacAddr {
    type Err = MacError;

    fn from_str(s: &str) -> Result<MacAddr, MacError> {
        let syntax = || MacError::Syntax(s.to_string());
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(syntax)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(syntax());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| syntax())?;
        }
        if parts.next().is_some() {
            return Err(syntax());
        }
        let mac = MacAddr(octets);
        if octets[0] & 1 != 0 {
            return Err(MacError::Multicast(mac.to_string()));
        }
        if octets == [0; 6] {
            return Err(MacError::Zero(mac.to_string()));
        }
        Ok(mac)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unicast_addresses_in_either_case() {
        let mac: MacAddr = "02:AB:cd:00:11:ff".parse().unwrap();
        assert_eq!(mac.0, [0x02, 0xab, 0xcd, 0x00, 0x11, 0xff]);
        assert_eq!(mac.to_string(), "02:ab:cd:00:11:ff");
    }

    #[test]
    fn refuses_bad_syntax_multicast_and_zero() {
        for bad in [
            "",
            "02:ab:cd:00:11",
            "02:ab:cd:00:11:ff:00",
            "02-ab-cd-00-11-ff",
            "2:ab:cd:00:11:ff",
            "02:ab:cd:00:11:fg",
            "+2:ab:cd:00:11:ff",
            "02:ab:cd:00:11:ff:",
        ] {
            assert!(matches!(bad.parse::<MacAddr>(), Err(MacError::Syntax(_))), "{bad}");
        }
        assert!(matches!("01:00:5e:00:00:01".parse::<MacAddr>(), Err(MacError::Multicast(_))));
        assert!(matches!("ff:ff:ff:ff:ff:ff".parse::<MacAddr>(), Err(MacError::Multicast(_))));
        assert!(matches!("00:00:00:00:00:00".parse::<MacAddr>(), Err(MacError::Zero(_))));
    }
}
