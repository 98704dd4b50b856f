//! Bytes -> the REST upsert JSON body -> the REST adapter's conversion -> `input::validate_docs` -> a shard
//! that must read back. See `chamfer_server::fuzzing::rest_upsert`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = chamfer_server::fuzzing::rest_upsert(data);
});
