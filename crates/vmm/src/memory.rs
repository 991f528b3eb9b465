//! Guest RAM: allocation and registration with KVM.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use crate::error::VmmError;
use crate::layout::ram_ranges;

/// Guest memory of a carapace VM (the same type the virtio devices use).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Allocates `mem_bytes` of guest RAM around the MMIO gap.
pub fn create_guest_memory(mem_bytes: u64) -> Result<GuestMemoryMmap, VmmError> {
    let mut ranges = Vec::new();
    for (start, len) in ram_ranges(mem_bytes) {
        let len = usize::try_from(len).map_err(|_| VmmError::GuestMemoryTooLarge(len))?;
        ranges.push((GuestAddress(start), len));
    }
    GuestMemoryMmap::from_ranges(&ranges).map_err(VmmError::GuestMemory)
}

/// Tells KVM about every region of `mem` (one slot each).
pub fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(VmmError::GuestMemoryMapping)?;
        let desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mmap owned by `mem`, which outlives the VM's use of it:
        // the VM (and its vCPUs) are dropped before, or together with, the memory.
        unsafe { vm.set_user_memory_region(desc) }
            .map_err(|e| VmmError::kvm("KVM_SET_USER_MEMORY_REGION", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_size_matches() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let total: u64 = mem.iter().map(|r| r.len()).sum();
        assert_eq!(total, 64 << 20);
        assert_eq!(mem.iter().count(), 1);
    }
}
