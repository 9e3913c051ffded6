//! libFuzzer entry for [`byova_fuzz::webhook_delivery`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| byova_fuzz::webhook_delivery(data));
