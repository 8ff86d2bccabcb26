//! Exponential backoff with jitter, for reconnecting.

use std::time::Duration;

/// Reconnect delays: `initial`, doubling (by `multiplier`) up to `max`, each multiplied by a
/// random factor in `[1 - jitter, 1]` so that many phones that lost the server at once do not
/// all come back in the same instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// First delay: 250 ms.
    pub initial: Duration,
    /// Longest delay: 30 s.
    pub max: Duration,
    /// Growth per attempt: 2.
    pub multiplier: f64,
    /// Fraction of the delay that is random: 0.5.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The delay before reconnect attempt `attempt` (0-based), with `random` in `[0, 1)`.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let exponent = i32::try_from(attempt.min(64)).unwrap_or(64);
        let base = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        let capped = base.min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 - jitter * random.clamp(0.0, 1.0);
        Duration::from_secs_f64(capped * factor)
    }

    /// The delay before attempt `attempt`, with fresh randomness.
    pub fn next_delay(&self, attempt: u32) -> Duration {
        self.delay(attempt, fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_up_to_the_cap() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(250));
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(500));
        assert_eq!(b.delay(3, 0.0), Duration::from_secs(2));
        assert_eq!(b.delay(20, 0.0), Duration::from_secs(30));
        assert_eq!(b.delay(u32::MAX, 0.0), Duration::from_secs(30));
    }

    #[test]
    fn jitter_shortens_delays_by_at_most_its_fraction() {
        let b = Backoff::default();
        assert_eq!(b.delay(3, 0.999_999).as_millis(), 1000);
        for _ in 0..100 {
            let d = b.next_delay(2);
            assert!(
                d >= Duration::from_millis(500) && d <= Duration::from_secs(1),
                "{d:?}"
            );
        }
    }
}
