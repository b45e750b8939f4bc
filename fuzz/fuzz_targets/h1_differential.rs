//! The `h1_differential` target: see `kakehashi_gateway::fuzzing::h1_differential` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kakehashi_gateway::fuzzing::h1_differential(data));
