//! libFuzzer target: the httphead properties of `checks/httphead.rs` on any bytes.

#![no_main]

#[path = "../checks/httphead.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check_input(data));
