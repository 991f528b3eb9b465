//! libFuzzer wrapper of [`carapace_fuzz::targets::virtio_chain`] (built by `make fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| carapace_fuzz::targets::virtio_chain(data));
