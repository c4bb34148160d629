//! Per-key rate limiting: a token bucket per API key, refilled at `rate` tokens a second
//! and holding at most one second's worth, shared by every request being served.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

pub struct RateLimiter {
    /// Requests per second per key; 0 turns limiting off.
    rate: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(rate: u32) -> RateLimiter {
        RateLimiter {
            rate: f64::from(rate),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`; `Err(seconds)` says how long until one is free.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(key) {
            buckets.insert(key.to_string(), (self.rate, now));
        }
        let Some((tokens, last)) = buckets.get_mut(key) else {
            return Ok(());
        };
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * self.rate).min(self.rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_past_the_rate_is_refused_then_recovers() {
        let limiter = RateLimiter::new(5);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(limiter.check("k", t0).is_ok());
        }
        assert_eq!(limiter.check("k", t0), Err(1));
        assert!(
            limiter.check("other", t0).is_ok(),
            "keys have their own buckets"
        );
        assert!(limiter.check("k", t0 + Duration::from_millis(250)).is_ok());
        assert!(RateLimiter::new(0).check("k", t0).is_ok());
    }
}
