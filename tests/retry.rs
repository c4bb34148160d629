//! Failure handling: retries with the same webhook-id, Retry-After, 410 Gone, dead
//! deliveries, disabling a failing hook and activating it again, manual retry and replay.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// The status codes of a logged delivery's attempts, sorted (the log's order of
/// attempts is not part of the contract).
fn attempt_codes(delivery: &Value) -> Vec<i64> {
    let attempts = delivery["attempts"]
        .as_array()
        .unwrap_or_else(|| panic!("delivery without attempts: {delivery}"));
    let mut codes: Vec<i64> = attempts
        .iter()
        .map(|a| {
            a["status_code"]
                .as_i64()
                .unwrap_or_else(|| panic!("attempt without status_code: {a}"))
        })
        .collect();
    codes.sort();
    codes
}

#[test]
fn retries_after_500_and_503_carry_the_same_webhook_id_and_are_logged() {
    let hookd = Hookd::start();
    let sink = Sink::start();
    let hook = hookd.hook(&sink.url("/r"), "retry.me");
    sink.script([500, 503]);
    let id = hookd.publish("retry.me", "1", json!({"a": 1}));

    let reqs = sink.wait_for(3);
    assert_eq!(
        reqs.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [500, 503, 200]
    );
    for req in &reqs {
        req.assert_signed(&hook.secret);
        assert_eq!(
            req.webhook_id(),
            reqs[0].webhook_id(),
            "webhook-id changed on retry"
        );
        assert_eq!(req.json(), reqs[0].json(), "body changed on retry");
    }
    let logged = hookd.wait_delivery(&hook.id, &id, "delivered");
    assert_eq!(logged["id"], reqs[0].webhook_id());
    assert_eq!(
        attempt_codes(&logged),
        [200, 500, 503],
        "attempts: {logged}"
    );
    for a in logged["attempts"].as_array().unwrap() {
        assert_rfc3339_utc(&a["at"], "attempt at");
        assert!(a["duration_ms"].as_i64().is_some(), "duration_ms in {a}");
    }
}

#[test]
fn retry_after_on_429_is_respected() {
    let hookd = Hookd::options().schedule("100ms").start();
    let sink = Sink::start();
    hookd.hook(&sink.url("/ra"), "slow.down");
    sink.script([Reply::status(429).header("Retry-After", "1")]);
    hookd.publish("slow.down", "1", json!(null));

    let reqs = sink.wait_for(2);
    let gap = reqs[1].at.duration_since(reqs[0].at);
    assert!(
        gap >= Duration::from_millis(900),
        "retried {gap:?} after a 429 with Retry-After: 1"
    );
    assert_eq!(reqs[0].webhook_id(), reqs[1].webhook_id());
    assert_eq!(reqs[1].answered, 200);
}

#[test]
fn gone_410_unsubscribes_the_hook() {
    let hookd = Hookd::start();
    let sink = Sink::start();
    let hook = hookd.hook(&sink.url("/gone"), "bye.*");
    hookd.hook(&sink.url("/other"), "bye.later");
    sink.script([410]);
    hookd.publish("bye.first", "1", json!(null));
    sink.wait_for(1);

    hookd.wait_hook(&hook.id, "gone (404)", |r| r.status == 404);
    hookd
        .get(&hookd.admin, &format!("/v1/hooks/{}", hook.id))
        .expect_error(404, "not_found");
    // A later matching event is routed to the other hook only.
    let later = hookd.publish_json(json!({"type": "bye.later", "resource_id": "2"}));
    assert_eq!(
        later["deliveries"], 1,
        "publish matched the removed hook: {later}"
    );
    sink.wait_until("the later event on /other", |r| {
        r.iter().any(|r| r.path == "/other")
    });
    assert_eq!(
        sink.requests_to("/gone").len(),
        1,
        "the removed hook got more"
    );
    assert!(!hookd.get(&hookd.admin, "/v1/hooks").expect(200)["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["id"] == hook.id.as_str()));
}

#[test]
fn delivery_is_dead_after_the_schedule_and_the_next_event_goes_out() {
    let hookd = Hookd::options().schedule("50ms,50ms").start();
    let sink = Sink::start();
    let hook = hookd.hook(&sink.url("/dead"), "d.*");
    sink.script([500, 500, 500]);
    let a = hookd.publish("d.a", "a", json!(null));
    let b = hookd.publish("d.b", "b", json!(null));

    let reqs = sink.wait_for(4);
    for req in &reqs[..3] {
        assert_eq!(req.json()["event_id"], a.as_str(), "{}", req.summary());
        assert_eq!(req.webhook_id(), reqs[0].webhook_id());
        assert_eq!(req.answered, 500);
    }
    let body_b = reqs[3].json();
    assert_eq!(body_b["event_id"], b.as_str());
    assert_eq!(body_b["sequence"], 2);
    assert_eq!(reqs[3].answered, 200);

    let dead = hookd.wait_delivery(&hook.id, &a, "dead");
    assert_eq!(attempt_codes(&dead), [500, 500, 500], "attempts: {dead}");
    assert_eq!(
        dead["next_attempt_at"],
        Value::Null,
        "dead yet scheduled: {dead}"
    );
    hookd.wait_delivery(&hook.id, &b, "delivered");
    let only_dead = hookd.deliveries(&hook.id, Some("dead"));
    assert_eq!(only_dead.len(), 1, "?status=dead: {only_dead:?}");
    assert_eq!(only_dead[0]["id"], dead["id"]);
    assert_eq!(sink.count(), 4, "A was attempted more than 3 times");
}

#[test]
fn failing_hook_becomes_inactive_holds_events_and_resumes_on_activate() {
    let hookd = Hookd::options()
        .schedule("100ms,100ms,100ms,100ms,100ms,100ms")
        .disable_after(3)
        .start();
    let sink = Sink::start();
    let witness = Sink::start();
    let hook = hookd.hook(&sink.url("/flaky"), "h.*");
    // A healthy hook for the same events shows when the held ones would have gone out.
    hookd.hook(&witness.url("/ok"), "h.*");
    sink.set_default(500);

    let e1 = hookd.publish("h.one", "1", json!(null));
    hookd.wait_hook(&hook.id, "inactive", |r| r.body["status"] == "inactive");
    let e2 = hookd.publish("h.two", "2", json!(null));
    let e3 = hookd.publish("h.three", "3", json!(null));
    witness.wait_delivered(3);

    let before = sink.requests();
    assert_eq!(before.len(), 3, "attempts before activation");
    assert!(before.iter().all(|r| r.json()["event_id"] == e1.as_str()));
    hookd.wait_delivery(&hook.id, &e2, "pending");

    sink.set_default(200);
    let active = hookd
        .post_empty(&hookd.admin, &format!("/v1/hooks/{}/activate", hook.id))
        .expect(200);
    assert_eq!(active["status"], "active", "activate answer: {active}");
    assert_eq!(active["id"], hook.id.as_str());

    let events = sink.wait_delivered(3);
    assert_eq!(
        event_ids(&events),
        [e1.clone(), e2, e3],
        "held events in order"
    );
    assert_eq!(seqs(&events), [1, 2, 3]);
    let resumed = sink.requests();
    assert_eq!(
        resumed[3].webhook_id(),
        before[0].webhook_id(),
        "e1 kept its delivery"
    );
    for req in &resumed {
        req.assert_signed(&hook.secret);
    }
    hookd.wait_hook(&hook.id, "active", |r| r.body["status"] == "active");
}

/// A success sets the hook's failure count back to 0: two rounds of two failures each,
/// with a success between them, never reach `--disable-after 3`.
#[test]
fn a_success_resets_the_failure_count_that_disables_a_hook() {
    let hookd = Hookd::options()
        .schedule("50ms,50ms,50ms")
        .disable_after(3)
        .start();
    let sink = Sink::start();
    let hook = hookd.hook(&sink.url("/r"), "r.*");
    for (n, resource) in ["1", "2"].into_iter().enumerate() {
        sink.script([500, 500]);
        let e = hookd.publish("r.event", resource, json!(null));
        hookd.wait_delivery(&hook.id, &e, "delivered");
        assert_eq!(sink.count(), 3 * (n + 1), "attempts after round {n}");
    }
    let shown = hookd
        .get(&hookd.admin, &format!("/v1/hooks/{}", hook.id))
        .expect(200);
    assert_eq!(
        shown["status"], "active",
        "after two separate rounds of 2 failures: {shown}"
    );
}

#[test]
fn manual_retry_resends_a_dead_delivery_and_replay_requeues_dead_ones_since() {
    let hookd = Hookd::options().schedule("50ms").start();
    let sink = Sink::start();
    let hook = hookd.hook(&sink.url("/m"), "m.*");

    // Manual retry of a dead delivery.
    sink.script([500, 500]);
    let e1 = hookd.publish("m.one", "1", json!(null));
    let dead = hookd.wait_delivery(&hook.id, &e1, "dead");
    let dlv = dead["id"].as_str().unwrap().to_string();
    let r = hookd
        .post_empty(&hookd.admin, &format!("/v1/deliveries/{dlv}/retry"))
        .expect(202);
    assert_eq!(r["id"], dlv.as_str(), "retry answer: {r}");
    let reqs = sink.wait_for(3);
    assert_eq!(
        reqs[2].webhook_id(),
        dlv,
        "manual retry changed the webhook-id"
    );
    assert_eq!(reqs[2].answered, 200);
    reqs[2].assert_signed(&hook.secret);
    hookd.wait_delivery(&hook.id, &e1, "delivered");

    // Replay: e2 dies before `since`, e3 and e4 after it.
    sink.script([500, 500]);
    let e2 = hookd.publish("m.two", "2", json!(null));
    hookd.wait_delivery(&hook.id, &e2, "dead");
    let since = rfc3339_now(0);
    sink.script([500, 500, 500, 500]);
    let e3 = hookd.publish("m.three", "3", json!(null));
    let e4 = hookd.publish("m.four", "4", json!(null));
    let d3 = hookd.wait_delivery(&hook.id, &e3, "dead");
    let d4 = hookd.wait_delivery(&hook.id, &e4, "dead");
    let seen = sink.count();
    assert_eq!(seen, 9);

    let r = hookd
        .post(
            &hookd.admin,
            &format!("/v1/hooks/{}/replay", hook.id),
            &json!({ "since": since }),
        )
        .expect(202);
    assert_eq!(r["queued"], 2, "replay answer: {r}");
    let reqs = sink.wait_for(seen + 2);
    let replayed: Vec<&Recorded> = reqs[seen..].iter().collect();
    assert_eq!(replayed[0].webhook_id(), d3["id"].as_str().unwrap());
    assert_eq!(replayed[1].webhook_id(), d4["id"].as_str().unwrap());
    assert!(replayed.iter().all(|r| r.ok()));
    hookd.wait_delivery(&hook.id, &e3, "delivered");
    hookd.wait_delivery(&hook.id, &e4, "delivered");
    let still_dead = hookd.deliveries(&hook.id, Some("dead"));
    assert_eq!(still_dead.len(), 1, "dead after replay: {still_dead:?}");
    assert!(still_dead[0]["event_ids"]
        .as_array()
        .unwrap()
        .contains(&json!(e2)));
}

/// An event queued behind a failed one is a pending delivery of its own in the log; its
/// id there is the webhook-id it is later sent with, and retrying it while it is queued
/// is refused. The failed one is retried by hand, and both then arrive in order.
#[test]
fn a_queued_delivery_keeps_the_id_the_log_showed_and_is_not_retried_while_queued() {
    let hookd = Hookd::options().schedule("30s").start();
    let sink = Sink::start();
    let hook = hookd.hook(&sink.url("/q"), "queued.e");
    sink.script([500]);
    let first = hookd.publish("queued.e", "1", json!({"n": 1}));
    let failed = hookd.wait_delivery(&hook.id, &first, "failed");
    let second = hookd.publish("queued.e", "2", json!({"n": 2}));
    let queued = hookd.wait_delivery(&hook.id, &second, "pending");
    let queued_id = queued["id"].as_str().expect("a delivery id").to_string();
    assert!(queued_id.starts_with("dlv_"), "{queued}");
    assert_ne!(queued["id"], failed["id"]);
    let log = hookd.deliveries(&hook.id, None);
    let ids: Vec<&Value> = log.iter().map(|d| &d["id"]).collect();
    assert_eq!(ids, [&queued["id"], &failed["id"]], "newest first: {log:?}");

    hookd
        .post_empty(&hookd.admin, &format!("/v1/deliveries/{queued_id}/retry"))
        .expect_error(409, "not_retryable");
    let unknown = format!("dlv_{}", &queued_id[4..14].repeat(3)[..26]);
    hookd
        .post_empty(&hookd.admin, &format!("/v1/deliveries/{unknown}/retry"))
        .expect_error(404, "not_found");
    assert_eq!(sink.count(), 1, "nothing was sent by the refused retries");

    let failed_id = failed["id"].as_str().unwrap();
    hookd
        .post_empty(&hookd.admin, &format!("/v1/deliveries/{failed_id}/retry"))
        .expect(202);
    let reqs = sink.wait_for(3);
    assert_eq!(reqs[1].webhook_id(), failed_id);
    assert_eq!(reqs[1].json()["event_id"], first);
    assert_eq!(
        reqs[2].webhook_id(),
        queued_id,
        "sent under the id the log showed"
    );
    assert_eq!(reqs[2].json()["event_id"], second);
    hookd.wait_delivery(&hook.id, &second, "delivered");
}

/// A batch that fails is retried whole: the same events, in the same body, under the
/// same webhook-id, and the log shows it as one delivery of those events with both
/// attempts.
#[test]
fn a_failed_batch_is_retried_with_the_same_events_and_id() {
    let hookd = Hookd::options().schedule("1s").start();
    let sink = Sink::start();
    let hook = hookd.create_hook(json!({
        "target_url": sink.url("/b"), "event": "rb.*", "batch_max": 10
    }));
    // The first delivery is answered slowly, so the next events pile up behind it and
    // go out together; that batch fails once.
    sink.script([
        Reply::ok().delay(Duration::from_millis(500)),
        Reply::status(500),
    ]);
    let first = hookd.publish("rb.e", "0", json!(null));
    sink.wait_for(1);
    let piled: Vec<String> = (1..5)
        .map(|i| hookd.publish("rb.e", &i.to_string(), json!(null)))
        .collect();
    let reqs = sink.wait_for(3);
    assert_eq!(
        reqs[0].json(),
        json!([reqs[0].json()[0]]),
        "alone, as an array"
    );
    assert_eq!(reqs[0].json()[0]["event_id"], first);
    assert_eq!(reqs[1].answered, 500);
    assert_eq!(reqs[2].answered, 200);
    let batch: Vec<Value> = piled.iter().map(|id| json!(id)).collect();
    let sent: Vec<Value> = reqs[1]
        .json()
        .as_array()
        .unwrap_or_else(|| panic!("not a batch: {}", reqs[1].json()))
        .iter()
        .map(|e| e["event_id"].clone())
        .collect();
    assert_eq!(sent, batch, "the piled-up events, in order, in one request");
    assert_eq!(
        reqs[2].webhook_id(),
        reqs[1].webhook_id(),
        "webhook-id changed"
    );
    assert_eq!(reqs[2].json(), reqs[1].json(), "body changed on retry");
    for req in &reqs {
        req.assert_signed(&hook.secret);
    }
    let logged = hookd.wait_delivery(&hook.id, &piled[0], "delivered");
    assert_eq!(logged["id"], reqs[1].webhook_id());
    assert_eq!(logged["event_ids"], json!(batch));
    assert_eq!(attempt_codes(&logged), [200, 500], "attempts: {logged}");
}
