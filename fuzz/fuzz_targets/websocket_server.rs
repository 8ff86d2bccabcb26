//! libFuzzer driver of `bridge_fuzz::websocket_server` (see the `bridge-fuzz` crate for what
//! it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bridge_fuzz::websocket_server(data));
