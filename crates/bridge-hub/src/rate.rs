//! The per-connection token bucket. Time is passed in, so it is tested without clocks.

use tokio::time::Instant;

use crate::RateLimit;

/// What the bucket decided for one incoming frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Serve the frame.
    Accept,
    /// Drop it and answer `rate_limited`.
    Refuse,
    /// Refused too often: close the connection with 1008.
    Close,
}

#[derive(Debug)]
pub(crate) struct TokenBucket {
    tokens: f64,
    last: Instant,
    refused: u32,
}

impl TokenBucket {
    pub(crate) fn new(limit: &RateLimit, now: Instant) -> Self {
        Self {
            tokens: f64::from(limit.burst),
            last: now,
            refused: 0,
        }
    }

    pub(crate) fn admit(&mut self, limit: &RateLimit, now: Instant) -> Admission {
        let burst = f64::from(limit.burst);
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * limit.per_second).min(burst);
        if self.tokens >= burst {
            // The client stayed under its rate long enough: forget earlier refusals.
            self.refused = 0;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Admission::Accept
        } else {
            self.refused = self.refused.saturating_add(1);
            if self.refused > limit.max_refused {
                Admission::Close
            } else {
                Admission::Refuse
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn admit_n(
        bucket: &mut TokenBucket,
        limit: &RateLimit,
        now: Instant,
        n: usize,
    ) -> Vec<Admission> {
        (0..n).map(|_| bucket.admit(limit, now)).collect()
    }

    #[test]
    fn default_bucket_accepts_a_burst_of_200_then_refuses() {
        let limit = RateLimit::default();
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(&limit, t0);
        let results = admit_n(&mut bucket, &limit, t0, 201);
        assert!(results[..200].iter().all(|a| *a == Admission::Accept));
        assert_eq!(results[200], Admission::Refuse);
    }

    #[test]
    fn default_bucket_refills_100_frames_per_second() {
        let limit = RateLimit::default();
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(&limit, t0);
        admit_n(&mut bucket, &limit, t0, 200);
        let t1 = t0 + Duration::from_millis(500);
        let results = admit_n(&mut bucket, &limit, t1, 51);
        assert!(results[..50].iter().all(|a| *a == Admission::Accept));
        assert_eq!(results[50], Admission::Refuse);
    }

    #[test]
    fn persistent_flooding_closes_after_max_refused_frames() {
        let limit = RateLimit::default();
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(&limit, t0);
        admit_n(&mut bucket, &limit, t0, 200);
        let refused = admit_n(&mut bucket, &limit, t0, 100);
        assert!(refused.iter().all(|a| *a == Admission::Refuse));
        assert_eq!(bucket.admit(&limit, t0), Admission::Close);
    }

    #[test]
    fn a_full_refill_forgives_earlier_refusals() {
        let limit = RateLimit::default();
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(&limit, t0);
        admit_n(&mut bucket, &limit, t0, 250);
        // Two seconds at 100/s refill the 200-frame bucket completely.
        let t1 = t0 + Duration::from_secs(2);
        let results = admit_n(&mut bucket, &limit, t1, 300);
        assert!(results[..200].iter().all(|a| *a == Admission::Accept));
        assert!(results[200..].iter().all(|a| *a == Admission::Refuse));
    }
}
