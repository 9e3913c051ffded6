//! libFuzzer entry for [`byova_fuzz::token_response`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| byova_fuzz::token_response(data));
