//! p1guard's daemon and commands as a library: the binary (`main.rs`) only parses the command
//! line and calls [`commands::run`]; tests and benches can build the pipeline directly.
//!
//! The pure cores live in their own crates: `p1guard-telegram` (framing, CRC, parsing) and
//! `p1guard-conduct` (consent, the boundary reducer, sink policies). Everything here is the
//! thin async shell around them: sources, the reduce task, sinks, configuration, telemetry.
//! `ARCHITECTURE.md` at the repository's root draws the map.

pub mod backoff;
pub mod broker;
pub mod cli;
pub mod commands;
pub mod config;
pub mod decode;
pub mod fleet;
pub mod held;
pub mod hex;
pub mod identity_key;
pub mod outbox;
pub mod pace;
pub mod registry;
pub mod rights;
pub mod sinks;
pub mod sources;
pub mod state;
pub mod systemd;
pub mod telemetry;
pub mod topology;
