//! Coverage-guided fuzz targets for everything in carapace that parses bytes from a guest or a
//! registry. Each target is a plain function over the fuzzer's bytes that drives the project's
//! real parsing code (through `fuzz_hooks` of the crates where that code is private):
//!
//! - `virtio_chain`: split-queue state and descriptor chains in guest memory (`chain.rs`);
//! - `virtio_mmio`: register accesses against a virtio-mmio transport with the rng device;
//! - `vsock`: guest tx packets through the vsock connection muxer, with live Unix sockets;
//! - `virtio_fs`: FUSE requests through the virtio-fs server into a temp directory;
//! - `agent_request`: protobuf agent requests decoded and validated as the agent does;
//! - `oci_manifest`, `oci_config`: registry documents; `layer_tar`: a layer unpacked.
//!
//! `src/bin/` wraps each in libFuzzer (feature `libfuzzer`, built by `make fuzz`);
//! `tests/corpus.rs` runs every file of `corpus/<target>/` and `regressions/<target>/`
//! through them as a normal test. virtio-net has no target: its device parses no guest bytes
//! beyond a 12-byte header whose two fields are checked against a list (`net/header.rs`); the
//! frames go to the tap as they are.

pub mod seeds;
pub mod targets;

/// A fuzz target: the fuzzer's bytes in, nothing out; it must not panic.
pub type Target = fn(&[u8]);

/// Every target by name (the directory names under `corpus/` and `regressions/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("virtio_chain", targets::virtio_chain),
    ("virtio_mmio", targets::virtio_mmio),
    ("vsock", targets::vsock),
    ("virtio_fs", targets::virtio_fs),
    ("agent_request", targets::agent_request),
    ("oci_manifest", targets::oci_manifest),
    ("oci_config", targets::oci_config),
    ("layer_tar", targets::layer_tar),
];
