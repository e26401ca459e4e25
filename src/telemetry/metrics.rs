//! What the pipeline has done, shared between its tasks: telegrams per source and result,
//! records per sink and granularity, the reducer's counters. Printed at shutdown and served
//! to Prometheus (see [`super::server`]); meters are never named here, so no meter id
//! can become a label.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use p1guard_conduct::{Counters, Granularity};
use p1guard_telegram::{ErrorKind, Telegram};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::log_limit::LogLimit;

/// How a telegram fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Framed, CRC valid (or none, where the version requires none), parsed.
    Ok,
    /// The CRC did not match.
    CrcError,
    /// A frame that did not parse: bad header, or cut short or too long.
    ParseError,
    /// An encrypted frame that failed to decrypt.
    DecryptionError,
    /// Parsed and reduced like [`Outcome::Ok`], but without the CRC its version requires
    /// (DSMR 4 or 5, e-MUCS): nothing verified it ([`Telegram::crc_missing`]).
    CrcMissing,
    /// Bytes that framed as a telegram without a CRC and without a single object: line
    /// noise, not a telegram.
    Noise,
}

impl Outcome {
    /// Every outcome, in the order of [`SourceMetrics::telegrams`].
    pub const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::CrcError,
        Outcome::ParseError,
        Outcome::DecryptionError,
        Outcome::CrcMissing,
        Outcome::Noise,
    ];

    /// The metric label.
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::CrcError => "crc_error",
            Outcome::ParseError => "parse_error",
            Outcome::DecryptionError => "decryption_error",
            Outcome::CrcMissing => "crc_missing",
            Outcome::Noise => "noise",
        }
    }

    /// The outcome of a frame that parsed.
    pub fn parsed(telegram: &Telegram<'_>) -> Outcome {
        if telegram.crc().is_none() && telegram.objects().len() == 0 {
            Outcome::Noise
        } else if telegram.crc_missing() {
            Outcome::CrcMissing
        } else {
            Outcome::Ok
        }
    }

    /// The outcome of a frame that failed with `kind`.
    pub fn of(kind: ErrorKind) -> Outcome {
        match kind {
            ErrorKind::CrcMismatch { .. } => Outcome::CrcError,
            ErrorKind::BadCipherFrame | ErrorKind::Decryption => Outcome::DecryptionError,
            ErrorKind::TooLong
            | ErrorKind::Truncated
            | ErrorKind::BadHeader
            | ErrorKind::BadObis
            | ErrorKind::BadValue => Outcome::ParseError,
        }
    }
}

/// One source's counters.
#[derive(Debug)]
pub struct SourceMetrics {
    /// The source's configured name.
    pub name: String,
    /// Telegrams by [`Outcome`].
    pub telegrams: [AtomicU64; Outcome::ALL.len()],
    /// Unix seconds of the last good telegram received (0 before the first).
    pub last_telegram: AtomicI64,
    /// Whether the device is open, the connection up, or the replay reading.
    pub connected: AtomicBool,
    /// One limit for the logs of everything bad the source brought, whichever task found it
    /// (a frame the source's framing rejected, a telegram or line the reduce task did).
    bad_input_logs: Mutex<LogLimit>,
}

impl SourceMetrics {
    /// Whether a bad frame, telegram or line of the source may be logged now (five a minute):
    /// `Some(how many were held back since the last one logged)`.
    pub fn may_log_bad_input(&self) -> Option<u64> {
        let mut limit = self
            .bad_input_logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        limit.allow(Instant::now())
    }

    /// Counts one telegram.
    pub fn count(&self, outcome: Outcome) {
        self.telegrams[outcome as usize].fetch_add(1, Relaxed);
    }

    /// Telegrams with `outcome` so far.
    pub fn telegrams(&self, outcome: Outcome) -> u64 {
        self.telegrams[outcome as usize].load(Relaxed)
    }
}

/// One sink's counters.
#[derive(Debug)]
pub struct SinkMetrics {
    /// The sink's configured name.
    pub name: String,
    /// Records written, by granularity.
    pub records: [AtomicU64; 4],
    /// Records given up (refused for good, or their reader gone), by granularity. Records
    /// not written by the end of the shutdown grace are not given up: they wait in the
    /// outbox.
    pub lost: [AtomicU64; 4],
    /// Records waiting in the sink's outbox.
    pub outbox_records: AtomicU64,
    /// Their bytes on disk.
    pub outbox_bytes: AtomicU64,
    /// Whether the sink's server answered its last check or write.
    pub up: AtomicBool,
}

impl SinkMetrics {
    /// The sink's outbox now holds `records` of `bytes`.
    pub fn set_outbox_depth(&self, records: u64, bytes: u64) {
        self.outbox_records.store(records, Relaxed);
        self.outbox_bytes.store(bytes, Relaxed);
    }
}

/// Every counter of one pipeline.
#[derive(Debug)]
pub struct Metrics {
    /// Per source, in configuration order; each source's task holds its own handle.
    pub sources: Vec<Arc<SourceMetrics>>,
    /// Per sink, in configuration order; each sink's task holds its own handle.
    pub sinks: Vec<Arc<SinkMetrics>>,
    /// The reducer's counters, as of its last batch.
    pub reducer: Mutex<Counters>,
    /// Frames waiting for the reduce task.
    pub frames_queued: AtomicI64,
}

impl Metrics {
    /// Zeroed counters for sources and sinks with these names.
    pub fn new<'a>(
        sources: impl IntoIterator<Item = &'a str>,
        sinks: impl IntoIterator<Item = &'a str>,
    ) -> Metrics {
        Metrics {
            sources: sources
                .into_iter()
                .map(|name| {
                    Arc::new(SourceMetrics {
                        name: name.to_owned(),
                        telegrams: Default::default(),
                        last_telegram: AtomicI64::new(0),
                        connected: AtomicBool::new(false),
                        bad_input_logs: Mutex::new(LogLimit::per_minute()),
                    })
                })
                .collect(),
            sinks: sinks
                .into_iter()
                .map(|name| {
                    Arc::new(SinkMetrics {
                        name: name.to_owned(),
                        records: Default::default(),
                        lost: Default::default(),
                        outbox_records: AtomicU64::new(0),
                        outbox_bytes: AtomicU64::new(0),
                        up: AtomicBool::new(false),
                    })
                })
                .collect(),
            reducer: Mutex::default(),
            frames_queued: AtomicI64::new(0),
        }
    }

    /// Records every sink gave up (refused for good, or their reader gone).
    pub fn not_written(&self) -> u64 {
        let lost = self.sinks.iter().flat_map(|sink| sink.lost.iter());
        lost.map(|n| n.load(Relaxed)).sum()
    }

    /// A few lines for the log at shutdown.
    pub fn summary(&self) -> String {
        let mut text = String::new();
        for source in &self.sources {
            let outcomes = Outcome::ALL.map(|o| format!("{} {}", o.name(), source.telegrams(o)));
            let last = jiff::Timestamp::from_second(source.last_telegram.load(Relaxed))
                .ok()
                .filter(|t| t.as_second() > 0)
                .map_or("never".to_owned(), |t| t.to_string());
            let _ = writeln!(
                text,
                "source {}: telegrams {}; last received {last}",
                source.name,
                outcomes.join(", ")
            );
        }
        let counters = self.reducer.lock().map(|c| c.clone()).unwrap_or_default();
        let _ = writeln!(
            text,
            "conduct: records {}; dropped by consent {}; missing {}; without meter id {}, bad time {}, out of order {}",
            per_granularity(&counters.records),
            per_granularity(&counters.withheld),
            per_granularity(&counters.missing),
            counters.without_meter_id,
            counters.bad_time,
            counters.out_of_order,
        );
        if counters.another_of_its_kind > 0 {
            let _ = writeln!(
                text,
                "conduct: M-Bus devices not read as another of their kind is on a lower channel: {}",
                counters.another_of_its_kind
            );
        }
        for sink in &self.sinks {
            let written = sink.records.each_ref().map(|n| n.load(Relaxed));
            let lost = sink.lost.each_ref().map(|n| n.load(Relaxed));
            let _ = write!(
                text,
                "sink {}: written {}",
                sink.name,
                per_granularity(&written)
            );
            if lost.iter().any(|n| *n > 0) {
                let _ = write!(text, "; NOT WRITTEN {}", per_granularity(&lost));
            }
            let waiting = sink.outbox_records.load(Relaxed);
            if waiting > 0 {
                let _ = write!(text, "; in the outbox {waiting}");
            }
            text.push('\n');
        }
        text.truncate(text.trim_end().len());
        text
    }
}

/// Encodes the counters on each scrape: the atomics stay the one source of truth.
impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let counter = |v: u64| ConstCounter::new(v);
        let mut family = encoder.encode_descriptor(
            "p1guard_telegrams",
            "Telegrams received, by source and result.",
            None,
            MetricType::Counter,
        )?;
        for source in &self.sources {
            for outcome in Outcome::ALL {
                let labels = [("source", source.name.as_str()), ("result", outcome.name())];
                counter(source.telegrams(outcome)).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "p1guard_last_telegram_timestamp_seconds",
            "When the source's last good telegram arrived (Unix seconds; 0: never).",
            None,
            MetricType::Gauge,
        )?;
        for source in &self.sources {
            let labels = [("source", source.name.as_str())];
            ConstGauge::new(source.last_telegram.load(Relaxed))
                .encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "p1guard_source_connected",
            "1 while the device is open, the connection up or the replay reading.",
            None,
            MetricType::Gauge,
        )?;
        for source in &self.sources {
            let labels = [("source", source.name.as_str())];
            ConstGauge::new(i64::from(source.connected.load(Relaxed)))
                .encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "p1guard_sink_up",
            "1 while the sink's server answered its last check or write.",
            None,
            MetricType::Gauge,
        )?;
        for sink in &self.sinks {
            let labels = [("sink", sink.name.as_str())];
            ConstGauge::new(i64::from(sink.up.load(Relaxed)))
                .encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "p1guard_queue_depth",
            "Frames waiting for the reduce task.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.frames_queued.load(Relaxed))
            .encode(family.encode_family(&[("queue", "frames")])?)?;
        let outbox = [
            (
                "p1guard_outbox_records",
                "Records waiting in each sink's outbox.",
                (|s: &SinkMetrics| s.outbox_records.load(Relaxed)) as fn(&SinkMetrics) -> u64,
            ),
            (
                "p1guard_outbox_bytes",
                "Bytes of the records waiting in each sink's outbox.",
                |s: &SinkMetrics| s.outbox_bytes.load(Relaxed),
            ),
        ];
        for (name, help, value) in outbox {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for sink in &self.sinks {
                let labels = [("sink", sink.name.as_str())];
                ConstGauge::new(value(sink) as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        let counters = self.reducer.lock().map(|c| c.clone()).unwrap_or_default();
        let conduct = [
            (
                "p1guard_conduct_records",
                "Records the code of conduct allowed, by granularity.",
                &counters.records,
            ),
            (
                "p1guard_conduct_withheld",
                "Readings consent did not allow, by granularity.",
                &counters.withheld,
            ),
            (
                "p1guard_conduct_missing",
                "Allowed boundaries no observation could fill, by granularity.",
                &counters.missing,
            ),
        ];
        for (name, help, counts) in conduct {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (granularity, count) in Granularity::ALL.iter().zip(counts) {
                let labels = [("granularity", granularity.name())];
                counter(*count).encode(family.encode_family(&labels)?)?;
            }
        }
        let sinks = [
            (
                "p1guard_sink_records",
                "Records written, by sink and granularity.",
            ),
            (
                "p1guard_sink_records_not_written",
                "Records given up (refused for good, reader gone), by sink and granularity.",
            ),
        ];
        for (index, (name, help)) in sinks.into_iter().enumerate() {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for sink in &self.sinks {
                let counts = if index == 0 {
                    &sink.records
                } else {
                    &sink.lost
                };
                for (granularity, count) in Granularity::ALL.iter().zip(counts) {
                    let labels = [
                        ("sink", sink.name.as_str()),
                        ("granularity", granularity.name()),
                    ];
                    counter(count.load(Relaxed)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// `billing 1, daily 1, quarter_hour 96`, or `none`.
pub fn per_granularity(counts: &[u64; 4]) -> String {
    let named = Granularity::ALL.iter().zip(counts).filter(|(_, n)| **n > 0);
    let listed: Vec<String> = named.map(|(g, n)| format!("{g} {n}")).collect();
    if listed.is_empty() {
        "none".into()
    } else {
        listed.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_index_their_counters() {
        let metrics = Metrics::new(["p1"], ["store"]);
        metrics.sources[0].count(Outcome::Ok);
        metrics.sources[0].count(Outcome::of(ErrorKind::CrcMismatch {
            expected: 1,
            computed: 2,
        }));
        metrics.sources[0].count(Outcome::of(ErrorKind::Truncated));
        let counts = Outcome::ALL.map(|o| metrics.sources[0].telegrams(o));
        assert_eq!(counts, [1, 1, 1, 0, 0, 0]);
        assert!(
            metrics.summary().contains(
                "source p1: telegrams ok 1, crc_error 1, parse_error 1, decryption_error 0"
            )
        );
    }

    /// Parses `text` (one telegram) and counts it as the reduce task does.
    fn count_parsed(source: &SourceMetrics, text: &[u8]) {
        let mut framer = p1guard_telegram::Framer::new(Default::default());
        framer.push(text);
        framer.finish();
        let frame = framer.next_frame().unwrap().unwrap();
        let mut parser = p1guard_telegram::Parser::new();
        source.count(Outcome::parsed(&parser.parse(&frame).unwrap()));
    }

    #[test]
    fn a_telegram_without_the_crc_its_version_requires_is_counted_apart() {
        let metrics = Metrics::new(["p1"], ["store"]);
        let source = &metrics.sources[0];
        let dsmr5 = b"/ISk5\\2MT382-1000\r\n\r\n1-3:0.2.8(50)\r\n1-0:1.8.1(000001.000*kWh)\r\n!";
        count_parsed(source, &[&dsmr5[..], b"\r\n"].concat());
        let crc = p1guard_telegram::crc16(dsmr5);
        count_parsed(
            source,
            &[&dsmr5[..], format!("{crc:04X}\r\n").as_bytes()].concat(),
        );
        count_parsed(
            source,
            b"/ISk5\\2MT382-1000\r\n\r\n1-0:1.8.1(00001.000*kWh)\r\n!\r\n",
        );
        assert_eq!(source.telegrams(Outcome::CrcMissing), 1);
        assert_eq!(
            source.telegrams(Outcome::Ok),
            2,
            "DSMR 5 with its CRC, DSMR 2.2"
        );
        assert!(metrics.summary().contains(
            "source p1: telegrams ok 2, crc_error 0, parse_error 0, decryption_error 0, crc_missing 1"
        ));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry(metrics)).unwrap();
        assert!(
            text.contains(r#"p1guard_telegrams_total{source="p1",result="crc_missing"} 1"#),
            "{text}"
        );
    }

    fn registry(metrics: Metrics) -> prometheus_client::registry::Registry {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(metrics));
        registry
    }
}
