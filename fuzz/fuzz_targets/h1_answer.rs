//! The `h1_answer` target: see `kakehashi_gateway::fuzzing::h1_answer` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kakehashi_gateway::fuzzing::h1_answer(data));
