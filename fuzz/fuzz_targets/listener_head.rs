//! libFuzzer entry for [`byova_fuzz::listener_head`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| byova_fuzz::listener_head(data));
