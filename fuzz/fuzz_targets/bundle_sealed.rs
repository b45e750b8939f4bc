//! The `bundle_sealed` target: see `kakehashi_gateway::fuzzing::bundle_sealed` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kakehashi_gateway::fuzzing::bundle_sealed(data));
