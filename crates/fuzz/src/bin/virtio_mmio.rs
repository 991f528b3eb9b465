//! libFuzzer wrapper of [`carapace_fuzz::targets::virtio_mmio`] (built by `make fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| carapace_fuzz::targets::virtio_mmio(data));
