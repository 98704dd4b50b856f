//! `chamfer healthcheck`: exit 0 iff `GET URL` answers 2xx in time (container health checks).
use std::time::Duration;

use anyhow::{bail, Context};
use chamfer_client::rest::parse_http_url;
use chamfer_client::RestClient;
use clap::Args;

use super::runtime;

/// `chamfer healthcheck`: exit 0 iff `GET URL` answers 2xx within the timeout (for container health checks in
/// images without a shell or curl).
#[derive(Args, Debug)]
pub(crate) struct HealthcheckCmd {
    /// URL to probe, e.g. http://127.0.0.1:8080/readyz.
    #[arg(long, default_value = "http://127.0.0.1:8080/readyz")]
    http: String,
    /// Seconds before giving up.
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
    /// Print nothing on success.
    #[arg(long, short)]
    quiet: bool,
}

impl HealthcheckCmd {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let url = parse_http_url(&self.http)?;
        let path = url.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let timeout = Duration::from_secs_f64(self.timeout.max(0.001));
        let client = RestClient::new(&self.http)?.timeout(timeout);
        let status = runtime()?
            .block_on(client.send(chamfer_client::rest::Method::GET, &path, None, None, &[]))
            .with_context(|| format!("{} is not healthy", self.http))?
            .status;
        if !(200..300).contains(&status) {
            bail!("{} answered HTTP {status}", self.http);
        }
        if !self.quiet {
            println!("{} answered HTTP {status}", self.http);
        }
        Ok(())
    }
}
