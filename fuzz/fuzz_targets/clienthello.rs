//! libFuzzer target: the clienthello properties of `checks/clienthello.rs` on any bytes.

#![no_main]

#[path = "../checks/clienthello.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check_input(data));
