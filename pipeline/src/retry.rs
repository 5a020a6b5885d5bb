//! Error classes and the retry policy.
//!
//! Every error in dbmux is either *transient* (a connection dropped, a server
//! restarting, a lock wait timeout: retry with backoff and the pipeline catches
//! up) or *definite* (bad configuration, a wrong server setting, data the target
//! refuses: retrying cannot help, so stop loudly and tell the operator what to do).

use std::time::Duration;

/// How to react to an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Transient,
    Definite,
}

/// Implemented by every module's error enum.
pub trait Classify {
    fn class(&self) -> ErrorClass;
    fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }
}

/// Exponential backoff with a cap and ±20 % jitter so several appliers do not
/// hammer a returning server in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    attempts: u32,
}

impl Backoff {
    pub const DEFAULT_INITIAL: Duration = Duration::from_millis(100);
    pub const DEFAULT_MAX: Duration = Duration::from_secs(10);

    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            current: initial,
            attempts: 0,
        }
    }

    /// Delay before the next attempt; grows ×2 up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        self.attempts += 1;
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        // Cheap jitter without an RNG dependency: vary by the sub-second clock.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let jitter = 0.8 + (nanos % 400) as f64 / 1000.0;
        base.mul_f64(jitter)
    }

    /// Attempts made since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
        self.attempts = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Self::DEFAULT_INITIAL, Self::DEFAULT_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let d: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(80) && d[0] <= Duration::from_millis(120));
        assert!(d[1] >= Duration::from_millis(160) && d[1] <= Duration::from_millis(240));
        assert!(d[4] <= Duration::from_millis(480));
        assert_eq!(b.attempts(), 5);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }
}
