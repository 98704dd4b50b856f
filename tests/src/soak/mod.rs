//! The reliability soak: random `kill -9`, corruption and restart cycles of a real `chamfer serve` process,
//! checked against a model of acknowledged state. See `tests/soak/README.md` for what it promises to check.
//!
//! [`run`] is the whole soak (the `chamfer-soak` binary parses flags and prints its [`Summary`]); the CI smoke
//! test calls it with two kill cycles.
mod config;
pub mod damage;
pub mod http;
pub mod model;
pub mod rng;
pub mod server;
mod verify;
mod workload;

use config::finding;
pub use config::{Config, Finding, Mode, Outcomes, Summary};
pub use verify::verify;
use verify::Outcome;
use workload::{lock, writer, Shared};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use damage::Damage;
use model::{Model, State, TokenSource, Version};
use rng::Rng;
use server::{Server, ServerOpts, StartError};

/// The collection that is killed, damaged and restored.
pub const COLLECTION: &str = "c";
/// The collection that is never damaged nor written after set-up: it must always serve.
pub const KEEP: &str = "keep";

/// Timeout of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests one writer sends in one cycle at most.
const MAX_OPS_PER_WRITER: usize = 20_000;
/// Ids per `documents/get` request during verification.
const GET_BATCH: usize = 200;
/// Loss examples kept per (cycle, phase, kind).
const EXAMPLES: usize = 3;
/// Loss detail groups kept in the summary.
const MAX_DETAILS: usize = 200;

/// The soak's state.
struct Soak {
    cfg: Config,
    rng: Rng,
    src: Arc<TokenSource>,
    opts: ServerOpts,
    logs: PathBuf,
    backup: PathBuf,
    model: Arc<Mutex<Model>>,
    keep: Model,
    next_id: Arc<AtomicU64>,
    server: Option<Server>,
    summary: Summary,
    damages: Vec<Damage>,
    next_damage: usize,
    started: Instant,
}

impl Soak {
    fn say(&self, line: String) {
        if self.cfg.progress {
            println!("{line}");
        }
    }

    fn anomaly(&mut self, a: String) {
        self.say(format!("  ! {a}"));
        self.summary.anomalies.push(a);
    }

    fn record(&mut self, cycle: usize, phase: &str, findings: &[Finding]) {
        let mut groups: BTreeMap<&'static str, Vec<&Finding>> = BTreeMap::new();
        for f in findings {
            groups.entry(f.kind).or_default().push(f);
        }
        for (kind, fs) in groups {
            self.summary.losses += fs.len() as u64;
            if self.summary.loss_details.len() < MAX_DETAILS {
                let examples: Vec<Value> = fs
                    .iter()
                    .take(EXAMPLES)
                    .map(|f| json!({"id": f.id, "detail": f.detail}))
                    .collect();
                self.summary.loss_details.push(json!({
                    "cycle": cycle, "phase": phase, "kind": kind, "count": fs.len(), "examples": examples,
                }));
            }
        }
    }

    fn port(&self) -> u16 {
        self.server.as_ref().map(|s| s.http_port).unwrap_or(0)
    }

    fn check_log(&mut self, log: &Path) {
        if let Some(p) = server::panic_in_log(log) {
            self.anomaly(format!("panic in {}: {p}", log.display()));
        }
    }

    fn stop(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.kill();
            let log = s.log.clone();
            self.check_log(&log);
        }
    }

    fn start(&mut self, name: &str) -> Result<(), StartError> {
        self.start_with(name, &self.opts.clone())
    }

    fn start_with(&mut self, name: &str, opts: &ServerOpts) -> Result<(), StartError> {
        let log = self.logs.join(format!("{name}.log"));
        match Server::start(opts, &log) {
            Ok(s) => {
                self.server = Some(s);
                Ok(())
            }
            Err(e) => {
                self.check_log(&log);
                Err(e)
            }
        }
    }

    /// Creates both collections and fills the untouched one.
    fn setup(&mut self) -> Result<(), String> {
        self.start("setup").map_err(|e| e.to_string())?;
        let port = self.port();
        let dim = self.src.dim();
        for name in [COLLECTION, KEEP] {
            let body = json!({"name": name, "dimension": dim}).to_string();
            let r = http::request(
                port,
                "POST",
                "/v1/collections",
                Some(body.as_bytes()),
                REQUEST_TIMEOUT,
            )
            .map_err(|e| e.to_string())?;
            if r.status != 201 && r.status != 200 {
                return Err(format!(
                    "create collection {name}: HTTP {} {}",
                    r.status,
                    r.text(300)
                ));
            }
        }
        let mut body = String::from("{\"documents\":[");
        let mut docs = Vec::new();
        for i in 0..30 {
            let v = Arc::new(model::new_version(&self.src, &mut self.rng, 99, i));
            let id = format!("k{i}");
            if i > 0 {
                body.push(',');
            }
            model::doc_json(&mut body, &id, &v, dim);
            docs.push((id, v));
        }
        body.push_str("]}");
        let r = http::request(
            port,
            "POST",
            &format!("/v1/collections/{KEEP}/documents"),
            Some(body.as_bytes()),
            REQUEST_TIMEOUT,
        )
        .map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("fill {KEEP}: HTTP {} {}", r.status, r.text(300)));
        }
        for (id, v) in docs {
            self.keep.ack_upsert(&id, v);
        }
        Ok(())
    }

    /// Writers against the running server, then SIGKILL after a random delay. Returns a description.
    fn kill_phase(&mut self) -> String {
        let writers = self.rng.range(2, 4) as usize;
        let delay = self.rng.range(50, 1500);
        let port = self.port();
        let sh = Arc::new(Shared {
            model: self.model.clone(),
            busy: Mutex::new(HashSet::new()),
            next_id: self.next_id.clone(),
            killing: AtomicBool::new(false),
            anomalies: Mutex::new(Vec::new()),
            acked_docs: AtomicU64::new(0),
            acked_requests: AtomicU64::new(0),
            unknown_docs: AtomicU64::new(0),
        });
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (sh, src, rng) = (sh.clone(), self.src.clone(), self.rng.fork());
                let max_ids = self.cfg.max_ids;
                std::thread::spawn(move || writer(w, port, rng, sh, src, max_ids))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(delay));
        sh.killing.store(true, Ordering::SeqCst);
        self.stop();
        for h in handles {
            if h.join().is_err() {
                self.anomaly("a writer thread panicked".into());
            }
        }
        self.summary.kills += 1;
        let acked = sh.acked_docs.load(Ordering::SeqCst);
        let unknown = sh.unknown_docs.load(Ordering::SeqCst);
        self.summary.acknowledged_writes += acked;
        self.summary.acknowledged_requests += sh.acked_requests.load(Ordering::SeqCst);
        self.summary.unknown_writes += unknown;
        for a in std::mem::take(&mut *lock(&sh.anomalies)) {
            self.anomaly(a);
        }
        format!("writers={writers} kill after {delay} ms: acked {acked} docs, {unknown} unknown")
    }

    /// Verifies the untouched collection; a failure is an anomaly (and its findings are losses).
    fn verify_keep(&mut self, cycle: usize, phase: &str) {
        let port = self.port();
        let dim = self.src.dim();
        let mut keep = std::mem::take(&mut self.keep);
        let r = verify(port, KEEP, &mut keep, dim, Mode::CheckOnly, &mut self.rng);
        self.keep = keep;
        match r {
            Ok(f) if f.is_empty() => {}
            Ok(f) => {
                self.record(cycle, &format!("{phase}:{KEEP}"), &f);
                self.anomaly(format!(
                    "cycle {cycle} {phase}: the untouched collection {KEEP:?} lost data ({} findings)",
                    f.len()
                ));
            }
            Err(e) => self.anomaly(format!(
                "cycle {cycle} {phase}: the untouched collection {KEEP:?} does not serve: {e}"
            )),
        }
    }

    /// Restart after a kill (or a restore) and verify everything; the model becomes the server's state.
    /// `false` when the run cannot go on.
    fn restart_and_verify(&mut self, cycle: usize, phase: &str) -> (bool, String) {
        if let Err(e) = self.start(&format!("cycle-{cycle:03}-{phase}")) {
            self.summary.start_failures += 1;
            self.anomaly(format!(
                "cycle {cycle} {phase}: no restart on undamaged data: {e}"
            ));
            return (false, "no restart".into());
        }
        let port = self.port();
        let dim = self.src.dim();
        let model = self.model.clone();
        let r = verify(
            port,
            COLLECTION,
            &mut lock(&model),
            dim,
            Mode::Update,
            &mut self.rng,
        );
        let status = match r {
            Ok(f) => {
                self.record(cycle, phase, &f);
                if f.is_empty() {
                    "ok".to_string()
                } else {
                    format!("LOSS: {}", describe(&f))
                }
            }
            Err(e) => {
                self.anomaly(format!(
                    "cycle {cycle} {phase}: collection {COLLECTION:?} unreadable after a restart on undamaged data: {e}"
                ));
                "unreadable".into()
            }
        };
        self.verify_keep(cycle, phase);
        let m = lock(&self.model);
        let status = format!("{status} (live {}, deleted {})", m.live(), m.deleted());
        (true, status)
    }

    fn pick_damage(&mut self, coll: &Path) -> Damage {
        for _ in 0..Damage::ALL.len() {
            let d = self.damages[self.next_damage % self.damages.len()];
            self.next_damage += 1;
            if damage::applicable(d, coll) {
                return d;
            }
        }
        Damage::StrayDir
    }

    /// With the server down after a kill: back up, damage, start, judge, stop, restore.
    fn corruption_phase(&mut self, cycle: usize) -> String {
        let root = self.opts.data_dir.join("collections");
        let coll = root.join(COLLECTION);
        let backup = self.backup.join(COLLECTION);
        if let Err(e) = damage::restore(&coll, &backup) {
            self.anomaly(format!("cycle {cycle}: backup failed: {e}"));
            return "no backup".into();
        }
        let needed = damage::needed_files(&coll);
        let d = self.pick_damage(&coll);
        let (what, stray) = match damage::apply(d, &coll, &mut self.rng) {
            Ok(x) => x,
            Err(e) => {
                self.anomaly(format!("cycle {cycle}: could not apply {}: {e}", d.name()));
                return "damage failed".into();
            }
        };
        self.summary.corruptions += 1;
        let present: std::collections::BTreeSet<String> = needed
            .into_iter()
            .filter(|r| coll.join(r).exists())
            .collect();
        let phase = format!("damaged:{}", d.name());
        // No flush or shard-count compaction during the damaged start: a file that disappears was removed by
        // recovery, not by routine maintenance.
        let quiet = ServerOpts {
            flush_threshold_docs: 10_000_000,
            compaction_max_shards: 1_000_000,
            ..self.opts.clone()
        };
        let started = self.start_with(&format!("cycle-{cycle:03}-damaged-{}", d.name()), &quiet);
        let (outcome, note) = match started {
            Err(e) => {
                self.summary.start_failures += 1;
                self.anomaly(format!(
                    "cycle {cycle} {}: the server did not start with one damaged collection: {e}",
                    d.name()
                ));
                (Outcome::StartFailure, String::new())
            }
            Ok(()) => {
                let port = self.port();
                let r = http::request(
                    port,
                    "GET",
                    &format!("/v1/collections/{COLLECTION}"),
                    None,
                    REQUEST_TIMEOUT,
                );
                let (outcome, note) = match r {
                    Ok(r) if r.status == 200 => {
                        let dim = self.src.dim();
                        let model = self.model.clone();
                        let checked = verify(
                            port,
                            COLLECTION,
                            &mut lock(&model),
                            dim,
                            Mode::CheckOnly,
                            &mut self.rng,
                        );
                        match checked {
                            Ok(f) if f.is_empty() => (Outcome::Harmless, String::new()),
                            Ok(f) => {
                                self.record(cycle, &phase, &f);
                                (Outcome::Loss, describe(&f))
                            }
                            Err(e) => {
                                self.anomaly(format!(
                                    "cycle {cycle} {}: describe answers 200 but reading fails: {e}",
                                    d.name()
                                ));
                                (Outcome::Unexpected, e)
                            }
                        }
                    }
                    Ok(r)
                        if r.status == 503
                            && r.error_code().as_deref() == Some("collection_unavailable") =>
                    {
                        // Reported unavailable: reads must not serve (possibly wrong) data either.
                        let ids: Vec<String> =
                            lock(&self.model).ids.iter().take(20).cloned().collect();
                        let body = json!({"ids": ids, "with_tokens": true}).to_string();
                        let read = http::request(
                            port,
                            "POST",
                            &format!("/v1/collections/{COLLECTION}/documents/get"),
                            Some(body.as_bytes()),
                            REQUEST_TIMEOUT,
                        );
                        match read {
                            Ok(r) if (200..300).contains(&r.status) => {
                                let e = "describe answers 503 collection_unavailable but documents/get answers 200".to_string();
                                self.anomaly(format!("cycle {cycle} {}: {e}", d.name()));
                                (Outcome::Unexpected, e)
                            }
                            _ => (Outcome::Detected, String::new()),
                        }
                    }
                    Ok(r) => {
                        let e = format!("describe answered HTTP {} {}", r.status, r.text(200));
                        self.anomaly(format!("cycle {cycle} {}: {e}", d.name()));
                        (Outcome::Unexpected, e)
                    }
                    Err(e) => {
                        let e = format!("describe failed: {e}");
                        self.anomaly(format!("cycle {cycle} {}: {e}", d.name()));
                        (Outcome::Unexpected, e)
                    }
                };
                self.verify_keep(cycle, &phase);
                self.stop();
                (outcome, note)
            }
        };
        let (mut outcome, mut note) = (outcome, note);
        // Whether it started or not, the server must not have deleted data files (moving them into a
        // quarantine folder is fine).
        let gone = damage::deleted_files(&coll, &self.opts.data_dir, &present);
        if !gone.is_empty() && outcome == Outcome::Harmless {
            // Serving with every acknowledged write intact: a compaction may have replaced files.
            note = format!(
                "{} file(s) replaced by maintenance, data intact: {}",
                gone.len(),
                gone.join(", ")
            );
        } else if !gone.is_empty() {
            let f: Vec<Finding> = gone
                .iter()
                .map(|g| {
                    finding(
                        "file_deleted",
                        g,
                        "the server deleted a data file of the damaged collection".into(),
                    )
                })
                .collect();
            self.record(cycle, &phase, &f);
            if matches!(outcome, Outcome::Harmless | Outcome::Detected) {
                outcome = Outcome::Loss;
            }
            note = format!(
                "{note}{}{} file(s) deleted by the server: {}",
                if note.is_empty() { "" } else { "; " },
                gone.len(),
                gone.join(", ")
            );
        }
        let o = self.summary.damage_outcomes.entry(d.name()).or_default();
        match outcome {
            Outcome::Harmless => o.harmless += 1,
            Outcome::Detected => o.detected += 1,
            Outcome::Loss => o.loss += 1,
            Outcome::StartFailure => o.start_failure += 1,
            Outcome::Unexpected => o.unexpected += 1,
        }
        match outcome {
            Outcome::Harmless => self.summary.harmless += 1,
            Outcome::Detected => self.summary.detected += 1,
            _ => {}
        }
        self.summary.corruption_log.push(json!({
            "cycle": cycle, "damage": d.name(), "what": what, "outcome": outcome.name(), "note": note,
        }));
        // Undo: the collection as it was after the kill, no stray directory.
        if let Some(s) = stray {
            let _ = std::fs::remove_dir_all(s);
        }
        if let Err(e) = damage::restore(&backup, &coll) {
            self.anomaly(format!("cycle {cycle}: restore failed: {e}"));
        }
        format!(
            "{} [{what}] -> {}{}",
            d.name(),
            outcome.name(),
            if note.is_empty() {
                String::new()
            } else {
                format!(" ({note})")
            }
        )
    }
}

/// A short description of findings: count per kind.
fn describe(f: &[Finding]) -> String {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for x in f {
        *by.entry(x.kind).or_default() += 1;
    }
    by.iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs the soak. Errors only for set-up problems (bad data set, no binary, cannot create the workdir).
pub fn run(cfg: &Config) -> Result<Summary, String> {
    let started = Instant::now();
    let mut rng = Rng::new(cfg.seed);
    if !cfg.chamfer.is_file() {
        return Err(format!("no chamfer binary at {}", cfg.chamfer.display()));
    }
    let src = match &cfg.data {
        Some(dir) => {
            let ds = chamfer_data::dataset::Dataset::open(dir).map_err(|e| e.to_string())?;
            let dim = ds.dim();
            let docs = (0..ds.n_docs())
                .map(|i| {
                    ds.doc_tokens(i)
                        .iter()
                        .map(|x| half::f16::from_f32(*x).to_f32())
                        .collect()
                })
                .collect();
            TokenSource::Dataset {
                dim,
                docs,
                max_tokens: 24,
            }
        }
        None => TokenSource::Synthetic {
            dim: *rng.pick(&[8usize, 16, 24, 32, 48, 64, 96, 128]),
            max_tokens: 24,
        },
    };
    let flush = rng.range(20, 100) as usize;
    let compaction = rng.range(2, 3) as usize;
    for sub in ["data", "logs", "backup"] {
        let p = cfg.workdir.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let mut damages = Damage::ALL.to_vec();
    rng.shuffle(&mut damages);
    let config = json!({
        "chamfer": cfg.chamfer.display().to_string(), "dimension": src.dim(),
        "tokens": if cfg.data.is_some() { "dataset" } else { "synthetic" },
        "flush_threshold_docs": flush, "compaction_max_shards": compaction,
        "corrupt_every": cfg.corrupt_every, "max_ids": cfg.max_ids, "workdir": cfg.workdir.display().to_string(),
    });
    let mut s = Soak {
        opts: ServerOpts {
            bin: cfg.chamfer.clone(),
            data_dir: cfg.workdir.join("data"),
            flush_threshold_docs: flush,
            compaction_max_shards: compaction,
        },
        logs: cfg.workdir.join("logs"),
        backup: cfg.workdir.join("backup"),
        cfg: cfg.clone(),
        rng,
        src: Arc::new(src),
        model: Arc::new(Mutex::new(Model::default())),
        keep: Model::default(),
        next_id: Arc::new(AtomicU64::new(0)),
        server: None,
        summary: Summary {
            seed: cfg.seed,
            config: config.clone(),
            ..Default::default()
        },
        damages,
        next_damage: 0,
        started,
    };
    s.say(format!(
        "chamfer-soak seed={} cycles={} {config}",
        cfg.seed, cfg.cycles
    ));
    if let Err(e) = s.setup() {
        s.anomaly(format!("set-up failed: {e}"));
        s.stop();
        s.summary.seconds = started.elapsed().as_secs_f64();
        return Ok(s.summary);
    }
    s.verify_keep(0, "setup");
    for cycle in 1..=cfg.cycles {
        if s.started.elapsed().as_secs() >= cfg.max_seconds {
            s.say(format!(
                "stopping after {} cycles: --max-seconds {} reached",
                cycle - 1,
                cfg.max_seconds
            ));
            break;
        }
        let t = Instant::now();
        let corrupt = cfg.corrupt_every > 0 && cycle % cfg.corrupt_every == 0;
        let kill = s.kill_phase();
        let damage = if corrupt {
            format!(" | corrupt {}", s.corruption_phase(cycle))
        } else {
            String::new()
        };
        let phase = if corrupt { "restored" } else { "restart" };
        let (go_on, status) = s.restart_and_verify(cycle, phase);
        s.summary.cycles += 1;
        s.say(format!(
            "cycle {cycle}/{} {} {kill}{damage} | {phase}: {status} [{:.1} s]",
            cfg.cycles,
            if corrupt { "corrupt" } else { "kill   " },
            t.elapsed().as_secs_f64()
        ));
        if !go_on {
            break;
        }
    }
    s.stop();
    s.summary.seconds = started.elapsed().as_secs_f64();
    Ok(s.summary)
}
