//! The `firmware_manifest` target: see `kakehashi_gateway::fuzzing::firmware_manifest` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kakehashi_gateway::fuzzing::firmware_manifest(data));
