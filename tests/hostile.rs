//! Hostile clients (issue 3, §4): the weak points of tiny_http 0.12 that hookd defends
//! against itself (a huge declared `Content-Length`, clients that stop half way or
//! trickle, heads of any size, a body left unread on a kept-alive connection) and the
//! socket read timeout that frees what a stalled client holds. After each, the server
//! must still answer `/healthz`, and normal clients must not wait on hostile ones.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The `--read-timeout` the hostile tests run with.
const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// How long after its last byte a stalled client may still be connected.
const CUT_OFF: Duration = Duration::from_secs(4);

fn start() -> Hookd {
    Hookd::options().arg("--read-timeout").arg("1s").start()
}

/// `start()` with only two handler contexts, so that a few stalled clients could hold
/// them all.
fn start_with_two_handlers() -> Hookd {
    Hookd::options()
        .arg("--read-timeout")
        .arg("1s")
        .arg("--handlers")
        .arg("2")
        .start()
}

/// Connects and sends `bytes`, then nothing more.
fn send_partial(port: u16, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to hookd");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s.write_all(bytes).expect("send the partial request");
    s.flush().unwrap();
    s
}

/// Reads until the server closes the connection; returns what it sent and when it
/// closed. Fails the test if it is still open after `limit`.
fn wait_closed(s: &mut TcpStream, what: &str, limit: Duration) -> (Vec<u8>, Instant) {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            panic!(
                "{what}: still connected after {limit:?}; the server sent {:?}",
                String::from_utf8_lossy(&got)
            );
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (got, Instant::now()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A reset is a close too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (got, Instant::now())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => panic!("{what}: reading: {e}"),
        }
    }
}

/// A request head for `/v1/events` as `token`, declaring `length` body bytes.
fn events_head(port: u16, token: &str, length: u64, keep_alive: bool) -> String {
    format!(
        "POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\nConnection: {}\r\n\r\n",
        if keep_alive { "keep-alive" } else { "close" }
    )
}

/// The status code of the first response in `bytes`, if any.
fn status_of(bytes: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(bytes);
    text.lines().next()?.split_whitespace().nth(1)?.parse().ok()
}

/// A healthy answer comes quickly: the server is not waiting on anyone's timeout.
#[track_caller]
fn assert_served_promptly(hookd: &Hookd, what: &str) {
    let started = Instant::now();
    hookd.assert_healthy();
    hookd.get(&hookd.admin, "/v1/hooks").expect(200);
    let took = started.elapsed();
    assert!(
        took < READ_TIMEOUT / 2,
        "{what}: a normal client waited {took:?} (read timeout {READ_TIMEOUT:?})"
    );
}

#[test]
fn a_huge_declared_content_length_gets_413_and_the_server_lives() {
    let hookd = start();
    let sink = Sink::start();
    hookd.hook(&sink.url("/alive"), "alive.*");
    for keep_alive in [false, true] {
        // Declared, never sent.
        let head = events_head(hookd.port, &hookd.admin, 1_000_000_000_000, keep_alive);
        let mut s = send_partial(hookd.port, head.as_bytes());
        let (got, _) = wait_closed(&mut s, "a 10^12-byte declaration", CUT_OFF);
        let text = String::from_utf8_lossy(&got);
        assert_eq!(status_of(&got), Some(413), "answer: {text:?}");
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("413 body is not JSON ({e}): {text:?}"));
        assert_eq!(v["error"]["code"], "payload_too_large", "{text}");
        hookd.assert_healthy();
    }
    // Declared and partly sent, as a client that ignores the early answer would.
    let head = events_head(hookd.port, &hookd.admin, 1_000_000_000_000, true);
    let mut s = send_partial(hookd.port, head.as_bytes());
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..8 {
        if s.write_all(&chunk).is_err() {
            break;
        }
    }
    let (got, _) = wait_closed(&mut s, "a 10^12-byte body, partly sent", CUT_OFF);
    assert_eq!(
        status_of(&got),
        Some(413),
        "answer: {:?}",
        String::from_utf8_lossy(&got)
    );
    hookd.assert_healthy();
    let e = hookd.publish("alive.x", "1", json!(null));
    assert_eq!(sink.wait_delivered(1)[0]["event_id"], e.as_str());
}

/// Requests that stop half way, each kind.
fn half_sent(port: u16) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("half a request line", b"GET /heal".to_vec()),
        (
            "half the headers",
            format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Half: ab").into_bytes(),
        ),
        (
            "a head without its blank line",
            format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n").into_bytes(),
        ),
    ]
}

/// A normal request on a fresh connection: its status and how long it took.
fn timed_healthz(port: u16) -> (Option<u16>, Duration) {
    let started = Instant::now();
    let mut s = send_partial(
        port,
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    let (answer, _) = wait_closed(&mut s, "a normal client", WAIT);
    (status_of(&answer), started.elapsed())
}

#[test]
fn a_normal_client_is_served_while_others_stall() {
    let hookd = start();
    let port = hookd.port;
    // Rounds of a dozen stalled connections, each followed at once by a normal client
    // that must not wait for any of them. (A burst of connections is where a queued
    // connection can end up behind stalled ones, so there are several bursts.)
    let mut stalled = Vec::new();
    for round in 0..8 {
        for (_, bytes) in half_sent(port) {
            for _ in 0..4 {
                stalled.push(send_partial(port, &bytes));
            }
        }
        let (status, took) = timed_healthz(port);
        assert_eq!(status, Some(200), "round {round}");
        assert!(
            took < READ_TIMEOUT / 2,
            "round {round}: with {} half-sent requests open, a normal client waited {took:?} \
             for its answer (read timeout {READ_TIMEOUT:?}): it was queued behind stalled \
             connections",
            stalled.len()
        );
    }
    assert_served_promptly(&hookd, "with 96 half-sent requests open");
}

#[test]
fn clients_that_stop_half_way_are_dropped() {
    let hookd = start_with_two_handlers();
    let port = hookd.port;
    let mut stalled = Vec::new();
    for (what, bytes) in half_sent(port) {
        for i in 0..4 {
            stalled.push((
                format!("{what} #{i}"),
                send_partial(port, &bytes),
                Instant::now(),
            ));
        }
    }
    for (what, s, sent) in &mut stalled {
        let (_, closed) = wait_closed(s, what, CUT_OFF);
        let held = closed - *sent;
        assert!(
            held >= READ_TIMEOUT / 2,
            "{what}: closed after {held:?}, before the read timeout"
        );
    }
    let (status, _) = timed_healthz(port);
    assert_eq!(status, Some(200), "after the half-sent requests");

    // Complete heads whose bodies stop, more than there are handler contexts: the
    // server must give up on them.
    let mut bodies = Vec::new();
    for i in 0..3 {
        let mut s = send_partial(port, events_head(port, &hookd.admin, 100, true).as_bytes());
        s.write_all(br#"{"type": "#).unwrap();
        bodies.push((format!("stalled body #{i}"), s));
    }
    for (what, s) in &mut bodies {
        let (got, _) = wait_closed(s, what, CUT_OFF);
        if let Some(status) = status_of(&got) {
            assert!(
                status == 400 || status == 408,
                "{what}: answered {:?}",
                String::from_utf8_lossy(&got)
            );
        }
    }
    assert_served_promptly(&hookd, "after the stalled bodies");
    let listed = hookd.get(&hookd.admin, "/v1/events").expect(200);
    assert_eq!(
        listed["data"],
        json!([]),
        "a cut-off request became an event"
    );
}

/// How long a body may take in all, at most, whatever its pace: a few read timeouts.
/// (A per-read timeout alone never fires for a client that sends a byte now and then.)
const BODY_DEADLINE: Duration = Duration::from_secs(4);

/// Two clients send `head` and then trickle their body onto a server with two handler
/// threads; a normal client must be answered, and the tricklers cut off, within about
/// `BODY_DEADLINE`. (Holding a handler context until the deadline is allowed; holding it
/// for as long as the client keeps trickling is not.)
fn assert_trickles_are_cut_off(what: &str, head: impl Fn(u16, &str) -> String) {
    let hookd = start_with_two_handlers();
    let port = hookd.port;
    // One byte every 200 ms: never idle as long as the read timeout, never finished.
    let stop = Arc::new(AtomicBool::new(false));
    let mut trickles = Vec::new();
    for i in 0..2 {
        let s = send_partial(port, head(port, &hookd.admin).as_bytes());
        let mut w = s.try_clone().unwrap();
        let stop = Arc::clone(&stop);
        let writer = thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if w.write_all(b" ").is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(200));
            }
        });
        trickles.push((format!("trickle #{i}"), s, writer));
    }
    let started = Instant::now();

    // As many tricklers as handler contexts: a normal client must still get an answer,
    // at the latest once the trickles have been cut off.
    let mut normal = send_partial(
        port,
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    normal
        .set_read_timeout(Some(BODY_DEADLINE + READ_TIMEOUT))
        .unwrap();
    let mut answer = Vec::new();
    let _ = normal.read_to_end(&mut answer);
    let waited = started.elapsed();

    let mut still_open = Vec::new();
    for (name, s, _) in &mut trickles {
        let left = (BODY_DEADLINE + READ_TIMEOUT).saturating_sub(started.elapsed());
        s.set_read_timeout(Some(left.max(Duration::from_millis(10))))
            .unwrap();
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        let closed = loop {
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        if !closed {
            still_open.push(format!("{name} (answered {:?})", status_of(&got)));
        }
    }
    stop.store(true, Ordering::SeqCst);
    for (_, s, w) in trickles {
        let _ = s.shutdown(Shutdown::Both);
        let _ = w.join();
    }
    assert_eq!(
        status_of(&answer),
        Some(200),
        "2 {what} trickled at 5 bytes/s onto as many handler contexts: /healthz got {:?} after \
         {waited:?}; a body must be cut off within about {BODY_DEADLINE:?} (--read-timeout \
         1s), not only after 1s of silence",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        still_open.is_empty(),
        "{what}: still connected after {:?}: {still_open:?}",
        started.elapsed()
    );
    hookd.assert_healthy();
}

#[test]
fn a_trickled_body_is_cut_off_at_the_deadline() {
    assert_trickles_are_cut_off("bodies of 100 KB", |port, token| {
        events_head(port, token, 100_000, true)
    });
}

#[test]
fn a_trickled_oversized_body_is_cut_off_after_its_413() {
    // Answered 413 at once; what follows must not be drained at the client's pace.
    assert_trickles_are_cut_off("bodies declared 10^12 bytes", |port, token| {
        events_head(port, token, 1_000_000_000_000, true)
    });
}

#[test]
fn a_trickled_chunked_body_is_cut_off_after_its_408() {
    assert_trickles_are_cut_off("chunked bodies", |port, token| {
        format!(
            "POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n"
        )
    });
}

/// The status lines of the responses in `bytes`, read one after another by their
/// `Content-Length`.
fn responses_in(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let text = String::from_utf8_lossy(rest);
        let Some(head_end) = text.find("\r\n\r\n") else {
            out.push(format!("(partial: {text:?})"));
            break;
        };
        let head = &text[..head_end];
        out.push(head.lines().next().unwrap_or_default().to_string());
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let next = (head_end + 4 + len).min(rest.len());
        rest = &rest[next..];
    }
    out
}

#[test]
fn a_chunked_body_is_never_parsed_as_another_request() {
    let hookd = start();
    let port = hookd.port;
    let head = |auth: &str| {
        format!(
            "POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
    };
    let auth = format!("Authorization: Bearer {}\r\n", hookd.admin);
    let event = r#"{"type": "chunked.x"}"#;
    let cases = [
        // Refused before its body is read (no credentials). The body is a valid chunked
        // body (a last chunk with an extension, a trailer, the end) that reads as a
        // request when parsed from its first byte.
        (
            "a refused request whose body looks like a request",
            format!("{}0;GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", head("")),
            " 401 ",
        ),
        // Read in full: one chunk, then the last chunk.
        (
            "a chunked publish",
            format!("{}{:x}\r\n{event}\r\n0\r\n\r\n", head(&auth), event.len()),
            " 202 ",
        ),
        // Trailer fields are not supported by the chunk decoder (README): a clear 400,
        // and still exactly one answer.
        (
            "a chunked publish whose body ends with a trailer",
            format!(
                "{}{:x}\r\n{event}\r\n0\r\nX-Checksum: 1\r\n\r\n",
                head(&auth),
                event.len()
            ),
            " 400 ",
        ),
    ];
    // A proxy in front sees one request each time, so hookd must give one answer: a
    // second one would go to whichever client's request the proxy sends next.
    let mut wrong = Vec::new();
    for (what, req, want) in &cases {
        // Kept alive (no `Connection: close`), as a proxy's upstream connection would
        // be: the server reads on until the read timeout closes it.
        let mut s = send_partial(port, req.as_bytes());
        let (got, _) = wait_closed(&mut s, what, CUT_OFF);
        let answers = responses_in(&got);
        if answers.len() != 1 || !answers[0].contains(want) {
            wrong.push(format!(
                "{what}: answered {answers:?} (want one{want}answer):\n{}",
                String::from_utf8_lossy(&got)
            ));
        }
        hookd.assert_healthy();
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn oversized_request_heads_get_json_errors_and_the_server_lives() {
    let hookd = start();
    let a = hookd.admin.clone();
    let many: Raw = (0..500).fold(Raw::get("/v1/hooks").auth(&a), |r, i| {
        r.header(&format!("X-Many-{i}"), "v")
    });
    let cases = [
        (
            "a 100 KB header line",
            Raw::get("/v1/hooks")
                .auth(&a)
                .header("X-Big", &"a".repeat(100 * 1024)),
            431,
            "headers_too_large",
        ),
        ("500 header lines", many, 431, "headers_too_large"),
        (
            "20 KB of headers in 10 lines",
            (0..10).fold(Raw::get("/v1/hooks").auth(&a), |r, i| {
                r.header(&format!("X-Wide-{i}"), &"w".repeat(2000))
            }),
            431,
            "headers_too_large",
        ),
        (
            "a 20 KB URL",
            Raw::get(&format!("/v1/hooks?x={}", "u".repeat(20 * 1024))).auth(&a),
            414,
            "url_too_long",
        ),
    ];
    for (what, req, status, code) in &cases {
        let r = hookd.raw(req);
        assert_eq!(r.status, *status, "{what}: {r}");
        r.expect_error(*status, code);
        assert!(
            r.header("content-type")
                .is_some_and(|v| v.starts_with("application/json")),
            "{what}: not declared JSON: {:?}",
            r.headers
        );
        hookd.assert_healthy();
    }
    // Just under the limits is served.
    let fine = (0..50).fold(Raw::get("/v1/hooks").auth(&a), |r, i| {
        r.header(&format!("X-Fine-{i}"), "v")
    });
    let r = hookd.raw(&fine);
    assert_eq!(r.status, 200, "50 short headers: {r}");
}

#[test]
fn the_server_still_accepts_after_idling_past_the_read_timeout() {
    let hookd = start();
    hookd.assert_healthy();
    // The idle time is the input here, not a guess: longer than the listener's timeout
    // (which once ended the accept loop), twice over.
    thread::sleep(READ_TIMEOUT * 2 + Duration::from_millis(500));
    assert_served_promptly(&hookd, "after idling");
    // An idle keep-alive connection is closed by the server, and new ones still work.
    let mut idle = send_partial(
        hookd.port,
        format!(
            "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
            hookd.port
        )
        .as_bytes(),
    );
    let (got, _) = wait_closed(&mut idle, "an idle keep-alive connection", CUT_OFF);
    assert_eq!(
        status_of(&got),
        Some(200),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_served_promptly(&hookd, "after an idle keep-alive connection");
}

/// With every handler context in use (here the only one, held by a hook create whose
/// handshake target accepts the connection and never answers), a request waits up to
/// the body deadline plus `--enqueue-timeout` and is then answered 503 in the JSON
/// error shape with `Retry-After`; the create still completes, and once the context is
/// free the server serves again with the hook in place.
#[test]
fn a_request_that_finds_every_handler_busy_gets_503_and_nothing_is_lost() {
    // Accepts every connection and keeps it open without a byte of answer.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().flatten() {
            held.push(conn);
            let _ = held_tx.send(());
        }
    });
    let hookd = Arc::new(
        Hookd::options()
            .delivery_timeout("3s")
            .arg("--handlers")
            .arg("1")
            .arg("--read-timeout")
            .arg("200ms")
            .arg("--enqueue-timeout")
            .arg("200ms")
            .start(),
    );
    let creator = {
        let hookd = Arc::clone(&hookd);
        thread::spawn(move || {
            hookd.post(
                &hookd.admin,
                "/v1/hooks",
                &json!({"target_url": format!("http://127.0.0.1:{silent_port}/hook"), "event": "a.*"}),
            )
        })
    };
    // The handshake has reached the target: the only context is held until it times out.
    held_rx
        .recv_timeout(WAIT)
        .expect("the hook create's handshake never reached its target");

    let busy = hookd.request("GET", "/healthz", None, &[], None);
    assert_eq!(busy.status, 503, "with the only handler busy: {busy}");
    assert_eq!(busy.body["error"]["code"], "unavailable", "{busy}");
    assert!(
        busy.header("Retry-After").is_some(),
        "503 without Retry-After: {busy}"
    );

    let created = creator.join().unwrap();
    assert_eq!(created.status, 201, "the create still completes: {created}");
    let id = created.body["id"].as_str().expect("hook id").to_string();
    hookd.assert_healthy();
    let hook = hookd.get(&hookd.admin, &format!("/v1/hooks/{id}"));
    assert_eq!(
        hook.status, 200,
        "the hook created meanwhile is kept: {hook}"
    );
}
