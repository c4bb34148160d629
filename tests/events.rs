//! Events: idempotent publish, batch publish, fetching one event and the newest-first
//! "perform list".

mod common;

use common::*;
use serde_json::{json, Value};

#[test]
fn idempotent_publish_returns_the_first_result_and_delivers_once() {
    let hookd = Hookd::start();
    let sink = Sink::start();
    hookd.hook(&sink.url("/idem"), "idem.*");
    let key = format!("idem-{}", random_hex(8));
    let body = json!({"type": "idem.test", "resource_id": "1", "data": {"x": 1}});
    let publish = |b: &Value| {
        hookd.request(
            "POST",
            "/v1/events",
            Some(&hookd.admin),
            &[("Idempotency-Key", &key)],
            Some(b),
        )
    };

    let first = publish(&body).expect(202);
    let again = publish(&body).expect(202);
    assert_eq!(again, first, "a repeat with the same Idempotency-Key");
    let header_id = first["id"].as_str().unwrap().to_string();

    // The same through the `idempotency_key` field.
    let field_key = format!("field-{}", random_hex(8));
    let with_field =
        json!({"type": "idem.field", "resource_id": "2", "idempotency_key": field_key});
    let f1 = hookd.publish_json(with_field.clone());
    let f2 = hookd.publish_json(with_field);
    assert_eq!(
        f1["id"], f2["id"],
        "a repeat with the same idempotency_key field"
    );
    let field_id = f1["id"].as_str().unwrap().to_string();

    // Inside an array, the repeated event answers its first result and is not stored
    // again; the event beside it is new.
    let mixed = hookd.publish_json(json!([
        {"type": "idem.field", "resource_id": "2", "idempotency_key": field_key},
        {"type": "idem.fresh", "resource_id": "3"}
    ]));
    assert_eq!(mixed[0], f1, "the repeated event inside an array: {mixed}");
    assert_eq!(
        mixed[1]["deliveries"], 1,
        "the new event beside it: {mixed}"
    );
    let fresh_id = mixed[1]["id"].as_str().unwrap().to_string();
    assert_ne!(fresh_id, field_id);

    // Reusing the key for a different request is a conflict, and publishes nothing.
    let changed = json!({"type": "idem.test", "resource_id": "1", "data": {"x": 2}});
    publish(&changed).expect_error(409, "idempotency_conflict");

    // Once a later event has arrived, every earlier one has too (per-hook order).
    let marker = hookd.publish("idem.marker", "m", json!(null));
    let reqs = sink.wait_until("the marker", |r| {
        delivered_events(r)
            .iter()
            .any(|e| e["event_id"] == marker.as_str())
    });
    let delivered = event_ids(&delivered_events(&reqs));
    assert_eq!(
        delivered,
        [header_id, field_id, fresh_id, marker],
        "deliveries"
    );
    assert_eq!(reqs.len(), 4, "requests to the sink");
}

#[test]
fn array_publish_commits_all_events_in_order() {
    let hookd = Hookd::start();
    let sink = Sink::start();
    hookd.hook(&sink.url("/arr"), "arr.*");
    let results = hookd.publish_json(json!([
        {"type": "arr.a", "resource_id": "1"},
        {"type": "arr.b", "resource_id": "2"},
        {"type": "nomatch", "resource_id": "3"}
    ]));
    let results = results
        .as_array()
        .unwrap_or_else(|| panic!("array publish answered {results}"));
    assert_eq!(results.len(), 3);
    let deliveries: Vec<&Value> = results.iter().map(|r| &r["deliveries"]).collect();
    assert_eq!(deliveries, [&json!(1), &json!(1), &json!(0)]);
    let events = sink.wait_delivered(2);
    assert_eq!(events[0]["event_id"], results[0]["id"]);
    assert_eq!(events[1]["event_id"], results[1]["id"]);
    assert_eq!(seqs(&events), [1, 2]);
}

/// The type index is written a little after each publish (ARCHITECTURE.md): events
/// published just before a kill, and after the restart, are all listed by type, newest
/// first, page by page, whether or not they had entered it.
#[test]
fn a_type_listing_keeps_every_event_across_a_kill() {
    let mut hookd = Hookd::start();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(hookd.publish("kill.me", &format!("k{i}"), json!({"i": i})));
        hookd.publish("kill.other", &format!("o{i}"), json!({"i": i}));
    }
    hookd.restart();
    ids.push(hookd.publish("kill.me", "k3", json!({"i": 3})));
    ids.reverse();

    let mut listed = Vec::new();
    let mut path = "/v1/events?type=kill.me&limit=2".to_string();
    loop {
        let page = hookd.get(&hookd.admin, &path).expect(200);
        for e in page["data"].as_array().expect("data array") {
            assert_eq!(e["event"], "kill.me", "{page}");
            listed.push(e["event_id"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(next) => {
                path = format!("/v1/events?type=kill.me&limit=2&after={}", urlencode(next))
            }
            None => break,
        }
    }
    assert_eq!(listed, ids, "every event once, newest first");
}

#[test]
fn get_event_returns_its_data() {
    let hookd = Hookd::start();
    let data = json!({"name": "widget", "price": 9.5, "tags": ["x"]});
    let id = hookd.publish("item.create", "123", data.clone());
    let ev = hookd
        .get(&hookd.admin, &format!("/v1/events/{id}"))
        .expect(200);
    assert_eq!(ev["id"], id.as_str());
    assert_eq!(ev["type"], "item.create");
    assert_eq!(ev["tenant"], "default");
    assert_eq!(ev["resource_id"], "123");
    assert_eq!(ev["data"], data);
    assert_rfc3339_utc(&ev["created_at"], "created_at");

    hookd
        .get(&hookd.admin, "/v1/events/evt_doesnotexist")
        .expect_error(404, "not_found");
}

#[test]
fn event_list_is_newest_first_in_the_full_delivery_shape() {
    let hookd = Hookd::start();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(hookd.publish("list.me", &format!("r{i}"), json!({"i": i})));
        hookd.publish("list.other", &format!("o{i}"), json!({"i": i}));
    }

    let page = hookd
        .get(&hookd.admin, "/v1/events?type=list.me&limit=3")
        .expect(200);
    let data = page["data"].as_array().expect("data array");
    assert_eq!(data.len(), 3, "limit=3: {page}");
    let got: Vec<&Value> = data.iter().map(|e| &e["event_id"]).collect();
    assert_eq!(
        got,
        [&json!(ids[4]), &json!(ids[3]), &json!(ids[2])],
        "newest first"
    );
    for (e, i) in data.iter().zip([4, 3, 2]) {
        assert_eq!(e["event"], "list.me");
        assert_eq!(e["resource_id"], format!("r{i}"));
        assert_eq!(e["data"], json!({"i": i}));
        assert_rfc3339_utc(&e["created_at"], "created_at");
    }

    // The cursor reaches the two older ones and nothing of the other type.
    let next = page["next"]
        .as_str()
        .expect("next cursor after a full page");
    let rest = hookd
        .get(
            &hookd.admin,
            &format!("/v1/events?type=list.me&limit=3&after={}", urlencode(next)),
        )
        .expect(200);
    let got = data_field(&rest, "event_id");
    assert_eq!(got, [&json!(ids[1]), &json!(ids[0])], "second page");
}
