//! `p1guard run`: the daemon. Sources, code of conduct and sinks as the configuration says,
//! until the sources end or SIGTERM/SIGINT; then everything in flight is written and the
//! counters are printed.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::cli::RunArgs;
use crate::{config, identity_key, pipeline, systemd};

pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let config = match config::load(&args.config) {
        Ok(config) => config,
        Err(problems) => {
            eprint!("p1guard: {}: {problems}", args.config.display());
            return Ok(ExitCode::from(2));
        }
    };
    init_logging();
    let key_path = match &config.identity_key {
        Some(path) => path.clone(),
        None => identity_key::default_path()?,
    };
    let key = identity_key::load_or_create(&key_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let metrics = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let ready = || {
            tracing::info!("running");
            systemd::ready(&shutdown);
        };
        let metrics = pipeline::run(config, key, shutdown.clone(), ready).await;
        shutdown.cancel();
        metrics
    })?;
    systemd::stopping();
    eprintln!("{}", metrics.summary());
    Ok(ExitCode::SUCCESS)
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`); colours only on a terminal, so
/// journald and log files get plain text.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT");
        return;
    };
    let name = tokio::select! {
        () = shutdown.cancelled() => return,
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!("{name}: stopping sources, writing what is in flight");
    systemd::stopping();
    shutdown.cancel();
}
