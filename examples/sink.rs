//! A minimal loopback webhook receiver for rough measurements: answers 204 to every
//! request and prints, once a second, how many requests (and JSON array elements) arrived.
//!
//! `cargo run --release --example sink -- 127.0.0.1:9999`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9999".into());
    let server = Arc::new(tiny_http::Server::http(&addr).expect("bind"));
    let requests = Arc::new(AtomicU64::new(0));
    let events = Arc::new(AtomicU64::new(0));
    for _ in 0..8 {
        let (server, requests, events) = (server.clone(), requests.clone(), events.clone());
        std::thread::spawn(move || {
            for mut rq in server.incoming_requests() {
                let mut body = Vec::new();
                let _ = rq.as_reader().read_to_end(&mut body);
                let n = if body.first() == Some(&b'[') {
                    body.iter().filter(|&&b| b == b'{').count() as u64
                } else {
                    1
                };
                requests.fetch_add(1, Ordering::Relaxed);
                events.fetch_add(n, Ordering::Relaxed);
                let _ = rq.respond(tiny_http::Response::empty(204));
            }
        });
    }
    let mut last = (0, 0);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = (
            requests.load(Ordering::Relaxed),
            events.load(Ordering::Relaxed),
        );
        if now != last {
            println!(
                "requests {} (+{}/s) events {} (+{}/s)",
                now.0,
                now.0 - last.0,
                now.1,
                now.1 - last.1
            );
        }
        last = now;
    }
}
