//! Durability: an accepted event survives a SIGKILL, and one database file has one
//! server.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

#[test]
fn restart_after_kill_keeps_hooks_and_delivers_undelivered_events_in_order() {
    // Enough retries that nothing goes dead while the server is down.
    let mut hookd = Hookd::options()
        .schedule("200ms,500ms,1s,1s,1s,1s,1s,1s")
        .start();
    let sink = Sink::start();
    let hook = hookd.hook(&sink.url("/durable"), "d.*");
    sink.set_default(500);
    let ids: Vec<String> = (0..5)
        .map(|i| hookd.publish("d.e", &i.to_string(), json!({"i": i})))
        .collect();
    sink.wait_for(1);

    hookd.restart();
    hookd.assert_healthy();
    let got = hookd
        .get(&hookd.admin, &format!("/v1/hooks/{}", hook.id))
        .expect(200);
    assert_eq!(got["status"], "active");
    for id in &ids {
        hookd
            .get(&hookd.admin, &format!("/v1/events/{id}"))
            .expect(200);
    }
    sink.set_default(200);

    let events = sink.wait_delivered(5);
    assert_eq!(event_ids(&events), ids, "delivered after restart");
    assert_eq!(seqs(&events), [1, 2, 3, 4, 5]);
    sink.assert_all_signed(&hook.secret);
    // The first event's attempts before and after the kill are one delivery.
    let reqs = sink.requests();
    let first: Vec<&Recorded> = reqs
        .iter()
        .filter(|r| r.json()["event_id"] == ids[0].as_str())
        .collect();
    assert!(
        first.len() >= 2,
        "the first event was not retried across the restart"
    );
    assert!(first
        .iter()
        .all(|r| r.webhook_id() == first[0].webhook_id()));

    // New events after the restart continue the sequence.
    let next = hookd.publish("d.e", "5", json!(null));
    let events = sink.wait_delivered(6);
    assert_eq!(events[5]["event_id"], next.as_str());
    assert_eq!(events[5]["sequence"], 6);
}

#[test]
fn a_second_server_on_the_same_database_refuses_to_start() {
    let hookd = Hookd::start();
    let mut second = Command::new(HOOKD_BIN);
    second
        .args(hookd.args())
        .env("HOOKD_ADMIN_TOKEN", &hookd.admin)
        .env("RUST_LOG", "warn");
    let out = output_within(&mut second, WAIT).unwrap_or_else(|_| {
        panic!("a second hookd on the same database is still running after {WAIT:?}")
    });
    let status = out.status;
    assert!(!status.success(), "the second hookd exited 0");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.trim().is_empty(),
        "the refusal says nothing on stderr"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "the second hookd listened"
    );
    // The first one is unharmed.
    hookd.assert_healthy();
}
