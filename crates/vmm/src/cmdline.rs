//! The kernel command line of a carapace guest.

use vm_memory::{Bytes, GuestAddress};

use crate::error::{CmdlineError, VmmError};
use crate::layout::{CMDLINE_MAX_SIZE, VIRTIO_MMIO_SLOT_SIZE};
use crate::memory::GuestMemoryMmap;

/// Fixed part: serial console (warnings and worse only: every console byte is a VM exit, and
/// the early boot log alone costs seconds on an emulated host; `--cmdline-extra loglevel=7`
/// brings it back), reset through the keyboard controller. The guest kernel has no PCI and no
/// modules, so no `pci=off`/`nomodules` (they would only reach /init as stray arguments).
pub const BASE_CMDLINE: &str =
    "console=ttyS0 quiet reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd";

/// A virtio-mmio device as the kernel learns about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDeviceParam {
    pub base: u64,
    pub irq: u32,
}

/// The whole command line (without NUL).
pub fn build_cmdline(devices: &[MmioDeviceParam], extra: &str) -> Result<String, VmmError> {
    let mut line = String::from(BASE_CMDLINE);
    for d in devices {
        line.push_str(&format!(
            " virtio_mmio.device={}K@{:#x}:{}",
            VIRTIO_MMIO_SLOT_SIZE >> 10,
            d.base,
            d.irq
        ));
    }
    let extra = extra.trim();
    if !extra.is_empty() {
        line.push(' ');
        line.push_str(extra);
    }
    if line.contains('\0') {
        return Err(CmdlineError::Nul.into());
    }
    if line.len() >= CMDLINE_MAX_SIZE {
        return Err(CmdlineError::TooLong { len: line.len(), max: CMDLINE_MAX_SIZE - 1 }.into());
    }
    Ok(line)
}

/// Writes the command line and its NUL at `addr`.
pub fn write_cmdline(mem: &GuestMemoryMmap, addr: u64, line: &str) -> Result<(), VmmError> {
    let mut bytes = line.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(addr))
        .map_err(|source| VmmError::GuestMemoryWrite { what: "command line", source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_only() {
        assert_eq!(build_cmdline(&[], "").unwrap(), BASE_CMDLINE);
    }

    #[test]
    fn devices_then_extra() {
        let devs = [
            MmioDeviceParam { base: 0xd000_0000, irq: 5 },
            MmioDeviceParam { base: 0xd000_1000, irq: 6 },
        ];
        let l = build_cmdline(&devs, " init=/sbin/agent -- x ").unwrap();
        assert_eq!(
            l,
            format!(
                "{BASE_CMDLINE} virtio_mmio.device=4K@0xd0000000:5 \
                 virtio_mmio.device=4K@0xd0001000:6 init=/sbin/agent -- x"
            )
        );
    }

    #[test]
    fn too_long_is_an_error() {
        let e = build_cmdline(&[], &"a".repeat(CMDLINE_MAX_SIZE)).unwrap_err();
        assert!(e.to_string().contains("limit"));
    }

    #[test]
    fn written_with_nul() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x30000)]).unwrap();
        write_cmdline(&mem, 0x20000, "abc").unwrap();
        let mut b = [0xffu8; 4];
        mem.read_slice(&mut b, GuestAddress(0x20000)).unwrap();
        assert_eq!(&b, b"abc\0");
    }
}
