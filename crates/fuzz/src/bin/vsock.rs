//! libFuzzer wrapper of [`carapace_fuzz::targets::vsock`] (built by `make fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| carapace_fuzz::targets::vsock(data));
