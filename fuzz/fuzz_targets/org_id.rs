//! libFuzzer entry for [`byova_fuzz::org_id`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| byova_fuzz::org_id(data));
