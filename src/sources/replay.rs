//! Capture files, read one after the other, as fast as possible or paced by the meters'
//! clocks. A progress bar shows on stderr when it is a terminal.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use p1guard_telegram::OwnedFrame;
use serde::Deserialize;
use tokio::io::AsyncReadExt as _;
use tokio_util::sync::CancellationToken;

use super::{Closed, Framing};
use crate::config::Checker;
use crate::pace::{Pacer, Speed};

/// `[[sources]]` `type = "replay"` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    /// The captures, read one after the other.
    pub files: Vec<PathBuf>,
    /// `max` (default), `realtime`, or a factor.
    pub speed: Option<SpeedSetting>,
}

/// A speed as written: `"max"`, `"realtime"`, or a factor as a number or a string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SpeedSetting {
    /// `speed = 60` or `speed = 0.5`.
    Factor(f64),
    /// `speed = "max"`, `speed = "60"`.
    Text(String),
}

impl ReplayConfig {
    /// The files (each readable now) and the pace, every problem noted.
    pub fn check(self, checker: &mut Checker<'_>, at: &str) -> (Vec<PathBuf>, Speed) {
        let ReplayConfig { files, speed } = self;
        if files.is_empty() {
            checker.problem(at, "files is empty");
        }
        for file in &files {
            if let Err(error) = std::fs::metadata(file) {
                checker.problem(at, format!("{}: {error}", file.display()));
            }
        }
        let speed = speed.map(|speed| match speed {
            SpeedSetting::Factor(factor) => factor.to_string().parse::<Speed>(),
            SpeedSetting::Text(text) => text.parse::<Speed>(),
        });
        let speed = match speed {
            None => Speed::Max,
            Some(Ok(speed)) => speed,
            Some(Err(error)) => {
                checker.problem(at, error);
                Speed::Max
            }
        };
        (files, speed)
    }
}

/// The files and pace, for `check-config`.
pub fn describe(files: &[PathBuf], speed: Speed) -> String {
    let speed = match speed {
        Speed::Max => "as fast as possible".to_owned(),
        Speed::Factor(factor) => format!("{factor}× real time"),
    };
    format!("{} file(s), {speed}", files.len())
}

pub async fn run(
    name: &str,
    files: &[PathBuf],
    speed: Speed,
    mut framing: Framing,
    shutdown: &CancellationToken,
) -> Result<(), Closed> {
    let total = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let progress = progress_bar(total);
    let mut pacer = Pacer::new(speed);
    let mut pace = |frame: &OwnedFrame| pacer.frame_delay(&frame.as_frame(), Instant::now());
    let mut buf = vec![0u8; 64 * 1024];
    framing.set_connected(true);
    for file in files {
        let mut input = match tokio::fs::File::open(file).await {
            Ok(input) => input,
            Err(error) => {
                tracing::error!(source = %name, file = %file.display(), "cannot open: {error}");
                continue;
            }
        };
        loop {
            let read = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                read = input.read(&mut buf) => read,
            };
            let n = match read {
                Ok(n) => n,
                Err(error) => {
                    tracing::error!(source = %name, file = %file.display(), "cannot read: {error}");
                    0
                }
            };
            if n == 0 {
                framing.end_of_stream().await?;
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                pushed = framing.push_paced(&buf[..n], &mut pace) => pushed?,
            }
            progress.inc(n as u64);
        }
    }
    progress.finish_and_clear();
    framing.set_connected(false);
    Ok(())
}

fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}
