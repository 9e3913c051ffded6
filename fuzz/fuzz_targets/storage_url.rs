//! libFuzzer entry for [`byova_fuzz::storage_url`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| byova_fuzz::storage_url(data));
