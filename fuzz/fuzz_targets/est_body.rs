//! The `est_body` target: see `kakehashi_gateway::fuzzing::est_body` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kakehashi_gateway::fuzzing::est_body(data));
