//! `chamfer-soak`: random kill -9 / corruption / restart cycles against a real `chamfer serve`, checked against
//! a model of acknowledged state. The last stdout line is a JSON summary; exit code 1 when anything was lost or
//! the server misbehaved. See tests/soak/README.md.
use std::path::PathBuf;
use std::process::ExitCode;

use chamfer_tests::soak::{run, Config};

const USAGE: &str = "usage: chamfer-soak [--chamfer PATH] [--cycles N] [--seed S] [--data DATASET_DIR] \
[--workdir DIR] [--max-seconds N] [--corrupt-every N] [--max-ids N] [--quiet]

  --chamfer PATH      the chamfer binary (default: target/release/chamfer beside this binary)
  --cycles N          kill cycles to run (default 12)
  --seed S            seed of the plan (default: from the clock; printed)
  --data DIR          a data set folder (e.g. data/demo) whose document tokens are used; default synthetic
  --workdir DIR       server data, backups and logs (default: $TMPDIR/chamfer-soak-<seed>; wiped at start)
  --max-seconds N     no new cycle after N seconds (default 600)
  --corrupt-every N   every N-th cycle is also a corruption cycle (default 3; 0 = never)
  --max-ids N         documents at most in the tortured collection (default 1500)
  --quiet             no progress lines, only the JSON summary";

fn default_chamfer() -> PathBuf {
    let name = format!("chamfer{}", std::env::consts::EXE_SUFFIX);
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(&name)))
        .unwrap_or_else(|| PathBuf::from("target/release").join(name))
}

fn parse() -> Result<Config, String> {
    let mut args = std::env::args().skip(1);
    let mut chamfer = None;
    let mut workdir = None;
    let mut seed = None;
    let mut cfg = Config::new(PathBuf::new(), PathBuf::new(), 0);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let num = |name: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{name}: not a number: {v}"))
        };
        match a.as_str() {
            "--chamfer" => chamfer = Some(PathBuf::from(value(&a)?)),
            "--cycles" => cfg.cycles = num(&a, value(&a)?)? as usize,
            "--seed" => seed = Some(num(&a, value(&a)?)?),
            "--data" => cfg.data = Some(PathBuf::from(value(&a)?)),
            "--workdir" => workdir = Some(PathBuf::from(value(&a)?)),
            "--max-seconds" => cfg.max_seconds = num(&a, value(&a)?)?,
            "--corrupt-every" => cfg.corrupt_every = num(&a, value(&a)?)? as usize,
            "--max-ids" => cfg.max_ids = (num(&a, value(&a)?)? as usize).max(20),
            "--quiet" => cfg.progress = false,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    cfg.seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000_000)
            .unwrap_or(1)
    });
    cfg.chamfer = chamfer.unwrap_or_else(default_chamfer);
    cfg.workdir =
        workdir.unwrap_or_else(|| std::env::temp_dir().join(format!("chamfer-soak-{}", cfg.seed)));
    Ok(cfg)
}

fn main() -> ExitCode {
    let cfg = match parse() {
        Ok(c) => c,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("chamfer-soak: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "chamfer-soak: seed {} (re-run the same plan with --seed {}), workdir {}, server logs in {}/logs",
        cfg.seed,
        cfg.seed,
        cfg.workdir.display(),
        cfg.workdir.display()
    );
    match run(&cfg) {
        Ok(summary) => {
            println!("{}", summary.to_json());
            if summary.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("chamfer-soak: {e}");
            ExitCode::from(2)
        }
    }
}
