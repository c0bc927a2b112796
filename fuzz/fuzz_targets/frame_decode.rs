//! libFuzzer entry point of `xtmp_fuzz::frame_decode` (the body lives in the library so the
//! stable replay test runs it too).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| xtmp_fuzz::frame_decode::run(data));
