//! Replay speed: telegrams spaced out by their meter times, scaled.

use std::str::FromStr;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use p1guard_telegram::{Frame, Parser};

/// How fast a replay runs, relative to the meters' clocks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// No waiting.
    Max,
    /// Meter seconds per wall-clock second: 1 is real time.
    Factor(f64),
}

impl Speed {
    /// The slowest factor: a meter second every 1000 s.
    pub const SLOWEST: f64 = 0.001;
    /// The fastest factor short of `max`.
    pub const FASTEST: f64 = 1e9;
}

impl FromStr for Speed {
    type Err = String;

    fn from_str(text: &str) -> Result<Speed, String> {
        match text {
            "max" => Ok(Speed::Max),
            "realtime" => Ok(Speed::Factor(1.0)),
            _ => match text.parse::<f64>() {
                Ok(factor) if (Speed::SLOWEST..=Speed::FASTEST).contains(&factor) => {
                    Ok(Speed::Factor(factor))
                }
                _ => Err(format!(
                    "speed {text:?}: expected max, realtime or a factor from {} to {}",
                    Speed::SLOWEST,
                    Speed::FASTEST
                )),
            },
        }
    }
}

/// When each telegram is due: the first sets the origin, later ones follow at the speed's
/// pace. Pure; the caller sleeps.
#[derive(Debug)]
pub struct Pacer {
    speed: Speed,
    origin: Option<(Timestamp, Instant)>,
    /// Reads the meter time of frames; used only when paced.
    parser: Parser,
}

impl Pacer {
    /// A pacer at `speed`.
    pub fn new(speed: Speed) -> Pacer {
        Pacer {
            speed,
            origin: None,
            parser: Parser::new(),
        }
    }

    /// How long to wait from `now` before passing on `frame`, by its meter time. A frame
    /// that does not parse, or has no meter time in UTC, is not waited for; at
    /// [`Speed::Max`] nothing is, and no frame is parsed.
    pub fn frame_delay(&mut self, frame: &Frame<'_>, now: Instant) -> Option<Duration> {
        if self.speed == Speed::Max {
            return None;
        }
        let at = self.parser.parse(frame).ok()?.time()?.utc().ok()?;
        self.delay(at, now)
    }

    /// How long to wait from `now` before passing on a telegram of meter time `at`.
    pub fn delay(&mut self, at: Timestamp, now: Instant) -> Option<Duration> {
        let Speed::Factor(factor) = self.speed else {
            return None;
        };
        let (start, started) = *self.origin.get_or_insert((at, now));
        let meter_seconds = (at.as_second() - start.as_second()).max(0) as f64;
        let due = started + Duration::from_secs_f64(meter_seconds / factor);
        due.checked_duration_since(now).filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds_by_name_and_factor() {
        assert_eq!("max".parse::<Speed>(), Ok(Speed::Max));
        assert_eq!("realtime".parse::<Speed>(), Ok(Speed::Factor(1.0)));
        assert_eq!("60".parse::<Speed>(), Ok(Speed::Factor(60.0)));
        assert!("0".parse::<Speed>().is_err());
        assert!(
            "1e-300".parse::<Speed>().is_err(),
            "would overflow a Duration"
        );
        assert!("fast".parse::<Speed>().is_err());
    }

    #[test]
    fn telegrams_are_due_at_their_meter_time_over_the_factor() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let now = Instant::now();
        let mut pacer = Pacer::new(Speed::Factor(10.0));
        assert_eq!(pacer.delay(t("2026-03-29T10:00:00Z"), now), None);
        assert_eq!(
            pacer.delay(t("2026-03-29T10:00:10Z"), now),
            Some(Duration::from_secs(1))
        );
        let later = now + Duration::from_secs(2);
        assert_eq!(pacer.delay(t("2026-03-29T10:00:10Z"), later), None);
        assert_eq!(
            Pacer::new(Speed::Max).delay(t("2026-03-29T10:00:00Z"), now),
            None
        );
    }

    #[test]
    fn frames_are_due_by_the_meter_time_they_carry() {
        let stream = [
            "/ISk5\\2MT382-1000\r\n\r\n0-0:1.0.0(260329120000S)\r\n!",
            "/ISk5\\2MT382-1000\r\n\r\n0-0:1.0.0(260329120020S)\r\n!",
            "garbage /ISk5\\2MT382-1000\r\n\r\n0-0:1.0.0(no time)\r\n!",
        ]
        .map(|telegram| {
            let crc = p1guard_telegram::crc16(telegram.as_bytes());
            format!("{telegram}{crc:04X}\r\n")
        })
        .concat();
        let mut framer = p1guard_telegram::Framer::new(Default::default());
        framer.push(stream.as_bytes());
        let mut frames = Vec::new();
        while let Some(frame) = framer.next_frame() {
            frames.push(p1guard_telegram::OwnedFrame::from(frame.unwrap()));
        }
        let now = Instant::now();
        let mut pacer = Pacer::new(Speed::Factor(10.0));
        let delays = frames
            .iter()
            .map(|frame| pacer.frame_delay(&frame.as_frame(), now))
            .collect::<Vec<_>>();
        assert_eq!(delays, [None, Some(Duration::from_secs(2)), None]);
        let mut max = Pacer::new(Speed::Max);
        assert_eq!(max.frame_delay(&frames[1].as_frame(), now), None);
    }
}
