//! The Linux "zero page" (struct boot_params) with the e820 memory map.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use vm_memory::{Bytes, GuestAddress};

use crate::error::{CmdlineError, VmmError};
use crate::layout::{EBDA_END, EBDA_START, HIMEM_START, ZERO_PAGE_START};
use crate::memory::GuestMemoryMmap;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

/// Where the command line and the initramfs are in guest memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootLocations {
    pub cmdline_addr: u64,
    /// Length without the terminating NUL.
    pub cmdline_len: usize,
    /// (address, size) of the initramfs.
    pub initramfs: Option<(u64, u64)>,
}

/// The e820 map for guest RAM `ram` (ranges as (start, length)).
pub fn e820_map(ram: &[(u64, u64)]) -> Vec<boot_e820_entry> {
    let e = |addr: u64, size: u64, type_: u32| boot_e820_entry { addr, size, r#type: type_ };
    let mut map =
        vec![e(0, EBDA_START, E820_RAM), e(EBDA_START, EBDA_END - EBDA_START, E820_RESERVED)];
    for &(start, len) in ram {
        let end = start.saturating_add(len);
        let start = start.max(HIMEM_START);
        if end > start {
            map.push(e(start, end - start, E820_RAM));
        }
    }
    map
}

/// Fills the zero page.
pub fn build_boot_params(ram: &[(u64, u64)], at: &BootLocations) -> Result<boot_params, VmmError> {
    let mut params = boot_params::default();
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    params.hdr.cmd_line_ptr = u32::try_from(at.cmdline_addr).map_err(CmdlineError::Above4G)?;
    params.hdr.cmdline_size =
        u32::try_from(at.cmdline_len).map_err(CmdlineError::LengthOverflow)?;
    if let Some((addr, size)) = at.initramfs {
        params.hdr.ramdisk_image = u32::try_from(addr).map_err(|_| VmmError::InitramfsBeyond4G)?;
        params.hdr.ramdisk_size = u32::try_from(size).map_err(|_| VmmError::InitramfsBeyond4G)?;
    }
    let map = e820_map(ram);
    if map.len() > params.e820_table.len() {
        return Err(VmmError::TooManyE820Entries(map.len()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(map.iter()) {
        *slot = *entry;
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Writes the zero page to guest memory.
pub fn write_boot_params(mem: &GuestMemoryMmap, params: &boot_params) -> Result<(), VmmError> {
    mem.write_obj(*params, GuestAddress(ZERO_PAGE_START))
        .map_err(|source| VmmError::GuestMemoryWrite { what: "boot parameters", source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};

    #[test]
    fn e820_for_small_vm() {
        let m = e820_map(&[(0, 256 << 20)]);
        let v: Vec<(u64, u64, u32)> = m.iter().map(|e| (e.addr, e.size, e.r#type)).collect();
        assert_eq!(
            v,
            vec![
                (0, EBDA_START, E820_RAM),
                (EBDA_START, EBDA_END - EBDA_START, E820_RESERVED),
                (HIMEM_START, (256 << 20) - HIMEM_START, E820_RAM),
            ]
        );
    }

    #[test]
    fn e820_never_covers_the_mmio_gap() {
        let ram = crate::layout::ram_ranges(8 << 30);
        for e in e820_map(&ram) {
            let (addr, size) = (e.addr, e.size);
            let end = addr + size;
            assert!(end <= MMIO_GAP_START || e.addr >= MMIO_GAP_END, "{:x}+{:x}", { e.addr }, {
                e.size
            });
        }
        assert_eq!(e820_map(&ram).len(), 4);
    }

    #[test]
    fn boot_params_fields() {
        let at = BootLocations {
            cmdline_addr: 0x20000,
            cmdline_len: 42,
            initramfs: Some((0x0f00_0000, 0x1234)),
        };
        let p = build_boot_params(&[(0, 256 << 20)], &at).unwrap();
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.cmdline_size }, 42);
        assert_eq!({ p.hdr.ramdisk_image }, 0x0f00_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
        assert_eq!(p.e820_entries, 3);
        assert_eq!({ p.e820_table[2].addr }, HIMEM_START);
    }

    #[test]
    fn zero_page_lands_in_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let at = BootLocations { cmdline_addr: 0x20000, cmdline_len: 3, initramfs: None };
        write_boot_params(&mem, &build_boot_params(&[(0, 1 << 20)], &at).unwrap()).unwrap();
        let flag: u16 = mem.read_obj(GuestAddress(ZERO_PAGE_START + 0x1fe)).unwrap();
        assert_eq!(flag, 0xaa55);
        let entries: u8 = mem.read_obj(GuestAddress(ZERO_PAGE_START + 0x1e8)).unwrap();
        assert_eq!(entries, 2);
    }
}
