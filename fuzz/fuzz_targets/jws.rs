//! libFuzzer entry for [`byova_fuzz::jws`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| byova_fuzz::jws(data));
