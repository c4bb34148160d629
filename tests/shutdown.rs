//! Clean shutdown (issue 4, item 3): on SIGTERM or SIGINT hookd stops taking work, lets
//! an attempt in flight finish within `--shutdown-timeout`, checkpoints the WAL and
//! exits 0; an attempt still unfinished at the deadline is released (sent again, under
//! the same `webhook-id`, after the restart); a second signal while stopping exits at
//! once with status 130. Requests that arrive while it stops are answered 503.

mod common;
mod faultkit;

use std::time::{Duration, Instant};

use common::{Reply, Sink, TempDir, WAIT};
use faultkit::{wal_path, Hang, Server};
use serde_json::json;

#[test]
fn sigterm_lets_the_delivery_in_flight_finish_and_exits_0() {
    let sink = Sink::start();
    // The receiver takes a second to answer the first delivery.
    sink.script([Reply::ok().delay(Duration::from_secs(1))]);
    let dir = TempDir::new();
    let mut server = Server::on(&dir.path.join("hookd.db"))
        .set("--shutdown-timeout", "5s")
        .start();
    let (hook, _) = server.hook(json!({"target_url": sink.url("/slow"), "event": "s.*"}));
    let first = server.publish("s.e", "1");
    sink.wait_for(1);

    // The delivery is in flight (the receiver holds its answer): stop now.
    let signalled = Instant::now();
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(8)).unwrap_or_else(|| {
        panic!(
            "hookd still runs 8 s after SIGTERM (--shutdown-timeout 5s); its log:\n{}",
            server.stderr()
        )
    });
    let took = signalled.elapsed();
    assert!(
        status.success(),
        "exit status after SIGTERM: {status}; log:\n{}",
        server.stderr()
    );
    assert!(
        took < Duration::from_secs(5),
        "a clean stop took {took:?}, past the 5 s shutdown timeout"
    );
    assert!(
        !server.stderr().contains("still in flight at shutdown"),
        "the delivery was abandoned, not finished; log:\n{}",
        server.stderr()
    );
    // The WAL was checkpointed into the database file on the way out.
    let wal = std::fs::metadata(wal_path(server.db()))
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(wal, 0, "the -wal file holds {wal} bytes after a clean stop");

    // After a restart the log says delivered (so hookd had the answer before it
    // exited), and the event is not sent again: the next event, which would wait
    // behind a resend of the first, arrives, and the first arrived only once.
    server.start_again();
    let log = server.deliveries(&hook, None);
    let d = log
        .iter()
        .find(|d| d["event_ids"][0] == first.as_str())
        .unwrap_or_else(|| panic!("no delivery of {first} in {log:?}"));
    assert_eq!(d["status"], "delivered", "after the restart: {d}");
    let second = server.publish("s.e", "2");
    let reqs = sink.wait_until("the second event", |r| {
        r.iter().any(|r| r.json()["event_id"] == second.as_str())
    });
    let firsts = reqs
        .iter()
        .filter(|r| r.json()["event_id"] == first.as_str())
        .count();
    assert_eq!(
        firsts, 1,
        "the finished delivery was sent again after the restart"
    );
}

#[test]
fn sigint_past_the_shutdown_timeout_releases_the_attempt_for_the_next_start() {
    let (hang, _dir, mut server) = delivery_hanging("1s");

    let signalled = Instant::now();
    server.signal("INT");
    let status = server
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("hookd still runs 5 s after SIGINT with --shutdown-timeout 1s"));
    let took = signalled.elapsed();
    assert!(status.success(), "exit status: {status}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "stopping took {took:?}; expected about the 1 s shutdown timeout"
    );
    assert!(
        server.stderr().contains("will be sent again on restart"),
        "the abandoned attempt was not reported; log:\n{}",
        server.stderr()
    );

    // Released, not lost: the next start sends it again with the same webhook-id.
    server.start_again();
    let ids = wait_for_requests(&hang, 2);
    assert_eq!(
        ids[0], ids[1],
        "the delivery was sent again under another webhook-id"
    );
}

#[test]
fn a_second_sigterm_while_stopping_exits_at_once_with_130() {
    let (hang, _dir, mut server) = delivery_hanging("20s");

    server.signal("TERM");
    // The first signal is being handled: hookd waits for the hanging receiver.
    server.wait_log("stopping", WAIT);
    assert!(server.running(), "hookd exited before the second signal");
    // Meanwhile a request is answered, and refused: 503 with Retry-After, in the JSON
    // error shape (the log line comes just before requests are refused, hence the poll).
    let deadline = Instant::now() + WAIT;
    let refused = loop {
        let a = server.get("/healthz");
        if a.status == 503 || Instant::now() >= deadline {
            break a;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(refused.status, 503, "a request while stopping: {refused}");
    assert_eq!(refused.body["error"]["code"], "unavailable", "{refused}");
    assert!(refused.header("retry-after").is_some(), "{refused}");
    let signalled = Instant::now();
    server.signal("TERM");
    let status = server
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "hookd still runs 10 s after a second SIGTERM (shutdown timeout 20 s); log:\n{}",
                server.stderr()
            )
        });
    assert_eq!(
        status.code(),
        Some(130),
        "exit status after a second signal: {status}"
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "the second signal took {:?} to end the process",
        signalled.elapsed()
    );

    // Nothing is lost by the hard stop either: the next start sends it again.
    server.start_again();
    let ids = wait_for_requests(&hang, 2);
    assert_eq!(ids[0], ids[1], "sent again under another webhook-id");
}

/// A server with this `--shutdown-timeout` whose one delivery is in flight to a
/// receiver that never answers (`--delivery-timeout 30s`); the temp dir holds its
/// database.
fn delivery_hanging(shutdown_timeout: &str) -> (Hang, TempDir, Server) {
    let hang = Hang::start();
    let dir = TempDir::new();
    let server = Server::on(&dir.path.join("hookd.db"))
        .set("--shutdown-timeout", shutdown_timeout)
        .set("--delivery-timeout", "30s")
        .start();
    server.hook(json!({"target_url": hang.url("/hang"), "event": "h.*"}));
    server.publish("h.e", "1");
    wait_for_requests(&hang, 1);
    (hang, dir, server)
}

/// Waits until the hanging receiver has read `n` request heads; their webhook-ids.
fn wait_for_requests(hang: &Hang, n: usize) -> Vec<String> {
    common::wait_until_or(WAIT, || {
        let ids = hang.webhook_ids();
        (ids.len() >= n).then_some(ids)
    })
    .unwrap_or_else(|| {
        panic!(
            "the hanging receiver got {} request(s), not {n}: {:?}",
            hang.heads().len(),
            hang.heads()
        )
    })
}
