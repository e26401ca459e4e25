//! JSON lines on standard output, one record per line (architecture.md's record contract).

use std::io::{self, Write as _};

use anyhow::Context as _;
use p1guard_conduct::SinkRecord;

use super::{Sink, WriteError};

/// Writes records to stdout, a batch at a time. If the reader goes away (a closed pipe)
/// there is nobody left to deliver to: from then on every record is dropped, counted as not
/// written.
pub struct StdoutSink {
    lines: Vec<u8>,
    reader_gone: bool,
}

impl StdoutSink {
    /// A sink on the process's stdout.
    pub fn new() -> StdoutSink {
        StdoutSink {
            lines: Vec::new(),
            reader_gone: false,
        }
    }

    /// Serialises the whole batch first, so that a retry writes it afresh.
    fn write_lines(&mut self, records: &[SinkRecord]) -> io::Result<()> {
        self.lines.clear();
        for record in records {
            record.write_json(&mut self.lines)?;
            self.lines.push(b'\n');
        }
        // A pipe whose reader is slow blocks: let the runtime move other tasks meanwhile.
        tokio::task::block_in_place(|| {
            let mut out = io::stdout().lock();
            out.write_all(&self.lines)?;
            out.flush()
        })
    }
}

impl Default for StdoutSink {
    fn default() -> StdoutSink {
        StdoutSink::new()
    }
}

impl Sink for StdoutSink {
    async fn write(&mut self, records: &[SinkRecord]) -> Result<(), WriteError> {
        const GONE: &str = "stdout was closed by its reader";
        if self.reader_gone {
            return Err(WriteError::Gone(GONE.into()));
        }
        match self.write_lines(records) {
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => {
                self.reader_gone = true;
                Err(WriteError::Gone(GONE.into()))
            }
            result => Ok(result.context("writing to stdout")?),
        }
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        Ok(()) // every batch is flushed as it is written
    }
}
