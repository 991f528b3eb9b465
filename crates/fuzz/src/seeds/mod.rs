//! Seed inputs for every target, written with the project's own encoders where it has them
//! (vsock `Header::to_bytes`, the agent's prost messages, `tar` for layers) and otherwise byte
//! for byte as the Linux drivers send them (FUSE requests, split-queue rings, MMIO register
//! sequences). `tests/corpus.rs` writes them to `corpus/<target>/` (`--ignored
//! write_seed_corpus`) and checks that the committed corpus still holds each of them.

use carapace_agent_client::pb;
use carapace_virtio_devices::fuzz_hooks::VSOCK_PORT;
use carapace_virtio_devices::vsock::packet::*;
use carapace_virtio_devices::vsock::FIRST_LOCAL_PORT;
use prost::Message;

use crate::targets::{agent_kind, MMIO_OP_MEMORY, MMIO_OP_WRITE};

mod registry;

/// One seed: target, file name, contents.
pub type Seed = (&'static str, String, Vec<u8>);

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    out.extend(named("virtio_chain", virtio_chain()));
    out.extend(named("virtio_mmio", virtio_mmio()));
    out.extend(named("vsock", vsock()));
    out.extend(named("virtio_fs", virtio_fs()));
    out.extend(named("agent_request", agent_request()));
    out.extend(named("oci_manifest", registry::oci_manifest()));
    out.extend(named("oci_config", registry::oci_config()));
    out.extend(named("layer_tar", registry::layer_tar()));
    out
}

fn named(target: &'static str, seeds: Vec<(&str, Vec<u8>)>) -> Vec<Seed> {
    seeds.into_iter().map(|(n, d)| (target, n.to_string(), d)).collect()
}

// ------------------------------------------------------------------------- virtio_chain

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// A split queue of 2^`bits` entries as the driver lays it out from address 0, with `chains`
/// (each a list of `(addr, len, flags)`; NEXT links are filled in) made available.
fn ring(bits: u8, event_idx: bool, chains: &[&[(u64, u32, u16)]]) -> Vec<u8> {
    let size = 1usize << bits;
    let avail = 16 * size;
    let mut mem = vec![0u8; 0x2100];
    let mut next = 0usize;
    for (i, chain) in chains.iter().enumerate() {
        put16(&mut mem, avail + 4 + 2 * i, next as u16);
        for (j, &(addr, len, flags)) in chain.iter().enumerate() {
            let at = 16 * next;
            let last = j + 1 == chain.len();
            let link = if last { 0 } else { (next + 1) as u16 };
            mem[at..at + 8].copy_from_slice(&addr.to_le_bytes());
            mem[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
            put16(&mut mem, at + 12, if last { flags } else { flags | F_NEXT });
            put16(&mut mem, at + 14, link);
            next += 1;
        }
    }
    put16(&mut mem, avail + 2, chains.len() as u16);
    let mut out = vec![bits, u8::from(event_idx)];
    out.extend_from_slice(&mem);
    out
}

fn put16(mem: &mut [u8], at: usize, v: u16) {
    mem[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn virtio_chain() -> Vec<(&'static str, Vec<u8>)> {
    let data = 0x1000u64;
    let mut indirect = ring(3, false, &[&[(0x2000, 32, F_INDIRECT)]]);
    // The indirect table at 0x2000 (image offset + 2): one readable, one writable buffer.
    for (i, (addr, len, flags)) in
        [(data, 16u32, F_NEXT), (data + 0x100, 64, F_WRITE)].iter().enumerate()
    {
        let at = 2 + 0x2000 + 16 * i;
        indirect[at..at + 8].copy_from_slice(&addr.to_le_bytes());
        indirect[at + 8..at + 12].copy_from_slice(&len.to_le_bytes());
        put16(&mut indirect, at + 12, *flags);
        put16(&mut indirect, at + 14, 1);
    }
    vec![
        (
            "one-readable-one-writable",
            ring(4, false, &[&[(data, 44, 0), (data + 0x100, 64, F_WRITE)]]),
        ),
        (
            "three-chains-event-idx",
            ring(
                4,
                true,
                &[
                    &[(data, 8, 0)],
                    &[(data + 0x40, 16, F_WRITE)],
                    &[(data, 4, 0), (data + 8, 4, 0)],
                ],
            ),
        ),
        ("readable-after-writable", ring(2, false, &[&[(data, 8, F_WRITE), (data, 8, 0)]])),
        ("indirect-table", indirect),
    ]
}

// ------------------------------------------------------------------------- virtio_mmio

fn mmio_write(ops: &mut Vec<u8>, offset: u64, value: u32) {
    ops.push(MMIO_OP_WRITE | (2 << 1));
    ops.push((offset / 4) as u8);
    ops.extend_from_slice(&value.to_le_bytes());
}

fn mmio_read(ops: &mut Vec<u8>, offset: u64) {
    ops.push(2 << 1);
    ops.push((offset / 4) as u8);
    ops.extend_from_slice(&0u32.to_le_bytes());
}

fn mmio_mem(ops: &mut Vec<u8>, addr: u64, value: u32) {
    ops.push(MMIO_OP_MEMORY);
    ops.push((addr / 4) as u8);
    ops.extend_from_slice(&value.to_le_bytes());
}

/// The Linux virtio-mmio driver's probe and the rng driver's queue setup, a request, the
/// interrupt acknowledged, and (`reset`) the device reset.
fn mmio_driver(reset: bool) -> Vec<u8> {
    let mut o = Vec::new();
    for reg in [0x000, 0x004, 0x008, 0x00c] {
        mmio_read(&mut o, reg);
    }
    mmio_write(&mut o, 0x070, 0);
    mmio_write(&mut o, 0x070, 1);
    mmio_write(&mut o, 0x070, 3);
    mmio_write(&mut o, 0x014, 1);
    mmio_read(&mut o, 0x010);
    mmio_write(&mut o, 0x014, 0);
    mmio_read(&mut o, 0x010);
    mmio_write(&mut o, 0x024, 1);
    mmio_write(&mut o, 0x020, 1);
    mmio_write(&mut o, 0x024, 0);
    mmio_write(&mut o, 0x020, 0);
    mmio_write(&mut o, 0x070, 11);
    mmio_read(&mut o, 0x070);
    mmio_write(&mut o, 0x030, 0);
    mmio_read(&mut o, 0x044);
    mmio_read(&mut o, 0x034);
    mmio_write(&mut o, 0x038, 8);
    // Queue of 8: descriptors at 0, avail ring at 0x80, used ring at 0x100.
    mmio_write(&mut o, 0x080, 0);
    mmio_write(&mut o, 0x084, 0);
    mmio_write(&mut o, 0x090, 0x80);
    mmio_write(&mut o, 0x094, 0);
    mmio_write(&mut o, 0x0a0, 0x100);
    mmio_write(&mut o, 0x0a4, 0);
    mmio_write(&mut o, 0x044, 1);
    mmio_write(&mut o, 0x070, 15);
    // One writable 64-byte buffer at 0x1000 (descriptor 0), made available.
    mmio_mem(&mut o, 0x0, 0x1000);
    mmio_mem(&mut o, 0x4, 0);
    mmio_mem(&mut o, 0x8, 64);
    mmio_mem(&mut o, 0xc, u32::from(F_WRITE));
    mmio_mem(&mut o, 0x80, 1 << 16);
    mmio_write(&mut o, 0x050, 0);
    mmio_read(&mut o, 0x060);
    mmio_write(&mut o, 0x064, 1);
    mmio_read(&mut o, 0x0fc);
    mmio_read(&mut o, 0x100);
    if reset {
        mmio_write(&mut o, 0x070, 0);
        mmio_read(&mut o, 0x070);
    }
    o
}

fn virtio_mmio() -> Vec<(&'static str, Vec<u8>)> {
    let mut unordered = Vec::new();
    mmio_write(&mut unordered, 0x070, 4);
    mmio_write(&mut unordered, 0x044, 1);
    mmio_write(&mut unordered, 0x050, 7);
    mmio_write(&mut unordered, 0x030, 99);
    mmio_read(&mut unordered, 0x034);
    vec![
        ("linux-driver-init-request", mmio_driver(false)),
        ("linux-driver-init-request-reset", mmio_driver(true)),
        ("driver-ok-before-setup", unordered),
    ]
}

// ------------------------------------------------------------------------- vsock

const GUEST_CID: u64 = 3;

fn packet(src_port: u32, dst_port: u32, op: u16, flags: u32, data: &[u8]) -> Vec<u8> {
    let hdr = Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: data.len() as u32,
        type_: TYPE_STREAM,
        op,
        flags,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    };
    let mut out = hdr.to_bytes().to_vec();
    out.extend_from_slice(data);
    out
}

fn vsock() -> Vec<(&'static str, Vec<u8>)> {
    let guest = 5000;
    let host = FIRST_LOCAL_PORT;
    let port = VSOCK_PORT;
    let guest_initiated = [
        packet(guest, port, OP_REQUEST, 0, b""),
        packet(guest, port, OP_RW, 0, b"hello from the guest"),
        packet(guest, port, OP_CREDIT_REQUEST, 0, b""),
        packet(guest, port, OP_CREDIT_UPDATE, 0, b""),
        packet(guest, port, OP_SHUTDOWN, SHUTDOWN_SEND, b""),
        packet(guest, port, OP_SHUTDOWN, SHUTDOWN_BOTH, b""),
    ]
    .concat();
    let host_initiated = [
        packet(port, host, OP_RESPONSE, 0, b""),
        packet(port, host, OP_RW, 0, b"agent reply bytes"),
        packet(port, host, OP_CREDIT_UPDATE, 0, b""),
        packet(port, host, OP_SHUTDOWN, SHUTDOWN_RCV, b""),
        packet(port, host, OP_RST, 0, b""),
    ]
    .concat();
    let mut wrong_len = packet(guest, port, OP_RW, 0, b"abcd");
    wrong_len[24..28].copy_from_slice(&4096u32.to_le_bytes());
    vec![
        ("guest-initiated-session", guest_initiated),
        ("host-initiated-session", host_initiated),
        ("guest-refuses-host", packet(port, host, OP_RST, 0, b"")),
        ("request-to-port-without-listener", packet(guest, 7, OP_REQUEST, 0, b"")),
        ("stray-rw", packet(guest, port, OP_RW, 0, b"no connection")),
        ("len-beyond-payload", wrong_len),
    ]
}

// ------------------------------------------------------------------------- virtio_fs

mod fuse {
    pub const LOOKUP: u32 = 1;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RENAME: u32 = 12;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const CREATE: u32 = 35;
    pub const READDIRPLUS: u32 = 44;
    pub const ROOT: u64 = 1;
}

/// One FUSE request: `fuse_in_header` (40 bytes) and `body`.
fn fuse_msg(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(40 + body.len());
    m.extend_from_slice(&(40 + body.len() as u32).to_le_bytes());
    m.extend_from_slice(&opcode.to_le_bytes());
    m.extend_from_slice(&unique.to_le_bytes());
    m.extend_from_slice(&nodeid.to_le_bytes());
    for v in [0u32, 0, 1] {
        m.extend_from_slice(&v.to_le_bytes()); // uid, gid, pid
    }
    m.extend_from_slice(&[0u8; 4]); // total_extlen, padding
    m.extend_from_slice(body);
    m
}

fn le(parts: &[u64], widths: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    for (v, w) in parts.iter().zip(widths) {
        out.extend_from_slice(&v.to_le_bytes()[..*w]);
    }
    out
}

fn cstr(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p.as_bytes());
        out.push(0);
    }
    out
}

/// `fuse_init_in` of a 7.31 kernel.
fn fuse_init(unique: u64) -> Vec<u8> {
    let mut body = le(&[7, 31, 128 << 10, 0x7fff_ffff, 0], &[4, 4, 4, 4, 4]);
    body.resize(64, 0);
    fuse_msg(fuse::INIT, unique, 0, &body)
}

fn virtio_fs() -> Vec<(&'static str, Vec<u8>)> {
    use fuse::*;
    let file = 2; // the first node the passthrough file system hands out
    let create = [le(&[0o102, 0o644, 0o022, 0], &[4, 4, 4, 4]), cstr(&["f"])].concat();
    let write = [le(&[1, 0, 5, 0, 0, 0, 0], &[8, 8, 4, 4, 8, 4, 4]), b"hello".to_vec()].concat();
    let read = le(&[1, 0, 4096, 0, 0, 0, 0], &[8, 8, 4, 4, 8, 4, 4]);
    let session = [
        fuse_init(1),
        fuse_msg(CREATE, 2, ROOT, &create),
        fuse_msg(WRITE, 3, file, &write),
        fuse_msg(READ, 4, file, &read),
        fuse_msg(GETATTR, 5, file, &le(&[0, 0, 0], &[4, 4, 8])),
        fuse_msg(RELEASE, 6, file, &le(&[1, 0, 0, 0], &[8, 4, 4, 8])),
        fuse_msg(LOOKUP, 7, ROOT, &cstr(&["f"])),
    ]
    .concat();
    let tree = [
        fuse_init(1),
        fuse_msg(MKDIR, 2, ROOT, &[le(&[0o755, 0o022], &[4, 4]), cstr(&["d"])].concat()),
        fuse_msg(SYMLINK, 3, ROOT, &cstr(&["l", "/etc/passwd"])),
        fuse_msg(READLINK, 4, 3, &[]),
        fuse_msg(RENAME, 5, ROOT, &[le(&[ROOT], &[8]), cstr(&["l", "m"])].concat()),
        fuse_msg(OPENDIR, 6, ROOT, &le(&[0, 0], &[4, 4])),
        fuse_msg(READDIRPLUS, 7, ROOT, &read),
        fuse_msg(READDIR, 8, ROOT, &read),
        fuse_msg(UNLINK, 9, ROOT, &cstr(&["m"])),
        fuse_msg(STATFS, 10, ROOT, &[]),
    ]
    .concat();
    let hostile = [
        fuse_init(1),
        // A character device (refused), a setuid file (stripped), a trusted.* xattr (refused).
        fuse_msg(
            MKNOD,
            2,
            ROOT,
            &[le(&[0o20644, 0x0103, 0, 0], &[4, 4, 4, 4]), cstr(&["c"])].concat(),
        ),
        fuse_msg(
            CREATE,
            3,
            ROOT,
            &[le(&[0o102, 0o4755, 0, 0], &[4, 4, 4, 4]), cstr(&["s"])].concat(),
        ),
        fuse_msg(SETATTR, 4, file, &{
            let mut b = le(
                &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0o6755],
                &[4, 4, 8, 8, 8, 8, 8, 4, 4, 4, 4, 4],
            );
            b.resize(88, 0);
            b
        }),
        fuse_msg(
            SETXATTR,
            5,
            ROOT,
            &[le(&[1, 0], &[4, 4]), cstr(&["trusted.overlay.opaque"]), b"y".to_vec()].concat(),
        ),
        fuse_msg(
            SETXATTR,
            6,
            ROOT,
            &[le(&[1, 0], &[4, 4]), cstr(&["user.x"]), b"y".to_vec()].concat(),
        ),
        fuse_msg(GETXATTR, 7, ROOT, &[le(&[64, 0], &[4, 4]), cstr(&["user.x"])].concat()),
        fuse_msg(LOOKUP, 8, ROOT, &cstr(&[".."])),
        fuse_msg(OPEN, 9, 3, &le(&[0, 0], &[4, 4])),
    ]
    .concat();
    vec![
        ("init", fuse_init(1)),
        ("create-write-read-lookup", session),
        ("mkdir-symlink-rename-readdir", tree),
        ("device-setuid-xattr-dotdot", hostile),
        ("lookup-before-init", fuse_msg(LOOKUP, 1, ROOT, &cstr(&["missing"]))),
    ]
}

// ------------------------------------------------------------------------- agent_request

fn agent(kind: u8, msg: &impl Message) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&msg.encode_to_vec());
    out
}

fn process(args: &[&str]) -> pb::Process {
    pb::Process {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into(), "HOME=/root".into()],
        cwd: "/".into(),
        user: Some(pb::User { uid: 1000, gid: 1000, additional_gids: vec![10] }),
        tty: false,
        stdin: true,
    }
}

fn agent_request() -> Vec<(&'static str, Vec<u8>)> {
    let create = pb::CreateContainerRequest {
        id: "c0ffee".into(),
        process: Some(process(&["/bin/sh", "-c", "echo hi"])),
        rootfs_path: "/tmp".into(),
        rootfs_readonly: false,
        mounts: vec![
            pb::Mount {
                destination: "/data".into(),
                source: "/tmp".into(),
                r#type: "bind".into(),
                options: vec!["rbind".into(), "ro".into()],
            },
            pb::Mount {
                destination: "/run/x".into(),
                source: String::new(),
                r#type: "tmpfs".into(),
                options: vec!["nosuid".into(), "size=65536k".into()],
            },
        ],
        hostname: "pod-a".into(),
        namespaces: Some(pb::Namespaces { network: 2, ipc: 2, uts: 2, pid: 1 }),
        resources: Some(pb::Resources {
            cpu_quota_us: 50_000,
            cpu_period_us: 100_000,
            cpu_weight: 100,
            memory_limit_bytes: 64 << 20,
            pids_limit: 100,
        }),
        security: Some(pb::Security {
            capabilities: vec!["CAP_CHOWN".into(), "NET_BIND_SERVICE".into()],
            privileged: false,
            no_new_privs: true,
            masked_paths: vec!["/proc/kcore".into()],
            readonly_paths: vec!["/proc/sys".into()],
            seccomp: Some(pb::Seccomp {
                kind: 2,
                profile_json: r#"{"defaultAction":"SCMP_ACT_ERRNO",
"architectures":["SCMP_ARCH_X86_64"],"syscalls":[{"names":["read","write","exit_group"],
"action":"SCMP_ACT_ALLOW"}]}"#
                    .into(),
            }),
            capabilities_exact: true,
        }),
        annotations: [("io.kubernetes.pod.name".to_string(), "a".to_string())].into(),
        pod_sysctls: [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
    };
    let exec = pb::ExecProcessRequest {
        container_id: "c0ffee".into(),
        exec_id: "exec-1".into(),
        process: Some(process(&["ls", "-l"])),
    };
    let net = pb::ConfigureNetworkRequest {
        interfaces: vec![pb::NetworkInterface {
            mac: "02:42:0a:58:00:04".into(),
            name: "eth0".into(),
            mtu: 1500,
            addresses: vec![
                pb::IpAddress { address: "10.88.0.4".into(), prefix_len: 16 },
                pb::IpAddress { address: "fd00::4".into(), prefix_len: 64 },
            ],
        }],
        routes: vec![
            pb::NetworkRoute {
                destination: String::new(),
                prefix_len: 0,
                gateway: "10.88.0.1".into(),
                interface: "eth0".into(),
            },
            pb::NetworkRoute {
                destination: "192.168.0.0".into(),
                prefix_len: 24,
                gateway: String::new(),
                interface: "eth0".into(),
            },
        ],
        hostname: "pod-a".into(),
    };
    let update = pb::UpdateContainerResourcesRequest {
        id: "c0ffee".into(),
        resources: Some(pb::Resources { memory_limit_bytes: 128 << 20, ..Default::default() }),
    };
    let signal = pb::SignalProcessRequest {
        container_id: "c0ffee".into(),
        exec_id: String::new(),
        signal: 15,
        all: false,
    };
    let mut forward = vec![agent_kind::PORT_FORWARD];
    forward.extend_from_slice(b"PORT 8080");
    vec![
        ("create-container", agent(agent_kind::CREATE_CONTAINER, &create)),
        ("exec-process", agent(agent_kind::EXEC_PROCESS, &exec)),
        ("configure-network", agent(agent_kind::CONFIGURE_NETWORK, &net)),
        ("update-resources", agent(agent_kind::UPDATE_RESOURCES, &update)),
        ("signal-process", agent(agent_kind::SIGNAL_PROCESS, &signal)),
        ("port-forward", forward),
    ]
}
