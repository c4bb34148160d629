//! Load: publishers that write prepared requests over raw keep-alive connections
//! (closed loop, or paced at a fixed rate), and the bare delivery client — hookd's own
//! ureq agent and send path, aimed at the receiver without hookd in between.
//!
//! Nothing here decides what is measured or checked; it reports what it sent, what was
//! accepted (by event id fingerprint) and when.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use super::http::{fingerprint, ids_in, prepare, Conn};

/// A request body to publish, prepared once.
pub struct Body {
    /// The whole request: head and body.
    pub request: Vec<u8>,
    /// A tag per event, in the order the events (and the response's results) come; the
    /// scenario says what it means (usually: which hook the event is for).
    pub tags: Vec<u32>,
}

/// The JSON of one published event of type `ty`.
pub fn event_json(ty: &str) -> String {
    // `type` first: the no-op server counts events by `{"type"`.
    format!(
        r#"{{"type":"{ty}","resource_id":"bench","data":{{"amount":1234,"currency":"eur","note":"hookd bench"}}}}"#
    )
}

/// A publish of one event, or of an array of them when `array` is set.
pub fn publish_body(addr: SocketAddr, token: &str, events: &[(String, u32)], array: bool) -> Body {
    let json = if array {
        let items: Vec<String> = events.iter().map(|(ty, _)| event_json(ty)).collect();
        format!("[{}]", items.join(","))
    } else {
        event_json(&events[0].0)
    };
    Body {
        request: prepare("POST", addr, "/v1/events", token, Some(&json)),
        tags: events.iter().map(|(_, t)| *t).collect(),
    }
}

/// A closed-loop run: each client sends, waits for the answer, and sends again.
pub struct Plan<'a> {
    pub addr: SocketAddr,
    pub clients: usize,
    /// Taken round-robin across all clients.
    pub bodies: &'a [Body],
    /// No request starts after this.
    pub until: Instant,
    /// No more events than this are sent.
    pub max_events: Option<u64>,
    /// While more than `.0` accepted events are not yet delivered (per `.1`), wait:
    /// keeps a delivery test's queue bounded, so it measures delivery, not a backlog.
    pub window: Option<(u64, &'a (dyn Fn() -> u64 + Sync))>,
    /// Keep the accepted events (off for the ceiling runs).
    pub record: bool,
    /// Counts accepted events as they come, for whoever watches the run.
    pub progress: Option<&'a AtomicU64>,
    /// Stops the run once this says so, given the events accepted so far.
    pub enough: Option<&'a (dyn Fn(u64) -> bool + Sync)>,
}

/// What a run sent and got back.
#[derive(Default)]
pub struct Outcome {
    /// From the first request to the last answer.
    pub elapsed: Duration,
    pub first_send_ns: u64,
    pub requests: u64,
    /// Events accepted (2xx).
    pub events: u64,
    /// Requests answered with anything but 2xx.
    pub refused: u64,
    /// Requests that failed on the wire.
    pub errors: u64,
    pub first_problem: Option<String>,
    /// Accepted events: (fingerprint of the event id, tag).
    pub accepted: Vec<(u64, u32)>,
    /// Round-trip time of every request, microseconds.
    pub latencies_us: Vec<u32>,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn merge(&mut self, other: Outcome) {
        self.requests += other.requests;
        self.events += other.events;
        self.refused += other.refused;
        self.errors += other.errors;
        if self.first_problem.is_none() {
            self.first_problem = other.first_problem;
        }
        self.accepted.extend(other.accepted);
        self.latencies_us.extend(other.latencies_us);
    }
}

/// Runs a closed-loop plan to its end.
pub fn closed_loop(plan: &Plan) -> Outcome {
    let next_body = AtomicUsize::new(0);
    let reserved = AtomicU64::new(0);
    let accepted = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let total = Mutex::new(Outcome::default());
    let start = Instant::now();
    let first_send_ns = super::now_ns();
    thread::scope(|scope| {
        for i in 0..plan.clients {
            let (next_body, reserved, accepted, stop, total) =
                (&next_body, &reserved, &accepted, &stop, &total);
            thread::Builder::new()
                .name(format!("bench-pub-{i}"))
                .spawn_scoped(scope, move || {
                    let out = client(plan, next_body, reserved, accepted, stop);
                    total.lock().unwrap_or_else(|p| p.into_inner()).merge(out);
                })
                .expect("spawn a publisher thread");
        }
    });
    let mut out = total.into_inner().unwrap_or_else(|p| p.into_inner());
    out.elapsed = start.elapsed();
    out.first_send_ns = first_send_ns;
    out
}

fn client(
    plan: &Plan,
    next_body: &AtomicUsize,
    reserved: &AtomicU64,
    accepted: &AtomicU64,
    stop: &AtomicBool,
) -> Outcome {
    let mut out = Outcome::default();
    let mut conn = match Conn::connect(plan.addr) {
        Ok(c) => c,
        Err(e) => {
            out.errors += 1;
            out.first_problem = Some(format!("connect: {e}"));
            return out;
        }
    };
    'requests: loop {
        if stop.load(Ordering::Relaxed) || Instant::now() >= plan.until {
            break;
        }
        if plan
            .enough
            .is_some_and(|f| f(accepted.load(Ordering::Relaxed)))
        {
            stop.store(true, Ordering::Relaxed);
            break;
        }
        let body = &plan.bodies[next_body.fetch_add(1, Ordering::Relaxed) % plan.bodies.len()];
        let n = body.tags.len() as u64;
        if let Some(max) = plan.max_events {
            if reserved.fetch_add(n, Ordering::Relaxed) + n > max {
                stop.store(true, Ordering::Relaxed);
                break;
            }
        }
        if let Some((window, delivered)) = plan.window {
            while accepted.load(Ordering::Relaxed).saturating_sub(delivered()) > window {
                if Instant::now() >= plan.until {
                    break 'requests;
                }
                thread::sleep(Duration::from_micros(200));
            }
        }
        let sent = Instant::now();
        let status = conn.round_trip(&body.request);
        out.latencies_us
            .push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        out.requests += 1;
        match status {
            Ok(s) if (200..300).contains(&s) => {
                let mut k = 0;
                for id in ids_in(&conn.body) {
                    if plan.record {
                        let tag = body.tags.get(k).copied().unwrap_or(u32::MAX);
                        out.accepted.push((fingerprint(id), tag));
                    }
                    k += 1;
                }
                out.events += k as u64;
                accepted.fetch_add(k as u64, Ordering::Relaxed);
                if let Some(p) = plan.progress {
                    p.fetch_add(k as u64, Ordering::Relaxed);
                }
            }
            Ok(s) => {
                out.refused += 1;
                if out.first_problem.is_none() {
                    out.first_problem = Some(format!(
                        "answered {s}: {}",
                        String::from_utf8_lossy(&conn.body[..conn.body.len().min(300)])
                    ));
                }
                // Back off a little on 429/503 instead of spinning on them.
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => {
                out.errors += 1;
                if out.first_problem.is_none() {
                    out.first_problem = Some(format!("request failed: {e}"));
                }
                match Conn::connect(plan.addr) {
                    Ok(c) => conn = c,
                    Err(_) => break,
                }
            }
        }
    }
    out
}

/// One paced publish: when it was written, and what came back.
pub struct Sent {
    pub event: u64,
    pub sent_ns: u64,
    pub commit_us: u32,
}

/// What a paced run sent.
#[derive(Default)]
pub struct Paced {
    pub sent: Vec<Sent>,
    /// Publishes written more than a millisecond after their planned time (the
    /// generator fell behind: the rate it offered was lower than asked).
    pub late: u64,
    pub refused: u64,
    pub errors: u64,
    pub first_problem: Option<String>,
    pub elapsed: Duration,
}

/// Publishes `count` single events at `rate` per second from `senders` connections:
/// publish `i` is written at `start + i / rate` by sender `i % senders` (open loop, so a
/// slow answer does not lower the offered rate unless every sender is waiting).
pub fn paced(addr: SocketAddr, body: &Body, rate: f64, count: u64, senders: usize) -> Paced {
    let start = Instant::now() + Duration::from_millis(20);
    let total = Mutex::new(Paced::default());
    thread::scope(|scope| {
        for k in 0..senders {
            let total = &total;
            thread::Builder::new()
                .name(format!("bench-pace-{k}"))
                .spawn_scoped(scope, move || {
                    let mut out = Paced::default();
                    let mut conn = match Conn::connect(addr) {
                        Ok(c) => c,
                        Err(e) => {
                            out.errors += 1;
                            out.first_problem = Some(format!("connect: {e}"));
                            total.lock().unwrap_or_else(|p| p.into_inner()).absorb(out);
                            return;
                        }
                    };
                    let mut i = k as u64;
                    while i < count {
                        let due = start + Duration::from_secs_f64(i as f64 / rate);
                        let now = Instant::now();
                        if due > now {
                            thread::sleep(due - now);
                        } else if now - due > Duration::from_millis(1) {
                            out.late += 1;
                        }
                        let sent_ns = super::now_ns();
                        let sent = Instant::now();
                        match conn.round_trip(&body.request) {
                            Ok(s) if (200..300).contains(&s) => {
                                let commit_us = sent.elapsed().as_micros() as u32;
                                for id in ids_in(&conn.body) {
                                    out.sent.push(Sent {
                                        event: fingerprint(id),
                                        sent_ns,
                                        commit_us,
                                    });
                                }
                            }
                            Ok(s) => {
                                out.refused += 1;
                                out.first_problem.get_or_insert(format!("answered {s}"));
                            }
                            Err(e) => {
                                out.errors += 1;
                                out.first_problem
                                    .get_or_insert(format!("request failed: {e}"));
                                match Conn::connect(addr) {
                                    Ok(c) => conn = c,
                                    Err(_) => break,
                                }
                            }
                        }
                        i += senders as u64;
                    }
                    total.lock().unwrap_or_else(|p| p.into_inner()).absorb(out);
                })
                .expect("spawn a paced sender");
        }
    });
    let mut out = total.into_inner().unwrap_or_else(|p| p.into_inner());
    out.elapsed = start.elapsed();
    out
}

impl Paced {
    fn absorb(&mut self, other: Paced) {
        self.sent.extend(other.sent);
        self.late += other.late;
        self.refused += other.refused;
        self.errors += other.errors;
        if self.first_problem.is_none() {
            self.first_problem = other.first_problem;
        }
    }
}

/// The bare delivery ceiling: `threads` threads sending signed deliveries of `body`
/// through hookd's own agent and send path (`dispatch::client`) to `url` for
/// `duration`. Returns requests answered 2xx per second.
pub fn delivery_ceiling(
    url: &str,
    secret: &str,
    body: &[u8],
    threads: usize,
    duration: Duration,
) -> f64 {
    let policy = crate::target::Policy {
        allow_private: true,
        ..Default::default()
    };
    // Built as hookd builds its dispatchers' clients: one per thread.
    let client = crate::dispatch::client::Client {
        timeout: Duration::from_secs(10),
        policy,
    };
    let ok = AtomicU64::new(0);
    let start = Instant::now();
    let until = start + duration;
    thread::scope(|scope| {
        for t in 0..threads {
            let (agent, ok) = (client.dispatcher_agent(), &ok);
            thread::Builder::new()
                .name(format!("bench-client-{t}"))
                .spawn_scoped(scope, move || {
                    let mut n = 0u64;
                    while Instant::now() < until {
                        // What a dispatcher does per attempt: a delivery id, a timestamp,
                        // the signature, the POST.
                        let msg_id = format!("dlv_ceiling_{t}_{n}");
                        n += 1;
                        let timestamp = crate::clock::now_ms() / 1000;
                        let signature = crate::sign::header(&[secret], &msg_id, timestamp, body);
                        let headers = [
                            ("webhook-id", msg_id),
                            ("webhook-timestamp", timestamp.to_string()),
                            ("webhook-signature", signature),
                        ];
                        let result = crate::dispatch::client::send(&agent, url, &headers, body);
                        if matches!(result.attempt.status_code, Some(c) if (200..300).contains(&c))
                        {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
                .expect("spawn a ceiling client");
        }
    });
    ok.load(Ordering::SeqCst) as f64 / start.elapsed().as_secs_f64()
}
