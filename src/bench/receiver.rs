//! The benchmark's loopback receiver: a raw `std::net` HTTP/1.1 server with keep-alive,
//! one thread per connection, that plays every peer hookd talks to during a run.
//!
//! - A **delivery** (it carries `webhook-id`) has its signature checked with the hook's
//!   secret through `crate::sign` (never a second HMAC implementation), each event in
//!   it is recorded with its arrival time, and it is answered 204 — or 503 while the
//!   receiver is [`Mode::Unavailable`].
//! - A **handshake** (it carries `X-Hook-Secret`) is answered 200 with the code echoed
//!   back in the same header, so hooks can be verified or re-activated.
//! - **Anything else** is answered 202 with a body shaped like hookd's publish
//!   response: this is the no-op server the load generator's bare ceiling is measured
//!   against.
//!
//! It must stay cheap: the benchmark reports how far hookd is from what this receiver
//! takes on its own, so nothing here may sleep, log per request or allocate per event
//! beyond the record it keeps.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;

use serde::Deserialize;

use super::http::{fingerprint, Buffered, Head};

/// Largest allowed difference between a delivery's `webhook-timestamp` and our clock, as
/// Standard Webhooks receivers check it (seconds).
const TIMESTAMP_TOLERANCE: i64 = 300;

const NO_CONTENT: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";
const UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
/// One result of a publish, the size hookd answers with.
const NOOP_RESULT: &str = r#"{"id":"evt_01KBENCH0000000000000000000","deliveries":1}"#;

/// How deliveries are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 204, after the signature check.
    Accept = 0,
    /// 503 without `Retry-After`: the receiver is down.
    Unavailable = 1,
}

/// One event of one accepted delivery.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// The hook, as numbered by [`Receiver::register`].
    pub hook: u32,
    /// Its `sequence` field.
    pub seq: u64,
    /// The fingerprint of its `event_id`.
    pub event: u64,
    /// When it arrived ([`super::now_ns`]).
    pub at_ns: u64,
}

/// Counters since the last [`Receiver::reset`].
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// Events in accepted deliveries (an array counts each element).
    pub events: u64,
    /// Delivery requests accepted.
    pub deliveries: u64,
    /// Deliveries answered 503.
    pub refused: u64,
    pub handshakes: u64,
    /// Deliveries whose signature (or timestamp, or hook) did not check out.
    pub bad_signatures: u64,
    /// Malformed requests and broken connections.
    pub protocol_errors: u64,
    /// When the last event arrived.
    pub last_ns: u64,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    mode: AtomicU8,
    /// hook id → (number, secret).
    hooks: RwLock<HashMap<String, (u32, String)>>,
    arrivals: Mutex<Vec<Arrival>>,
    events: AtomicU64,
    deliveries: AtomicU64,
    refused: AtomicU64,
    handshakes: AtomicU64,
    noop: AtomicU64,
    bad_signatures: AtomicU64,
    protocol_errors: AtomicU64,
    last_ns: AtomicU64,
    /// The first few reasons a delivery was refused, for the report.
    bad_samples: Mutex<Vec<String>>,
    /// Whether accepted events are kept (off while measuring a bare ceiling, whose
    /// traffic is not checked).
    keep: std::sync::atomic::AtomicBool,
}

/// One event in a delivery body; other fields are ignored.
#[derive(Deserialize)]
struct Item<'a> {
    #[serde(borrow)]
    hook_id: Cow<'a, str>,
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    sequence: u64,
}

impl Receiver {
    /// Binds `127.0.0.1:0` and starts accepting.
    pub fn start() -> io::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        shared.keep.store(true, Ordering::SeqCst);
        let accept_shared = shared.clone();
        thread::Builder::new()
            .name("bench-rx-accept".into())
            .spawn(move || accept(listener, accept_shared))?;
        Ok(Receiver { addr, shared })
    }

    /// The target URL for hook number `n` (the path only helps a human reading logs).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// Makes a hook's deliveries verifiable; returns its number.
    pub fn register(&self, hook_id: &str, secret: &str) -> u32 {
        let mut hooks = self.shared.hooks.write().unwrap_or_else(|p| p.into_inner());
        let n = hooks.len() as u32;
        hooks
            .entry(hook_id.to_string())
            .or_insert((n, secret.to_string()))
            .0
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Whether accepted events are recorded (they always are counted).
    pub fn keep_arrivals(&self, keep: bool) {
        self.shared.keep.store(keep, Ordering::SeqCst);
    }

    /// Forgets every hook, record and counter; back to [`Mode::Accept`].
    pub fn reset(&self) {
        self.shared
            .hooks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.clear();
        self.set_mode(Mode::Accept);
        self.keep_arrivals(true);
    }

    /// Forgets every record and counter, and keeps the hooks: a new phase against the
    /// same hooks.
    pub fn clear(&self) {
        let s = &self.shared;
        s.arrivals.lock().unwrap_or_else(|p| p.into_inner()).clear();
        s.bad_samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        for c in [
            &s.events,
            &s.deliveries,
            &s.refused,
            &s.handshakes,
            &s.noop,
            &s.bad_signatures,
            &s.protocol_errors,
            &s.last_ns,
        ] {
            c.store(0, Ordering::SeqCst);
        }
    }

    /// Events accepted so far (cheap: one atomic load).
    pub fn events(&self) -> u64 {
        self.shared.events.load(Ordering::Acquire)
    }

    pub fn counts(&self) -> Counts {
        let s = &self.shared;
        Counts {
            events: s.events.load(Ordering::SeqCst),
            deliveries: s.deliveries.load(Ordering::SeqCst),
            refused: s.refused.load(Ordering::SeqCst),
            handshakes: s.handshakes.load(Ordering::SeqCst),
            bad_signatures: s.bad_signatures.load(Ordering::SeqCst),
            protocol_errors: s.protocol_errors.load(Ordering::SeqCst),
            last_ns: s.last_ns.load(Ordering::SeqCst),
        }
    }

    /// Every event recorded since the last call (or reset), in arrival order.
    pub fn take_arrivals(&self) -> Vec<Arrival> {
        std::mem::take(
            &mut *self
                .shared
                .arrivals
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    pub fn bad_samples(&self) -> Vec<String> {
        self.shared
            .bad_samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let mut n = 0u64;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        n += 1;
        let conn_shared = shared.clone();
        let spawned = thread::Builder::new()
            .name(format!("bench-rx-{n}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                if serve(&conn_shared, stream).is_err() {
                    conn_shared.protocol_errors.fetch_add(1, Ordering::Relaxed);
                }
            });
        if spawned.is_err() {
            shared.protocol_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Serves one connection until the peer closes it.
fn serve(shared: &Shared, stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut io = Buffered::new(stream);
    let mut body = Vec::new();
    let mut noop_cache: HashMap<usize, Vec<u8>> = HashMap::new();
    loop {
        let Some(raw) = io.read_head()? else {
            return Ok(());
        };
        let head = Head::parse(&raw)?;
        body.clear();
        io.read_body(head.framing()?, &mut body)?;
        let handshake;
        let response: &[u8] = if let Some(code) = head.get("x-hook-secret") {
            shared.handshakes.fetch_add(1, Ordering::Relaxed);
            handshake =
                format!("HTTP/1.1 200 OK\r\nX-Hook-Secret: {code}\r\nContent-Length: 0\r\n\r\n");
            handshake.as_bytes()
        } else if head.get("webhook-id").is_some() {
            if shared.mode.load(Ordering::Relaxed) == Mode::Unavailable as u8 {
                shared.refused.fetch_add(1, Ordering::Relaxed);
                UNAVAILABLE
            } else {
                shared.deliver(&head, &body);
                NO_CONTENT
            }
        } else {
            shared.noop.fetch_add(1, Ordering::Relaxed);
            let n = if body.first() == Some(&b'[') {
                count(&body, br#"{"type""#)
            } else {
                0
            };
            noop_cache.entry(n).or_insert_with(|| noop_response(n))
        };
        io.stream.write_all(response)?;
        if head.closes() {
            return Ok(());
        }
    }
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| w == &needle)
        .count()
}

/// A 202 like hookd's: one result, or an array of `n` (when `n` > 0).
fn noop_response(n: usize) -> Vec<u8> {
    let body = if n == 0 {
        NOOP_RESULT.to_string()
    } else {
        format!("[{}]", vec![NOOP_RESULT; n].join(","))
    };
    format!(
        "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl Shared {
    /// Checks and records one delivery.
    fn deliver(&self, head: &Head, body: &[u8]) {
        let at_ns = super::now_ns();
        let items = match parse_items(body) {
            Ok(items) if !items.is_empty() => items,
            Ok(_) => return self.bad("an empty delivery".into()),
            Err(e) => return self.bad(format!("a delivery body that is not JSON: {e}")),
        };
        let hook_id = items[0].hook_id.as_ref();
        if items.iter().any(|i| i.hook_id != hook_id) {
            return self.bad("a delivery mixing hooks".into());
        }
        let (hook, secret) = {
            let hooks = self.hooks.read().unwrap_or_else(|p| p.into_inner());
            match hooks.get(hook_id) {
                Some((n, s)) => (*n, s.clone()),
                None => return self.bad(format!("a delivery for unknown hook {hook_id}")),
            }
        };
        let verdict = verify(head, body, &secret);
        if let Err(why) = verdict {
            // Still recorded as arrived: a bad signature is its own failure, and
            // counting the event as lost as well would only blur the report.
            self.bad(format!("hook {hook_id}: {why}"));
        }
        let n = items.len() as u64;
        if self.keep.load(Ordering::Relaxed) {
            let mut arrivals = self.arrivals.lock().unwrap_or_else(|p| p.into_inner());
            arrivals.extend(items.iter().map(|i| Arrival {
                hook,
                seq: i.sequence,
                event: fingerprint(i.event_id.as_bytes()),
                at_ns,
            }));
        }
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        self.last_ns.fetch_max(at_ns, Ordering::Release);
        self.events.fetch_add(n, Ordering::Release);
    }

    fn bad(&self, why: String) {
        self.bad_signatures.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.bad_samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() < 5 {
            samples.push(why);
        }
    }
}

fn parse_items(body: &[u8]) -> Result<Vec<Item<'_>>, serde_json::Error> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        serde_json::from_slice(body)
    } else {
        serde_json::from_slice(body).map(|one| vec![one])
    }
}

/// The Standard Webhooks check, as a receiver's library does it: one of the
/// space-separated `v1,…` entries must equal the signature under the hook's secret, and
/// the timestamp must be recent.
fn verify(head: &Head, body: &[u8], secret: &str) -> Result<(), String> {
    let id = head.get("webhook-id").unwrap_or("");
    let timestamp: i64 = head
        .get("webhook-timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or("no valid webhook-timestamp")?;
    let signatures = head
        .get("webhook-signature")
        .ok_or("no webhook-signature")?;
    let now = crate::clock::now_ms() / 1000;
    if (now - timestamp).abs() > TIMESTAMP_TOLERANCE {
        return Err(format!(
            "webhook-timestamp {timestamp} is {}s off",
            now - timestamp
        ));
    }
    let expected =
        crate::sign::signature(secret, id, timestamp, body).ok_or("the secret is malformed")?;
    if signatures
        .split(' ')
        .any(|s| crate::sign::constant_time_eq(s.as_bytes(), expected.as_bytes()))
    {
        Ok(())
    } else {
        Err(format!("signature {signatures:?} does not verify"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_batched_bodies() {
        let one = br#"{"hook_id":"hook_1","event_id":"evt_1","event":"x","sequence":3}"#;
        let items = parse_items(one).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].sequence, 3);
        let many = br#"[{"hook_id":"h","event_id":"a","sequence":1},{"hook_id":"h","event_id":"b","sequence":2}]"#;
        assert_eq!(parse_items(many).unwrap().len(), 2);
    }

    #[test]
    fn a_noop_array_answer_has_one_result_per_event() {
        let r = String::from_utf8(noop_response(3)).unwrap();
        assert_eq!(super::super::http::ids_in(r.as_bytes()).count(), 3);
        assert_eq!(count(br#"[{"type":"a"},{"type":"b"}]"#, br#"{"type""#), 2);
    }
}
