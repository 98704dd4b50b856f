//! Arbitrary bytes as `manifest.json` and as `collection.json` (first byte: odd = re-seal the version-2 checksum
//! first). See `chamfer_server::fuzzing::manifest_parse`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    chamfer_server::fuzzing::manifest_parse(data);
});
