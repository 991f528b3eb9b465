//! libFuzzer wrapper of [`carapace_fuzz::targets::virtio_fs`] (built by `make fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| carapace_fuzz::targets::virtio_fs(data));
