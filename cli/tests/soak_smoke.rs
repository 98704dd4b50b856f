//! The soak's quick CI case: two kill -9 cycles (no corruption) of the debug `chamfer` binary through the
//! soak library, with writers in flight at every kill: nothing acknowledged may be lost. The binary is this
//! package's (`CARGO_BIN_EXE_chamfer`), built by cargo before the test: it cannot skip.
use chamfer_tests::soak::{run, Config};

#[test]
fn soak_two_kill_cycles_lose_nothing_acknowledged() {
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_chamfer"));
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
