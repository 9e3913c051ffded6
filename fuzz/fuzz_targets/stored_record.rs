//! libFuzzer entry for [`byova_fuzz::stored_record`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| byova_fuzz::stored_record(data));
