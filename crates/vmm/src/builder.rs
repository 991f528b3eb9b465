//! Building a bootable VM from a [`VmConfig`]: memory, kernel, boot structures, devices, vCPUs.
//! The builder knows the [`Vm`] it returns; the VM knows nothing of how it was built.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::boot_cpu;
use crate::arch::boot_params::{build_boot_params, write_boot_params, BootLocations};
use crate::arch::{cpuid, mptable, paging};
use crate::cmdline::{build_cmdline, write_cmdline};
use crate::config::VmConfig;
use crate::devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use crate::devices::mmio_bus::MmioBus;
use crate::devices::pio_bus::PioBus;
use crate::devices::serial::{open_serial_output_capped, SerialPort, COM1_BASE, COM_PORT_LEN};
use crate::devices::virtio::attach_virtio_devices;
use crate::error::VmmError;
use crate::exit::{ExitReason, ExitState};
use crate::kvm::{create_vm, open_kvm, supported_cpuid};
use crate::layout::{ram_ranges, CMDLINE_START, I8042_IRQ, SERIAL_IRQ};
use crate::loader::{load_initramfs, load_kernel};
use crate::memory::GuestMemoryMmap;
use crate::memory::{create_guest_memory, register_memory};
use crate::vm::Vm;

/// Builds a VM from `config` (validated first). On error nothing is left behind (no serial
/// log, no vsock socket).
pub fn build_vm(config: &VmConfig) -> Result<Vm, VmmError> {
    config.validate()?;
    carapace_virtio_devices::log_limit::set_guest_warnings_per_second(
        config.guest_warnings_per_second,
    );
    let kvm = open_kvm(&config.kvm_path)?;
    let vm_fd = create_vm(&kvm, true)?;
    let mem = create_guest_memory(config.mem_bytes())?;
    register_memory(&vm_fd, &mem)?;

    let kernel = load_kernel(&mem, &config.kernel)?;
    let low_ram_end = mem.iter().next().map(|r| r.start_addr().0 + r.len()).unwrap_or(0);
    let initramfs = match &config.initramfs {
        Some(path) => Some(load_initramfs(&mem, path, low_ram_end, kernel.end)?),
        None => None,
    };

    let supported = supported_cpuid(&kvm)?;
    let vcpus = create_vcpus(&vm_fd, &mem, config.vcpus, &supported, kernel.entry)?;

    let exit = Arc::new(ExitState::new());
    let serial_irq = irq_eventfd(&vm_fd, SERIAL_IRQ)?;
    let i8042_irq = irq_eventfd(&vm_fd, I8042_IRQ)?;

    // Devices that create host files come last: vsock (its socket), then the serial log.
    let mut mmio = MmioBus::new();
    let virtio = attach_virtio_devices(&vm_fd, &mem, config, &mut mmio)?;
    let log = CreatedFile::new(config.serial_log.as_deref());
    let serial_out =
        open_serial_output_capped(config.serial_log.as_deref(), config.serial_log_max_bytes)?;

    let finish = || -> Result<Vm, VmmError> {
        let line = build_cmdline(&virtio, &config.cmdline_extra)?;
        tracing::debug!(cmdline = %line, "kernel command line");
        write_cmdline(&mem, CMDLINE_START, &line)?;
        let at = BootLocations { cmdline_addr: CMDLINE_START, cmdline_len: line.len(), initramfs };
        write_boot_params(&mem, &build_boot_params(&ram_ranges(config.mem_bytes()), &at)?)?;
        mptable::write_mptable(&mem, config.vcpus)?;

        let reset_exit = exit.clone();
        let i8042 = Arc::new(Mutex::new(I8042::new(
            i8042_irq,
            Box::new(move || reset_exit.report(ExitReason::GuestReset)),
        )));
        let mut pio = PioBus::new();
        pio.insert(
            COM1_BASE,
            COM_PORT_LEN,
            Arc::new(Mutex::new(SerialPort::new(serial_irq, serial_out))),
        )
        .map_err(VmmError::PortOverlap)?;
        pio.insert(I8042_BASE, I8042_LEN, i8042.clone()).map_err(VmmError::PortOverlap)?;

        Ok(Vm {
            vcpus,
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            exit: exit.clone(),
            i8042,
            kick_interval: config.kick_interval,
            _vm_fd: vm_fd,
            _kvm: kvm,
            mem: mem.clone(),
        })
    };
    let vm = finish().inspect_err(|_| log.remove())?;
    Ok(vm)
}

fn irq_eventfd(vm: &VmFd, gsi: u32) -> Result<EventFd, VmmError> {
    let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventFd)?;
    vm.register_irqfd(&fd, gsi).map_err(|e| VmmError::kvm("KVM_IRQFD", e))?;
    Ok(fd)
}

/// Creates and sets up every vCPU: CPUID, MSRs, 64-bit registers, FPU, LAPIC.
pub(crate) fn create_vcpus(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    count: u8,
    supported: &kvm_bindings::CpuId,
    entry: u64,
) -> Result<Vec<VcpuFd>, VmmError> {
    let cr3 = paging::write_identity_tables(mem)?;
    boot_cpu::write_gdt_idt(mem)?;
    let mut vcpus = Vec::with_capacity(usize::from(count));
    let mut tsc_khz = None;
    for id in 0..count {
        let vcpu =
            vm.create_vcpu(u64::from(id)).map_err(|e| VmmError::kvm("KVM_CREATE_VCPU", e))?;
        if id == 0 {
            tsc_khz = vcpu.get_tsc_khz().ok().filter(|k| *k > 0);
            tracing::debug!(?tsc_khz, "TSC frequency");
        }
        let cpuid = cpuid::vcpu_cpuid(supported, id, count, tsc_khz)?;
        vcpu.set_cpuid2(&cpuid).map_err(|e| VmmError::kvm("KVM_SET_CPUID2", e))?;
        boot_cpu::setup_xcr0(&vcpu, cpuid.as_slice());
        boot_cpu::setup_msrs(&vcpu)?;
        boot_cpu::setup_regs(&vcpu, &boot_cpu::boot_regs(entry))?;
        boot_cpu::setup_sregs(&vcpu, cr3)?;
        boot_cpu::setup_fpu(&vcpu)?;
        boot_cpu::setup_lapic(&vcpu)?;
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

/// Remembers whether a file was created by us, to remove it if building fails.
struct CreatedFile(Option<PathBuf>);

impl CreatedFile {
    fn new(path: Option<&Path>) -> Self {
        CreatedFile(path.filter(|p| !p.exists()).map(Path::to_path_buf))
    }

    fn remove(&self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}
