//! libFuzzer wrapper of [`carapace_fuzz::targets::oci_config`] (built by `make fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| carapace_fuzz::targets::oci_config(data));
