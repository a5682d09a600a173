//! Exponential backoff with jitter.

use std::fmt::Display;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{error, warn};

use crate::error::ErrorClass;

pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Retry interval for errors that need an operator.
pub const OPERATOR_RETRY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    seed: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        Backoff { next: BACKOFF_MIN, seed: u64::from(nanos) | 1 }
    }
}

impl Backoff {
    /// The delay before the next attempt: doubles up to [`BACKOFF_MAX`], with +-25% jitter.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        self.jitter(base)
    }

    pub fn operator_delay(&mut self) -> Duration {
        self.jitter(OPERATOR_RETRY)
    }

    /// Logs a failed attempt of `what` as its class deserves and returns how long to wait
    /// before the next one; `None` for a fatal error, which ends the caller.
    pub fn after_failure(&mut self, class: ErrorClass, error: &dyn Display, what: &str) -> Option<Duration> {
        match class {
            ErrorClass::Fatal => None,
            ErrorClass::Retry => {
                let delay = self.next_delay();
                warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "{what} interrupted");
                Some(delay)
            }
            ErrorClass::Operator => {
                let delay = self.operator_delay();
                error!(error = %error, retry_in_ms = delay.as_millis() as u64, "{what} needs an operator");
                Some(delay)
            }
        }
    }

    /// After a healthy period: start small again.
    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    fn jitter(&mut self, base: Duration) -> Duration {
        // xorshift64: jitter needs no cryptographic randomness.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let quarter = base.as_millis() as u64 / 4;
        let offset = if quarter == 0 { 0 } else { self.seed % (2 * quarter + 1) };
        Duration::from_millis(base.as_millis() as u64 - quarter + offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= BACKOFF_MIN * 3 / 4 && first <= BACKOFF_MIN * 5 / 4, "{first:?}");
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d <= BACKOFF_MAX * 5 / 4, "{d:?}");
        }
        assert!(b.next_delay() >= BACKOFF_MAX * 3 / 4);
        b.reset();
        assert!(b.next_delay() <= BACKOFF_MIN * 5 / 4);
    }
}
