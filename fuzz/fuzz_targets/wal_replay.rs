//! Arbitrary bytes as a collection's only write-ahead-log file (first byte: odd = re-seal the header and record
//! checksums first; second byte: the manifest's flushed sequence) -> replay of the whole chain -> on success the
//! writer's open (torn-tail handling). See `chamfer_server::fuzzing::wal_replay`.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// One private scratch folder per fuzzing process (the log file is rewritten for every input).
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("chamfer-fuzz-wal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    chamfer_server::fuzzing::wal_replay(scratch(), data);
});
