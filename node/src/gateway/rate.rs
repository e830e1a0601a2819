//! Per-participant rate limits: a token bucket per served identity, on a clock the caller
//! passes in. Pure (tested on virtual time).
//!
//! Each participant may send `burst` messages at once and then `per_hour` an hour; a message
//! beyond that is answered `451 4.7.1` (the participant's node retries later, as for any
//! temporary failure). A message counts once however many recipients it has; the recipients
//! per message are capped by the SMTP session (`max_recipients`). The buckets live in memory:
//! a restart of the gateway refills them.

use std::collections::HashMap;

/// Rate-limit settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Messages an hour, sustained.
    pub per_hour: f64,
    /// Messages at once (the bucket's size).
    pub burst: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: f64,
}

/// The buckets of every participant.
#[derive(Debug)]
pub struct Limiter {
    rate: Rate,
    buckets: HashMap<String, Bucket>,
}

impl Limiter {
    /// Buckets filling at `rate`.
    pub fn new(rate: Rate) -> Self {
        Limiter {
            rate,
            buckets: HashMap::new(),
        }
    }

    /// Takes one message for `who` at time `now` (seconds): `Ok`, or `Err(seconds)` until
    /// the next one would be allowed.
    pub fn take(&mut self, who: &str, now: f64) -> Result<(), f64> {
        let Rate { per_hour, burst } = self.rate;
        let b = self.buckets.entry(who.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let per_sec = per_hour / 3600.0;
        b.tokens = (b.tokens + (now - b.at).max(0.0) * per_sec).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else if per_sec > 0.0 {
            Err((1.0 - b.tokens) / per_sec)
        } else {
            Err(f64::INFINITY)
        }
    }

    /// Gives back a message taken for `who` that was not sent after all (refused later in
    /// the same transaction).
    pub fn give_back(&mut self, who: &str) {
        if let Some(b) = self.buckets.get_mut(who) {
            b.tokens = (b.tokens + 1.0).min(self.rate.burst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_the_hourly_rate_each_participant_alone() {
        let mut l = Limiter::new(Rate {
            per_hour: 60.0,
            burst: 3.0,
        });
        for _ in 0..3 {
            assert!(l.take("alice", 0.0).is_ok());
        }
        let wait = l.take("alice", 0.0).unwrap_err();
        assert!((wait - 60.0).abs() < 1e-6, "one a minute: {wait}");
        assert!(l.take("bob", 0.0).is_ok(), "bob has his own bucket");
        assert!(l.take("alice", 30.0).is_err());
        assert!(l.take("alice", 60.0).is_ok());
        assert!(l.take("alice", 60.0).is_err());
        l.give_back("alice");
        assert!(l.take("alice", 60.0).is_ok());
        // A long pause refills to the burst, not beyond.
        for _ in 0..3 {
            assert!(l.take("alice", 100_000.0).is_ok());
        }
        assert!(l.take("alice", 100_000.0).is_err());
        let mut none = Limiter::new(Rate {
            per_hour: 0.0,
            burst: 0.0,
        });
        assert_eq!(none.take("x", 0.0), Err(f64::INFINITY));
    }
}
