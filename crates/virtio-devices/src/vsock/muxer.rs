//! The vsock multiplexer: routes guest packets to connections, connections' packets to the
//! guest's rx queue, and accepts host connections on the Unix listener.
//!
//! It lives on the device's backend thread, which owns it (no lock): that thread wakes up for
//! queue notifications (eventfds KVM signals) and Unix socket readiness alike. Every Unix
//! socket is non-blocking; nothing here blocks.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{Connection, PEER_TIMEOUT};
use super::packet::*;
use super::unix::{connect_nonblocking, HandshakeError, PendingAccept};
use crate::chain::Buffers;
use crate::device::{GuestMemory, VirtioInterrupt};
use crate::guest_warn;
use crate::worker::{DeviceWorker, FIRST_RESERVED_TOKEN};

/// Queue indices of the device.
const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;
/// Wake up at least this often to run timeouts.
const TICK_MS: i32 = 200;
/// Epoll token of the Unix listener.
pub const TOKEN_LISTENER: u64 = 1;
const FIRST_STREAM_TOKEN: u64 = 16;
/// Host-initiated connections get local ports counting up from here.
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Upper bound on live connections plus half-open host connections.
const MAX_CONNECTIONS: usize = 1024;
/// Upper bound on queued replies to stray packets (a guest that sends garbage and never
/// reads must not make us buffer without bound).
const MAX_PENDING_REPLIES: usize = 1024;
/// Default time the guest gets to answer a host-initiated connection request.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// (local (host) port, peer (guest) port).
type Key = (u32, u32);

struct Entry {
    conn: Connection,
    token: u64,
    /// Current epoll interest; `None` once the stream was taken out of epoll (hang-up).
    interest: Option<(bool, bool)>,
}

enum Slot {
    Pending(PendingAccept),
    Conn(Key),
}

pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    mem: GuestMemory,
    interrupt: Arc<dyn VirtioInterrupt>,
    rx: Queue,
    tx: Queue,
    epoll: Arc<Epoll>,
    listener: UnixListener,
    conns: HashMap<Key, Entry>,
    slots: HashMap<u64, Slot>,
    /// Connections with something for the rx queue, served round robin.
    ready: VecDeque<Key>,
    /// Replies (RST) to packets that belong to no connection.
    rx_ctrl: VecDeque<Header>,
    next_token: u64,
    next_local_port: u32,
    connect_timeout: Duration,
}

fn event_set(interest: (bool, bool)) -> EventSet {
    let mut set = EventSet::empty();
    if interest.0 {
        set |= EventSet::IN;
    }
    if interest.1 {
        set |= EventSet::OUT;
    }
    set
}

impl Muxer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        guest_cid: u64,
        uds_path: PathBuf,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        rx: Queue,
        tx: Queue,
        listener: UnixListener,
        epoll: Arc<Epoll>,
    ) -> io::Result<Muxer> {
        listener.set_nonblocking(true)?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
        )?;
        Ok(Muxer {
            guest_cid,
            uds_path,
            mem,
            interrupt,
            rx,
            tx,
            epoll,
            listener,
            conns: HashMap::new(),
            slots: HashMap::new(),
            ready: VecDeque::new(),
            rx_ctrl: VecDeque::new(),
            next_token: FIRST_STREAM_TOKEN,
            next_local_port: FIRST_LOCAL_PORT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        })
    }

    pub fn set_connect_timeout(&mut self, timeout: Duration) {
        self.connect_timeout = timeout;
    }

    fn push_reply(&mut self, reply: Header) {
        if self.rx_ctrl.len() >= MAX_PENDING_REPLIES {
            debug!("vsock: too many unanswered replies; dropping {reply:?}");
            return;
        }
        self.rx_ctrl.push_back(reply);
    }

    fn alloc_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1);
        if self.next_token >= FIRST_RESERVED_TOKEN {
            self.next_token = FIRST_STREAM_TOKEN;
        }
        token
    }

    fn epoll_del(&self, fd: i32) {
        if let Err(e) = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default()) {
            debug!("vsock: epoll delete: {e}");
        }
    }

    // ---------------------------------------------------------------- guest -> host (tx)

    /// The guest notified the tx queue: handle every packet in it.
    pub fn process_tx(&mut self) {
        let now = Instant::now();
        let mut used_any = false;
        while let Some(chain) = self.tx.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let packet = Buffers::collect(chain)
                .map_err(TxError::from)
                .and_then(|bufs| read_tx_packet(&self.mem, &bufs));
            if let Err(TxError::Invalid { hdr, .. }) = &packet {
                // The header itself is readable: tell the guest this connection is broken.
                if hdr.src_cid == self.guest_cid && hdr.dst_cid == HOST_CID && hdr.op != OP_RST {
                    self.reset_connection(hdr);
                }
            }
            if let Err(e) = self.tx.add_used(&self.mem, head, 0) {
                guest_warn!("vsock: cannot return tx buffer {head}: {e}");
            }
            used_any = true;
            match packet {
                Ok((hdr, payload)) => self.dispatch(&hdr, &payload, now),
                Err(e) => guest_warn!("vsock: tx packet dropped: {e}"),
            }
        }
        if used_any {
            self.interrupt.signal_used_queue();
        }
        self.process_rx();
    }

    fn reset_connection(&mut self, hdr: &Header) {
        let key = (hdr.dst_port, hdr.src_port);
        match self.conns.get_mut(&key) {
            Some(entry) => {
                entry.conn.reset();
                self.sync(key);
            }
            None => self.push_reply(hdr.reply(OP_RST)),
        }
    }

    fn dispatch(&mut self, hdr: &Header, payload: &[u8], now: Instant) {
        if hdr.dst_cid != HOST_CID || hdr.src_cid != self.guest_cid {
            guest_warn!(
                "vsock: packet from cid {} to cid {} dropped (guest is {}, host is {HOST_CID})",
                hdr.src_cid,
                hdr.dst_cid,
                self.guest_cid
            );
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            debug!("vsock: socket type {} not supported", hdr.type_);
            if hdr.op != OP_RST {
                let mut rst = hdr.reply(OP_RST);
                rst.type_ = hdr.type_;
                self.push_reply(rst);
            }
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if let Some(entry) = self.conns.get_mut(&key) {
            entry.conn.recv(hdr, payload, now);
            self.sync(key);
            return;
        }
        match hdr.op {
            OP_REQUEST => self.guest_connect(hdr),
            OP_RST => {}
            op => {
                debug!(
                    "vsock: op {op} for unknown connection {}:{} -> RST",
                    hdr.src_port, hdr.dst_port
                );
                self.push_reply(hdr.reply(OP_RST));
            }
        }
    }

    /// Guest connects to host port `hdr.dst_port`: connect to `<uds_path>_<port>`.
    fn guest_connect(&mut self, hdr: &Header) {
        if self.slots.len() >= MAX_CONNECTIONS {
            guest_warn!("vsock: too many connections; refusing guest connection");
            self.push_reply(hdr.reply(OP_RST));
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", hdr.dst_port));
        let path = PathBuf::from(path);
        match connect_nonblocking(&path) {
            Ok(stream) => {
                let key = (hdr.dst_port, hdr.src_port);
                let conn = Connection::guest_initiated(stream, hdr, self.guest_cid);
                info!("vsock: guest port {} connected to {}", hdr.src_port, path.display());
                self.insert_conn(key, conn);
            }
            Err(e) => {
                debug!("vsock: guest connection to {} refused: {e}", path.display());
                self.push_reply(hdr.reply(OP_RST));
            }
        }
    }

    fn insert_conn(&mut self, key: Key, conn: Connection) {
        let token = self.alloc_token();
        let interest = conn.interest();
        let fd = conn.stream.as_raw_fd();
        let registered = match self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(event_set(interest), token),
        ) {
            Ok(()) => Some(interest),
            Err(e) => {
                warn!("vsock: cannot watch connection stream: {e}");
                None
            }
        };
        self.conns.insert(key, Entry { conn, token, interest: registered });
        self.slots.insert(token, Slot::Conn(key));
        if registered.is_none() {
            if let Some(entry) = self.conns.get_mut(&key) {
                entry.conn.reset();
            }
        }
        self.sync(key);
    }

    /// Brings epoll interest and the ready list in line with the connection's state, and
    /// removes finished connections.
    fn sync(&mut self, key: Key) {
        let Some(entry) = self.conns.get_mut(&key) else {
            return;
        };
        if entry.conn.is_dead() {
            let fd = entry.conn.stream.as_raw_fd();
            let token = entry.token;
            let registered = entry.interest.is_some();
            if registered {
                self.epoll_del(fd);
            }
            self.slots.remove(&token);
            self.conns.remove(&key);
            self.ready.retain(|k| *k != key);
            debug!("vsock: connection {}:{} closed", key.0, key.1);
            return;
        }
        let want = entry.conn.interest();
        if let Some(current) = entry.interest {
            if current != want {
                let fd = entry.conn.stream.as_raw_fd();
                let ev = EpollEvent::new(event_set(want), entry.token);
                match self.epoll.ctl(ControlOperation::Modify, fd, ev) {
                    Ok(()) => entry.interest = Some(want),
                    Err(e) => warn!("vsock: epoll modify: {e}"),
                }
            }
        }
        if entry.conn.has_rx_work() && !self.ready.contains(&key) {
            self.ready.push_back(key);
        }
    }

    // ---------------------------------------------------------------- host -> guest (rx)

    /// Fills the guest's rx buffers with whatever connections have to say.
    pub fn process_rx(&mut self) {
        let mut used_any = false;
        while !self.rx_ctrl.is_empty() || !self.ready.is_empty() {
            let Some(chain) = self.rx.pop_descriptor_chain(&self.mem) else {
                break;
            };
            let head = chain.head_index();
            let bufs = match Buffers::collect(chain) {
                Ok(b) if b.readable.is_empty() && Buffers::total(&b.writable) >= HDR_SIZE => b,
                Ok(_) => {
                    guest_warn!("vsock: rx buffer without room for a header, or device-readable");
                    self.return_rx(head, 0);
                    used_any = true;
                    continue;
                }
                Err(e) => {
                    guest_warn!("vsock: malformed rx buffer: {e}");
                    self.return_rx(head, 0);
                    used_any = true;
                    continue;
                }
            };
            let room = Buffers::total(&bufs.writable) - HDR_SIZE;
            let Some((hdr, data)) = self.next_rx_packet(room) else {
                // Nothing to send after all: give the buffer back to the queue.
                self.rx.set_next_avail(self.rx.next_avail().wrapping_sub(1));
                break;
            };
            let len = match write_rx_packet(&self.mem, &bufs, &hdr, &data) {
                Ok(n) => u32::try_from(n).unwrap_or(0),
                Err(e) => {
                    guest_warn!("vsock: rx packet lost: {e}");
                    0
                }
            };
            self.return_rx(head, len);
            used_any = true;
        }
        if used_any {
            self.interrupt.signal_used_queue();
        }
    }

    fn return_rx(&mut self, head: u16, len: u32) {
        if let Err(e) = self.rx.add_used(&self.mem, head, len) {
            guest_warn!("vsock: cannot return rx buffer {head}: {e}");
        }
    }

    fn next_rx_packet(&mut self, room: usize) -> Option<(Header, Vec<u8>)> {
        if let Some(hdr) = self.rx_ctrl.pop_front() {
            return Some((hdr, Vec::new()));
        }
        let now = Instant::now();
        for _ in 0..self.ready.len() {
            let key = self.ready.pop_front()?;
            let Some(entry) = self.conns.get_mut(&key) else {
                continue;
            };
            let packet = entry.conn.next_packet(room, now);
            self.sync(key);
            if packet.is_some() {
                return packet;
            }
        }
        None
    }

    // ---------------------------------------------------------------- Unix side

    /// Handles one epoll event of the backend thread.
    pub fn handle_event(&mut self, token: u64, events: EventSet) {
        match token {
            TOKEN_LISTENER => self.accept_all(),
            _ => match self.slots.get(&token) {
                Some(Slot::Pending(_)) => self.read_connect_line(token, events),
                Some(Slot::Conn(key)) => {
                    let key = *key;
                    self.conn_event(key, events);
                }
                None => debug!("vsock: event for stale token {token}"),
            },
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.slots.len() >= MAX_CONNECTIONS {
                        warn!("vsock: too many connections; closing new host connection");
                        continue;
                    }
                    if let Err(e) = stream.set_nonblocking(true) {
                        warn!("vsock: accepted stream: {e}");
                        continue;
                    }
                    let token = self.alloc_token();
                    let ev = EpollEvent::new(EventSet::IN, token);
                    if let Err(e) = self.epoll.ctl(ControlOperation::Add, stream.as_raw_fd(), ev) {
                        warn!("vsock: cannot watch accepted stream: {e}");
                        continue;
                    }
                    let pending = PendingAccept::new(stream, Instant::now() + PEER_TIMEOUT);
                    self.slots.insert(token, Slot::Pending(pending));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("vsock: accept on {}: {e}", self.uds_path.display());
                    return;
                }
            }
        }
    }

    fn drop_pending(&mut self, token: u64) {
        if let Some(Slot::Pending(p)) = self.slots.remove(&token) {
            self.epoll_del(p.stream.as_raw_fd());
        }
    }

    fn read_connect_line(&mut self, token: u64, events: EventSet) {
        let Some(Slot::Pending(pending)) = self.slots.get_mut(&token) else {
            return;
        };
        let hung_up = events.intersects(EventSet::HANG_UP | EventSet::ERROR);
        let port = match pending.read_line(hung_up) {
            Ok(None) => return,
            Ok(Some(port)) => port,
            Err(e @ HandshakeError::Malformed(_)) => {
                warn!("vsock: {e}; closing");
                self.drop_pending(token);
                return;
            }
            Err(e) => {
                debug!("vsock: host connection dropped: {e}");
                self.drop_pending(token);
                return;
            }
        };
        let Some(Slot::Pending(pending)) = self.slots.remove(&token) else {
            return;
        };
        self.epoll_del(pending.stream.as_raw_fd());
        let local = self.alloc_local_port(port);
        debug!("vsock: host connection to guest port {port} as local port {local}");
        let conn = Connection::host_initiated(
            pending.stream,
            local,
            port,
            self.guest_cid,
            Instant::now().checked_add(self.connect_timeout),
        );
        self.insert_conn((local, port), conn);
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(port, peer_port)) {
                return port;
            }
        }
    }

    fn conn_event(&mut self, key: Key, events: EventSet) {
        let hangup = events.intersects(EventSet::HANG_UP | EventSet::ERROR);
        let Some(entry) = self.conns.get_mut(&key) else {
            return;
        };
        if events.contains(EventSet::OUT) {
            entry.conn.on_writable();
        }
        if events.contains(EventSet::IN) {
            entry.conn.on_readable();
        }
        if hangup {
            entry.conn.on_hangup(Instant::now());
            if entry.interest.take().is_some() {
                let fd = entry.conn.stream.as_raw_fd();
                self.epoll_del(fd);
            }
        }
        self.sync(key);
    }

    /// Periodic work: timeouts of half-open and closing connections.
    pub fn tick(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .slots
            .iter()
            .filter_map(|(t, s)| match s {
                Slot::Pending(p) if now >= p.deadline => Some(*t),
                _ => None,
            })
            .collect();
        for token in expired {
            debug!("vsock: host connection sent no CONNECT line in time");
            self.drop_pending(token);
        }
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            if let Some(entry) = self.conns.get_mut(&key) {
                entry.conn.tick(now);
            }
            self.sync(key);
        }
    }

    #[cfg(test)]
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    #[cfg(test)]
    pub fn pending_replies(&self) -> usize {
        self.rx_ctrl.len()
    }
}

impl DeviceWorker for Muxer {
    fn queue_notified(&mut self, index: usize) {
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => self.process_tx(),
            // The event queue carries only device -> driver events (transport resets), which
            // this device never sends.
            _ => {}
        }
    }

    fn fd_event(&mut self, token: u64, events: EventSet) {
        self.handle_event(token, events);
    }

    fn after_events(&mut self, now: Instant) {
        self.tick(now);
        self.process_rx();
    }

    fn tick_ms(&self) -> i32 {
        TICK_MS
    }
}
