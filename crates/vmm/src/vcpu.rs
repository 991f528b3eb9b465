//! The vCPU run loop: KVM_RUN, dispatch of I/O exits to the buses, and fatal exits.

use std::sync::Arc;

use kvm_bindings::{KVM_INTERNAL_ERROR_EMULATION, KVM_SYSTEM_EVENT_CRASH};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::devices::mmio_bus::MmioBus;
use crate::devices::pio_bus::PioBus;
use crate::exit::{ExitReason, ExitState};

/// What a vCPU thread shares with the rest of the VM.
#[derive(Clone)]
pub(crate) struct VcpuContext {
    pub pio: Arc<PioBus>,
    pub mmio: Arc<MmioBus>,
    pub exit: Arc<ExitState>,
}

/// What one exit means for the loop.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Continue,
    Exit(ExitReason),
}

/// One line with the registers that tell where the guest was.
pub(crate) fn describe_registers(vcpu: &VcpuFd) -> String {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) => format!(
            "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rsi={:#x} \
             cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}",
            r.rip, r.rsp, r.rflags, r.rax, r.rsi, s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector
        ),
        (Err(e), _) | (_, Err(e)) => format!("registers unavailable: {e}"),
    }
}

/// KVM's internal error sub-code of the last exit.
pub(crate) fn internal_error_suberror(vcpu: &mut VcpuFd) -> u32 {
    let run = vcpu.get_kvm_run();
    // SAFETY: only called right after KVM_RUN returned KVM_EXIT_INTERNAL_ERROR, when the
    // `internal` member of the union is the one KVM filled in; it is plain old data.
    unsafe { run.__bindgen_anon_1.internal.suberror }
}

/// Describes an internal error sub-code.
pub(crate) fn describe_internal_error(suberror: u32) -> String {
    if suberror == KVM_INTERNAL_ERROR_EMULATION {
        "KVM internal error: instruction emulation failed".to_string()
    } else {
        format!("KVM internal error (suberror {suberror})")
    }
}

/// Runs one KVM_RUN and handles its exit.
fn step(index: u8, vcpu: &mut VcpuFd, ctx: &VcpuContext) -> Step {
    let fatal = |what: String, vcpu: &VcpuFd| {
        let regs = describe_registers(vcpu);
        tracing::info!(vcpu = index, "{what}; {regs}");
        Step::Exit(ExitReason::Error(format!("vCPU {index}: {what} ({regs})")))
    };
    match vcpu.run() {
        Ok(VcpuExit::IoIn(port, data)) => {
            if !ctx.pio.read(port, data) {
                tracing::trace!(port, "IN from an unhandled port");
            }
            Step::Continue
        }
        Ok(VcpuExit::IoOut(port, data)) => {
            if !ctx.pio.write(port, data) {
                tracing::trace!(port, "OUT to an unhandled port");
            }
            Step::Continue
        }
        Ok(VcpuExit::MmioRead(addr, data)) => {
            if !ctx.mmio.read(addr, data) {
                tracing::debug!(addr = format!("{addr:#x}"), "MMIO read outside any device");
            }
            Step::Continue
        }
        Ok(VcpuExit::MmioWrite(addr, data)) => {
            if !ctx.mmio.write(addr, data) {
                tracing::debug!(addr = format!("{addr:#x}"), "MMIO write outside any device");
            }
            Step::Continue
        }
        Ok(VcpuExit::Hlt) | Ok(VcpuExit::IrqWindowOpen) | Ok(VcpuExit::Intr) => Step::Continue,
        Ok(VcpuExit::Shutdown) => {
            let regs = describe_registers(vcpu);
            tracing::info!(vcpu = index, "triple fault (KVM_EXIT_SHUTDOWN); {regs}");
            Step::Exit(ExitReason::TripleFault { vcpu: index, registers: regs })
        }
        Ok(VcpuExit::SystemEvent(kind, _)) => {
            if kind == KVM_SYSTEM_EVENT_CRASH {
                Step::Exit(ExitReason::GuestPanic)
            } else {
                Step::Exit(ExitReason::GuestReset)
            }
        }
        Ok(VcpuExit::FailEntry(reason, cpu)) => {
            fatal(format!("KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x}, cpu {cpu})"), vcpu)
        }
        Ok(VcpuExit::InternalError) => {
            let what = describe_internal_error(internal_error_suberror(vcpu));
            fatal(what, vcpu)
        }
        Ok(other) => {
            let what = format!("unexpected exit {other:?}");
            fatal(what, vcpu)
        }
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            vcpu.set_kvm_immediate_exit(0);
            Step::Continue
        }
        Err(e) => fatal(format!("KVM_RUN failed: {e}"), vcpu),
    }
}

/// The body of a vCPU thread: runs until the VM stops.
pub(crate) fn run_vcpu(index: u8, mut vcpu: VcpuFd, ctx: VcpuContext) {
    tracing::debug!(vcpu = index, "vCPU running");
    while !ctx.exit.should_stop() {
        if let Step::Exit(reason) = step(index, &mut vcpu, &ctx) {
            ctx.exit.report(reason);
        }
    }
    tracing::debug!(vcpu = index, "vCPU stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulation_failure_is_named() {
        assert!(describe_internal_error(KVM_INTERNAL_ERROR_EMULATION).contains("emulation failed"));
        assert!(describe_internal_error(3).contains("suberror 3"));
    }
}
