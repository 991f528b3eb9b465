//! The fuzz targets: one function per parser, each taking the fuzzer's bytes. None may panic
//! on any input; a panic (also one the code under test catches itself) is a bug to fix.

use carapace_agent::container::spec::process_json;
use carapace_agent::container::validate::{check_resources, check_signal};
use carapace_agent::container::validated::{ContainerId, ValidProcess, ValidatedContainer};
use carapace_agent::network::config::NetConfig;
use carapace_agent_client::pb;
use carapace_virtio_devices::{fuzz_hooks, GuestMemory, MmioTransport, Rng};
use prost::Message;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

/// A fresh temp directory for targets that touch the file system (one per input, so inputs
/// never see each other's files).
fn scratch() -> Option<tempfile::TempDir> {
    tempfile::Builder::new().prefix("carapace-fuzz-").tempdir().ok()
}

/// Descriptor chains and queue state (see `fuzz_hooks::descriptor_chains` for the layout).
pub fn virtio_chain(data: &[u8]) {
    let _ = fuzz_hooks::descriptor_chains(data);
}

/// Size of one MMIO operation in a `virtio_mmio` input.
pub const MMIO_OP_LEN: usize = 6;
/// `virtio_mmio` op flag: a guest memory store instead of a register access.
pub const MMIO_OP_MEMORY: u8 = 0x40;
/// `virtio_mmio` op flag: a register write (else a read).
pub const MMIO_OP_WRITE: u8 = 0x01;

/// Guest memory of the `virtio_mmio` target.
const MMIO_MEM_SIZE: usize = 1 << 20;

/// A sequence of 6-byte operations `[op, where, value: u32 le]` against a virtio-mmio
/// transport in front of the rng device (whose thread starts on DRIVER_OK and serves its
/// queue from the guest memory these operations wrote). `op` bit 0: write, bits 1-2: access
/// size 1/2/4/8, bits 4-5: added to the offset (unaligned accesses), bit 6
/// ([`MMIO_OP_MEMORY`]): store `value` in guest memory at `where * 4` instead (where the
/// rings of a small queue go). Register
/// offset: `where * 4`, which covers the registers and the config space. The device is reset
/// at the end (which joins its thread).
pub fn virtio_mmio(data: &[u8]) {
    let _ = mmio_ops(data);
}

/// [`virtio_mmio`]; returns whether the device was activated on the way.
pub fn mmio_ops(data: &[u8]) -> bool {
    let Ok(mem) = GuestMemory::from_ranges(&[(GuestAddress(0), MMIO_MEM_SIZE)]) else {
        return false;
    };
    let Ok(irq) = EventFd::new(libc::EFD_NONBLOCK) else {
        return false;
    };
    let Ok(mut t) = MmioTransport::new(Box::new(Rng::new()), mem.clone(), irq) else {
        return false;
    };
    let mut activated = false;
    for op in data.chunks_exact(MMIO_OP_LEN) {
        let [kind, at, v0, v1, v2, v3] = [op[0], op[1], op[2], op[3], op[4], op[5]];
        let value = u32::from_le_bytes([v0, v1, v2, v3]);
        if kind & MMIO_OP_MEMORY != 0 {
            let _ = mem.write_obj(value, GuestAddress(u64::from(at) * 4));
            continue;
        }
        let size = 1usize << ((kind >> 1) & 3);
        let offset = u64::from(at) * 4 + u64::from((kind >> 4) & 3);
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&value.to_le_bytes());
        if kind & MMIO_OP_WRITE != 0 {
            t.write(offset, &bytes[..size]);
        } else {
            t.read(offset, &mut bytes[..size]);
        }
        activated |= t.is_activated();
    }
    t.write(0x70, &0u32.to_le_bytes());
    activated
}

/// Guest vsock packets through the connection muxer (see `fuzz_hooks::vsock_packets`).
pub fn vsock(data: &[u8]) {
    if let Some(dir) = scratch() {
        let _ = fuzz_hooks::vsock_packets(dir.path(), data);
    }
}

/// FUSE requests through the virtio-fs server (see `fuzz_hooks::fuse_requests`).
pub fn virtio_fs(data: &[u8]) {
    if let Some(dir) = scratch() {
        let _ = fuzz_hooks::fuse_requests(dir.path(), data);
    }
}

/// `agent_request` selector: which request the rest of the input is.
pub mod agent_kind {
    pub const CREATE_CONTAINER: u8 = 0;
    pub const EXEC_PROCESS: u8 = 1;
    pub const CONFIGURE_NETWORK: u8 = 2;
    pub const UPDATE_RESOURCES: u8 = 3;
    pub const SIGNAL_PROCESS: u8 = 4;
    pub const PORT_FORWARD: u8 = 5;
    pub const COUNT: u8 = 6;
}

/// An agent request: `data[0]` picks the message ([`agent_kind`]), the rest is its protobuf
/// encoding (for port forwarding: the `PORT <n>` line), decoded with prost and checked as the
/// agent's handlers check it before acting.
pub fn agent_request(data: &[u8]) {
    let _ = agent_check(data);
}

/// [`agent_request`]; returns the first error (decode or validation), `Ok` when the agent
/// would act on the request.
pub fn agent_check(data: &[u8]) -> Result<(), String> {
    let Some((&kind, msg)) = data.split_first() else {
        return Err("empty input".into());
    };
    let text = |e: &dyn std::fmt::Display| e.to_string();
    match kind % agent_kind::COUNT {
        agent_kind::CREATE_CONTAINER => {
            let req = pb::CreateContainerRequest::decode(msg).map_err(|e| text(&e))?;
            let c = ValidatedContainer::parse(&req).map_err(|e| text(&e))?;
            let sec = c.security();
            let _ = process_json(c.process(), sec.capabilities(), sec.no_new_privs());
        }
        agent_kind::EXEC_PROCESS => {
            let req = pb::ExecProcessRequest::decode(msg).map_err(|e| text(&e))?;
            ContainerId::parse("container id", &req.container_id).map_err(|e| text(&e))?;
            ContainerId::parse("exec id", &req.exec_id).map_err(|e| text(&e))?;
            ValidProcess::parse(req.process.as_ref()).map_err(|e| text(&e))?;
        }
        agent_kind::CONFIGURE_NETWORK => {
            let req = pb::ConfigureNetworkRequest::decode(msg).map_err(|e| text(&e))?;
            NetConfig::parse(&req).map_err(|e| text(&e))?;
        }
        agent_kind::UPDATE_RESOURCES => {
            let req = pb::UpdateContainerResourcesRequest::decode(msg).map_err(|e| text(&e))?;
            ContainerId::parse("container id", &req.id).map_err(|e| text(&e))?;
            check_resources(&req.resources.unwrap_or_default()).map_err(|e| text(&e))?;
        }
        agent_kind::SIGNAL_PROCESS => {
            let req = pb::SignalProcessRequest::decode(msg).map_err(|e| text(&e))?;
            check_signal(req.signal).map_err(|e| text(&e))?;
        }
        _ => {
            carapace_agent::portforward::parse_request(msg).map_err(|e| text(&e))?;
        }
    }
    Ok(())
}

/// A registry's manifest or index body.
pub fn oci_manifest(data: &[u8]) {
    let _ = carapace_image::fuzz_hooks::manifest(data);
}

/// A registry's image config blob.
pub fn oci_config(data: &[u8]) {
    let _ = carapace_image::fuzz_hooks::image_config(data);
}

/// A layer blob unpacked into a temp directory.
pub fn layer_tar(data: &[u8]) {
    if let Some(dir) = scratch() {
        let _ = carapace_image::fuzz_hooks::layer(dir.path(), data);
    }
}
