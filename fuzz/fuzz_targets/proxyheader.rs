//! libFuzzer target: the PROXY header properties of `checks/proxyheader.rs` on any bytes.

#![no_main]

#[path = "../checks/proxyheader.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check_input(data));
