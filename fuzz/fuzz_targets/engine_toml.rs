//! The `engine_toml` target: see `kakehashi_gateway::fuzzing::engine_toml` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kakehashi_gateway::fuzzing::engine_toml(data));
