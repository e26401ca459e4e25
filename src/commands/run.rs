//! `p1guard run`: the daemon. Sources, code of conduct and sinks as the configuration says,
//! until the sources end or SIGTERM/SIGINT; then everything in flight is written and the
//! counters are printed.
//!
//! Exit status: 0 after a clean stop, 2 for an invalid configuration (systemd should not
//! restart into the same mistake), 1 for anything else (worth a restart): a source or sink
//! that cannot be set up at start, whichever it is, a task that failed, a second signal.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::cli::ConfigArg;
use crate::fleet::consent;
use crate::registry::{self, Purging, Registry};
use crate::sinks::{NoLongerLive, Stopping};
use crate::telemetry::metrics::Metrics;
use crate::topology::{self, config};
use crate::{identity_key, sources, systemd};

pub fn run(args: &ConfigArg) -> anyhow::Result<ExitCode> {
    let config = match config::load(&args.config) {
        Ok(config) => config,
        Err(problems) => {
            eprint!("p1guard: {}: {problems}", args.config.display());
            return Ok(ExitCode::from(2));
        }
    };
    init_logging();
    for warning in &config.warnings {
        tracing::warn!("{}: {warning}", args.config.display());
    }
    match serve(config) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) => {
            tracing::error!("{error:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn serve(config: config::Config) -> anyhow::Result<()> {
    // Sources are set up here, sinks opened by the pipeline: both before READY=1, and either
    // failing ends p1guard the same way.
    for source in &config.sources {
        sources::check(source).with_context(|| format!("source {}: setting up", source.name))?;
    }
    let key = identity_key::of(&config)?;
    let registry_path = Registry::path(config.registry.as_ref())?;
    let registry = Registry::open(&registry_path)?;
    let loaded = registry
        .load_into(&config.consent, 0)
        .with_context(|| format!("reading the consent registry {}", registry_path.display()))?;
    config.consent.shrink_to_fit();
    if config.purge_on_withdrawal {
        // What a withdrawal purged must not be stored when it arrives late (the registry's
        // follower moves this on each second); the rights commands judge by the levels as
        // recorded, and by what each withdrawal purged.
        config.consent.reach_back_through(jiff::Timestamp::now());
    }
    tracing::info!(
        meters = config.consent.listed(),
        "consent: the configuration's levels and the registry's events are in force"
    );
    let grace = config.shutdown_grace;
    let no_longer_live = NoLongerLive::default();
    let purging = config.purge_on_withdrawal.then(|| Purging {
        sinks: config.sinks.clone(),
        key: key.clone(),
        no_longer_live: no_longer_live.clone(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let metrics = Arc::new(Metrics::new(
        config.sources.iter().map(|s| s.name.as_str()),
        config.sinks.iter().map(|s| s.name.as_str()),
    ));
    let metrics = runtime.block_on(async {
        let stopping = Stopping::default();
        let shutdown = stopping.shutdown.clone();
        let signals = Signals::listen().context("cannot listen for SIGTERM/SIGINT")?;
        tokio::spawn(signals.stop(stopping.clone(), grace, metrics.clone()));
        // A fleet's consent events reach this registry through the fleet's consent stream.
        let taking_in = config.fleet().cloned().map(|fleet| {
            let (path, shutdown) = (registry_path.clone(), shutdown.clone());
            tokio::spawn(async move { consent::follow(fleet, &path, shutdown).await })
        });
        let follower = tokio::spawn(registry::follow(
            registry,
            config.consent.clone(),
            loaded,
            purging,
            shutdown.clone(),
        ));
        let ready = || {
            tracing::info!("running");
            systemd::ready(&shutdown);
        };
        let metrics = topology::run(config, key, metrics, stopping, &no_longer_live, ready).await;
        shutdown.cancel();
        let _ = follower.await;
        if let Some(taking_in) = taking_in {
            let _ = taking_in.await;
        }
        metrics
    })?;
    systemd::stopping();
    eprintln!("{}", metrics.summary());
    match metrics.not_written() {
        0 => Ok(()),
        lost => anyhow::bail!("{lost} record(s) were not written (see NOT WRITTEN above)"),
    }
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

/// How long after the grace a sink stuck in a write that cannot be cancelled is waited for.
const HARD_STOP: Duration = Duration::from_secs(3);

/// SIGTERM, SIGINT and SIGHUP (the terminal p1guard runs in was closed), caught from before
/// the pipeline starts: each stops it alike.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn listen() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }

    /// The first signal cancels `shutdown`: sources stop, what is in flight is written.
    /// After `grace` the sinks leave what they have not written in the outbox; a sink that
    /// still does not stop (blocked in a write nobody reads) is left behind [`HARD_STOP`]
    /// later, its records in the outbox, and the counters are printed as at any end. A
    /// second signal means the operator will not wait: exit at once.
    async fn stop(mut self, stopping: Stopping, grace: Duration, metrics: Arc<Metrics>) {
        let name = tokio::select! {
            () = stopping.shutdown.cancelled() => return,
            name = self.next() => name,
        };
        tracing::info!("{name}: stopping sources, writing what is in flight (for up to {grace:?})");
        systemd::stopping();
        stopping.shutdown.cancel();
        let name = tokio::select! {
            name = self.next() => name,
            () = tokio::time::sleep(grace) => {
                tracing::error!("the shutdown grace ({grace:?}) is over: what the sinks have not written stays in the outbox");
                stopping.give_up.cancel();
                tokio::select! {
                    name = self.next() => name,
                    () = tokio::time::sleep(HARD_STOP) => {
                        tracing::error!("a sink is stuck in a write (a stdout nobody reads?): exiting without it, its records in the outbox");
                        eprintln!("{}", metrics.summary());
                        std::process::exit(i32::from(metrics.not_written() > 0));
                    }
                }
            }
        };
        tracing::warn!("{name} again: exiting without waiting for the sinks");
        std::process::exit(1);
    }
}
