//! Entry points for the coverage-guided fuzz targets of `crates/fuzz` (feature `fuzz-hooks`,
//! which the product build never enables). Each takes the fuzzer's bytes, lays them out the
//! way a guest driver would (guest memory, queues, packets, FUSE requests) and runs the
//! device's own code on them, in the calling thread. A panic here is a bug in device code:
//! everything these functions feed in is what a hostile guest can write.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{Epoll, EpollEvent};

use crate::chain::{read_from, write_to, Buffers};
use crate::device::{GuestMemory, VirtioInterrupt};
use crate::fs::FuzzContext;
use crate::test_utils::{TestQueue, F_WRITE};
use crate::vsock::packet::{Header, HDR_SIZE, OP_RW};
use crate::vsock::Muxer;

/// Guest memory of the vsock and virtio-fs hooks.
const MEM_SIZE: usize = 4 << 20;
/// Guest memory of the descriptor chain hook: small, so random addresses often hit it.
const CHAIN_MEM_SIZE: usize = 64 << 10;

struct NoInterrupt;

impl VirtioInterrupt for NoInterrupt {
    fn signal_used_queue(&self) {}
    fn signal_config_change(&self) {}
}

fn memory(size: usize) -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), size)]).expect("fuzz guest memory")
}

/// Descriptor chains and split-queue state the guest wrote. `data[0]` picks the queue size
/// (2^(n % 9)), `data[1]` bit 0 turns on EVENT_IDX and the rest is the skip of the reads;
/// the remaining bytes are guest memory from address 0: descriptor table at 0, avail ring
/// right after it, used ring after that (4-aligned), then anything the descriptors point to.
/// Every chain the device pops is collected (`Buffers`), its readable part read and copied
/// into its writable part, and returned to the used ring, as the devices do. Returns the
/// number of chains popped.
pub fn descriptor_chains(data: &[u8]) -> usize {
    let Some((&[size_bits, flags], image)) = data.split_first_chunk::<2>() else {
        return 0;
    };
    let size = 1u16 << (size_bits % 9);
    let mem = memory(CHAIN_MEM_SIZE);
    let image = image.get(..CHAIN_MEM_SIZE).unwrap_or(image);
    mem.write_slice(image, GuestAddress(0)).expect("image fits guest memory");
    let avail = 16 * u64::from(size);
    let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
    let mut q = Queue::new(size).expect("power of two queue size");
    q.set_size(size);
    q.set_desc_table_address(Some(0), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_event_idx(flags & 1 != 0);
    q.set_ready(true);
    let skip = usize::from(flags >> 1);
    let mut popped = 0;
    for _ in 0..2 * u32::from(size) {
        let Some(chain) = q.pop_descriptor_chain(&mem) else {
            break;
        };
        popped += 1;
        let head = chain.head_index();
        let written = match Buffers::collect(chain) {
            Ok(bufs) => {
                let mut buf = vec![0u8; Buffers::total(&bufs.readable).min(4096)];
                let n = read_from(&mem, &bufs.readable, skip, &mut buf).unwrap_or(0);
                write_to(&mem, &bufs.writable, 0, buf.get(..n).unwrap_or(&[])).unwrap_or(0)
            }
            Err(_) => 0,
        };
        let _ = q.add_used(&mem, head, u32::try_from(written).unwrap_or(u32::MAX));
        let _ = q.needs_notification(&mem);
    }
    let _ = q.enable_notification(&mem);
    popped
}

const VSOCK_GUEST_CID: u64 = 3;
const VSOCK_QSIZE: u16 = 64;
const VSOCK_RX_BUFS: u16 = 32;
const VSOCK_RX_BASE: u64 = 0x10_0000;
const VSOCK_RX_LEN: u32 = 0x1000;
const VSOCK_TX_BASE: u64 = 0x20_0000;
/// Where `op` is in a vsock header.
const OP_OFFSET: u64 = 30;
/// The guest port a host client connects to, and the host port with a listener for
/// guest-initiated connections.
pub const VSOCK_PORT: u32 = 1024;

/// The vsock connection muxer driven by guest tx packets. `data` is a sequence of packets,
/// each a 44-byte header followed by as many payload bytes as its `len` says (fewer at the
/// end of the input), put in the tx queue as the Linux driver does (header and payload in
/// two descriptors). Before them a host client connects to the device's socket in `dir` and
/// asks for guest port [`VSOCK_PORT`]; a listener at `<socket>_1024` takes guest-initiated
/// connections and answers each with a line. Between packets the host side (epoll events,
/// accepts, rx delivery) runs as the backend thread runs it; at the end every timeout fires.
/// Returns the number of data packets (OP_RW) the device delivered to the guest's rx queue.
pub fn vsock_packets(dir: &Path, data: &[u8]) -> usize {
    let uds = dir.join("vsock.sock");
    let port_path = dir.join(format!("vsock.sock_{VSOCK_PORT}"));
    let _ = std::fs::remove_file(&uds);
    let _ = std::fs::remove_file(&port_path);
    let listener = UnixListener::bind(&uds).expect("vsock fuzz listener");
    let port_listener = UnixListener::bind(&port_path).expect("vsock fuzz port listener");
    port_listener.set_nonblocking(true).expect("non-blocking listener");
    let mem = memory(MEM_SIZE);
    let mut rxq = TestQueue::at(&mem, 0, VSOCK_QSIZE);
    let mut txq = TestQueue::at(&mem, 0x4000, VSOCK_QSIZE);
    for head in 0..VSOCK_RX_BUFS {
        rxq.write_desc(head, rx_buf(head), VSOCK_RX_LEN, F_WRITE, 0);
        rxq.push_avail(head);
    }
    let epoll = Arc::new(Epoll::new().expect("epoll"));
    let mut mux = Muxer::new(
        VSOCK_GUEST_CID,
        uds.clone(),
        mem.clone(),
        Arc::new(NoInterrupt),
        rxq.queue(),
        txq.queue(),
        listener,
        epoll.clone(),
    )
    .expect("vsock fuzz muxer");
    let mut host = Host { port_listener, streams: Vec::new(), rx_seen: 0, delivered: 0 };
    let mut client = UnixStream::connect(&uds).expect("connect to the vsock socket");
    let _ = client.write_all(format!("CONNECT {VSOCK_PORT}\nfrom the host").as_bytes());
    host.pump(&mut mux, &epoll, &mut rxq, &mem);

    let mut rest = data;
    let mut addr = VSOCK_TX_BASE;
    for _ in 0..VSOCK_QSIZE {
        let Some(raw) = rest.get(..HDR_SIZE) else {
            break;
        };
        let declared = Header::parse(raw).map(|h| h.len as usize).unwrap_or(0);
        let len = declared.min(rest.len() - HDR_SIZE);
        let (packet, tail) = rest.split_at(HDR_SIZE + len);
        rest = tail;
        if addr + packet.len() as u64 > MEM_SIZE as u64 {
            break;
        }
        mem.write_slice(packet, GuestAddress(addr)).expect("packet fits guest memory");
        let hdr_desc = (addr, HDR_SIZE as u32, 0);
        if len == 0 {
            txq.add_chain(&[hdr_desc]);
        } else {
            txq.add_chain(&[hdr_desc, (addr + HDR_SIZE as u64, len as u32, 0)]);
        }
        addr += packet.len() as u64;
        mux.process_tx();
        host.pump(&mut mux, &epoll, &mut rxq, &mem);
    }
    drop(client);
    host.pump(&mut mux, &epoll, &mut rxq, &mem);
    mux.tick(Instant::now() + Duration::from_secs(60));
    host.pump(&mut mux, &epoll, &mut rxq, &mem);
    host.delivered
}

fn rx_buf(head: u16) -> u64 {
    VSOCK_RX_BASE + u64::from(head) * u64::from(VSOCK_RX_LEN)
}

/// The host processes around the muxer and the guest's rx side.
struct Host {
    port_listener: UnixListener,
    streams: Vec<UnixStream>,
    rx_seen: u16,
    delivered: usize,
}

impl Host {
    /// One round of what the backend thread and its peers do: epoll events to the muxer, new
    /// guest-initiated connections accepted and answered, rx delivery, and the guest giving
    /// back every rx buffer the device used.
    fn pump(&mut self, mux: &mut Muxer, epoll: &Epoll, rxq: &mut TestQueue, mem: &GuestMemory) {
        let mut events = [EpollEvent::default(); 16];
        for _ in 0..4 {
            let n = epoll.wait(0, &mut events).unwrap_or(0);
            if n == 0 {
                break;
            }
            for ev in events.iter().take(n) {
                mux.handle_event(ev.data(), ev.event_set());
            }
        }
        while let Ok((mut s, _)) = self.port_listener.accept() {
            let _ = s.set_nonblocking(true);
            let _ = s.write_all(b"hello from the host\n");
            self.streams.push(s);
        }
        mux.process_rx();
        while self.rx_seen != rxq.used_idx() {
            let (head, _) = rxq.used_elem(self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            let head = (head % u32::from(VSOCK_RX_BUFS)) as u16;
            let op: u16 = mem.read_obj(GuestAddress(rx_buf(head) + OP_OFFSET)).unwrap_or(0);
            self.delivered += usize::from(op == OP_RW);
            rxq.write_desc(head, rx_buf(head), VSOCK_RX_LEN, F_WRITE, 0);
            rxq.push_avail(head);
        }
        mux.process_rx();
    }
}

const FS_QSIZE: u16 = 64;
const FS_REQ_BASE: u64 = 0x1_0000;
const FS_REPLY_LEN: u32 = 0x2000;
/// Size of a FUSE request header (`fuse_in_header`).
const FUSE_IN_HEADER_LEN: usize = 40;

/// FUSE requests through the virtio-fs server (the device's own `HostSafeFs` over the
/// passthrough file system) serving `dir`. `data` is a sequence of FUSE requests, each as
/// long as its header's `len` says (the rest of the input when that is shorter than a
/// header or longer than what is left); each goes to the request queue as one chain, the
/// request readable and a reply buffer writable, as the Linux driver sends them. Returns the
/// number of requests answered (a reply written).
pub fn fuse_requests(dir: &Path, data: &[u8]) -> usize {
    let mem = memory(MEM_SIZE);
    let hiprio = TestQueue::at(&mem, 0, FS_QSIZE);
    let mut requests = TestQueue::at(&mem, 0x2000, FS_QSIZE);
    let mut rest = data;
    let mut addr = FS_REQ_BASE;
    for _ in 0..FS_QSIZE / 2 {
        if rest.is_empty() {
            break;
        }
        let declared =
            rest.first_chunk::<4>().map(|b| u32::from_le_bytes(*b) as usize).unwrap_or(0);
        let len = if declared < FUSE_IN_HEADER_LEN { rest.len() } else { declared.min(rest.len()) };
        let reply = (addr + len as u64 + 7) & !7;
        if reply + u64::from(FS_REPLY_LEN) > MEM_SIZE as u64 {
            break;
        }
        let (request, tail) = rest.split_at(len);
        rest = tail;
        mem.write_slice(request, GuestAddress(addr)).expect("request fits guest memory");
        requests.add_chain(&[(addr, len as u32, 0), (reply, FS_REPLY_LEN, F_WRITE)]);
        addr = reply + u64::from(FS_REPLY_LEN);
    }
    let queues = [hiprio.queue(), requests.queue()];
    let Ok(mut ctx) = FuzzContext::new(&mem, &queues, dir, Arc::new(NoInterrupt)) else {
        return 0;
    };
    ctx.process_all();
    (0..requests.used_idx()).filter(|&i| requests.used_elem(i).1 > 0).count()
}
