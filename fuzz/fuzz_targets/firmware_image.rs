//! The `firmware_image` target: see `kakehashi_gateway::fuzzing::firmware_image` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kakehashi_gateway::fuzzing::firmware_image(data));
