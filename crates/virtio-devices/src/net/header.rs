//! The `virtio_net_hdr_v1` in front of every frame, the feature bits of the device, and what
//! each side's header may ask for given the features the driver acked.

use virtio_bindings::virtio_net as vn;

/// Size of `virtio_net_hdr_v1` (virtio 1.x always has `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;
/// Largest frame (without the vnet header) either direction carries: a 64 KiB GSO packet plus
/// link-layer headers.
pub const MAX_FRAME_LEN: usize = 65536 + 256;

const fn bit(b: u32) -> u64 {
    1 << b
}

pub const F_CSUM: u64 = bit(vn::VIRTIO_NET_F_CSUM);
pub const F_GUEST_CSUM: u64 = bit(vn::VIRTIO_NET_F_GUEST_CSUM);
pub const F_MAC: u64 = bit(vn::VIRTIO_NET_F_MAC);
pub const F_GUEST_TSO4: u64 = bit(vn::VIRTIO_NET_F_GUEST_TSO4);
pub const F_GUEST_TSO6: u64 = bit(vn::VIRTIO_NET_F_GUEST_TSO6);
pub const F_HOST_TSO4: u64 = bit(vn::VIRTIO_NET_F_HOST_TSO4);
pub const F_HOST_TSO6: u64 = bit(vn::VIRTIO_NET_F_HOST_TSO6);
pub const F_MRG_RXBUF: u64 = bit(vn::VIRTIO_NET_F_MRG_RXBUF);

const HDR_F_NEEDS_CSUM: u8 = vn::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
const HDR_F_DATA_VALID: u8 = vn::VIRTIO_NET_HDR_F_DATA_VALID as u8;
const GSO_NONE: u8 = vn::VIRTIO_NET_HDR_GSO_NONE as u8;
const GSO_TCPV4: u8 = vn::VIRTIO_NET_HDR_GSO_TCPV4 as u8;
const GSO_TCPV6: u8 = vn::VIRTIO_NET_HDR_GSO_TCPV6 as u8;

/// Features offered for a tap that accepts the TUN_F_* offloads `tap_offloads`: the
/// device-side (host) offloads need only IFF_VNET_HDR; the guest-side ones need the tap to
/// deliver such frames.
pub fn offered_features(tap_offloads: u32) -> u64 {
    let mut f = crate::device::VIRTIO_F_VERSION_1
        | F_MAC
        | F_MRG_RXBUF
        | F_CSUM
        | F_HOST_TSO4
        | F_HOST_TSO6;
    if tap_offloads & libc::TUN_F_CSUM != 0 {
        f |= F_GUEST_CSUM;
        if tap_offloads & libc::TUN_F_TSO4 != 0 {
            f |= F_GUEST_TSO4;
        }
        if tap_offloads & libc::TUN_F_TSO6 != 0 {
            f |= F_GUEST_TSO6;
        }
    }
    f
}

/// TUN_F_* offloads matching the guest features the driver acked (TSO only with checksum
/// offload, as the spec's feature dependencies and the tap require).
pub fn tun_offloads(acked: u64) -> u32 {
    if acked & F_GUEST_CSUM == 0 {
        return 0;
    }
    let mut t = libc::TUN_F_CSUM;
    if acked & F_GUEST_TSO4 != 0 {
        t |= libc::TUN_F_TSO4;
    }
    if acked & F_GUEST_TSO6 != 0 {
        t |= libc::TUN_F_TSO6;
    }
    t
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("checksum offload requested without the feature")]
    Csum,
    #[error("segmentation offload type {0:#x} not negotiated")]
    Gso(u8),
}

/// Checks a header the guest sent (tx) against the acked features; clears flag bits a
/// transmitted header has no use for.
pub fn check_tx_header(hdr: &mut [u8; VNET_HDR_LEN], acked: u64) -> Result<(), HeaderError> {
    hdr[0] &= HDR_F_NEEDS_CSUM;
    if hdr[0] & HDR_F_NEEDS_CSUM != 0 && acked & F_CSUM == 0 {
        return Err(HeaderError::Csum);
    }
    let allowed = match hdr[1] {
        GSO_NONE => true,
        GSO_TCPV4 => acked & F_HOST_TSO4 != 0,
        GSO_TCPV6 => acked & F_HOST_TSO6 != 0,
        _ => false,
    };
    if !allowed {
        return Err(HeaderError::Gso(hdr[1]));
    }
    Ok(())
}

/// Checks a header read from the tap (rx) before the guest sees it: no checksum flags
/// without GUEST_CSUM, no segmentation type the guest did not ack. `num_buffers` is set
/// later, when the chains are known.
pub fn check_rx_header(hdr: &mut [u8; VNET_HDR_LEN], acked: u64) -> Result<(), HeaderError> {
    if acked & F_GUEST_CSUM == 0 {
        hdr[0] = 0;
    } else {
        hdr[0] &= HDR_F_NEEDS_CSUM | HDR_F_DATA_VALID;
    }
    let allowed = match hdr[1] {
        GSO_NONE => true,
        GSO_TCPV4 => acked & F_GUEST_TSO4 != 0,
        GSO_TCPV6 => acked & F_GUEST_TSO6 != 0,
        _ => false,
    };
    if !allowed {
        return Err(HeaderError::Gso(hdr[1]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_offloads_follow_the_tap() {
        let none = offered_features(0);
        assert_eq!(none & (F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6), 0);
        assert_ne!(none & F_HOST_TSO4, 0);
        assert_ne!(none & F_MRG_RXBUF, 0);
        let csum = offered_features(libc::TUN_F_CSUM | libc::TUN_F_TSO4);
        assert_ne!(csum & F_GUEST_TSO4, 0);
        assert_eq!(csum & F_GUEST_TSO6, 0);
        // TSO without checksum offload is not offered.
        assert_eq!(offered_features(libc::TUN_F_TSO4) & F_GUEST_TSO4, 0);
    }

    #[test]
    fn tun_offloads_need_guest_csum() {
        assert_eq!(tun_offloads(F_GUEST_TSO4 | F_GUEST_TSO6), 0);
        assert_eq!(tun_offloads(F_GUEST_CSUM | F_GUEST_TSO6), libc::TUN_F_CSUM | libc::TUN_F_TSO6);
    }

    #[test]
    fn tx_headers_are_checked_against_the_acked_features() {
        let mut h = [0u8; VNET_HDR_LEN];
        h[0] = HDR_F_NEEDS_CSUM | 0x80;
        assert_eq!(check_tx_header(&mut h, 0), Err(HeaderError::Csum));
        let mut h = [HDR_F_NEEDS_CSUM | 0x80, GSO_TCPV4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(check_tx_header(&mut h, F_CSUM), Err(HeaderError::Gso(GSO_TCPV4)));
        check_tx_header(&mut h, F_CSUM | F_HOST_TSO4).unwrap();
        assert_eq!(h[0], HDR_F_NEEDS_CSUM, "unknown flag bits are cleared");
        let mut h = [0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(check_tx_header(&mut h, u64::MAX), Err(HeaderError::Gso(3)));
        let mut h = [0, GSO_TCPV4 | 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(check_tx_header(&mut h, u64::MAX).is_err(), "ECN is not offered");
    }

    #[test]
    fn rx_headers_lose_flags_the_guest_cannot_take() {
        let mut h = [HDR_F_DATA_VALID | HDR_F_NEEDS_CSUM, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        check_rx_header(&mut h, 0).unwrap();
        assert_eq!(h[0], 0);
        let mut h = [0, GSO_TCPV6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(check_rx_header(&mut h, F_GUEST_CSUM | F_GUEST_TSO4).is_err());
        check_rx_header(&mut h, F_GUEST_CSUM | F_GUEST_TSO6).unwrap();
    }
}
