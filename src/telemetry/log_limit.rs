//! Rate-limited logging: a broken cable can produce a bad telegram every second for months,
//! and the log should say so a few times a minute, not every second.

use std::time::{Duration, Instant};

/// Allows `burst` messages per `window`; counts the rest so that the next allowed message can
/// say how many were suppressed.
#[derive(Debug)]
pub struct LogLimit {
    window: Duration,
    burst: u32,
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogLimit {
    /// Five messages a minute.
    pub fn per_minute() -> LogLimit {
        LogLimit::new(Duration::from_secs(60), 5)
    }

    /// `burst` messages per `window`.
    pub fn new(window: Duration, burst: u32) -> LogLimit {
        LogLimit {
            window,
            burst,
            window_start: None,
            logged: 0,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last allowed message)` if a message may be logged at `now`.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        let start = *self.window_start.get_or_insert(now);
        if now.duration_since(start) >= self.window {
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged < self.burst {
            self.logged += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_the_count_of_what_was_held_back() {
        let mut limit = LogLimit::new(Duration::from_secs(60), 2);
        let t0 = Instant::now();
        assert_eq!(limit.allow(t0), Some(0));
        assert_eq!(limit.allow(t0 + Duration::from_secs(1)), Some(0));
        assert_eq!(limit.allow(t0 + Duration::from_secs(2)), None);
        assert_eq!(limit.allow(t0 + Duration::from_secs(59)), None);
        assert_eq!(limit.allow(t0 + Duration::from_secs(60)), Some(2));
        assert_eq!(limit.allow(t0 + Duration::from_secs(61)), Some(0));
    }
}
