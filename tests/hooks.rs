//! Hook management: the create shape, PATCH taking effect, DELETE cancelling pending
//! deliveries, and cursor pagination of the hook list.

mod common;

use std::collections::HashSet;

use common::*;
use serde_json::{json, Value};

#[test]
fn create_answers_the_documented_shape() {
    let hookd = Hookd::start();
    let sink = Sink::start();
    let hook = hookd.create_hook(json!({
        "target_url": sink.url("/shape"), "events": ["a.b", "c.*"], "payload": "full",
        "batch_max": 3
    }));
    let b = &hook.body;
    assert_eq!(b["target_url"], sink.url("/shape"));
    assert_eq!(b["events"], json!(["a.b", "c.*"]));
    assert_eq!(b["payload"], "full");
    assert_eq!(b["batch_max"], 3);
    assert_eq!(b["tenant"], "default");
    assert_rfc3339_utc(&b["created_at"], "created_at");

    let got = hookd
        .get(&hookd.admin, &format!("/v1/hooks/{}", hook.id))
        .expect(200);
    assert_eq!(got["id"], hook.id.as_str());
    assert_eq!(got["events"], json!(["a.b", "c.*"]));
    assert!(got.get("secret").is_none(), "GET shows the secret: {got}");

    // Defaults: one `event`, skinny, batch_max 1.
    let plain = hookd.hook(&sink.url("/plain"), "x.y");
    assert_eq!(plain.body["events"], json!(["x.y"]));
    assert_eq!(plain.body["payload"], "skinny");
    assert_eq!(plain.body["batch_max"], 1);
}

#[test]
fn patch_changes_events_payload_and_batch_max() {
    let hookd = Hookd::start();
    let sink = Sink::start();
    let hook = hookd.hook(&sink.url("/p"), "a.one");
    let first = hookd.publish("a.one", "1", json!({"v": 1}));
    let events = sink.wait_delivered(1);
    assert_eq!(events[0]["event_id"], first.as_str());
    assert!(events[0].get("data").is_none());

    let patched = hookd
        .patch(
            &hookd.admin,
            &format!("/v1/hooks/{}", hook.id),
            &json!({"events": ["b.*"], "payload": "full", "batch_max": 5}),
        )
        .expect(200);
    assert_eq!(patched["events"], json!(["b.*"]));
    assert_eq!(patched["payload"], "full");
    assert_eq!(patched["batch_max"], 5);
    assert_eq!(
        patched["target_url"],
        sink.url("/p"),
        "PATCH touched target_url"
    );

    let old = hookd.publish_json(json!({"type": "a.one", "resource_id": "2"}));
    assert_eq!(old["deliveries"], 0, "the old pattern still matches: {old}");
    let data = json!({"v": 3});
    let new = hookd.publish("b.two", "3", data.clone());
    let reqs = sink.wait_for(2);
    let body = reqs[1].json();
    let items = body
        .as_array()
        .unwrap_or_else(|| panic!("batch_max 5 but the body is not an array: {body}"));
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["event_id"], new.as_str());
    assert_eq!(items[0]["data"], data, "payload full after PATCH");
    assert_eq!(items[0]["sequence"], 2, "sequence continues across PATCH");
    reqs[1].assert_signed(&hook.secret);
}

#[test]
fn delete_answers_204_then_404_and_cancels_pending_deliveries() {
    let hookd = Hookd::options().schedule("1s,1s,1s").start();
    let doomed_sink = Sink::start();
    let witness = Sink::start();
    let doomed = hookd.hook(&doomed_sink.url("/doomed"), "del.a");
    let alive = hookd.hook(&witness.url("/alive"), "del.b");
    doomed_sink.set_default(500);

    hookd.publish("del.a", "1", json!(null));
    doomed_sink.wait_for(1);
    let r = hookd.delete(&hookd.admin, &format!("/v1/hooks/{}", doomed.id));
    assert_eq!(r.status, 204, "DELETE: {r}");
    let after = doomed_sink.count();
    hookd
        .get(&hookd.admin, &format!("/v1/hooks/{}", doomed.id))
        .expect_error(404, "not_found");
    hookd
        .delete(&hookd.admin, &format!("/v1/hooks/{}", doomed.id))
        .expect_error(404, "not_found");

    // The witness fails twice on the same schedule, so its third attempt comes after
    // the doomed hook's retry would have been due (jitter is at most ±20%).
    witness.script([500, 500]);
    hookd.publish("del.b", "2", json!(null));
    let w = witness.wait_for(3);
    assert_eq!(w[2].answered, 200);
    assert_eq!(
        doomed_sink.count(),
        after,
        "the deleted hook's pending delivery was attempted again"
    );
    let listed = hookd.get(&hookd.admin, "/v1/hooks").expect(200);
    let ids = data_field(&listed, "id");
    assert_eq!(ids, [&json!(alive.id)], "hook list after DELETE");
}

#[test]
fn hook_list_paginates_with_the_next_cursor() {
    let hookd = Hookd::start();
    let sink = Sink::start();
    let created: HashSet<String> = (0..3)
        .map(|i| hookd.hook(&sink.url(&format!("/p{i}")), "page.*").id)
        .collect();

    let mut seen = Vec::new();
    let mut path = "/v1/hooks?limit=1".to_string();
    for _ in 0..10 {
        let page = hookd.get(&hookd.admin, &path).expect(200);
        let data = page["data"].as_array().expect("data array");
        assert!(data.len() <= 1, "limit=1 gave {} items", data.len());
        seen.extend(data.iter().map(|h| h["id"].as_str().unwrap().to_string()));
        match &page["next"] {
            Value::Null => break,
            Value::String(c) => path = format!("/v1/hooks?limit=1&after={}", urlencode(c)),
            other => panic!("next is neither a string nor null: {other}"),
        }
    }
    let distinct: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(
        distinct.len(),
        seen.len(),
        "a hook was listed twice: {seen:?}"
    );
    assert_eq!(distinct, created, "pages cover every hook exactly once");

    let all = hookd.get(&hookd.admin, "/v1/hooks").expect(200);
    assert_eq!(all["data"].as_array().unwrap().len(), 3);
    assert_eq!(all["next"], Value::Null, "next after the last page");
}
