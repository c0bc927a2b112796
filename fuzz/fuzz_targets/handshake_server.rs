//! libFuzzer entry point of `xtmp_fuzz::handshake_server` (the body lives in the library so the
//! stable replay test runs it too).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xtmp_fuzz::handshake_server::run(data));
