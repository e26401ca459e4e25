//! Frames to records, the one way for the daemon's reduce task and `p1guard replay`: parse,
//! count how each frame fared, log bad telegrams at most five times a minute per source, and
//! apply the code of conduct.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use jiff::Timestamp;
use p1guard_conduct::{Arrival, Consent, Record, Reducer, normalise_equipment_id};
use p1guard_telegram::{Error, Frame, Parser};

use crate::sources::SourceId;
use crate::telemetry::metrics::{Metrics, Outcome, SourceMetrics};

/// How a source's receive clock judges its meters' clocks: [`Arrival::Direct`] for a serial
/// line or TCP stream, [`Arrival::Relayed`] for a broker, [`Arrival::Recorded`] for a replay.
pub type ArrivalOf = fn(Timestamp) -> Arrival;

/// A parser and the code of conduct's [`Reducer`], fed frames from any number of sources.
pub struct FrameReducer<C> {
    parser: Parser,
    reducer: Reducer<C>,
    metrics: Arc<Metrics>,
    /// Per source, in the order of [`Metrics::sources`].
    sources: Vec<Source>,
    /// The fleet partition of each meter (normalised id) read from one.
    partitions: HashMap<Box<[u8]>, u16>,
    /// The normalised id at hand, reused between telegrams.
    id: Vec<u8>,
}

/// What the frame reducer keeps per source.
struct Source {
    arrival: ArrivalOf,
    counters: Arc<SourceMetrics>,
}

impl<C: Consent> FrameReducer<C> {
    /// A frame reducer counting into `metrics`, whose sources are judged by `arrivals`
    /// (one per source, in the same order).
    ///
    /// # Panics
    ///
    /// If `arrivals` and `metrics` disagree on the number of sources.
    pub fn new(reducer: Reducer<C>, metrics: Arc<Metrics>, arrivals: Vec<ArrivalOf>) -> Self {
        assert_eq!(
            arrivals.len(),
            metrics.sources.len(),
            "one arrival per source"
        );
        let sources = arrivals
            .into_iter()
            .zip(&metrics.sources)
            .map(|(arrival, counters)| Source {
                arrival,
                counters: Arc::clone(counters),
            })
            .collect();
        FrameReducer {
            parser: Parser::new(),
            reducer,
            metrics,
            sources,
            partitions: HashMap::new(),
            id: Vec::new(),
        }
    }

    /// Parses `frame`, which source `source` received at `at` (from fleet partition
    /// `partition`, if any), counts how it fared, and adds the records the code of conduct
    /// makes of it to `records`. A frame that fails to parse is counted, logged
    /// (rate-limited) and returned as the error; a telegram kept without a bad line is
    /// logged the same way.
    pub fn reduce(
        &mut self,
        source: SourceId,
        frame: &Frame<'_>,
        at: Timestamp,
        partition: Option<u16>,
        records: &mut Vec<Record>,
    ) -> Result<(), Error> {
        let Source {
            arrival,
            counters: metrics,
        } = &mut self.sources[source.0];
        let telegram = match self.parser.parse(frame) {
            Ok(telegram) => telegram,
            Err(error) => {
                metrics.count(Outcome::of(error.kind));
                if let Some(suppressed) = metrics.may_log_bad_input() {
                    tracing::warn!(source = %metrics.name, suppressed, "skipped a bad telegram: {error}");
                }
                return Err(error);
            }
        };
        let outcome = Outcome::parsed(&telegram);
        metrics.count(outcome);
        if outcome == Outcome::Noise {
            return Ok(());
        }
        metrics.last_telegram.store(at.as_second(), Relaxed);
        if let Some(error) = telegram.line_errors().first()
            && let Some(suppressed) = metrics.may_log_bad_input()
        {
            tracing::warn!(source = %metrics.name, suppressed, "kept a telegram without its bad line: {error}");
        }
        if let Some(partition) = partition
            && let Some(id) = (telegram.equipment_id())
                .and_then(|sent| normalise_equipment_id(sent, &mut self.id))
            && self.partitions.get(id) != Some(&partition)
        {
            self.partitions.insert(id.into(), partition);
        }
        self.reducer.reduce(&telegram, arrival(at), records);
        Ok(())
    }

    /// The fleet partition meter `id` (normalised) was last read from.
    pub fn partition_of(&self, id: &[u8]) -> Option<u16> {
        self.partitions.get(id).copied()
    }

    /// Continues fleet partition `partition`'s meters from `states` (a snapshot taken by the
    /// worker that read the partition before); a state that cannot be read is logged and its
    /// meter starts afresh.
    pub fn restore(&mut self, partition: u16, states: &[(Vec<u8>, Vec<u8>)]) {
        let mut failures = 0;
        for (id, state) in states {
            match self.reducer.restore(id, state) {
                Ok(()) => {
                    self.partitions.insert(id[..].into(), partition);
                }
                Err(_) => failures += 1,
            }
        }
        if failures > 0 {
            tracing::warn!(
                partition,
                failures,
                "meter states in the partition's snapshot could not be read; those meters start afresh"
            );
        }
    }

    /// The code of conduct's reducer: its counters and meters.
    pub fn reducer(&self) -> &Reducer<C> {
        &self.reducer
    }

    /// The reducer, for saving its state.
    pub fn reducer_mut(&mut self) -> &mut Reducer<C> {
        &mut self.reducer
    }

    /// Copies the reducer's counters into [`Metrics::reducer`], for the metrics endpoint and
    /// the summary at shutdown.
    pub fn publish_counters(&self) {
        if let Ok(mut counters) = self.metrics.reducer.lock() {
            if counters.another_of_its_kind == 0 && self.reducer.counters().another_of_its_kind > 0
            {
                tracing::warn!(
                    "a meter carries two M-Bus devices of one kind (two gas meters, say): only the lower channel's is read, as records name a kind, not a channel"
                );
            }
            counters.clone_from(self.reducer.counters());
        }
    }
}

#[cfg(test)]
mod tests {
    use p1guard_conduct::{
        BillingCadence, Calendar, Granularity, IdentityKey, Level, MaxGaps, ReducerConfig, Timeline,
    };
    use p1guard_telegram::{ErrorKind, Framer, FramerConfig, crc16};

    use super::*;

    /// A DSMR 5 telegram of meter time `time` (`YYMMDDhhmmssS|W`), with its CRC.
    fn telegram(time: &str) -> Vec<u8> {
        let body = format!(
            "/ISk5\\2MT382-1000\r\n\r\n1-3:0.2.8(50)\r\n0-0:1.0.0({time})\r\n\
             0-0:96.1.1(4530303533303030303132333435363231)\r\n\
             1-0:1.8.1(000001.000*kWh)\r\n1-0:1.7.0(00.500*kW)\r\n!"
        );
        let crc = crc16(body.as_bytes());
        format!("{body}{crc:04X}\r\n").into_bytes()
    }

    fn frame_reducer(sources: &[&str]) -> FrameReducer<Timeline> {
        let config = ReducerConfig {
            calendar: Calendar::netherlands(BillingCadence::BiMonthly),
            finest: Granularity::Live,
            max_gaps: MaxGaps::default(),
        };
        let consent = Timeline::new(Level::Live, Vec::new());
        let reducer = Reducer::new(config, consent, IdentityKey::from_bytes([7; 32]));
        let metrics = Arc::new(Metrics::new(sources.iter().copied(), []));
        let arrivals = sources.iter().map(|_| Arrival::Recorded as ArrivalOf);
        FrameReducer::new(reducer, metrics, arrivals.collect())
    }

    #[test]
    fn frames_are_parsed_counted_and_reduced_per_source() {
        let mut reducer = frame_reducer(&["a", "b"]);
        let mut bad = telegram("260601120010S");
        let at_crc = bad.len() - 6;
        bad[at_crc] ^= 0x01; // a wrong CRC digit
        let stream = [telegram("260601120000S"), bad].concat();
        let mut framer = Framer::new(FramerConfig::default());
        framer.push(&stream);
        let at: Timestamp = "2026-06-01T10:00:05Z".parse().unwrap();
        let mut records = Vec::new();

        let good = framer.next_frame().unwrap().unwrap();
        assert_eq!(
            reducer.reduce(SourceId(1), &good, at, None, &mut records),
            Ok(())
        );
        assert!(!records.is_empty(), "a live record");
        let bad = framer.next_frame().unwrap().unwrap();
        let error = reducer
            .reduce(SourceId(1), &bad, at, None, &mut records)
            .unwrap_err();
        assert!(
            matches!(error.kind, ErrorKind::CrcMismatch { .. }),
            "{error}"
        );

        let metrics = &reducer.metrics;
        let b = &metrics.sources[1];
        assert_eq!(b.telegrams(Outcome::Ok), 1);
        assert_eq!(b.telegrams(Outcome::CrcError), 1);
        assert_eq!(b.last_telegram.load(Relaxed), at.as_second());
        assert_eq!(metrics.sources[0].telegrams(Outcome::Ok), 0);
        assert_eq!(reducer.reducer().counters().telegrams, 1);
        assert_eq!(
            metrics.reducer.lock().unwrap().telegrams,
            0,
            "not yet published"
        );
        reducer.publish_counters();
        assert_eq!(metrics.reducer.lock().unwrap().telegrams, 1);
    }

    #[test]
    fn bytes_that_frame_as_an_empty_telegram_without_crc_are_noise() {
        let mut reducer = frame_reducer(&["line"]);
        let mut framer = Framer::new(FramerConfig::default());
        framer.push(b"\x13/ABC5\r\n\r\n!\r\n");
        framer.finish();
        let frame = framer.next_frame().unwrap().unwrap();
        let at: Timestamp = "2026-06-01T10:00:05Z".parse().unwrap();
        let mut records = Vec::new();
        assert_eq!(
            reducer.reduce(SourceId(0), &frame, at, None, &mut records),
            Ok(())
        );
        let line = &reducer.metrics.sources[0];
        assert_eq!(
            (line.telegrams(Outcome::Noise), line.telegrams(Outcome::Ok)),
            (1, 0)
        );
        assert_eq!(
            line.last_telegram.load(Relaxed),
            0,
            "noise is not a telegram"
        );
        assert_eq!(reducer.reducer().counters().telegrams, 0);
    }
}
