//! The `bundle_opened` target: see `kakehashi_gateway::fuzzing::bundle_opened` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kakehashi_gateway::fuzzing::bundle_opened(data));
