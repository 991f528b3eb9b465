//! Device tests against a real tap in a test-made network namespace.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::header::{
    F_CSUM, F_GUEST_CSUM, F_GUEST_TSO4, F_GUEST_TSO6, F_HOST_TSO4, F_HOST_TSO6, F_MAC, F_MRG_RXBUF,
};
use super::test_tap::{open_tun, test_frame, test_tap, TestTap};
use super::*;
use crate::device::{GuestMemory, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::test_utils::{test_memory, CountingInterrupt, TestQueue, XorShift, F_WRITE};

const MAC: MacAddr = MacAddr([0x02, 0xca, 0xfe, 0, 0, 0x01]);
const RX_BASE: u64 = 0;
const TX_BASE: u64 = 0x8000;
const WAIT: Duration = Duration::from_secs(5);

struct Nic {
    net: Net,
    mem: GuestMemory,
    rxq: TestQueue,
    txq: TestQueue,
    rx_notify: EventFd,
    tx_notify: EventFd,
    int: Arc<CountingInterrupt>,
    tt: TestTap,
}

impl Nic {
    /// A NIC on a fresh test tap, activated with `features` (masked by what it offers).
    fn new(features: u64) -> Nic {
        let tt = test_tap();
        let mut net = Net::new(tt.tap_fd(), MAC).unwrap();
        let mem = test_memory();
        let rxq = TestQueue::at(&mem, RX_BASE, 16);
        let txq = TestQueue::at(&mem, TX_BASE, 16);
        let (rq, rx_notify) = rxq.device_queue();
        let (tq, tx_notify) = txq.device_queue();
        let int = CountingInterrupt::new();
        let acked = features & net.avail_features();
        net.activate(mem.clone(), int.clone(), vec![rq, tq], acked).unwrap();
        let nic = Nic { net, mem, rxq, txq, rx_notify, tx_notify, int, tt };
        nic.settle();
        nic
    }

    fn settle(&self) {
        self.net.with_worker(|_| ()).unwrap();
    }

    fn notify_rx(&self) {
        self.rx_notify.write(1).unwrap();
        self.settle();
    }

    fn notify_tx(&self) {
        self.tx_notify.write(1).unwrap();
        self.settle();
    }

    /// Waits until the rx used index reaches `n`.
    fn wait_rx_used(&self, n: u16) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.rxq.used_idx() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Puts `hdr` + `frame` on tx as a two-descriptor chain at `at`.
    fn transmit(&mut self, at: u64, hdr: [u8; 12], frame: &[u8]) {
        self.mem.write_slice(&hdr, GuestAddress(at)).unwrap();
        self.mem.write_slice(frame, GuestAddress(at + 0x100)).unwrap();
        self.txq.add_chain(&[(at, 12, 0), (at + 0x100, frame.len() as u32, 0)]);
    }
}

fn default_features() -> u64 {
    VIRTIO_F_VERSION_1 | F_MAC | F_MRG_RXBUF | F_CSUM | F_HOST_TSO4 | F_HOST_TSO6
}

#[test]
fn offers_the_mac_and_the_offloads_a_real_tap_accepts() {
    let tt = test_tap();
    let net = Net::new(tt.tap_fd(), MAC).unwrap();
    assert_eq!(net.device_type(), VIRTIO_ID_NET);
    assert_eq!(net.queue_max_sizes().len(), 2);
    let f = net.avail_features();
    for want in [VIRTIO_F_VERSION_1, F_MAC, F_MRG_RXBUF, F_CSUM, F_HOST_TSO4, F_GUEST_CSUM] {
        assert_ne!(f & want, 0, "feature {want:#x} missing from {f:#x}");
    }
    assert_ne!(f & (F_GUEST_TSO4 | F_GUEST_TSO6), 0, "{f:#x}");
    let mut cfg = [0xffu8; 8];
    net.read_config(0, &mut cfg);
    assert_eq!(cfg, [0x02, 0xca, 0xfe, 0, 0, 0x01, 0, 0]);
    let mut tail = [0xffu8; 4];
    net.read_config(4, &mut tail);
    assert_eq!(tail, [0, 0x01, 0, 0]);
    net.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0; 4]);
}

#[test]
fn a_frame_the_guest_transmits_comes_out_of_the_tap() {
    let mut nic = Nic::new(default_features());
    let frame = test_frame(100, 7);
    nic.transmit(0x20000, [0; 12], &frame);
    nic.notify_tx();
    assert_eq!(nic.txq.used_idx(), 1);
    assert_eq!(nic.txq.used_elem(0), (0, 0));
    assert!(nic.int.used_count() >= 1);
    assert_eq!(nic.tt.recv_test_frame(WAIT).as_deref(), Some(&frame[..]));
}

#[test]
fn a_frame_from_the_tap_lands_in_one_rx_buffer_with_its_header() {
    let mut nic = Nic::new(default_features());
    for i in 0..4 {
        nic.rxq.add_chain(&[(0x20000 + i * 0x1000, 2048, F_WRITE)]);
    }
    nic.notify_rx();
    let frame = test_frame(100, 3);
    nic.tt.send(&frame);
    assert!(nic.wait_rx_used(1), "no frame reached the guest");
    assert_eq!(nic.rxq.used_elem(0), (0, 112));
    let got = nic.read(0x20000, 112);
    assert_eq!(&got[..10], &[0u8; 10], "no offload flags for a plain frame");
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    assert_eq!(&got[12..], &frame[..]);
    assert!(nic.int.used_count() >= 1);
}

#[test]
fn a_frame_larger_than_one_buffer_is_merged_over_several() {
    let mut nic = Nic::new(default_features());
    for i in 0..8 {
        nic.rxq.add_chain(&[(0x20000 + i * 0x1000, 64, F_WRITE)]);
    }
    nic.notify_rx();
    let frame = test_frame(300, 9);
    nic.tt.send(&frame);
    // 12 + 300 bytes in 64-byte buffers: five of them, published together.
    assert!(nic.wait_rx_used(5));
    let mut data = Vec::new();
    for i in 0..5u16 {
        let (head, len) = nic.rxq.used_elem(i);
        assert_eq!(head, u32::from(i));
        assert_eq!(len, if i < 4 { 64 } else { 312 - 4 * 64 });
        data.extend(nic.read(0x20000 + u64::from(i) * 0x1000, len as usize));
    }
    assert_eq!(u16::from_le_bytes([data[10], data[11]]), 5, "num_buffers");
    assert_eq!(&data[12..], &frame[..]);
}

#[test]
fn without_rx_buffers_the_tap_is_not_read_until_the_guest_adds_some() {
    let mut nic = Nic::new(default_features());
    let frames: Vec<Vec<u8>> = (0..3).map(|i| test_frame(80 + i, i as u8)).collect();
    for f in &frames {
        nic.tt.send(f);
    }
    std::thread::sleep(Duration::from_millis(100));
    let state = nic.net.with_worker(|w| (w.rx_starved, w.interest, w.rxp.has_pending())).unwrap();
    assert_eq!(state, (true, Some(EventSet::empty()), false), "tap must leave the epoll");
    // The frames wait in the tap's own queue: all three arrive once there are buffers.
    for i in 0..3 {
        nic.rxq.add_chain(&[(0x20000 + i * 0x1000, 2048, F_WRITE)]);
    }
    nic.notify_rx();
    assert!(nic.wait_rx_used(3));
    for (i, f) in frames.iter().enumerate() {
        let (_, len) = nic.rxq.used_elem(i as u16);
        assert_eq!(len as usize, 12 + f.len());
        assert_eq!(&nic.read(0x20000 + i as u64 * 0x1000 + 12, f.len()), f);
    }
}

#[test]
fn a_frame_waiting_for_more_buffers_is_kept_and_the_chains_given_back() {
    let mut nic = Nic::new(default_features());
    nic.rxq.add_chain(&[(0x20000, 64, F_WRITE)]);
    nic.notify_rx();
    let frame = test_frame(200, 1);
    nic.tt.send(&frame);
    let deadline = Instant::now() + WAIT;
    while !nic.net.with_worker(|w| w.rxp.has_pending()).unwrap() {
        assert!(Instant::now() < deadline, "frame never read");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(nic.rxq.used_idx(), 0, "nothing published for a partial frame");
    assert_eq!(nic.net.with_worker(|w| w.interest).unwrap(), Some(EventSet::empty()));
    for i in 1..4 {
        nic.rxq.add_chain(&[(0x20000 + i * 0x1000, 64, F_WRITE)]);
    }
    nic.notify_rx();
    assert!(nic.wait_rx_used(4));
    let mut data = Vec::new();
    for i in 0..4u16 {
        let (head, len) = nic.rxq.used_elem(i);
        assert_eq!(head, u32::from(i));
        data.extend(nic.read(0x20000 + u64::from(i) * 0x1000, len as usize));
    }
    assert_eq!(u16::from_le_bytes([data[10], data[11]]), 4);
    assert_eq!(&data[12..], &frame[..]);
    // Every buffer is used: the tap stays out of the epoll until the guest adds one.
    assert_eq!(nic.net.with_worker(|w| w.interest).unwrap(), Some(EventSet::empty()));
    nic.rxq.add_chain(&[(0x30000, 2048, F_WRITE)]);
    nic.notify_rx();
    assert_eq!(nic.net.with_worker(|w| w.interest).unwrap(), Some(EventSet::IN));
}

#[test]
fn malformed_rx_chains_are_returned_empty_before_the_frame() {
    let mut nic = Nic::new(default_features());
    nic.rxq.add_chain(&[(0x20000, 2048, 0)]); // read-only
    nic.rxq.add_chain(&[(0x21000, 8, F_WRITE)]); // shorter than the header
    nic.rxq.add_chain(&[(u64::MAX - 100, 2048, F_WRITE)]); // outside guest memory
    nic.rxq.add_chain(&[(0x22000, 2048, F_WRITE)]);
    nic.notify_rx();
    let frame = test_frame(60, 5);
    nic.tt.send(&frame);
    assert!(nic.wait_rx_used(4));
    assert_eq!(nic.rxq.used_elem(0), (0, 0));
    assert_eq!(nic.rxq.used_elem(1), (1, 0));
    assert_eq!(nic.rxq.used_elem(2), (2, 0));
    assert_eq!(nic.rxq.used_elem(3), (3, 72));
    assert_eq!(&nic.read(0x22000 + 12, 60), &frame);
}

#[test]
fn without_mergeable_buffers_a_frame_too_big_for_its_chain_is_dropped() {
    let mut nic = Nic::new(default_features() & !F_MRG_RXBUF);
    nic.rxq.add_chain(&[(0x20000, 64, F_WRITE)]);
    nic.rxq.add_chain(&[(0x21000, 2048, F_WRITE)]);
    nic.notify_rx();
    nic.tt.send(&test_frame(300, 1));
    let small = test_frame(50, 2);
    nic.tt.send(&small);
    assert!(nic.wait_rx_used(2));
    assert_eq!(nic.rxq.used_elem(0), (0, 0), "the big frame is dropped, its chain returned");
    assert_eq!(nic.rxq.used_elem(1), (1, 62));
    let got = nic.read(0x21000, 62);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
    assert_eq!(&got[12..], &small[..]);
}

#[test]
fn malformed_tx_chains_are_returned_and_send_nothing() {
    let mut nic = Nic::new(VIRTIO_F_VERSION_1 | F_MAC | F_MRG_RXBUF);
    let frame = test_frame(60, 4);
    // Too short for the header.
    nic.mem.write_slice(&[0u8; 8], GuestAddress(0x20000)).unwrap();
    nic.txq.add_chain(&[(0x20000, 8, 0)]);
    // A device-writable descriptor.
    nic.txq.add_chain(&[(0x21000, 12, 0), (0x21100, 60, F_WRITE)]);
    // A huge length.
    nic.txq.add_chain(&[(0x22000, 12, 0), (0x22100, 0x10_0000, 0)]);
    // Outside guest memory.
    nic.txq.add_chain(&[(u64::MAX - 100, 80, 0)]);
    // Checksum offload and TSO that were not negotiated.
    nic.transmit(0x23000, [1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 0, 0], &frame);
    nic.transmit(0x24000, [0, 1, 54, 0, 0x78, 5, 0, 0, 0, 0, 0, 0], &frame);
    nic.notify_tx();
    assert_eq!(nic.txq.used_idx(), 6);
    for i in 0..6 {
        assert_eq!(nic.txq.used_elem(i).1, 0);
    }
    assert_eq!(nic.tt.recv_test_frame(Duration::from_millis(300)), None);
    // The device still works.
    nic.transmit(0x25000, [0; 12], &frame);
    nic.notify_tx();
    assert_eq!(nic.txq.used_idx(), 7);
    assert_eq!(nic.tt.recv_test_frame(WAIT).as_deref(), Some(&frame[..]));
}

#[test]
fn garbage_chains_never_panic() {
    let nic = Nic::new(default_features());
    let mut r = XorShift(4242);
    for round in 0..200 {
        for q in [&nic.rxq, &nic.txq] {
            for i in 0..16u16 {
                let addr = match r.next() % 3 {
                    0 => r.next(),
                    1 => r.next() % (17 << 20),
                    _ => 0x20000 + (r.next() % 0x1000),
                };
                q.write_desc(
                    i,
                    addr,
                    r.next() as u32 % 0x2_0000,
                    r.next() as u16 & 7,
                    r.next() as u16,
                );
            }
        }
        if round % 10 == 0 {
            nic.tt.send(&test_frame((r.next() % 1500) as usize + 14, round as u8));
        }
        // Random avail indexes, including impossible ones.
        let (_, rx_avail, _) = nic.rxq.addresses();
        let (_, tx_avail, _) = nic.txq.addresses();
        nic.mem.write_obj(r.next() as u16, GuestAddress(rx_avail + 2)).unwrap();
        nic.mem.write_obj(r.next() as u16, GuestAddress(tx_avail + 2)).unwrap();
        nic.notify_rx();
        nic.notify_tx();
    }
}

#[test]
fn reset_stops_the_thread_and_reactivation_works() {
    let mut nic = Nic::new(default_features());
    nic.net.reset();
    assert!(nic.net.with_worker(|_| ()).is_none());
    let (rq, _rn) = nic.rxq.device_queue();
    let (tq, _tn) = nic.txq.device_queue();
    let int = CountingInterrupt::new();
    assert!(nic.net.activate(nic.mem.clone(), int.clone(), vec![rq], default_features()).is_err());
    let (rq, _rn) = nic.rxq.device_queue();
    nic.net.activate(nic.mem.clone(), int, vec![rq, tq], default_features()).unwrap();
    assert!(nic.net.with_worker(|_| ()).is_some());
}

fn fd_of(f: &OwnedFd) -> i32 {
    f.as_raw_fd()
}

#[test]
fn descriptors_that_are_not_vnet_taps_are_refused() {
    let (r, _w) = nix::unistd::pipe().unwrap();
    assert!(matches!(check_tap_fd(fd_of(&r)), Err(TapError::NotTun { .. })));
    assert!(matches!(Net::new(r, MAC), Err(TapError::NotTun { .. })));
    let tun = open_tun(libc::IFF_TUN | libc::IFF_NO_PI);
    let e = check_tap_fd(fd_of(&tun)).unwrap_err();
    assert!(matches!(e, TapError::NotTap { .. }), "{e}");
    let plain = open_tun(libc::IFF_TAP | libc::IFF_NO_PI);
    let e = check_tap_fd(fd_of(&plain)).unwrap_err();
    assert!(e.to_string().contains("without IFF_VNET_HDR"), "{e}");
    let good = open_tun(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
    let info = check_tap_fd(fd_of(&good)).unwrap();
    assert_eq!(info.name, super::test_tap::TAP_NAME);
    // (Tests run in parallel: a number just closed may be reused at once; this one is not.)
    assert!(matches!(check_tap_fd(999_999), Err(TapError::NotOpen { fd: 999_999 })));
    // An unattached /dev/net/tun descriptor is not a tap either.
    let raw = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun").unwrap();
    assert!(matches!(check_tap_fd(raw.as_raw_fd()), Err(TapError::NotTun { .. })));
}

/// A TCP/IPv4 frame with `payload` bytes, headers filled in (the TCP checksum left to the
/// offload).
fn tcp4_frame(payload: usize) -> Vec<u8> {
    let mut f = vec![0u8; 54 + payload];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 0, 0, 2]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 1]);
    let mut sum: u32 = ip.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !(sum as u16);
    f[24..26].copy_from_slice(&csum.to_be_bytes());
    let tcp = &mut f[34..54];
    tcp[..2].copy_from_slice(&4000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5000u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18; // PSH, ACK
    tcp[14..16].copy_from_slice(&1024u16.to_be_bytes());
    for (i, b) in f.iter_mut().enumerate().skip(54) {
        *b = i as u8;
    }
    f
}

#[test]
fn a_segmentation_offloaded_frame_reaches_the_guest_whole_with_its_gso_header() {
    let nic = Nic::new(default_features() | F_GUEST_CSUM | F_GUEST_TSO4);
    let mut nic = nic;
    for i in 0..8 {
        nic.rxq.add_chain(&[(0x20000 + i * 0x1000, 2048, F_WRITE)]);
    }
    nic.notify_rx();
    // The packet socket sends with a virtio_net_hdr: one 4000-byte TCP segment for the tap
    // (TSO4 and CSUM enabled on it by the activation) to pass on unsegmented.
    let on: libc::c_int = 1;
    // SAFETY: PACKET_VNET_HDR reads one int.
    let rc = unsafe {
        libc::setsockopt(
            nic.tt.packet.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_VNET_HDR,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let frame = tcp4_frame(4000);
    let mut msg = vec![1u8, 1]; // NEEDS_CSUM, GSO_TCPV4
    msg.extend_from_slice(&54u16.to_le_bytes()); // hdr_len
    msg.extend_from_slice(&1448u16.to_le_bytes()); // gso_size
    msg.extend_from_slice(&34u16.to_le_bytes()); // csum_start
    msg.extend_from_slice(&16u16.to_le_bytes()); // csum_offset
    msg.extend_from_slice(&frame);
    nic.tt.send(&msg);
    // 12 + 4054 bytes: two 2048-byte buffers.
    assert!(nic.wait_rx_used(2), "the offloaded frame did not arrive");
    let (h0, l0) = nic.rxq.used_elem(0);
    let (h1, l1) = nic.rxq.used_elem(1);
    assert_eq!((h0, h1), (0, 1));
    assert_eq!(l0 + l1, 12 + 4054);
    let mut got = nic.read(0x20000, l0 as usize);
    got.extend(nic.read(0x21000, l1 as usize));
    assert_eq!(got[0] & 1, 1, "NEEDS_CSUM passed on");
    assert_eq!(got[1], 1, "GSO_TCPV4 passed on");
    assert_eq!(u16::from_le_bytes([got[4], got[5]]), 1448, "gso_size");
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 2, "num_buffers");
    assert_eq!(&got[12..46], &frame[..34], "Ethernet and IP headers");
    assert_eq!(&got[12 + 54..], &frame[54..], "payload");
}
