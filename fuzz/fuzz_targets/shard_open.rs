//! Arbitrary bytes as a shard file (first byte: odd = re-seal the checksums first) -> `Shard::open` -> read
//! every document -> searches. See `chamfer_index::fuzzing::shard_open_file`.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// One private scratch folder per fuzzing process (the shard file is rewritten for every input).
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("chamfer-fuzz-shard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    chamfer_index::fuzzing::shard_open_file(scratch(), data);
});
