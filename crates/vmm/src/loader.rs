//! Loading the vmlinux ELF and the initramfs into guest memory.

use std::fs::File;
use std::path::Path;

use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use crate::error::VmmError;
use crate::layout::{HIMEM_START, MMIO_GAP_START};
use crate::memory::GuestMemoryMmap;

const PAGE_SIZE: u64 = 4096;

/// Where the kernel went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedKernel {
    /// 64-bit entry point (ELF e_entry).
    pub entry: u64,
    /// First byte after the loaded image.
    pub end: u64,
}

/// Loads an uncompressed vmlinux at its physical addresses.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, VmmError> {
    let mut file = File::open(path)
        .map_err(|source| VmmError::KernelRead { path: path.to_path_buf(), source })?;
    let result = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
        .map_err(|source| VmmError::KernelInvalid { path: path.to_path_buf(), source })?;
    Ok(LoadedKernel { entry: result.kernel_load.0, end: result.kernel_end })
}

/// Address for an initramfs of `size` bytes: as high as possible in RAM below the MMIO gap,
/// page aligned, above the kernel.
pub fn initramfs_address(low_ram_end: u64, kernel_end: u64, size: u64) -> Option<u64> {
    let top = low_ram_end.min(MMIO_GAP_START);
    let addr = top.checked_sub(size)? & !(PAGE_SIZE - 1);
    let kernel_end_aligned = kernel_end.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1);
    (addr >= kernel_end_aligned).then_some(addr)
}

/// Loads the initramfs; returns (address, size).
pub fn load_initramfs(
    mem: &GuestMemoryMmap,
    path: &Path,
    low_ram_end: u64,
    kernel_end: u64,
) -> Result<(u64, u64), VmmError> {
    let data = std::fs::read(path)
        .map_err(|source| VmmError::InitramfsRead { path: path.to_path_buf(), source })?;
    let size = data.len() as u64;
    let addr = initramfs_address(low_ram_end, kernel_end, size)
        .ok_or_else(|| VmmError::InitramfsTooLarge { path: path.to_path_buf(), size })?;
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(|source| VmmError::GuestMemoryWrite { what: "initramfs", source })?;
    Ok((addr, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    #[test]
    fn non_elf_kernel_gives_a_clear_error() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"this is not an ELF file, not even close......................").unwrap();
        let e = load_kernel(&mem(), f.path()).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("kernel {} is not a valid vmlinux ELF: ", f.path().display())),
            "{e}"
        );
    }

    #[test]
    fn empty_kernel_gives_a_clear_error() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = load_kernel(&mem(), f.path()).unwrap_err().to_string();
        assert!(e.contains("is not a valid vmlinux ELF"), "{e}");
    }

    #[test]
    fn missing_kernel() {
        let e = load_kernel(&mem(), Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(matches!(e, VmmError::KernelRead { .. }));
    }

    #[test]
    fn initramfs_goes_high_and_aligned() {
        let a = initramfs_address(256 << 20, 0x200_0000, 0x1234).unwrap();
        assert_eq!(a % PAGE_SIZE, 0);
        assert!(a + 0x1234 <= 256 << 20);
        assert!(a >= (256 << 20) - 0x1234 - PAGE_SIZE);
    }

    #[test]
    fn initramfs_never_overlaps_kernel() {
        assert_eq!(initramfs_address(64 << 20, 60 << 20, 8 << 20), None);
        assert_eq!(initramfs_address(64 << 20, 0, 128 << 20), None);
    }

    #[test]
    fn initramfs_stays_below_the_gap() {
        let a = initramfs_address(u64::MAX, 0x200_0000, 4096).unwrap();
        assert_eq!(a, MMIO_GAP_START - 4096);
    }

    #[test]
    fn initramfs_is_loaded() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"070701initramfs").unwrap();
        let m = mem();
        let (addr, size) = load_initramfs(&m, f.path(), 16 << 20, 2 << 20).unwrap();
        assert_eq!(size, 15);
        let mut b = [0u8; 15];
        m.read_slice(&mut b, GuestAddress(addr)).unwrap();
        assert_eq!(&b, b"070701initramfs");
    }
}
