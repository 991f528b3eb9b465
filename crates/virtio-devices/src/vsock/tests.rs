//! Device-level vsock tests: a simulated guest driver on in-memory queues, real Unix sockets
//! on the host side, and the real backend thread (which also takes the queue notifications,
//! through their eventfds, as it does when KVM signals them).
//! Over 600 lines on purpose: one job (the device as a guest drives it), and the simulated
//! driver is shared by every test.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::device::{Vsock, VsockError};
use super::muxer::FIRST_LOCAL_PORT;
use super::packet::*;
use crate::device::VIRTIO_F_VERSION_1;
use crate::device::{GuestMemory, VirtioDevice};
use crate::test_utils::{test_memory, CountingInterrupt, TestQueue, XorShift, F_NEXT, F_WRITE};

const GUEST_CID: u64 = 3;
const QSIZE: u16 = 256;
const RX_BUFS: u16 = 64;
const RX_BUF_LEN: u32 = HDR_SIZE as u32 + 4096;
const TX_HDR: u64 = 0x80_0000;
const TX_DATA: u64 = 0x81_0000;

fn rx_addr(head: u32) -> u64 {
    0x10_0000 + u64::from(head) * 0x2000
}

/// A guest driver talking to the device through its queues.
struct Guest {
    mem: GuestMemory,
    vsock: Vsock,
    rxq: TestQueue,
    txq: TestQueue,
    /// The driver's ends of the queues' notification eventfds (rx, tx, event).
    notifies: Vec<EventFd>,
    rx_seen: u16,
    /// What this guest advertises as its receive buffer and has consumed.
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Guest {
    fn new(uds: &Path) -> Guest {
        let mem = test_memory();
        let vsock = Vsock::new(GUEST_CID, uds).unwrap();
        let mut g = Guest {
            rxq: TestQueue::at(&mem, 0, QSIZE),
            txq: TestQueue::at(&mem, 0x1_0000, QSIZE),
            notifies: Vec::new(),
            mem,
            vsock,
            rx_seen: 0,
            buf_alloc: 64 * 1024,
            fwd_cnt: 0,
        };
        g.activate();
        g
    }

    /// (Re)activates the device with fresh queues and fills the rx queue.
    fn activate(&mut self) {
        self.rxq = TestQueue::at(&self.mem, 0, QSIZE);
        self.txq = TestQueue::at(&self.mem, 0x1_0000, QSIZE);
        let evq = TestQueue::at(&self.mem, 0x2_0000, QSIZE);
        self.rx_seen = 0;
        let (queues, notifies): (Vec<_>, Vec<_>) =
            [&self.rxq, &self.txq, &evq].iter().map(|q| q.device_queue()).unzip();
        self.notifies = notifies;
        self.vsock
            .activate(self.mem.clone(), CountingInterrupt::new(), queues, VIRTIO_F_VERSION_1)
            .unwrap();
        for head in 0..RX_BUFS {
            self.rxq.write_desc(head, rx_addr(u32::from(head)), RX_BUF_LEN, F_WRITE, 0);
            self.rxq.push_avail(head);
        }
        self.kick(0);
    }

    /// The driver's QueueNotify for queue `index` (what KVM's ioeventfd does).
    fn kick(&self, index: usize) {
        if let Some(fd) = self.notifies.get(index) {
            fd.write(1).unwrap();
        }
    }

    /// Waits until the backend thread handled every notification sent so far.
    fn settle(&self) {
        let _ = self.vsock.with_muxer(|_| ());
    }

    fn hdr(&self, src_port: u32, dst_port: u32, op: u16, len: u32, flags: u32) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Puts one packet in the tx queue, notifies, and waits until the device handled it.
    fn send_raw(&mut self, hdr: &Header, data: &[u8]) {
        self.mem.write_slice(&hdr.to_bytes(), GuestAddress(TX_HDR)).unwrap();
        if data.is_empty() {
            self.txq.write_desc(0, TX_HDR, HDR_SIZE as u32, 0, 0);
        } else {
            self.mem.write_slice(data, GuestAddress(TX_DATA)).unwrap();
            self.txq.write_desc(0, TX_HDR, HDR_SIZE as u32, F_NEXT, 1);
            self.txq.write_desc(1, TX_DATA, data.len() as u32, 0, 0);
        }
        self.txq.push_avail(0);
        self.kick(1);
        self.settle();
    }

    fn send(&mut self, src_port: u32, dst_port: u32, op: u16, flags: u32, data: &[u8]) {
        let hdr = self.hdr(src_port, dst_port, op, data.len() as u32, flags);
        self.send_raw(&hdr, data);
    }

    fn poll(&mut self) -> Option<(Header, Vec<u8>)> {
        if self.rxq.used_idx() == self.rx_seen {
            return None;
        }
        let (id, len) = self.rxq.used_elem(self.rx_seen);
        self.rx_seen = self.rx_seen.wrapping_add(1);
        let mut buf = vec![0u8; len as usize];
        self.mem.read_slice(&mut buf, GuestAddress(rx_addr(id))).unwrap();
        // Recycle the buffer.
        let head = id as u16;
        self.rxq.write_desc(head, rx_addr(id), RX_BUF_LEN, F_WRITE, 0);
        self.rxq.push_avail(head);
        self.kick(0);
        let hdr = Header::parse(&buf).unwrap();
        let data = buf.get(HDR_SIZE..).unwrap().to_vec();
        assert_eq!(data.len(), hdr.len as usize);
        if hdr.op == OP_RW {
            self.fwd_cnt = self.fwd_cnt.wrapping_add(hdr.len);
        }
        Some((hdr, data))
    }

    fn expect(&mut self, timeout: Duration) -> (Header, Vec<u8>) {
        let end = Instant::now() + timeout;
        loop {
            if let Some(p) = self.poll() {
                return p;
            }
            assert!(Instant::now() < end, "no packet from the device in {timeout:?}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn expect_none(&mut self, wait: Duration) {
        std::thread::sleep(wait);
        if let Some((h, _)) = self.poll() {
            panic!("unexpected packet {h:?}");
        }
    }

    fn connections(&self) -> usize {
        self.vsock.with_muxer(|m| m.connection_count()).unwrap()
    }
}

const T: Duration = Duration::from_secs(3);

fn uds(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("vsock.sock")
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = s.read(&mut b).unwrap();
        if n == 0 || b[0] == b'\n' {
            return String::from_utf8(line).unwrap();
        }
        line.push(b[0]);
    }
}

fn read_exact_timeout(s: &mut UnixStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(T)).unwrap();
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

fn assert_eof(s: &mut UnixStream) {
    s.set_read_timeout(Some(T)).unwrap();
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected EOF, got {other:?}"),
    }
}

/// Host connects with CONNECT <port>; the guest accepts. Returns (host stream, local port).
fn host_connect(g: &mut Guest, path: &Path, guest_port: u32) -> (UnixStream, u32) {
    let mut host = UnixStream::connect(path).unwrap();
    host.write_all(format!("CONNECT {guest_port}\n").as_bytes()).unwrap();
    let (req, _) = g.expect(T);
    assert_eq!(req.op, OP_REQUEST);
    assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!(req.dst_port, guest_port);
    assert!(req.src_port >= FIRST_LOCAL_PORT);
    g.send(guest_port, req.src_port, OP_RESPONSE, 0, &[]);
    host.set_read_timeout(Some(T)).unwrap();
    let line = read_line(&mut host);
    assert_eq!(line, format!("OK {}", req.src_port));
    (host, req.src_port)
}

#[test]
fn host_initiated_connection_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = uds(&dir);
    let mut g = Guest::new(&path);
    let (mut host, local) = host_connect(&mut g, &path, 52);

    host.write_all(b"ping").unwrap();
    let (h, data) = g.expect(T);
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RW, local, 52));
    assert_eq!(data, b"ping");
    assert_eq!(h.buf_alloc, super::connection::HOST_BUF_ALLOC);

    g.send(52, local, OP_RW, 0, b"pong");
    assert_eq!(read_exact_timeout(&mut host, 4), b"pong");

    // A second connection to the same guest port gets its own local port.
    let (_host2, local2) = host_connect(&mut g, &path, 52);
    assert_ne!(local, local2);
    assert_eq!(g.connections(), 2);

    g.send(52, local, OP_RST, 0, &[]);
    assert_eof(&mut host);
    assert_eq!(g.connections(), 1);
}

#[test]
fn host_initiated_refused_by_guest() {
    let dir = tempfile::tempdir().unwrap();
    let path = uds(&dir);
    let mut g = Guest::new(&path);
    let mut host = UnixStream::connect(&path).unwrap();
    host.write_all(b"CONNECT 7\n").unwrap();
    let (req, _) = g.expect(T);
    g.send(7, req.src_port, OP_RST, 0, &[]);
    assert_eof(&mut host);
    assert_eq!(g.connections(), 0);
}

#[test]
fn host_initiated_times_out_when_guest_is_silent() {
    let dir = tempfile::tempdir().unwrap();
    let path = uds(&dir);
    let mut g = Guest::new(&path);
    g.vsock.set_connect_timeout(Duration::from_millis(300));
    g.activate();
    let mut host = UnixStream::connect(&path).unwrap();
    host.write_all(b"CONNECT 7\n").unwrap();
    let (req, _) = g.expect(T);
    assert_eq!(req.op, OP_REQUEST);
    assert_eof(&mut host);
    let (rst, _) = g.expect(T);
    assert_eq!((rst.op, rst.src_port), (OP_RST, req.src_port));
}

#[test]
fn malformed_connect_lines_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = uds(&dir);
    let mut g = Guest::new(&path);
    for line in [
        &b"HELLO\n"[..],
        b"CONNECT x\n",
        b"CONNECT 99999999999\n",
        b"CONNECT 1111111111111111111111111111111111111111",
    ] {
        let mut host = UnixStream::connect(&path).unwrap();
        host.write_all(line).unwrap();
        assert_eof(&mut host);
    }
    g.expect_none(Duration::from_millis(50));
    // Split across writes is fine.
    let mut host = UnixStream::connect(&path).unwrap();
    host.write_all(b"CONN").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    host.write_all(b"ECT 9\n").unwrap();
    assert_eq!(g.expect(T).0.op, OP_REQUEST);
}

#[test]
fn guest_initiated_connection_relays_and_closes() {
    let dir = tempfile::tempdir().unwrap();
    let path = uds(&dir);
    let mut g = Guest::new(&path);
    let listener = UnixListener::bind(format!("{}_1234", path.display())).unwrap();

    g.send(5000, 1234, OP_REQUEST, 0, &[]);
    let (h, _) = g.expect(T);
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RESPONSE, 1234, 5000));
    let (mut host, _) = listener.accept().unwrap();

    g.send(5000, 1234, OP_RW, 0, b"hello");
    assert_eq!(read_exact_timeout(&mut host, 5), b"hello");
    host.write_all(b"world").unwrap();
    let (h, data) = g.expect(T);
    assert_eq!((h.op, data.as_slice()), (OP_RW, &b"world"[..]));

    // The host closes: the guest is told both directions are done, and answers RST.
    drop(host);
    let (h, _) = g.expect(T);
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
    g.send(5000, 1234, OP_RST, 0, &[]);
    assert_eq!(g.connections(), 0);
}

#[test]
fn guest_initiated_without_listener_gets_rst() {
    let dir = tempfile::tempdir().unwrap();
    let path = uds(&dir);
    let mut g = Guest::new(&path);
    g.send(5000, 4321, OP_REQUEST, 0, &[]);
    let (h, _) = g.expect(T);
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, 4321, 5000));
    assert_eq!(g.connections(), 0);
}

#[test]
fn guest_shutdown_half_closes_the_unix_stream() {
    let dir = tempfile::tempdir().unwrap();
    let path = uds(&dir);
    let mut g = Guest::new(&path);
    let (mut host, local) = host_connect(&mut g, &path, 52);
    g.send(52, local, OP_RW, 0, b"request");
    g.send(52, local, OP_SHUTDOWN, SHUTDOWN_SEND, &[]);
    let mut got = String::new();
    host.read_to_string(&mut got).unwrap();
    assert_eq!(got, "request");
    // The host can still answer, then closes its side: the device ends the connection.
    host.write_all(b"reply").unwrap();
    host.shutdown(std::net::Shutdown::Write).unwrap();
    let (h, data) = g.expect(T);
    assert_eq!((h.op, data.as_slice()), (OP_RW, &b"reply"[..]));
    let (h, _) = g.expect(T);
    assert_eq!(h.op, OP_RST);
    assert_eq!(g.connections(), 0);
}

#[test]
fn stray_packets_get_rst_and_other_cids_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = uds(&dir);
    let mut g = Guest::new(&path);
    g.send(1, 2, OP_RW, 0, b"x");
    let (h, _) = g.expect(T);
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, 2, 1));
    // RST for an unknown connection is not answered.
    g.send(1, 2, OP_RST, 0, &[]);
    // Wrong destination or spoofed source CID: dropped silently.
    let mut hdr = g.hdr(1, 2, OP_REQUEST, 0, 0);
    hdr.dst_cid = 7;
    g.send_raw(&hdr, &[]);
    let mut hdr = g.hdr(1, 2, OP_REQUEST, 0, 0);
    hdr.src_cid = 9;
    g.send_raw(&hdr, &[]);
    // Unsupported socket type (SEQPACKET) gets an RST.
    let mut hdr = g.hdr(1, 2, OP_REQUEST, 0, 0);
    hdr.type_ = 2;
    g.send_raw(&hdr, &[]);
    let (h, _) = g.expect(T);
    assert_eq!((h.op, h.type_), (OP_RST, 2));
    g.expect_none(Duration::from_millis(50));
    // Payload length beyond the buffers: dropped with an RST.
    let hdr = g.hdr(1, 3, OP_RW, 100, 0);
    g.send_raw(&hdr, b"short");
    assert_eq!(g.expect(T).0.op, OP_RST);
}

#[test]
fn replies_to_a_guest_that_never_reads_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = uds(&dir);
    let mut g = Guest::new(&path);
    for port in 0..3000 {
        g.send(port, 9, OP_RW, 0, b"x");
    }
    let pending = g.vsock.with_muxer(|m| m.pending_replies()).unwrap();
    assert_eq!(pending, 1024);
    assert_eq!(g.rxq.used_idx(), RX_BUFS);
}

#[test]
fn guest_that_stops_reading_stops_the_host_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = uds(&dir);
    let mut g = Guest::new(&path);
    g.buf_alloc = 4096;
    let (mut host, local) = host_connect(&mut g, &path, 52);
    // Let the device learn our small buffer (any packet carries it).
    g.send(52, local, OP_CREDIT_UPDATE, 0, &[]);

    host.set_nonblocking(true).unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    let mut written = 0usize;
    let start = Instant::now();
    // Write until the socket is full; if the device kept reading, this would never stop.
    loop {
        match host.write(&chunk) {
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
                if host.write(&chunk).is_err() {
                    break;
                }
            }
            Err(e) => panic!("{e}"),
        }
        assert!(written < 64 << 20, "device buffers without bound");
        assert!(start.elapsed() < Duration::from_secs(10));
    }
    // The guest got exactly its buffer's worth, then a credit request and nothing else.
    let mut received = 0usize;
    let mut credit_requests = 0;
    while let Some((h, d)) = g.poll() {
        match h.op {
            OP_RW => received += d.len(),
            OP_CREDIT_REQUEST => credit_requests += 1,
            op => panic!("unexpected op {op}"),
        }
    }
    assert_eq!(received, 4096);
    assert_eq!(credit_requests, 1);

    // The guest catches up: data flows again.
    g.send(52, local, OP_CREDIT_UPDATE, 0, &[]);
    let (h, d) = g.expect(T);
    assert_eq!(h.op, OP_RW);
    assert!(!d.is_empty() && d.len() <= 4096);
}

#[test]
fn bulk_transfer_both_ways_with_credit() {
    let dir = tempfile::tempdir().unwrap();
    let path = uds(&dir);
    let mut g = Guest::new(&path);
    let (mut host, local) = host_connect(&mut g, &path, 52);
    // Guest -> host, 2 MiB in 4 KiB packets, respecting the host's credit.
    let total = 2 << 20;
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; total];
        host.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        host.read_exact(&mut got).unwrap();
        (host, got)
    });
    let mut sent = 0usize;
    let mut host_fwd = 0u32;
    let host_buf = super::connection::HOST_BUF_ALLOC;
    let start = Instant::now();
    while sent < total {
        let in_flight = (sent as u32).wrapping_sub(host_fwd);
        if host_buf - in_flight >= 4096 {
            let data: Vec<u8> = (sent..sent + 4096).map(|i| (i % 251) as u8).collect();
            g.send(52, local, OP_RW, 0, &data);
            sent += 4096;
        } else {
            // Wait for a credit update from the device.
            if let Some((h, _)) = g.poll() {
                host_fwd = h.fwd_cnt;
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert!(start.elapsed() < Duration::from_secs(20), "stalled at {sent}");
    }
    let (mut host, got) = reader.join().unwrap();
    assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    while g.poll().is_some() {}

    // Host -> guest, 1 MiB; the guest consumes as it goes and tells the device.
    let writer = std::thread::spawn(move || {
        let data: Vec<u8> = (0..1usize << 20).map(|i| (i % 253) as u8).collect();
        host.write_all(&data).unwrap();
        host
    });
    let mut got = Vec::new();
    while got.len() < 1 << 20 {
        let (h, d) = g.expect(T);
        match h.op {
            OP_RW => got.extend_from_slice(&d),
            OP_CREDIT_REQUEST => {}
            op => panic!("unexpected op {op}"),
        }
        if got.len() % (16 * 4096) == 0 || h.op == OP_CREDIT_REQUEST {
            g.send(52, local, OP_CREDIT_UPDATE, 0, &[]);
        }
    }
    assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 253) as u8));
    drop(writer.join().unwrap());
}

#[test]
fn socket_path_taken_and_removed_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let path = uds(&dir);
    let v = Vsock::new(GUEST_CID, &path).unwrap();
    assert!(path.exists());
    let err = Vsock::new(GUEST_CID, &path).err().unwrap();
    assert!(matches!(err, VsockError::SocketInUse(_)));
    assert_eq!(err.to_string(), format!("vsock socket path {} is already taken", path.display()));
    drop(v);
    assert!(!path.exists());
    let _again = Vsock::new(GUEST_CID, &path).unwrap();
    assert!(matches!(
        Vsock::new(2, &dir.path().join("x")).err().unwrap(),
        VsockError::InvalidCid(2)
    ));
}

#[test]
fn config_space_holds_guest_cid() {
    let dir = tempfile::tempdir().unwrap();
    let v = Vsock::new(0x1234_5678, &uds(&dir)).unwrap();
    let mut b = [0u8; 8];
    v.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), 0x1234_5678);
    let mut b = [0xffu8; 4];
    v.read_config(4, &mut b);
    assert_eq!(b, [0; 4]);
    v.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0; 4]);
}

#[test]
fn reset_closes_connections_and_device_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = uds(&dir);
    let mut g = Guest::new(&path);
    let (mut host, _) = host_connect(&mut g, &path, 52);
    g.vsock.reset();
    assert!(g.vsock.with_muxer(|_| ()).is_none());
    assert_eof(&mut host);
    g.kick(1);
    // A fresh activation serves new connections.
    g.activate();
    let (mut host, local) = host_connect(&mut g, &path, 53);
    host.write_all(b"again").unwrap();
    let (h, d) = g.expect(T);
    assert_eq!((h.op, h.src_port, d.as_slice()), (OP_RW, local, &b"again"[..]));
    drop(g);
    assert!(!path.exists());
}

#[test]
fn garbage_from_the_guest_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = uds(&dir);
    let mut g = Guest::new(&path);
    let listener = UnixListener::bind(format!("{}_77", path.display())).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut r = XorShift(0xdead_beef);
    let ops = [
        0,
        OP_REQUEST,
        OP_RESPONSE,
        OP_RST,
        OP_SHUTDOWN,
        OP_RW,
        OP_CREDIT_UPDATE,
        OP_CREDIT_REQUEST,
        99,
    ];
    for round in 0..3000 {
        match r.next() % 4 {
            // Plausible headers with random fields.
            0 | 1 => {
                let mut hdr = g.hdr(
                    (r.next() % 4) as u32,
                    [77, 1, 2][(r.next() % 3) as usize],
                    ops[(r.next() % ops.len() as u64) as usize],
                    0,
                    (r.next() % 4) as u32,
                );
                hdr.buf_alloc = r.next() as u32;
                hdr.fwd_cnt = r.next() as u32;
                let len = (r.next() % 200) as usize;
                let data: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
                hdr.len = if r.next() % 5 < 1 { r.next() as u32 } else { len as u32 };
                g.send_raw(&hdr, &data);
            }
            // Raw garbage descriptors in the tx queue.
            2 => {
                for i in 0..4u16 {
                    let addr =
                        if r.next() & 1 == 0 { r.next() } else { TX_HDR + r.next() % 0x1000 };
                    g.txq.write_desc(
                        i,
                        addr,
                        r.next() as u32 % 0x1_0000,
                        r.next() as u16 & 7,
                        r.next() as u16 % 300,
                    );
                }
                g.txq.push_avail((r.next() % 6) as u16);
                g.kick(1);
                g.settle();
            }
            // Garbage rx descriptors.
            _ => {
                let head = RX_BUFS + (r.next() % 8) as u16;
                let addr = if r.next() & 1 == 0 { r.next() } else { 0x90_0000 + r.next() % 0x1000 };
                g.rxq.write_desc(
                    head,
                    addr,
                    r.next() as u32 % 100,
                    r.next() as u16 & 7,
                    r.next() as u16,
                );
                g.rxq.push_avail(head);
                g.kick(0);
                g.settle();
            }
        }
        if round % 100 == 0 {
            while listener.accept().is_ok() {}
        }
        // Drain what the device produced, tolerating garbage in recycled buffers.
        while g.rxq.used_idx() != g.rx_seen {
            g.rx_seen = g.rx_seen.wrapping_add(1);
        }
    }
    g.kick(0);
    g.kick(2);
    g.kick(9);
    g.settle();
}
