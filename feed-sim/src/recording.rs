//! Recordings: what `feed-sim` publishes, one quote per line (NDJSON), and their replay.
//!
//! **The format** (docs/deployment.md, "Recordings"): UTF-8 text, one JSON object per line,
//! each exactly a NATS payload of the contract's section 5, the quote object of section 3
//! without `type`:
//!
//! ```text
//! {"symbol":"AAPL","seq":1042,"bid":187.25,"ask":187.27,"bid_size":200,"ask_size":500,"last":187.26,"last_size":50,"volume":1203450,"ts":1763775600124456789}
//! ```
//!
//! Lines are in publishing order; `ts` (ns since the Unix epoch) gives the spacing a replay
//! keeps. Per symbol, `seq` rises. Blank lines are skipped. A capture from another system
//! converts to it line by line. A line that does not decode stops the replay with its number.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use proto::PayloadQuote;

/// Writes what is published, one payload per line.
pub struct Recorder {
    path: PathBuf,
    out: BufWriter<File>,
    pub lines: u64,
}

impl Recorder {
    pub fn create(path: &Path) -> Result<Recorder> {
        let file = File::create(path)
            .with_context(|| format!("--record {}: cannot create the file", path.display()))?;
        Ok(Recorder { path: path.to_path_buf(), out: BufWriter::new(file), lines: 0 })
    }

    pub fn write(&mut self, payload: &[u8]) -> Result<()> {
        self.out
            .write_all(payload)
            .and_then(|()| self.out.write_all(b"\n"))
            .with_context(|| format!("--record {}: write failed", self.path.display()))?;
        self.lines += 1;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().with_context(|| format!("--record {}: write failed", self.path.display()))
    }
}

/// One recorded quote: its decoded form and its line, as published.
pub struct Recorded {
    pub symbol: String,
    pub precision: u8,
    pub quote: proto::Quote,
    pub line: String,
}

/// Reads a recording line by line.
pub struct Replay {
    path: PathBuf,
    lines: std::io::Lines<BufReader<File>>,
    line_number: u64,
}

impl Replay {
    pub fn open(path: &Path) -> Result<Replay> {
        let file = File::open(path)
            .with_context(|| format!("--replay {}: cannot open the file", path.display()))?;
        Ok(Replay { path: path.to_path_buf(), lines: BufReader::new(file).lines(), line_number: 0 })
    }

    /// The next quote, `None` at the end.
    pub fn next_quote(&mut self) -> Result<Option<Recorded>> {
        loop {
            let Some(line) = self.lines.next() else { return Ok(None) };
            self.line_number += 1;
            let line = line.with_context(|| {
                format!("--replay {}: line {}: cannot read", self.path.display(), self.line_number)
            })?;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let PayloadQuote { symbol, precision, quote } = match proto::decode_payload(line.as_bytes()) {
                Ok(decoded) => decoded,
                Err(e) => bail!(
                    "--replay {}: line {} is not a quote payload: {e} (the format is in docs/deployment.md, \"Recordings\")",
                    self.path.display(),
                    self.line_number
                ),
            };
            return Ok(Some(Recorded {
                symbol: symbol.into_owned(),
                precision,
                quote,
                line: line.to_string(),
            }));
        }
    }
}
