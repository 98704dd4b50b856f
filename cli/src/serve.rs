//! `chamfer serve`: the server process (tracing, tokio runtime, signals) around `chamfer_server::serve::run`.
use std::path::PathBuf;

use chamfer_server::config::{Settings, SETTINGS};
use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};

/// Where the server listens and keeps its data, and every other setting (shared by `serve` and `demo`).
#[derive(Args, Debug)]
pub(crate) struct ServerArgs {
    /// Configuration file (TOML, or JSON when it ends in .json). Precedence: flags > CHAMFER_* env > file > defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: SettingFlags,
}

/// One flag per setting that has one, built from the server's table of settings (`chamfer_server::config::
/// SETTINGS`: its flag name, variable, meaning and default), so that the flags cannot drift from it.
#[derive(Clone, Debug, Default)]
pub(crate) struct SettingFlags(Vec<(&'static str, String)>);

impl FromArgMatches for SettingFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let set = SETTINGS
            .iter()
            .filter(|s| s.flag.is_some())
            .filter_map(|s| Some((s.key, m.get_one::<String>(s.key)?.clone())))
            .collect();
        Ok(SettingFlags(set))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for SettingFlags {
    fn augment_args(cmd: Command) -> Command {
        SETTINGS.iter().fold(cmd, |cmd, s| match s.flag {
            Some(flag) => cmd.arg(Arg::new(s.key).long(flag).value_name("VALUE").help(format!(
                "{} [env {}; default {}]",
                s.doc,
                s.env,
                s.default_text()
            ))),
            None => cmd,
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl ServerArgs {
    /// The validated settings (all problems at once).
    pub(crate) fn settings(&self) -> anyhow::Result<Settings> {
        let flags = self.flags.0.iter().map(|(k, v)| (*k, v.as_str()));
        Ok(Settings::load(
            self.config.as_deref(),
            std::env::vars(),
            flags,
        )?)
    }
}

#[derive(Args, Debug)]
pub(crate) struct ServeCmd {
    #[command(flatten)]
    server: ServerArgs,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

/// Installs the tracing subscriber (RUST_LOG, default info).
pub(crate) fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

impl ServeCmd {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        init_tracing(self.log_json);
        let settings = self.server.settings()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(chamfer_server::serve::run(
            settings,
            chamfer_server::serve::shutdown_signal(),
        ))?)
    }
}
