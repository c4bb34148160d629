//! Delivery: routing by pattern, the Standard Webhooks headers and signature, body
//! shapes (skinny, full, batched) and per-hook ordering under concurrent publishing.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Asserts one delivered event body against what was published.
#[track_caller]
fn assert_event_body(body: &Value, hook: &Hook, event_id: &str, event: &str, resource_id: &str) {
    assert_eq!(body["hook_id"], hook.id.as_str(), "hook_id in {body}");
    assert_eq!(body["event_id"], event_id, "event_id in {body}");
    assert_eq!(body["event"], event, "event in {body}");
    assert_eq!(body["resource_id"], resource_id, "resource_id in {body}");
    assert!(body["sequence"].as_i64().is_some(), "sequence in {body}");
    assert_rfc3339_utc(&body["created_at"], "created_at");
}

/// Asserts the fixed delivery headers (the signature is checked by `assert_signed`).
#[track_caller]
fn assert_delivery_headers(req: &Recorded) {
    assert_eq!(req.method, "POST", "{}", req.summary());
    let ct = req.must_header("content-type");
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    let ua = req.must_header("user-agent");
    assert!(ua.starts_with("hookd/"), "user-agent {ua:?}");
    let id = req.webhook_id();
    assert!(
        id.starts_with("dlv_"),
        "webhook-id {id:?} is not a delivery id"
    );
}

#[test]
fn signature_helper_matches_the_standard_webhooks_vector() {
    // Guards the test helper itself, so a failing signature check means the server.
    let sig = expected_signature(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265330",
        br#"{"test": 2432232314}"#,
    );
    assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    assert!(signature_matches(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265330",
        br#"{"test": 2432232314}"#,
        "v1,bm90IHRoaXM= v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    ));
}

#[test]
fn delivers_only_matching_events_with_signed_standard_headers() {
    let hookd = Hookd::start();
    let sink = Sink::start();
    let exact = hookd.hook(&sink.url("/exact"), "item.create");
    let prefix = hookd.hook(&sink.url("/prefix"), "item.*");
    let all = hookd.hook(&sink.url("/all"), "*");

    let create = hookd.publish("item.create", "r1", json!({"n": 1}));
    let update = hookd.publish("item.update", "r2", json!({"n": 2}));
    let paid = hookd.publish("order.paid", "r3", json!({"n": 3}));
    // Matches all three hooks: once it arrives on a hook, everything before it has too.
    let last = hookd.publish("item.create", "r4", json!({"n": 4}));

    let cases = [
        (&exact, "/exact", vec![&create, &last]),
        (&prefix, "/prefix", vec![&create, &update, &last]),
        (&all, "/all", vec![&create, &update, &paid, &last]),
    ];
    for (hook, path, want) in cases {
        sink.wait_until(&format!("the last event on {path}"), |reqs| {
            reqs.iter()
                .any(|r| r.path == path && r.json()["event_id"] == last.as_str())
        });
        let reqs = sink.requests_to(path);
        let got: Vec<String> = reqs
            .iter()
            .map(|r| r.json()["event_id"].as_str().unwrap_or("?").to_string())
            .collect();
        let want: Vec<String> = want.into_iter().cloned().collect();
        assert_eq!(got, want, "events delivered to {path}");
        for (i, req) in reqs.iter().enumerate() {
            assert_delivery_headers(req);
            req.assert_signed(&hook.secret);
            let body = req.json();
            assert!(body.get("data").is_none(), "skinny body has data: {body}");
            assert_eq!(body["sequence"], i as i64 + 1, "sequence on {path}: {body}");
        }
    }

    let by_id = |req: &Recorded, id: &str, event: &str, rid: &str, hook: &Hook| {
        assert_event_body(&req.json(), hook, id, event, rid)
    };
    let on_all = sink.requests_to("/all");
    by_id(&on_all[0], &create, "item.create", "r1", &all);
    by_id(&on_all[1], &update, "item.update", "r2", &all);
    by_id(&on_all[2], &paid, "order.paid", "r3", &all);
    by_id(&on_all[3], &last, "item.create", "r4", &all);

    // The webhook-id is the delivery id that the log shows as delivered.
    let logged = hookd.wait_delivery(&exact.id, &create, "delivered");
    assert_eq!(logged["id"], sink.requests_to("/exact")[0].webhook_id());
}

#[test]
fn sequence_is_gapless_and_in_order_under_concurrent_publishing() {
    let hookd = Hookd::start();
    let sink = Sink::start();
    let hook = hookd.create_hook(json!({
        "target_url": sink.url("/seq"), "event": "tick", "payload": "full"
    }));

    let published: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let hookd = &hookd;
                s.spawn(move || {
                    (0..25)
                        .map(|n| {
                            hookd.publish("tick", &format!("{t}-{n}"), json!({"t": t, "n": n}))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });

    let events = sink.wait_delivered(100);
    assert_eq!(sink.count(), 100, "exactly one request per event");
    assert_eq!(
        seqs(&events),
        (1..=100).collect::<Vec<i64>>(),
        "arrival order"
    );
    let ids = event_ids(&events);
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 100, "event ids are distinct");
    assert_eq!(
        distinct,
        published.iter().collect(),
        "every event delivered"
    );
    // Each thread published in order, so its events keep that order.
    for t in 0..4 {
        let ns: Vec<i64> = events
            .iter()
            .filter(|e| e["data"]["t"] == t)
            .map(|e| e["data"]["n"].as_i64().unwrap())
            .collect();
        assert_eq!(ns, (0..25).collect::<Vec<i64>>(), "thread {t}'s events");
    }
    sink.assert_all_signed(&hook.secret);
}

#[test]
fn signatures_verify_with_the_hooks_own_secret_only() {
    let hookd = Hookd::start();
    let sink = Sink::start();
    let a = hookd.hook(&sink.url("/a"), "sig.test");
    let b = hookd.hook(&sink.url("/b"), "sig.test");
    assert_ne!(a.secret, b.secret, "hooks share a secret");
    hookd.publish("sig.test", "1", json!({"x": "y"}));
    let reqs = sink.wait_for(2);
    for req in &reqs {
        let (own, other) = if req.path == "/a" { (&a, &b) } else { (&b, &a) };
        req.assert_signed(&own.secret);
        let ts = req.must_header("webhook-timestamp");
        let sig = req.must_header("webhook-signature");
        assert!(
            !signature_matches(&other.secret, req.webhook_id(), ts, &req.body, sig),
            "delivery to {} also verifies with another hook's secret",
            req.path
        );
        let mut tampered = req.body.clone();
        tampered.push(b' ');
        assert!(
            !signature_matches(&own.secret, req.webhook_id(), ts, &tampered, sig),
            "signature does not cover the body"
        );
    }
}

#[test]
fn rotated_secret_signs_with_both_secrets() {
    let hookd = Hookd::start();
    let sink = Sink::start();
    let hook = hookd.hook(&sink.url("/rot"), "rot.test");
    let rotated = hookd
        .post_empty(
            &hookd.admin,
            &format!("/v1/hooks/{}/rotate-secret", hook.id),
        )
        .expect(200);
    let new_secret = rotated["secret"].as_str().expect("new secret").to_string();
    assert!(new_secret.starts_with("whsec_") && new_secret != hook.secret);
    hookd.publish("rot.test", "1", json!(null));
    let req = &sink.wait_for(1)[0];
    req.assert_signed(&hook.secret);
    req.assert_signed(&new_secret);
    assert_eq!(req.must_header("webhook-signature").split(' ').count(), 2);
}

#[test]
fn skinny_bodies_omit_data_and_full_bodies_carry_it_as_published() {
    let hookd = Hookd::start();
    let sink = Sink::start();
    let skinny = hookd.create_hook(json!({
        "target_url": sink.url("/skinny"), "event": "doc.saved", "payload": "skinny"
    }));
    let full = hookd.create_hook(json!({
        "target_url": sink.url("/full"), "event": "doc.saved", "payload": "full"
    }));
    assert_eq!(skinny.body["payload"], "skinny");
    assert_eq!(full.body["payload"], "full");
    let data = json!({
        "title": "Grüße, \"quoted\" ✓", "n": 42, "f": 1.5, "ok": true, "none": null,
        "tags": ["a", "b"], "nested": {"deep": {"list": [1, {"x": []}]}}
    });
    let id = hookd.publish("doc.saved", "doc-9", data.clone());

    let reqs = sink.wait_for(2);
    let on = |path: &str| reqs.iter().find(|r| r.path == path).unwrap().clone();
    let (s, f) = (on("/skinny"), on("/full"));
    s.assert_signed(&skinny.secret);
    f.assert_signed(&full.secret);
    let (s, f) = (s.json(), f.json());
    assert_event_body(&s, &skinny, &id, "doc.saved", "doc-9");
    assert_event_body(&f, &full, &id, "doc.saved", "doc-9");
    assert!(s.get("data").is_none(), "skinny body carries data: {s}");
    assert_eq!(f["data"], data, "full body's data");
}

#[test]
fn batches_are_arrays_of_at_most_batch_max_in_sequence_order() {
    let hookd = Hookd::start();
    let sink = Sink::start();
    let hook = hookd.create_hook(json!({
        "target_url": sink.url("/batch"), "event": "b.*", "batch_max": 10
    }));
    assert_eq!(hook.body["batch_max"], 10);
    // The first delivery is answered slowly, so the rest pile up behind it.
    sink.script([Reply::ok().delay(Duration::from_millis(1000))]);
    let mut published = vec![hookd.publish("b.one", "0", json!(null))];
    sink.wait_for(1);
    for i in 1..25 {
        published.push(hookd.publish("b.one", &i.to_string(), json!(null)));
    }

    let events = sink.wait_delivered(25);
    let reqs = sink.requests();
    for req in &reqs {
        req.assert_signed(&hook.secret);
        let body = req.json();
        let items = body
            .as_array()
            .unwrap_or_else(|| panic!("batch body is not an array: {body}"));
        assert!((1..=10).contains(&items.len()), "batch of {}", items.len());
    }
    assert_eq!(seqs(&events), (1..=25).collect::<Vec<i64>>(), "sequences");
    assert_eq!(event_ids(&events), published, "events in publish order");
    assert!(
        reqs.iter().any(|r| r.events().len() > 1),
        "no delivery batched more than one event although they piled up"
    );
    let ids: HashSet<&str> = reqs.iter().map(Recorded::webhook_id).collect();
    assert_eq!(ids.len(), reqs.len(), "each batch has its own webhook-id");
}

/// A job that read to the end of its hook's queue does not look again before it ends:
/// rows queued while it is out must reach the receiver through the writer's wake-ups
/// alone. The periodic re-read of queued hooks is an hour away here, so a row left
/// behind would never be sent.
#[test]
fn rows_queued_while_their_hook_is_out_are_sent_without_the_periodic_reread() {
    let hookd = Hookd::options().arg("--resync-interval").arg("1h").start();
    let (sink_one, sink_many) = (Sink::start(), Sink::start());
    let one = hookd.create_hook(json!({
        "target_url": sink_one.url("/one"), "event": "w.*"
    }));
    let many = hookd.create_hook(json!({
        "target_url": sink_many.url("/many"), "event": "w.*", "batch_max": 5
    }));
    // The first delivery to each is held while the next events are published: each
    // hook's job has read its whole queue (one row) and is out.
    for sink in [&sink_one, &sink_many] {
        sink.script([Reply::ok().delay(Duration::from_millis(500))]);
    }
    let mut published = vec![hookd.publish("w.tick", "0", json!(null))];
    sink_one.wait_for(1);
    sink_many.wait_for(1);
    for i in 1..4 {
        published.push(hookd.publish("w.tick", &i.to_string(), json!(null)));
    }

    for (hook, sink) in [(&one, &sink_one), (&many, &sink_many)] {
        let events = sink.wait_delivered(4);
        assert_eq!(seqs(&events), [1, 2, 3, 4], "{}", hook.id);
        assert_eq!(event_ids(&events), published, "{}", hook.id);
        sink.assert_all_signed(&hook.secret);
    }
}

/// Bodies around and far above the sizes the delivery client joins with the request
/// head (outputs up to 8 KiB are held for the next; its buffer is 32 KiB) arrive byte
/// for byte: the signature over the whole body verifies and the data is what was
/// published.
#[test]
fn large_bodies_arrive_intact() {
    let hookd = Hookd::start();
    let sink = Sink::start();
    let single = hookd.create_hook(json!({
        "target_url": sink.url("/single"), "event": "big.*", "payload": "full"
    }));
    let sizes = [10, 7_000, 9_000, 31_000, 40_000, 200_000];
    let published: Vec<(String, String)> = sizes
        .iter()
        .map(|&n| {
            let data = "d".repeat(n);
            (
                hookd.publish("big.one", &n.to_string(), json!({ "d": data })),
                data,
            )
        })
        .collect();

    let events = sink.wait_delivered(sizes.len());
    assert_eq!(sink.count(), sizes.len(), "one request per event");
    sink.assert_all_signed(&single.secret);
    let ids: Vec<String> = published.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(event_ids(&events), ids);
    for (event, (_, data)) in events.iter().zip(&published) {
        assert_eq!(event["data"]["d"].as_str(), Some(data.as_str()));
    }
}
