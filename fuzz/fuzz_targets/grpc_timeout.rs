//! The caller's `grpc-timeout` header, any text: a duration or none, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tokenbroker::grpc::parse_grpc_timeout(text);
    }
});
