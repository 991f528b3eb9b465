//! One vsock stream connection mapped to a Unix stream: state machine and credit accounting.
//!
//! Directions: "to host" is data the guest sends (OP_RW from the tx queue) that we write to the
//! Unix stream; "to guest" is data we read from the Unix stream and put in rx buffers.
//!
//! Flow control (virtio spec 5.10.6.3): we advertise `HOST_BUF_ALLOC` bytes of buffer and count
//! in `fwd_cnt` what we have written out to the Unix stream; the guest must never have more
//! than `HOST_BUF_ALLOC` bytes in flight. The other way, we only read from the Unix stream
//! what the guest has room for (`peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`), so a guest that
//! stops reading makes us stop reading too instead of buffering.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use tracing::debug;

use super::packet::*;
use crate::guest_warn;

/// Bytes of guest data we accept to hold per connection before the Unix side reads them.
pub const HOST_BUF_ALLOC: u32 = 256 * 1024;
/// Send a credit update once this much buffer was freed since the guest last heard from us.
const CREDIT_UPDATE_THRESHOLD: u32 = HOST_BUF_ALLOC / 2;
/// How long the guest gets to answer a full shutdown (and a host client to send its CONNECT
/// line).
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: OP_REQUEST queued or sent, waiting for OP_RESPONSE.
    Connecting,
    Established,
}

/// A packet for the guest: header plus payload.
pub type RxPacket = (Header, Vec<u8>);

pub struct Connection {
    pub stream: UnixStream,
    pub local_port: u32,
    pub peer_port: u32,
    guest_cid: u64,
    state: State,
    // Control packets waiting for an rx buffer.
    send_request: bool,
    send_response: bool,
    send_rst: bool,
    send_shutdown: u32,
    send_credit_update: bool,
    credit_requested: bool,
    /// An RST went out (or came in): the connection is finished.
    dead: bool,
    // Host -> guest.
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// The Unix stream may have data (epoll said so and no read hit EAGAIN since).
    stream_readable: bool,
    /// The Unix stream reached end of file.
    host_eof: bool,
    /// The Unix peer hung up completely (EPOLLHUP): nothing more can be written to it.
    host_hup: bool,
    // Guest -> host.
    to_host: VecDeque<u8>,
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    peer_shutdown: u32,
    host_write_shut: bool,
    deadline: Option<Instant>,
}

impl Connection {
    fn base(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        guest_cid: u64,
        state: State,
    ) -> Connection {
        Connection {
            stream,
            local_port,
            peer_port,
            guest_cid,
            state,
            send_request: false,
            send_response: false,
            send_rst: false,
            send_shutdown: 0,
            send_credit_update: false,
            credit_requested: false,
            dead: false,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            stream_readable: false,
            host_eof: false,
            host_hup: false,
            to_host: VecDeque::new(),
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            peer_shutdown: 0,
            host_write_shut: false,
            deadline: None,
        }
    }

    /// A host process asked (CONNECT line) for guest port `peer_port`; the guest must answer
    /// before `deadline` (if any).
    pub fn host_initiated(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        guest_cid: u64,
        deadline: Option<Instant>,
    ) -> Connection {
        let mut c = Connection::base(stream, local_port, peer_port, guest_cid, State::Connecting);
        c.send_request = true;
        c.deadline = deadline;
        c
    }

    /// The guest's OP_REQUEST `req` was accepted by a Unix listener connected as `stream`.
    pub fn guest_initiated(stream: UnixStream, req: &Header, guest_cid: u64) -> Connection {
        let mut c =
            Connection::base(stream, req.dst_port, req.src_port, guest_cid, State::Established);
        c.send_response = true;
        c.update_peer_credit(req);
        c
    }

    #[cfg(test)]
    pub fn state(&self) -> State {
        self.state
    }

    /// Finished: remove it (dropping it closes the Unix stream).
    pub fn is_dead(&self) -> bool {
        self.dead && !self.send_rst
    }

    fn peer_free(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        if self.peer_free() > 0 {
            self.credit_requested = false;
        }
    }

    fn may_read_stream(&self) -> bool {
        self.state == State::Established
            && !self.dead
            && !self.send_rst
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
    }

    /// Epoll interest for the Unix stream: (readable, writable).
    pub fn interest(&self) -> (bool, bool) {
        if self.dead || self.send_rst || self.host_hup {
            return (false, false);
        }
        (self.may_read_stream() && !self.stream_readable, !self.to_host.is_empty())
    }

    /// Whether `next_packet` has something to put in an rx buffer.
    pub fn has_rx_work(&self) -> bool {
        if self.dead && !self.send_rst {
            return false;
        }
        self.send_rst
            || self.send_request
            || self.send_response
            || self.send_shutdown != 0
            || self.send_credit_update
            || (self.may_read_stream()
                && self.stream_readable
                && (self.peer_free() > 0 || !self.credit_requested))
    }

    fn header(&mut self, op: u16, len: u32, flags: u32) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.send_credit_update = false;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: HOST_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Queue an RST: the connection ends once it went out.
    pub fn reset(&mut self) {
        self.send_rst = true;
        self.dead = true;
    }

    /// The next packet for the guest, with at most `max_payload` bytes of data.
    pub fn next_packet(&mut self, max_payload: usize, now: Instant) -> Option<RxPacket> {
        if self.send_rst {
            self.send_rst = false;
            self.dead = true;
            return Some((self.header(OP_RST, 0, 0), Vec::new()));
        }
        if self.dead {
            return None;
        }
        if self.send_request {
            self.send_request = false;
            return Some((self.header(OP_REQUEST, 0, 0), Vec::new()));
        }
        if self.send_response {
            self.send_response = false;
            return Some((self.header(OP_RESPONSE, 0, 0), Vec::new()));
        }
        if self.may_read_stream() && self.stream_readable {
            if let Some(pkt) = self.read_data(max_payload, now) {
                return Some(pkt);
            }
            if self.send_rst {
                return self.next_packet(max_payload, now);
            }
        }
        if self.send_shutdown != 0 {
            let flags = self.send_shutdown;
            self.send_shutdown = 0;
            return Some((self.header(OP_SHUTDOWN, 0, flags), Vec::new()));
        }
        if self.send_credit_update {
            return Some((self.header(OP_CREDIT_UPDATE, 0, 0), Vec::new()));
        }
        None
    }

    fn read_data(&mut self, max_payload: usize, now: Instant) -> Option<RxPacket> {
        let free = self.peer_free();
        if free == 0 {
            if self.credit_requested {
                return None;
            }
            self.credit_requested = true;
            return Some((self.header(OP_CREDIT_REQUEST, 0, 0), Vec::new()));
        }
        let want = max_payload.min(free as usize).min(MAX_PKT_PAYLOAD as usize);
        if want == 0 {
            return None;
        }
        let mut buf = vec![0u8; want];
        match (&self.stream).read(&mut buf) {
            Ok(0) => {
                self.stream_readable = false;
                self.on_host_eof(now);
                None
            }
            Ok(n) => {
                buf.truncate(n);
                let len = u32::try_from(n).unwrap_or(0);
                self.tx_cnt = self.tx_cnt.wrapping_add(len);
                Some((self.header(OP_RW, len, 0), buf))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.stream_readable = false;
                None
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
            Err(e) => {
                debug!("vsock: port {}: read from Unix stream: {e}", self.local_port);
                self.reset();
                None
            }
        }
    }

    fn on_host_eof(&mut self, now: Instant) {
        self.host_eof = true;
        if self.peer_shutdown & SHUTDOWN_SEND != 0 && self.to_host.is_empty() {
            // Both sides are done sending: close.
            self.reset();
        } else if self.host_hup {
            self.send_shutdown = SHUTDOWN_BOTH;
            self.deadline = Some(now + PEER_TIMEOUT);
        } else {
            self.send_shutdown = SHUTDOWN_SEND;
        }
    }

    /// Epoll reported the Unix stream readable.
    pub fn on_readable(&mut self) {
        self.stream_readable = true;
    }

    /// Epoll reported a hang-up or error: the Unix peer is gone. Read what is left, then close.
    pub fn on_hangup(&mut self, now: Instant) {
        if self.host_hup {
            return;
        }
        self.host_hup = true;
        self.stream_readable = true;
        if !self.to_host.is_empty() {
            debug!(
                "vsock: port {}: Unix peer hung up with {} bytes unwritten",
                self.local_port,
                self.to_host.len()
            );
            self.to_host.clear();
        }
        if self.state == State::Connecting {
            self.reset();
        } else if !self.may_read_stream() && !self.dead {
            // Nothing more will be read (we hit EOF before, or the guest refuses data), so no
            // EOF will come to close the connection: tell the guest now.
            if self.peer_shutdown & SHUTDOWN_SEND != 0 {
                self.reset();
            } else {
                self.send_shutdown = SHUTDOWN_BOTH;
                self.deadline = Some(now + PEER_TIMEOUT);
            }
        }
    }

    /// Epoll reported the Unix stream writable: push buffered guest data.
    pub fn on_writable(&mut self) {
        self.flush_to_host();
    }

    /// Handles a packet from the guest for this connection.
    pub fn recv(&mut self, hdr: &Header, payload: &[u8], now: Instant) {
        if self.dead {
            return;
        }
        self.update_peer_credit(hdr);
        match (self.state, hdr.op) {
            (_, OP_RST) => {
                debug!("vsock: port {}: guest reset the connection", self.local_port);
                self.dead = true;
                self.send_rst = false;
            }
            (State::Connecting, OP_RESPONSE) => self.established(now),
            (State::Connecting, op) => {
                guest_warn!("vsock: port {}: op {op} while connecting", self.local_port);
                self.reset();
            }
            (State::Established, OP_RW) => self.guest_data(payload),
            (State::Established, OP_CREDIT_UPDATE) => {}
            (State::Established, OP_CREDIT_REQUEST) => self.send_credit_update = true,
            (State::Established, OP_SHUTDOWN) => self.guest_shutdown(hdr.flags, now),
            (State::Established, op) => {
                guest_warn!(
                    "vsock: port {}: unexpected op {op} on an established connection",
                    self.local_port
                );
                self.reset();
            }
        }
    }

    fn established(&mut self, _now: Instant) {
        let line = format!("OK {}\n", self.local_port);
        match (&self.stream).write(line.as_bytes()) {
            Ok(n) if n == line.len() => {
                self.state = State::Established;
                self.deadline = None;
                // The host may have written data right after its CONNECT line.
                self.stream_readable = true;
            }
            Ok(_) | Err(_) => {
                debug!("vsock: port {}: cannot confirm to the Unix client", self.local_port);
                self.reset();
            }
        }
    }

    fn guest_data(&mut self, payload: &[u8]) {
        if self.peer_shutdown & SHUTDOWN_SEND != 0 {
            guest_warn!("vsock: port {}: data after shutdown dropped", self.local_port);
            return;
        }
        if self.host_hup || self.host_write_shut {
            // Nobody reads it any more: count it as consumed so the guest is not stalled.
            self.consumed(payload.len());
            return;
        }
        if self.to_host.len().saturating_add(payload.len()) > HOST_BUF_ALLOC as usize {
            guest_warn!(
                "vsock: port {}: guest exceeded the credit we gave it; resetting",
                self.local_port
            );
            self.reset();
            return;
        }
        self.to_host.extend(payload);
        self.flush_to_host();
    }

    fn consumed(&mut self, n: usize) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(u32::try_from(n).unwrap_or(u32::MAX));
        if self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.send_credit_update = true;
        }
    }

    fn flush_to_host(&mut self) {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match (&self.stream).write(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.to_host.drain(..n.min(self.to_host.len()));
                    self.consumed(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("vsock: port {}: write to Unix stream: {e}", self.local_port);
                    self.to_host.clear();
                    self.reset();
                    return;
                }
            }
        }
        if self.to_host.is_empty() {
            self.after_drained();
        }
    }

    /// Guest data is all written out: apply a pending guest shutdown.
    fn after_drained(&mut self) {
        if self.peer_shutdown & SHUTDOWN_SEND != 0 && !self.host_write_shut {
            self.host_write_shut = true;
            if let Err(e) = self.stream.shutdown(Shutdown::Write) {
                debug!("vsock: port {}: shutdown(write): {e}", self.local_port);
            }
        }
        let host_done = self.host_eof || self.peer_shutdown & SHUTDOWN_RCV != 0;
        if self.peer_shutdown & SHUTDOWN_SEND != 0 && host_done && !self.dead {
            self.reset();
        }
    }

    fn guest_shutdown(&mut self, flags: u32, now: Instant) {
        self.peer_shutdown |= flags & SHUTDOWN_BOTH;
        if self.peer_shutdown == SHUTDOWN_BOTH && self.deadline.is_none() {
            self.deadline = Some(now + PEER_TIMEOUT);
        }
        if self.to_host.is_empty() {
            self.after_drained();
        }
    }

    /// Called periodically: a guest that does not answer in time gets an RST.
    pub fn tick(&mut self, now: Instant) {
        if let Some(deadline) = self.deadline {
            if now >= deadline && !self.dead {
                debug!("vsock: port {}: guest did not answer in time; resetting", self.local_port);
                self.deadline = None;
                self.reset();
            }
        }
    }

    #[cfg(test)]
    pub fn buffered_to_host(&self) -> usize {
        self.to_host.len()
    }
}

#[cfg(test)]
mod tests;
