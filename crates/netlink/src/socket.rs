//! A synchronous rtnetlink socket: one request at a time, answered by an
//! ACK (or an error) or by a dump. The socket talks to the network
//! namespace of the thread that opened it, so callers open it on the thread
//! that entered the namespace they mean.

use std::io;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Receive buffer: the kernel sizes dump messages to fit a page-multiple
/// well below this.
const RECV_BUF: usize = 64 * 1024;

/// Most messages one dump may return (links/addresses of one small netns).
const MAX_DUMP: usize = 4096;

pub struct Netlink {
    sock: Socket,
    seq: u32,
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink { sock, seq: 0 })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut m = NetlinkMessage::from(msg);
        m.header.flags = NLM_F_REQUEST | flags;
        m.header.sequence_number = self.seq;
        m.finalize();
        let mut buf = vec![0; m.buffer_len()];
        m.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        Ok(self.seq)
    }

    /// The messages of one datagram that answer `seq`.
    fn recv(&mut self, seq: u32) -> io::Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        let mut buf = Vec::with_capacity(RECV_BUF);
        let n = self.sock.recv(&mut buf, 0)?;
        let data = &buf[..n.min(buf.len())];
        let mut out = Vec::new();
        let mut off = 0;
        while off < data.len() {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = m.header.length as usize;
            if len == 0 {
                break;
            }
            off += (len + 3) & !3;
            if m.header.sequence_number == seq {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Sends `msg` with `flags` (NLM_F_CREATE, ...) and waits for its ACK.
    pub fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let seq = self.send(msg, flags | NLM_F_ACK)?;
        loop {
            for m in self.recv(seq)? {
                if let NetlinkPayload::Error(e) = m.payload {
                    return match e.code {
                        None => Ok(()),
                        Some(_) => Err(e.to_io()),
                    };
                }
            }
        }
    }

    /// Sends a dump request and collects the answers.
    pub fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, NLM_F_DUMP)?;
        let mut out = Vec::new();
        loop {
            for m in self.recv(seq)? {
                match m.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::InnerMessage(inner) => {
                        if out.len() >= MAX_DUMP {
                            return Err(io::Error::other("netlink dump: too many messages"));
                        }
                        out.push(inner);
                    }
                    _ => {}
                }
            }
        }
    }
}
