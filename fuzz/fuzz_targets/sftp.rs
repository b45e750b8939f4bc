//! The `sftp` target: see `kakehashi_gateway::fuzzing::sftp` and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kakehashi_gateway::fuzzing::sftp(data));
