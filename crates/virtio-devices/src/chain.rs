//! Guest descriptor chains turned into checked lists of buffers.
//!
//! A chain comes from the guest: its descriptors may point outside guest memory, be longer
//! than the data they should hold, or mix device-readable and device-writable buffers in the
//! wrong order. Everything here returns an error instead of trusting it.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress};

use crate::device::GuestMemory;

/// One guest buffer of a descriptor chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Buffer {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Why a descriptor chain cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ChainError {
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("guest memory access out of range at {0:#x}")]
    Memory(u64),
}

/// The buffers of a chain, split into the device-readable head and the device-writable tail
/// (virtio spec 2.7.4.2: readable descriptors come first).
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    pub readable: Vec<Buffer>,
    pub writable: Vec<Buffer>,
}

impl Buffers {
    /// Collects the buffers of `chain`. The chain iterator itself bounds the number of
    /// descriptors (queue size) and the total length (4 GiB).
    pub fn collect<M>(chain: DescriptorChain<M>) -> Result<Buffers, ChainError>
    where
        M: Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let mut out = Buffers::default();
        for desc in chain {
            let buf = Buffer { addr: desc.addr(), len: desc.len() };
            if desc.is_write_only() {
                out.writable.push(buf);
            } else if out.writable.is_empty() {
                out.readable.push(buf);
            } else {
                return Err(ChainError::ReadableAfterWritable);
            }
        }
        Ok(out)
    }

    /// Total length of a list of buffers (saturating: the chain iterator already caps it).
    pub fn total(bufs: &[Buffer]) -> usize {
        bufs.iter().fold(0usize, |acc, b| acc.saturating_add(b.len as usize))
    }
}

/// Reads `out.len()` bytes starting `skip` bytes into the concatenation of `bufs`.
/// Returns the number of bytes read (less than `out.len()` if the buffers are shorter).
pub(crate) fn read_from(
    mem: &GuestMemory,
    bufs: &[Buffer],
    mut skip: usize,
    out: &mut [u8],
) -> Result<usize, ChainError> {
    let mut done = 0usize;
    for buf in bufs {
        if done >= out.len() {
            break;
        }
        let len = buf.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(out.len() - done);
        let addr = buf.addr.0.checked_add(skip as u64).ok_or(ChainError::Memory(buf.addr.0))?;
        let dst = out.get_mut(done..done + n).ok_or(ChainError::Memory(addr))?;
        mem.read_slice(dst, GuestAddress(addr)).map_err(|_| ChainError::Memory(addr))?;
        done += n;
        skip = 0;
    }
    Ok(done)
}

/// Writes `data` starting `skip` bytes into the concatenation of `bufs`.
/// Returns the number of bytes written (less than `data.len()` if the buffers are shorter).
pub(crate) fn write_to(
    mem: &GuestMemory,
    bufs: &[Buffer],
    mut skip: usize,
    data: &[u8],
) -> Result<usize, ChainError> {
    let mut done = 0usize;
    for buf in bufs {
        if done >= data.len() {
            break;
        }
        let len = buf.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(data.len() - done);
        let addr = buf.addr.0.checked_add(skip as u64).ok_or(ChainError::Memory(buf.addr.0))?;
        let src = data.get(done..done + n).ok_or(ChainError::Memory(addr))?;
        mem.write_slice(src, GuestAddress(addr)).map_err(|_| ChainError::Memory(addr))?;
        done += n;
        skip = 0;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{test_memory, TestQueue, F_WRITE};
    use virtio_queue::QueueT;

    #[test]
    fn splits_readable_and_writable() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        tq.add_chain(&[(0x10000, 8, 0), (0x11000, 16, F_WRITE)]);
        let mut q = tq.queue();
        let chain = q.pop_descriptor_chain(&mem).expect("chain");
        let bufs = Buffers::collect(chain).expect("valid");
        assert_eq!(bufs.readable.len(), 1);
        assert_eq!(bufs.writable.len(), 1);
        assert_eq!(Buffers::total(&bufs.writable), 16);
    }

    #[test]
    fn readable_after_writable_is_refused() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        tq.add_chain(&[(0x10000, 8, F_WRITE), (0x11000, 16, 0)]);
        let mut q = tq.queue();
        let chain = q.pop_descriptor_chain(&mem).expect("chain");
        assert_eq!(Buffers::collect(chain).unwrap_err(), ChainError::ReadableAfterWritable);
    }

    #[test]
    fn read_and_write_across_buffers() {
        let mem = test_memory();
        let bufs = [
            Buffer { addr: GuestAddress(0x10000), len: 3 },
            Buffer { addr: GuestAddress(0x20000), len: 5 },
        ];
        assert_eq!(write_to(&mem, &bufs, 1, b"abcdefgh").unwrap(), 7);
        let mut out = [0u8; 8];
        assert_eq!(read_from(&mem, &bufs, 0, &mut out).unwrap(), 8);
        assert_eq!(&out, b"\0abcdefg");
        let mut out = [0u8; 4];
        assert_eq!(read_from(&mem, &bufs, 2, &mut out).unwrap(), 4);
        assert_eq!(&out, b"bcde");
    }

    #[test]
    fn out_of_memory_buffer_is_an_error() {
        let mem = test_memory();
        let bufs = [Buffer { addr: GuestAddress(u64::MAX - 2), len: 16 }];
        let mut out = [0u8; 8];
        assert!(read_from(&mem, &bufs, 0, &mut out).is_err());
        assert!(write_to(&mem, &bufs, 4, &out).is_err());
    }
}
