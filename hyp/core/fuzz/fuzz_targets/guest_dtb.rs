//! Any bytes through the reader and the plan, then each guest's DTB written and read back.
#![no_main]

#[path = "../src/checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::guest_dtb_roundtrip(data));
