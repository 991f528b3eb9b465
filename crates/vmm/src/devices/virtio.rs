//! The virtio-mmio devices of a VM (from carapace-virtio-devices), in slot order: vsock, rng, fs,
//! net (new devices go last, so the slots and IRQs of the existing ones never move).

use std::sync::{Arc, Mutex};

use carapace_virtio_devices::{
    Fs, MmioTransport, Net, Rng, VirtioDevice, Vsock, QUEUE_NOTIFY_OFFSET,
};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::mmio_bus::{MmioBus, MmioDevice};
use crate::cmdline::MmioDeviceParam;
use crate::config::VmConfig;
use crate::error::VmmError;
use crate::layout::{virtio_irq, virtio_mmio_base, VIRTIO_MMIO_MAX_SLOTS};
use crate::memory::GuestMemoryMmap;

impl MmioDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        MmioTransport::read(self, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        MmioTransport::write(self, offset, data);
    }
}

/// Creates the devices `config` asks for, wires their interrupts and puts them on `bus`.
/// Returns what the kernel command line must declare.
pub fn attach_virtio_devices(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    bus: &mut MmioBus,
) -> Result<Vec<MmioDeviceParam>, VmmError> {
    let mut devices: Vec<(&'static str, Box<dyn VirtioDevice>)> = Vec::new();
    if let Some(vsock) = &config.vsock {
        let dev = Vsock::new(vsock.guest_cid, &vsock.uds_path).map_err(VmmError::Vsock)?;
        devices.push(("vsock", Box::new(dev)));
    }
    if config.rng {
        devices.push(("rng", Box::new(Rng::new())));
    }
    if let Some(dir) = &config.shared_dir {
        let tag = carapace_guest_contract::SHARED_FS_TAG;
        let dev = Fs::with_open_file_limit(tag, dir, config.shared_dir_max_open_files)
            .map_err(VmmError::Fs)?;
        devices.push(("virtio-fs", Box::new(dev)));
    }
    if let Some(net) = &config.net {
        // The inherited descriptor stays as it is; the device owns a close-on-exec copy.
        let tap = carapace_virtio_devices::net::dup_fd(net.tap_fd).map_err(VmmError::Net)?;
        let dev = Net::new(tap, net.mac_addr()?).map_err(VmmError::Net)?;
        devices.push(("virtio-net", Box::new(dev)));
    }

    let mut params = Vec::new();
    for (name, device) in devices {
        let slot = bus.len() as u64;
        if slot >= VIRTIO_MMIO_MAX_SLOTS {
            return Err(VmmError::NoMmioSlot { device: name });
        }
        let irq = virtio_irq(slot as u32);
        let base = virtio_mmio_base(slot);
        let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventFd)?;
        vm.register_irqfd(&fd, irq).map_err(|e| VmmError::kvm("KVM_IRQFD", e))?;
        let transport = MmioTransport::new(device, mem.clone(), fd)
            .map_err(|source| VmmError::Transport { device: name, source })?;
        // A guest's QueueNotify write of queue i's index signals queue i's eventfd in KVM,
        // without an exit to this process: the device's own thread picks it up.
        let notify = IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET);
        for (index, evt) in transport.queue_notifiers().iter().enumerate() {
            vm.register_ioevent(evt, &notify, index as u32)
                .map_err(|e| VmmError::kvm("KVM_IOEVENTFD", e))?;
        }
        bus.push(Arc::new(Mutex::new(transport)));
        params.push(MmioDeviceParam { base, irq });
        tracing::debug!(device = name, slot, irq, "virtio-mmio device attached");
    }
    Ok(params)
}
