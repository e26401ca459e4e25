//! Capture files, read one after the other, as fast as possible or paced by the meters'
//! clocks. A progress bar shows on stderr when it is a terminal.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use p1guard_telegram::OwnedFrame;
use tokio::io::AsyncReadExt as _;
use tokio_util::sync::CancellationToken;

use super::{Closed, Framing};
use crate::pace::{Pacer, Speed};

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
