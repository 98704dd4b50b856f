//! What the soak runs ([`Config`]) and what it reports ([`Summary`], [`Finding`]).
use super::*;

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// The `chamfer` binary.
    pub chamfer: PathBuf,
    /// Cycles to run (fewer if `max_seconds` runs out first).
    pub cycles: usize,
    pub seed: u64,
    /// A data set folder whose document tokens are used (rounded to f16); synthetic tokens when `None`.
    pub data: Option<PathBuf>,
    /// Where the server's data directory, backups and logs go (wiped at start).
    pub workdir: PathBuf,
    /// No new cycle starts after this many seconds.
    pub max_seconds: u64,
    /// Every `corrupt_every`-th cycle is a corruption cycle (0: never).
    pub corrupt_every: usize,
    /// Documents (ids) at most in the tortured collection.
    pub max_ids: usize,
    /// Print a progress line per cycle to stdout.
    pub progress: bool,
}

impl Config {
    pub fn new(chamfer: PathBuf, workdir: PathBuf, seed: u64) -> Config {
        Config {
            chamfer,
            cycles: 12,
            seed,
            data: None,
            workdir,
            max_seconds: 600,
            corrupt_every: 3,
            max_ids: 1500,
            progress: true,
        }
    }
}

/// Outcome counts of one damage kind.
#[derive(Clone, Debug, Default)]
pub struct Outcomes {
    pub harmless: u64,
    pub detected: u64,
    pub loss: u64,
    pub start_failure: u64,
    pub unexpected: u64,
}

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub seed: u64,
    pub cycles: u64,
    pub kills: u64,
    pub corruptions: u64,
    pub detected: u64,
    pub harmless: u64,
    pub start_failures: u64,
    /// Individual findings: each lost, resurrected or altered document, wrong count, bad search hit, deleted
    /// file.
    pub losses: u64,
    /// Documents in acknowledged upserts and deletes.
    pub acknowledged_writes: u64,
    pub acknowledged_requests: u64,
    /// Documents in writes whose outcome is unknown (in flight at a kill).
    pub unknown_writes: u64,
    pub seconds: f64,
    pub loss_details: Vec<Value>,
    /// Unexpected server behaviour: panics, failures to start, the untouched collection failing, errors before
    /// a kill, answers outside the contract.
    pub anomalies: Vec<String>,
    pub damage_outcomes: BTreeMap<&'static str, Outcomes>,
    /// One entry per corruption cycle: cycle, damage, what exactly, outcome.
    pub corruption_log: Vec<Value>,
    pub config: Value,
}

impl Summary {
    /// True when nothing was lost and nothing unexpected happened.
    pub fn passed(&self) -> bool {
        self.losses == 0 && self.anomalies.is_empty()
    }

    /// The one-line JSON report.
    pub fn to_json(&self) -> Value {
        let outcomes: serde_json::Map<String, Value> = self
            .damage_outcomes
            .iter()
            .map(|(k, o)| {
                (
                    k.to_string(),
                    json!({"harmless": o.harmless, "detected": o.detected, "loss": o.loss,
                           "start_failure": o.start_failure, "unexpected": o.unexpected}),
                )
            })
            .collect();
        json!({
            "seed": self.seed,
            "cycles": self.cycles,
            "kills": self.kills,
            "corruptions": self.corruptions,
            "detected": self.detected,
            "harmless": self.harmless,
            "start_failures": self.start_failures,
            "losses": self.losses,
            "acknowledged_writes": self.acknowledged_writes,
            "acknowledged_requests": self.acknowledged_requests,
            "unknown_writes": self.unknown_writes,
            "seconds": (self.seconds * 10.0).round() / 10.0,
            "passed": self.passed(),
            "damage_outcomes": outcomes,
            "corruption_log": self.corruption_log,
            "anomalies": self.anomalies,
            "config": self.config,
            "loss_details": self.loss_details,
        })
    }
}

/// One discrepancy between the server and the model.
#[derive(Clone, Debug)]
pub struct Finding {
    pub kind: &'static str,
    pub id: String,
    pub detail: String,
}

pub(super) fn finding(kind: &'static str, id: &str, detail: String) -> Finding {
    Finding {
        kind,
        id: id.to_string(),
        detail,
    }
}

/// Whether verification may update the model (after a restart: yes; on a damaged start that is undone by a
/// restore: no).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Update,
    CheckOnly,
}
