//! Load tester for the market data gateway: many simulated WebSocket (or SSE) clients,
//! measured as the gateway's users see it.
//!
//! How the pieces fit, from the command line to the report:
//!
//! - [`config`]: the flags (`Cli`) and the `Plan` one worker runs.
//! - [`coordinator`]: splits the clients over workers (this process, or child processes bound
//!   to their own source addresses past one process's open-file limit), prints progress every
//!   second, samples the gateway process, merges the workers' figures.
//! - [`worker`]: runs its clients on one current-thread runtime, on a shared ramp schedule.
//! - [`churn`]: `--churn`'s reconnecting `["*"]` sessions beside the measured clients.
//! - [`storm`]: `--storm`'s reconnect storm: what the clients count of it, and its report.
//! - [`client`]: one session: [`connect`] (TCP + upgrade, or `GET /sse`), subscribe, then read
//!   fast, slowly or not at all; per message [`frame`] finds the frame in the read buffer (or
//!   the client its SSE event) and [`scan`] reads `type`/`symbol`/`seq`/`ts` in place, into
//!   [`stats`].
//! - [`report`]: JSON report, human summary, SLO checks (the exit code); [`gateway_metrics`]
//!   adds the gateway's own view of the window from its `/metrics`.
//! - [`symbols`] draws each client's symbols; [`target`] parses the URL and fetches `/symbols`;
//!   [`procstat`] reads CPU and memory of the tester and the gateway.

pub mod churn;
pub mod client;
pub mod config;
pub mod connect;
pub mod coordinator;
pub mod frame;
pub mod gateway_metrics;
pub mod procstat;
pub mod report;
pub mod scan;
pub mod stats;
pub mod storm;
pub mod symbols;
pub mod target;
pub mod worker;

use clap::Parser;

/// Exit codes: every SLO met, an SLO missed, bad usage or a run that could not be made.
pub const EXIT_OK: i32 = 0;
pub const EXIT_SLO_MISSED: i32 = 1;
pub const EXIT_ERROR: i32 = 2;

/// The `load-tests` command: parses the flags, runs, prints, returns the exit code.
pub fn main_with_args() -> i32 {
    let cli = match config::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_ERROR } else { EXIT_OK };
        }
    };
    if cli.worker {
        return match worker::process_main() {
            Ok(()) => EXIT_OK,
            Err(e) => {
                eprintln!("load-tests worker: error: {e:#}");
                EXIT_ERROR
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load-tests: error: {e}");
            return EXIT_ERROR;
        }
    };
    let json_path = cli.json.clone();
    let local = tokio::task::LocalSet::new();
    match local.block_on(&rt, coordinator::run(cli)) {
        Ok(report) => {
            print!("{}", report.summary());
            if let Some(path) = json_path {
                let written = serde_json::to_vec_pretty(&report)
                    .map_err(std::io::Error::other)
                    .and_then(|json| std::fs::write(&path, json));
                if let Err(e) = written {
                    eprintln!("load-tests: error: write {}: {e}", path.display());
                    return EXIT_ERROR;
                }
            }
            if report.slo.passed {
                EXIT_OK
            } else {
                EXIT_SLO_MISSED
            }
        }
        Err(e) => {
            eprintln!("load-tests: error: {e:#}");
            EXIT_ERROR
        }
    }
}
