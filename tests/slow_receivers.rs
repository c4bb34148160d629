//! Slow receivers don't hurt others (issue 4, item 5): with 100 hooks pointing at a
//! receiver that accepts and never answers, a healthy hook's publish→arrival latency
//! stays within a few times its idle value.
//!
//! This is an isolation check, not a benchmark. What it guards: once a hook has failed
//! it goes to the slow lane, served by a quarter of the dispatchers, so hanging
//! receivers can hold at most those, each for one `--delivery-timeout` per attempt.
//! Without the lanes all 8 dispatchers would sit in 1 s timeouts and the healthy hook
//! would wait up to a second or more per event; the bound (10 × idle + 200 ms) is
//! generous so that a loaded machine does not fail it, yet far below that.
//!
//! It lives alone in its test binary so that no other test of this suite competes for
//! the CPU while it measures.

mod common;
mod faultkit;

use std::time::{Duration, Instant};

use common::{wait_until_or, Sink, TempDir};
use faultkit::{Hang, Server};
use serde_json::json;

const HANGING_HOOKS: usize = 100;
const SAMPLES: usize = 10;

/// Publishes one `ok.e` event and returns how long until the healthy sink had it.
fn latency(server: &Server, sink: &Sink, n: usize) -> Duration {
    let before = sink.count();
    let sent = Instant::now();
    server.publish("ok.e", &n.to_string());
    let reqs = wait_until_or(Duration::from_secs(10), || {
        let reqs = sink.requests();
        (reqs.len() > before).then_some(reqs)
    })
    .unwrap_or_else(|| panic!("the healthy hook's event {n} did not arrive within 10 s"));
    reqs[before].at.duration_since(sent)
}

/// `SAMPLES` latencies, 200 ms apart, sorted.
fn measure(server: &Server, sink: &Sink, first: usize) -> Vec<Duration> {
    let mut samples: Vec<Duration> = (0..SAMPLES)
        .map(|i| {
            let l = latency(server, sink, first + i);
            std::thread::sleep(Duration::from_millis(200));
            l
        })
        .collect();
    samples.sort();
    samples
}

#[test]
fn a_healthy_hook_keeps_its_latency_while_100_hooks_hang() {
    let sink = Sink::start();
    let hang = Hang::start();
    let dir = TempDir::new();
    // Retries every 200 ms for longer than the test, never disabled: the hanging hooks
    // keep failing throughout.
    let schedule = vec!["200ms"; 200].join(",");
    let server = Server::on(&dir.path.join("hookd.db"))
        .set("--dispatchers", "8")
        .set("--delivery-timeout", "1s")
        .set("--retry-schedule", &schedule)
        .set("--disable-after", "0")
        .start();
    server.hook(json!({"target_url": sink.url("/healthy"), "event": "ok.*"}));

    let idle = measure(&server, &sink, 0);

    let hanging: Vec<String> = (0..HANGING_HOOKS)
        .map(|i| {
            server
                .hook(json!({"target_url": hang.url(&format!("/hang/{i}")), "event": "hang.*"}))
                .0
        })
        .collect();
    server.publish("hang.e", "h");
    // Each hanging hook's first attempt uses any dispatcher (it is not known to fail
    // yet); wait until every one has failed once.
    let all_failed = wait_until_or(Duration::from_secs(40), || {
        hanging
            .iter()
            .all(|h| {
                server
                    .deliveries(h, None)
                    .first()
                    .is_some_and(|d| !d["attempts"].as_array().unwrap().is_empty())
            })
            .then_some(())
    });
    assert!(
        all_failed.is_some(),
        "not every hanging hook had failed once after 40 s"
    );

    let accepted_before = hang.accepted();
    let loaded = measure(&server, &sink, SAMPLES);
    let retried = hang.accepted() - accepted_before;
    // The hanging hooks were really occupying dispatchers while we measured.
    assert!(
        retried >= 2,
        "the hanging hooks made only {retried} attempts during the measurement"
    );

    let median = |s: &[Duration]| s[s.len() / 2];
    eprintln!(
        "healthy hook latency: idle median {:?} (max {:?}); with {HANGING_HOOKS} hanging hooks \
         median {:?} (max {:?}); {retried} hanging attempts meanwhile",
        median(&idle),
        idle[SAMPLES - 1],
        median(&loaded),
        loaded[SAMPLES - 1]
    );
    let bound = median(&idle) * 10 + Duration::from_millis(200);
    assert!(
        median(&loaded) <= bound,
        "the healthy hook's median latency rose from {:?} to {:?} (bound {bound:?}); all: {loaded:?}",
        median(&idle),
        median(&loaded)
    );
}
