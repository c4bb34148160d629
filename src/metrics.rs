//! Counters and histograms for `GET /metrics` (Prometheus text format). Lock-free
//! atomics on the hot paths; the only lock guards the per-route request counts. Pure:
//! values come in from the API and the dispatchers; gauges read from the database are
//! passed to [`Metrics::render`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const ATTEMPT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 3600.0,
];

/// A cumulative histogram over fixed bucket bounds, in seconds.
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum of observations, in microseconds.
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        if let Some(i) = self.bounds.iter().position(|b| seconds <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str) {
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let total = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {total}");
    }
}

/// How an attempt ended, for `hookd_deliveries_total{result=…}`.
#[derive(Debug, Clone, Copy)]
pub enum DeliveryResult {
    Delivered,
    /// Failed, to be retried.
    Failed,
    Dead,
    /// 410: the hook was removed.
    Gone,
}

impl DeliveryResult {
    const ALL: [DeliveryResult; 4] = [
        DeliveryResult::Delivered,
        DeliveryResult::Failed,
        DeliveryResult::Dead,
        DeliveryResult::Gone,
    ];

    fn label(self) -> &'static str {
        match self {
            DeliveryResult::Delivered => "delivered",
            DeliveryResult::Failed => "failed",
            DeliveryResult::Dead => "dead",
            DeliveryResult::Gone => "gone",
        }
    }
}

/// Gauges read from the database when `/metrics` is scraped.
pub struct Gauges {
    pub outbox_pending: u64,
    pub hooks_by_status: Vec<(&'static str, u64)>,
}

pub struct Metrics {
    events_published: AtomicU64,
    deliveries: [AtomicU64; 4],
    pub attempt_duration: Histogram,
    pub publish_to_delivery: Histogram,
    dispatchers_busy: AtomicU64,
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            events_published: AtomicU64::new(0),
            deliveries: Default::default(),
            attempt_duration: Histogram::new(ATTEMPT_BUCKETS),
            publish_to_delivery: Histogram::new(LATENCY_BUCKETS),
            dispatchers_busy: AtomicU64::new(0),
            requests: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Metrics {
    pub fn published(&self, events: u64) {
        self.events_published.fetch_add(events, Ordering::Relaxed);
    }

    pub fn delivery(&self, result: DeliveryResult) {
        self.deliveries[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A dispatcher took (`true`) or finished (`false`) a job.
    pub fn busy(&self, taken: bool) {
        if taken {
            self.dispatchers_busy.fetch_add(1, Ordering::Relaxed);
        } else {
            self.dispatchers_busy.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// One answered HTTP request; `route` is the route's template, not the raw path, so
    /// ids do not blow up the label set.
    pub fn request(&self, route: &'static str, status: u16) {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *requests.entry((route, status)).or_insert(0) += 1;
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };
        single(
            &mut out,
            "hookd_events_published_total",
            "counter",
            "Events accepted by publish.",
            self.events_published.load(Ordering::Relaxed),
        );
        head(
            &mut out,
            "hookd_deliveries_total",
            "counter",
            "Delivery attempts by result (failed: will be retried).",
        );
        for r in DeliveryResult::ALL {
            let _ = writeln!(
                out,
                "hookd_deliveries_total{{result=\"{}\"}} {}",
                r.label(),
                self.deliveries[r as usize].load(Ordering::Relaxed)
            );
        }
        head(
            &mut out,
            "hookd_delivery_attempt_duration_seconds",
            "histogram",
            "Time of one delivery attempt, connect included.",
        );
        self.attempt_duration
            .render(&mut out, "hookd_delivery_attempt_duration_seconds");
        head(
            &mut out,
            "hookd_publish_to_delivery_seconds",
            "histogram",
            "From an event's publish to its successful delivery.",
        );
        self.publish_to_delivery
            .render(&mut out, "hookd_publish_to_delivery_seconds");
        single(
            &mut out,
            "hookd_outbox_pending",
            "gauge",
            "Deliveries not yet delivered, dead or cancelled.",
            gauges.outbox_pending,
        );
        head(&mut out, "hookd_hooks", "gauge", "Live hooks by status.");
        for (status, n) in &gauges.hooks_by_status {
            let _ = writeln!(out, "hookd_hooks{{status=\"{status}\"}} {n}");
        }
        single(
            &mut out,
            "hookd_dispatchers_busy",
            "gauge",
            "Dispatchers working on a delivery now.",
            self.dispatchers_busy.load(Ordering::Relaxed),
        );
        head(
            &mut out,
            "hookd_http_requests_total",
            "counter",
            "API requests by route and status.",
        );
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        for ((route, status), n) in requests.iter() {
            let _ = writeln!(
                out,
                "hookd_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out
    }
}

/// One metric with HELP, TYPE and a single unlabelled sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.published(3);
        m.delivery(DeliveryResult::Delivered);
        m.attempt_duration.observe(0.02);
        m.attempt_duration.observe(7.0);
        m.request("/v1/events", 202);
        let text = m.render(&Gauges {
            outbox_pending: 5,
            hooks_by_status: vec![("active", 2)],
        });
        assert!(text.contains("hookd_events_published_total 3\n"));
        assert!(text.contains("hookd_deliveries_total{result=\"delivered\"} 1\n"));
        assert!(text.contains("hookd_delivery_attempt_duration_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(text.contains("hookd_delivery_attempt_duration_seconds_bucket{le=\"10\"} 2\n"));
        assert!(text.contains("hookd_delivery_attempt_duration_seconds_count 2\n"));
        assert!(text.contains("hookd_outbox_pending 5\n"));
        assert!(text.contains("hookd_hooks{status=\"active\"} 2\n"));
        assert!(text.contains("hookd_http_requests_total{route=\"/v1/events\",status=\"202\"} 1\n"));
        assert!(text.contains("# TYPE hookd_dispatchers_busy gauge\n"));
    }
}
