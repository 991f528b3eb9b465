//! virtio-vsock packets (virtio spec 5.10.6): the header parsed and serialised with bounds
//! checks, and whole packets read from tx chains and written to rx chains.

use crate::chain::{read_from, write_to, Buffers, ChainError};
use crate::device::GuestMemory;

/// Size of `struct virtio_vsock_hdr` on the wire.
pub const HDR_SIZE: usize = 44;
/// Largest payload carried in one packet (what Linux uses as its maximum too).
pub const MAX_PKT_PAYLOAD: u32 = 64 * 1024;

/// The host's CID.
pub const HOST_CID: u64 = 2;

pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// OP_SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// OP_SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// Why a packet header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("packet header is {0} bytes, needs {HDR_SIZE}")]
    ShortHeader(usize),
    #[error("packet claims {len} payload bytes but the buffers hold {avail}")]
    LenBeyondBuffer { len: u32, avail: usize },
    #[error("packet claims {0} payload bytes, more than the maximum {MAX_PKT_PAYLOAD}")]
    Oversized(u32),
    #[error("unknown operation {0}")]
    UnknownOp(u16),
    #[error("operation {op} must not carry a payload (len {len})")]
    UnexpectedPayload { op: u16, len: u32 },
}

/// A decoded virtio-vsock header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        a.copy_from_slice(s);
    }
    u16::from_le_bytes(a)
}

impl Header {
    /// Decodes a header from at least `HDR_SIZE` bytes.
    pub fn parse(bytes: &[u8]) -> Result<Header, PacketError> {
        if bytes.len() < HDR_SIZE {
            return Err(PacketError::ShortHeader(bytes.len()));
        }
        Ok(Header {
            src_cid: le_u64(bytes, 0),
            dst_cid: le_u64(bytes, 8),
            src_port: le_u32(bytes, 16),
            dst_port: le_u32(bytes, 20),
            len: le_u32(bytes, 24),
            type_: le_u16(bytes, 28),
            op: le_u16(bytes, 30),
            flags: le_u32(bytes, 32),
            buf_alloc: le_u32(bytes, 36),
            fwd_cnt: le_u32(bytes, 40),
        })
    }

    /// Checks the header of a packet coming from the guest whose buffers hold `payload_avail`
    /// bytes after the header.
    pub fn validate(&self, payload_avail: usize) -> Result<(), PacketError> {
        if !(OP_REQUEST..=OP_CREDIT_REQUEST).contains(&self.op) {
            return Err(PacketError::UnknownOp(self.op));
        }
        if self.len > MAX_PKT_PAYLOAD {
            return Err(PacketError::Oversized(self.len));
        }
        if self.len as usize > payload_avail {
            return Err(PacketError::LenBeyondBuffer { len: self.len, avail: payload_avail });
        }
        if self.op != OP_RW && self.len != 0 {
            return Err(PacketError::UnexpectedPayload { op: self.op, len: self.len });
        }
        Ok(())
    }

    /// Encodes the header in wire format.
    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        let fields: [(&[u8], usize); 10] = [
            (&self.src_cid.to_le_bytes(), 0),
            (&self.dst_cid.to_le_bytes(), 8),
            (&self.src_port.to_le_bytes(), 16),
            (&self.dst_port.to_le_bytes(), 20),
            (&self.len.to_le_bytes(), 24),
            (&self.type_.to_le_bytes(), 28),
            (&self.op.to_le_bytes(), 30),
            (&self.flags.to_le_bytes(), 32),
            (&self.buf_alloc.to_le_bytes(), 36),
            (&self.fwd_cnt.to_le_bytes(), 40),
        ];
        for (src, at) in fields {
            if let Some(dst) = b.get_mut(at..at + src.len()) {
                dst.copy_from_slice(src);
            }
        }
        b
    }

    /// A reply header with source and destination swapped.
    pub fn reply(&self, op: u16) -> Header {
        Header {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }
}

/// Why a tx packet was dropped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TxError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("tx packet has device-writable buffers")]
    Writable,
    #[error(transparent)]
    Packet(#[from] PacketError),
    /// The header could be read but is refused: `hdr` names the connection it claims.
    #[error("{source}")]
    Invalid { hdr: Header, source: PacketError },
    #[error("payload truncated: {got} of {want} bytes")]
    Truncated { got: usize, want: usize },
}

/// Reads the packet (header and payload) of a tx chain's buffers.
pub(crate) fn read_tx_packet(
    mem: &GuestMemory,
    bufs: &Buffers,
) -> Result<(Header, Vec<u8>), TxError> {
    if !bufs.writable.is_empty() {
        return Err(TxError::Writable);
    }
    let mut raw = [0u8; HDR_SIZE];
    let got = read_from(mem, &bufs.readable, 0, &mut raw)?;
    let hdr = Header::parse(raw.get(..got).unwrap_or(&[]))?;
    let avail = Buffers::total(&bufs.readable).saturating_sub(HDR_SIZE);
    if let Err(source) = hdr.validate(avail) {
        return Err(TxError::Invalid { hdr, source });
    }
    let mut payload = vec![0u8; hdr.len as usize];
    let n = read_from(mem, &bufs.readable, HDR_SIZE, &mut payload)?;
    if n != payload.len() {
        return Err(TxError::Truncated { got: n, want: payload.len() });
    }
    Ok((hdr, payload))
}

/// Writes the packet `hdr` + `data` into an rx chain's buffers; returns the bytes written.
pub(crate) fn write_rx_packet(
    mem: &GuestMemory,
    bufs: &Buffers,
    hdr: &Header,
    data: &[u8],
) -> Result<usize, ChainError> {
    let n = write_to(mem, &bufs.writable, 0, &hdr.to_bytes())?;
    Ok(n + write_to(mem, &bufs.writable, HDR_SIZE, data)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::XorShift;

    fn sample() -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1024,
            dst_port: 52,
            len: 10,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 7,
        }
    }

    #[test]
    fn roundtrip_and_layout() {
        let h = sample();
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[24..28], &10u32.to_le_bytes());
        assert_eq!(&b[30..32], &OP_RW.to_le_bytes());
        assert_eq!(&b[40..44], &7u32.to_le_bytes());
        assert_eq!(Header::parse(&b).unwrap(), h);
    }

    #[test]
    fn truncated_header_is_refused() {
        let b = sample().to_bytes();
        for n in 0..HDR_SIZE {
            assert_eq!(Header::parse(&b[..n]).unwrap_err(), PacketError::ShortHeader(n));
        }
    }

    #[test]
    fn len_and_op_checks() {
        let h = sample();
        assert!(h.validate(10).is_ok());
        assert_eq!(h.validate(9).unwrap_err(), PacketError::LenBeyondBuffer { len: 10, avail: 9 });
        let big = Header { len: MAX_PKT_PAYLOAD + 1, ..h };
        assert_eq!(
            big.validate(usize::MAX).unwrap_err(),
            PacketError::Oversized(MAX_PKT_PAYLOAD + 1)
        );
        let unknown = Header { op: 0, ..h };
        assert_eq!(unknown.validate(10).unwrap_err(), PacketError::UnknownOp(0));
        let unknown = Header { op: 8, ..h };
        assert_eq!(unknown.validate(10).unwrap_err(), PacketError::UnknownOp(8));
        let req = Header { op: OP_REQUEST, ..h };
        assert!(matches!(req.validate(10).unwrap_err(), PacketError::UnexpectedPayload { .. }));
    }

    #[test]
    fn reply_swaps_addresses() {
        let r = sample().reply(OP_RST);
        assert_eq!((r.src_cid, r.dst_cid), (HOST_CID, 3));
        assert_eq!((r.src_port, r.dst_port), (52, 1024));
        assert_eq!((r.op, r.len), (OP_RST, 0));
    }

    #[test]
    fn garbage_headers_never_panic() {
        let mut r = XorShift(7);
        for _ in 0..10000 {
            let n = (r.next() % 60) as usize;
            let bytes: Vec<u8> = (0..n).map(|_| r.next() as u8).collect();
            if let Ok(h) = Header::parse(&bytes) {
                let _ = h.validate((r.next() % 100_000) as usize);
                assert_eq!(Header::parse(&h.to_bytes()).unwrap(), h);
            }
        }
    }
}
