//! The soak's quick CI case: two kill -9 cycles (no corruption) of the debug `chamfer` binary through the
//! soak library, with writers in flight at every kill: nothing acknowledged may be lost.
use std::path::PathBuf;

use chamfer_tests::soak::{run, Config};

/// The `chamfer` binary: `$CHAMFER_BIN`, or the one next to this test binary (target/<profile>/chamfer).
fn chamfer_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHAMFER_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let bin = exe
        .parent()?
        .parent()?
        .join(format!("chamfer{}", std::env::consts::EXE_SUFFIX));
    bin.exists().then_some(bin)
}

#[test]
fn soak_two_kill_cycles_lose_nothing_acknowledged() {
    let Some(bin) = chamfer_bin() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "the chamfer binary must be built before the tests in CI"
        );
        eprintln!("SKIPPED: build the binary first (cargo build -p chamfer-server --bin chamfer)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(bin, tmp.path().to_path_buf(), 7);
    cfg.cycles = 2;
    cfg.corrupt_every = 0;
    cfg.max_seconds = 120;
    cfg.max_ids = 400;
    let summary = run(&cfg).expect("soak set-up");
    let report = summary.to_json();
    println!("{report}");
    assert_eq!(summary.kills, 2, "{report}");
    assert!(summary.acknowledged_writes > 0, "{report}");
    assert!(summary.passed(), "{report}");
}
