//! The `h1` target: see `kakehashi_gateway::fuzzing::h1` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kakehashi_gateway::fuzzing::h1(data));
