use super::*;

const GUEST: u64 = 3;

fn guest_hdr(c: &Connection, op: u16, len: u32, flags: u32, buf_alloc: u32, fwd: u32) -> Header {
    Header {
        src_cid: GUEST,
        dst_cid: HOST_CID,
        src_port: c.peer_port,
        dst_port: c.local_port,
        len,
        type_: TYPE_STREAM,
        op,
        flags,
        buf_alloc,
        fwd_cnt: fwd,
    }
}

fn established() -> (Connection, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    let req = Header {
        src_cid: GUEST,
        dst_cid: HOST_CID,
        src_port: 5000,
        dst_port: 52,
        op: OP_REQUEST,
        type_: TYPE_STREAM,
        buf_alloc: 8,
        ..Header::default()
    };
    let mut c = Connection::guest_initiated(a, &req, GUEST);
    let (h, _) = c.next_packet(4096, Instant::now()).unwrap();
    assert_eq!(h.op, OP_RESPONSE);
    assert_eq!((h.src_port, h.dst_port), (52, 5000));
    (c, b)
}

#[test]
fn host_to_guest_respects_guest_credit() {
    let (mut c, mut host) = established();
    let now = Instant::now();
    host.write_all(b"0123456789abcdef").unwrap();
    c.on_readable();
    assert!(c.has_rx_work());
    let (h, data) = c.next_packet(4096, now).unwrap();
    assert_eq!((h.op, h.len), (OP_RW, 8));
    assert_eq!(data, b"01234567");
    // Guest buffer (8 bytes) is full: one credit request, then nothing and no reading.
    let (h, _) = c.next_packet(4096, now).unwrap();
    assert_eq!(h.op, OP_CREDIT_REQUEST);
    assert!(!c.has_rx_work());
    assert!(c.next_packet(4096, now).is_none());
    assert_eq!(c.interest(), (false, false));
    // Guest consumed 8 bytes.
    let upd = guest_hdr(&c, OP_CREDIT_UPDATE, 0, 0, 8, 8);
    c.recv(&upd, &[], now);
    assert!(c.has_rx_work());
    let (h, data) = c.next_packet(4096, now).unwrap();
    assert_eq!(data, b"89abcdef");
    assert_eq!(h.len, 8);
}

#[test]
fn guest_to_host_and_credit_updates() {
    let (mut c, mut host) = established();
    let now = Instant::now();
    let hdr = guest_hdr(&c, OP_RW, 5, 0, 8, 0);
    c.recv(&hdr, b"hello", now);
    let mut buf = [0u8; 16];
    let n = host.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello");
    assert_eq!(c.fwd_cnt, 5);
    // Credit request from the guest gets an update with our fwd_cnt.
    c.recv(&guest_hdr(&c, OP_CREDIT_REQUEST, 0, 0, 8, 0), &[], now);
    let (h, _) = c.next_packet(4096, now).unwrap();
    assert_eq!((h.op, h.fwd_cnt, h.buf_alloc), (OP_CREDIT_UPDATE, 5, HOST_BUF_ALLOC));
    assert!(!c.has_rx_work());
}

#[test]
fn host_stream_backpressure_buffers_then_resets_on_credit_violation() {
    let (mut c, host) = established();
    let now = Instant::now();
    let chunk = vec![7u8; MAX_PKT_PAYLOAD as usize];
    // Fill the socket buffer and then our buffer up to HOST_BUF_ALLOC.
    let mut sent = 0usize;
    while c.buffered_to_host() + chunk.len() <= HOST_BUF_ALLOC as usize {
        let h = guest_hdr(&c, OP_RW, chunk.len() as u32, 0, 8, 0);
        c.recv(&h, &chunk, now);
        sent += chunk.len();
        assert!(!c.is_dead(), "reset after {sent} bytes");
        if sent > 64 << 20 {
            panic!("socket never filled");
        }
    }
    assert!(c.buffered_to_host() > 0);
    assert!(c.interest().1);
    // One more packet than the credit allows.
    let h = guest_hdr(&c, OP_RW, chunk.len() as u32, 0, 8, 0);
    c.recv(&h, &chunk, now);
    let (h, _) = c.next_packet(4096, now).unwrap();
    assert_eq!(h.op, OP_RST);
    assert!(c.is_dead());
    drop(host);
}

#[test]
fn draining_sends_credit_update() {
    let (mut c, mut host) = established();
    let now = Instant::now();
    let chunk = vec![1u8; MAX_PKT_PAYLOAD as usize];
    for _ in 0..3 {
        let h = guest_hdr(&c, OP_RW, chunk.len() as u32, 0, 8, 0);
        c.recv(&h, &chunk, now);
    }
    host.set_nonblocking(false).unwrap();
    let mut sink = vec![0u8; 3 * chunk.len()];
    let mut got = 0;
    while got < sink.len() {
        c.on_writable();
        got += host.read(&mut sink[got..]).unwrap();
    }
    assert!(c.send_credit_update);
    let (h, _) = c.next_packet(4096, now).unwrap();
    assert_eq!((h.op, h.fwd_cnt), (OP_CREDIT_UPDATE, 3 * MAX_PKT_PAYLOAD));
}

#[test]
fn half_close_both_ways_then_rst() {
    let (mut c, mut host) = established();
    let now = Instant::now();
    c.recv(&guest_hdr(&c, OP_RW, 2, 0, 64, 0), b"hi", now);
    c.recv(&guest_hdr(&c, OP_SHUTDOWN, 0, SHUTDOWN_SEND, 64, 0), &[], now);
    // The host side sees the data then EOF, and can still answer.
    let mut s = String::new();
    host.set_nonblocking(false).unwrap();
    host.read_to_string(&mut s).unwrap();
    assert_eq!(s, "hi");
    host.write_all(b"bye").unwrap();
    host.shutdown(Shutdown::Write).unwrap();
    c.on_readable();
    let (h, d) = c.next_packet(4096, now).unwrap();
    assert_eq!((h.op, d.as_slice()), (OP_RW, &b"bye"[..]));
    let (h, _) = c.next_packet(4096, now).unwrap();
    assert_eq!(h.op, OP_RST);
    assert!(c.is_dead());
}

#[test]
fn host_hangup_sends_shutdown_then_times_out() {
    let (mut c, host) = established();
    let now = Instant::now();
    drop(host);
    c.on_hangup(now);
    let (h, _) = c.next_packet(4096, now).unwrap();
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
    assert!(!c.is_dead());
    c.tick(now + PEER_TIMEOUT + Duration::from_millis(1));
    let (h, _) = c.next_packet(4096, now).unwrap();
    assert_eq!(h.op, OP_RST);
    assert!(c.is_dead());
}

#[test]
fn hangup_after_half_close_or_rcv_shutdown_still_closes() {
    let now = Instant::now();
    // Host half-closed earlier (EOF read), then goes away completely.
    let (mut c, host) = established();
    host.shutdown(Shutdown::Write).unwrap();
    c.on_readable();
    let (h, _) = c.next_packet(4096, now).unwrap();
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    drop(host);
    c.on_hangup(now);
    let (h, _) = c.next_packet(4096, now).unwrap();
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
    c.tick(now + PEER_TIMEOUT);
    assert_eq!(c.next_packet(4096, now).unwrap().0.op, OP_RST);
    assert!(c.is_dead());

    // The guest said it receives nothing more; the host goes away.
    let (mut c, host) = established();
    c.recv(&guest_hdr(&c, OP_SHUTDOWN, 0, SHUTDOWN_RCV, 64, 0), &[], now);
    assert!(c.next_packet(4096, now).is_none());
    drop(host);
    c.on_hangup(now);
    let (h, _) = c.next_packet(4096, now).unwrap();
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
}

#[test]
fn guest_full_shutdown_gets_rst() {
    let (mut c, _host) = established();
    let now = Instant::now();
    c.recv(&guest_hdr(&c, OP_SHUTDOWN, 0, SHUTDOWN_BOTH, 64, 0), &[], now);
    let (h, _) = c.next_packet(4096, now).unwrap();
    assert_eq!(h.op, OP_RST);
    assert!(c.is_dead());
}

#[test]
fn host_initiated_handshake() {
    let (a, mut host) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let now = Instant::now();
    let mut c = Connection::host_initiated(a, 1 << 30, 52, GUEST, Some(now + PEER_TIMEOUT));
    let (h, _) = c.next_packet(4096, now).unwrap();
    assert_eq!((h.op, h.src_port, h.dst_port, h.dst_cid), (OP_REQUEST, 1 << 30, 52, GUEST));
    assert!(!c.has_rx_work());
    c.recv(&guest_hdr(&c, OP_RESPONSE, 0, 0, 64, 0), &[], now);
    assert_eq!(c.state(), State::Established);
    let mut buf = [0u8; 32];
    let n = host.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], format!("OK {}\n", 1u32 << 30).as_bytes());
}

#[test]
fn host_initiated_refused_or_timed_out() {
    let now = Instant::now();
    let (a, _h) = UnixStream::pair().unwrap();
    let mut c = Connection::host_initiated(a, 1 << 30, 52, GUEST, Some(now + PEER_TIMEOUT));
    c.next_packet(4096, now).unwrap();
    c.recv(&guest_hdr(&c, OP_RST, 0, 0, 0, 0), &[], now);
    assert!(c.is_dead());

    let (a, _h) = UnixStream::pair().unwrap();
    let mut c = Connection::host_initiated(a, 1 << 30, 52, GUEST, Some(now + PEER_TIMEOUT));
    c.next_packet(4096, now).unwrap();
    c.tick(now + PEER_TIMEOUT);
    assert_eq!(c.next_packet(4096, now).unwrap().0.op, OP_RST);
    assert!(c.is_dead());
}

#[test]
fn data_while_connecting_resets() {
    let now = Instant::now();
    let (a, _h) = UnixStream::pair().unwrap();
    let mut c = Connection::host_initiated(a, 1 << 30, 52, GUEST, Some(now + PEER_TIMEOUT));
    c.next_packet(4096, now).unwrap();
    c.recv(&guest_hdr(&c, OP_RW, 1, 0, 0, 0), b"x", now);
    assert_eq!(c.next_packet(4096, now).unwrap().0.op, OP_RST);
}
