//! libFuzzer target: the config properties of `checks/config.rs` on any bytes.

#![no_main]

#[path = "../checks/config.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check_input(data));
