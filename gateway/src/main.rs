//! `gateway`: parse the configuration, set up logging, bind, and run until SIGINT or SIGTERM (a
//! second one during the drain exits at once). SIGHUP reloads the token file, the JWT key and
//! the certificate: see `server`.

use std::io::Write as _;
use std::process::ExitCode;

use gateway::config::ConfigError;
use gateway::Config;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// Exit status for a bad flag or environment value (sysexits' EX_USAGE).
const EX_USAGE: u8 = 64;
/// Exit status when the listen address cannot be bound (sysexits' EX_UNAVAILABLE).
const EX_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let config = match Config::load(std::env::args_os()) {
        Ok(config) => config,
        Err(ConfigError::Flags(e)) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(EX_USAGE) } else { ExitCode::SUCCESS };
        }
        Err(e @ ConfigError::File { .. }) => {
            eprintln!("gateway: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if let Err(message) = config.validate() {
        eprintln!("gateway: {message}");
        return ExitCode::from(EX_USAGE);
    }
    // The token file and JWT key are read here first, so that a bad one exits 64 by name.
    if let Err(e) = gateway::access::AccessConfig::load(&gateway::server::access_sources(&config)) {
        eprintln!("gateway: {e}");
        return ExitCode::from(EX_USAGE);
    }
    // So is the certificate and its key.
    if let Err(e) = gateway::server::load_tls(&config) {
        eprintln!("gateway: {e}");
        return ExitCode::from(EX_USAGE);
    }
    let feed = match gateway::feed::from_config(&config) {
        Ok(feed) => feed,
        Err(e) => {
            eprintln!("gateway: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or journald gets plain text to grep.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    raise_open_file_limit();

    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async move {
        let listen = config.listen;
        let listener = match TcpListener::bind(listen).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("gateway: cannot listen on {listen}: {e}. Is another gateway running? Choose another address with --listen or GATEWAY_LISTEN.");
                return ExitCode::from(EX_UNAVAILABLE);
            }
        };
        let metrics = match config.metrics_listen {
            None => None,
            Some(addr) => match TcpListener::bind(addr).await {
                Ok(listener) => Some(listener),
                Err(e) => {
                    eprintln!("gateway: cannot listen on {addr} (--metrics-listen): {e}. Choose another address with --metrics-listen or GATEWAY_METRICS_LISTEN.");
                    return ExitCode::from(EX_UNAVAILABLE);
                }
            },
        };
        let addr = listener.local_addr().expect("bound listener has an address");
        let (http, ws) = if config.tls_cert.is_some() { ("https", "wss") } else { ("http", "ws") };
        println!("gateway: serving on {http}://{addr}/ (WebSocket: {ws}://{addr}/ws)");
        if let Some(metrics) = &metrics {
            let addr = metrics.local_addr().expect("bound listener has an address");
            println!("gateway: metrics on http://{addr}/metrics");
        }
        let _ = std::io::stdout().flush();
        let listeners = gateway::server::Listeners { main: listener, metrics };
        match gateway::server::serve(listeners, config, feed, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gateway: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Exit status after a second stop signal: 128 + the signal's number, as a shell reports a
/// process the signal killed.
const EXIT_SIGINT: i32 = 128 + libc::SIGINT;
const EXIT_SIGTERM: i32 = 128 + libc::SIGTERM;

/// Completes on the first SIGINT or SIGTERM, which starts the graceful stop. From then on a
/// second one exits the process at once (130 or 143), without waiting for the sessions still
/// closing: an operator who presses Ctrl-C twice, or an orchestrator that signals again, means
/// it.
async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(
        signal = which,
        "stop requested: closing every session (send SIGINT or SIGTERM again to exit at once)"
    );
    // Runs on the same runtime while `run` drains the sessions.
    tokio::spawn(async move {
        let (which, status) = tokio::select! {
            _ = term.recv() => ("SIGTERM", EXIT_SIGTERM),
            _ = int.recv() => ("SIGINT", EXIT_SIGINT),
        };
        tracing::warn!(
            signal = which,
            status,
            "second stop signal during the drain: exiting now; sessions still open lose their connection without a close frame"
        );
        std::process::exit(status);
    });
}

/// Each session is a file descriptor: take the hard limit, not the (often 1024) soft one.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid rlimit for both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!(
                    "could not raise the open-file limit; sessions are capped by the soft limit"
                );
            }
        }
    }
}
