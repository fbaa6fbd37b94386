//! Any bytes through the DT reader and the plan (scripts/plan's and the monitor's configurations).
#![no_main]

#[path = "../src/checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::dt_plan(data));
