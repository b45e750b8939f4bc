//! The `gateway_toml` target: see `kakehashi_gateway::fuzzing::gateway_toml` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kakehashi_gateway::fuzzing::gateway_toml(data));
