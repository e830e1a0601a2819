//! The `Clock` seam: where the node reads the time.
//!
//! Everything that decides by time (the queue's retry schedule, expiry, Date headers) takes a
//! time value or a [`Clock`], so tests can run those decisions on virtual time.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time, as Unix seconds.
pub trait Clock: Send + Sync + 'static {
    /// Seconds since the Unix epoch.
    fn now(&self) -> f64;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> f64 {
        unix_now()
    }
}

/// Seconds since the Unix epoch from the system clock (0 if the clock is before 1970).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A clock that moves only when told to: for tests of time-driven decisions.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: Mutex<f64>,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: f64) -> Self {
        Self {
            now: Mutex::new(start),
        }
    }

    /// Moves the clock forward by `secs`.
    pub fn advance(&self, secs: f64) {
        *self.now.lock().expect("clock lock") += secs;
    }

    /// Sets the clock to `t`.
    pub fn set(&self, t: f64) {
        *self.now.lock().expect("clock lock") = t;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> f64 {
        *self.now.lock().expect("clock lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(100.0);
        assert_eq!(c.now(), 100.0);
        c.advance(2.5);
        assert_eq!(c.now(), 102.5);
        c.set(7.0);
        assert_eq!(c.now(), 7.0);
        assert!(SystemClock.now() > 1.7e9);
    }
}
