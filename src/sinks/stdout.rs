//! JSON lines on standard output, one record per line (architecture.md's record contract).

use std::io::{self, BufWriter, Stdout, Write as _};

use p1guard_conduct::SinkRecord;

use super::Sink;

/// Writes records to stdout. If the reader goes away (a closed pipe) there is nobody left to
/// deliver to: that is logged once and later records are discarded.
pub struct StdoutSink {
    out: BufWriter<Stdout>,
    reader_gone: bool,
}

impl StdoutSink {
    /// A sink on the process's stdout.
    pub fn new() -> StdoutSink {
        StdoutSink {
            out: BufWriter::new(io::stdout()),
            reader_gone: false,
        }
    }

    fn write_lines(&mut self, records: &[SinkRecord<'_>]) -> io::Result<()> {
        for record in records {
            serde_json::to_writer(&mut self.out, record)?;
            self.out.write_all(b"\n")?;
        }
        self.out.flush()
    }
}

impl Sink for StdoutSink {
    async fn write(&mut self, records: &[SinkRecord<'_>]) -> anyhow::Result<()> {
        if self.reader_gone {
            return Ok(());
        }
        match self.write_lines(records) {
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => {
                tracing::warn!("stdout closed by its reader; records for it are discarded");
                self.reader_gone = true;
                Ok(())
            }
            result => Ok(result?),
        }
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.reader_gone {
            self.out.flush()?;
        }
        Ok(())
    }
}
