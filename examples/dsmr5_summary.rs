//! The yardstick for `p1guard parse --summary`: the same totals from the `dsmr5` crate
//! (frames, frames whose every line it read, lines it rejected), so the two can be timed side
//! by side as whole processes over the same capture:
//!
//!     cargo build --release --bin p1guard --example dsmr5_summary
//!     target/release/p1guard parse --summary CAPTURE
//!     target/release/examples/dsmr5_summary CAPTURE
//!
//! It reads the file through a buffer, as `p1guard parse` does, and feeds `dsmr5`'s byte
//! reader, which checks each frame's CRC; every object is parsed.

use std::io::{BufReader, Read};

fn main() -> std::io::Result<()> {
    let path = std::env::args_os()
        .nth(1)
        .expect("usage: dsmr5_summary CAPTURE");
    let file = BufReader::with_capacity(1 << 16, std::fs::File::open(path)?);
    let (mut frames, mut valid, mut rejected_lines, mut bad_frames) = (0u64, 0u64, 0u64, 0u64);
    for readout in dsmr5::Reader::new(file.bytes()) {
        frames += 1;
        let Ok(readout) = readout else {
            bad_frames += 1;
            continue;
        };
        let Ok(telegram) = readout.to_telegram() else {
            bad_frames += 1;
            continue;
        };
        let rejected = telegram.objects().filter(Result::is_err).count() as u64;
        rejected_lines += rejected;
        valid += u64::from(rejected == 0);
    }
    println!("frames           {frames}");
    println!("valid            {valid}");
    println!("bad frames       {bad_frames}");
    println!("rejected lines   {rejected_lines}");
    Ok(())
}
