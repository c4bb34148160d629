//! What happens after an attempt: delivered, gone, retry at a time, or dead. Pure: the
//! clock and the jitter are parameters, so the rules are unit-tested exactly.

use std::time::Duration;

use time::format_description::well_known::Rfc2822;
use time::OffsetDateTime;

use crate::clock::Millis;

/// The most a `Retry-After` header can push an attempt back; a receiver cannot park a
/// delivery for days by answering `Retry-After: 999999999`.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

/// What one attempt produced, as far as the retry rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver answered with this status (`retry_after` parsed on 429/503 only).
    Status {
        code: u16,
        retry_after: Option<Duration>,
    },
    /// Timeout, connection refused, refused target, unreadable response…
    Error,
}

/// The next step for a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// 410: the subscriber unsubscribed; remove the hook.
    Gone,
    Retry {
        at: Millis,
    },
    Dead,
}

impl Verdict {
    /// Counts towards the hook's consecutive failures.
    pub fn is_failure(self) -> bool {
        matches!(self, Verdict::Retry { .. } | Verdict::Dead)
    }
}

/// Decides after attempt number `attempts` (1-based) of a delivery.
/// `jitter` in `[0, 1)` spreads retries by ±20 % so that a receiver that comes back is not
/// hit by every queued hook at the same instant.
pub fn decide(
    schedule: &[Duration],
    attempts: u32,
    outcome: Outcome,
    now: Millis,
    // Drawn only for a retry: a success does not pay for the random bytes.
    jitter: impl FnOnce() -> f64,
) -> Verdict {
    let retry_after = match outcome {
        Outcome::Status { code, .. } if (200..300).contains(&code) => return Verdict::Delivered,
        Outcome::Status { code: 410, .. } => return Verdict::Gone,
        Outcome::Status { retry_after, .. } => retry_after,
        Outcome::Error => None,
    };
    let Some(delay) = schedule.get(attempts.saturating_sub(1) as usize) else {
        return Verdict::Dead;
    };
    let jittered = delay.as_secs_f64() * (0.8 + 0.4 * jitter().clamp(0.0, 1.0));
    let mut wait_ms = (jittered * 1000.0).round() as i64;
    if let Some(ra) = retry_after {
        wait_ms = wait_ms.max(ra.min(RETRY_AFTER_CAP).as_millis() as i64);
    }
    Verdict::Retry { at: now + wait_ms }
}

/// `Retry-After`: delay-seconds or an HTTP date. Unparseable values are ignored.
pub fn parse_retry_after(value: &str, now: Millis) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = OffsetDateTime::parse(v, &Rfc2822).ok()?;
    let at_ms = (at.unix_timestamp_nanos() / 1_000_000) as i64;
    Some(Duration::from_millis(
        at_ms.saturating_sub(now).max(0) as u64
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn status(code: u16) -> Outcome {
        Outcome::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn success_gone_and_dead() {
        let s = [ms(100), ms(200)];
        assert_eq!(decide(&s, 1, status(204), 0, || 0.5), Verdict::Delivered);
        assert_eq!(decide(&s, 1, status(410), 0, || 0.5), Verdict::Gone);
        assert_eq!(decide(&s, 3, status(500), 0, || 0.5), Verdict::Dead);
        assert_eq!(decide(&[], 1, Outcome::Error, 0, || 0.5), Verdict::Dead);
    }

    #[test]
    fn only_a_retry_draws_its_jitter() {
        let s = [ms(100)];
        let never = || -> f64 { panic!("jitter drawn without a retry") };
        assert_eq!(decide(&s, 1, status(204), 0, never), Verdict::Delivered);
        assert_eq!(decide(&s, 1, status(410), 0, never), Verdict::Gone);
        assert_eq!(decide(&s, 2, status(500), 0, never), Verdict::Dead);
        let mut drawn = 0;
        let verdict = decide(&s, 1, status(500), 0, || {
            drawn += 1;
            0.5
        });
        assert_eq!((verdict, drawn), (Verdict::Retry { at: 100 }, 1));
    }

    #[test]
    fn retries_follow_the_schedule_with_bounded_jitter() {
        let s = [ms(1000), ms(10_000)];
        assert_eq!(
            decide(&s, 1, status(500), 0, || 0.5),
            Verdict::Retry { at: 1000 }
        );
        assert_eq!(
            decide(&s, 2, Outcome::Error, 5, || 0.0),
            Verdict::Retry { at: 8005 }
        );
        assert_eq!(
            decide(&s, 2, status(302), 0, || 1.0),
            Verdict::Retry { at: 12_000 }
        );
    }

    #[test]
    fn retry_after_is_a_floor_and_is_capped() {
        let s = [ms(100)];
        let ra = |secs| Outcome::Status {
            code: 429,
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(decide(&s, 1, ra(2), 0, || 0.5), Verdict::Retry { at: 2000 });
        assert_eq!(
            decide(&s, 1, ra(10_000_000), 0, || 0.5),
            Verdict::Retry { at: 3_600_000 }
        );
    }

    #[test]
    fn parses_retry_after_forms() {
        assert_eq!(parse_retry_after("120", 0), Some(Duration::from_secs(120)));
        let now = crate::clock::parse_rfc3339("2015-10-21T07:28:00Z").unwrap();
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", 0), None);
    }
}
