//! The API's edges: keys and roles, tenant isolation, and bad input of every kind,
//! after which the server must still serve and keep its data.

mod common;

use common::*;
use serde_json::json;

#[test]
fn keys_are_shown_once_and_revoked_at_once() {
    let hookd = Hookd::start();
    let created = hookd
        .post(
            &hookd.admin,
            "/v1/keys",
            &json!({"role": "subscriber", "tenant": "acme"}),
        )
        .expect(201);
    assert_eq!(created["role"], "subscriber");
    assert_eq!(created["tenant"], "acme");
    let id = created["id"].as_str().unwrap();
    let token = created["token"].as_str().unwrap();
    assert!(id.starts_with("key_"));
    hookd.get(token, "/v1/hooks").expect(200);

    let list = hookd.get(&hookd.admin, "/v1/keys").expect(200);
    let listed = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap_or_else(|| panic!("new key not listed: {list}"))
        .clone();
    assert!(
        listed.get("token").is_none(),
        "key list shows the token: {listed}"
    );
    assert!(
        !list.to_string().contains(token),
        "the token appears in the key list"
    );

    let msg = hookd
        .post(&hookd.admin, "/v1/keys", &json!({"role": "subscriber"}))
        .expect_error(400, "invalid_field");
    assert!(
        msg.contains("tenant"),
        "message does not name `tenant`: {msg}"
    );

    let r = hookd.delete(&hookd.admin, &format!("/v1/keys/{id}"));
    assert_eq!(r.status, 204, "revoke: {r}");
    hookd
        .get(token, "/v1/hooks")
        .expect_error(401, "unauthorized");
}

/// hookd keeps the keys of publishes it has seen; a revoked key must still be refused
/// at its next publish, and that publish must leave nothing behind.
#[test]
fn a_publishing_key_is_refused_at_once_when_revoked() {
    // One handler context: every publish here is served by the one that cached the key.
    let hookd = Hookd::options().arg("--handlers").arg("1").start();
    let publisher = hookd.key("publisher", None);
    for _ in 0..3 {
        hookd
            .post(
                &publisher.token,
                "/v1/events",
                &json!({"type": "rk.before"}),
            )
            .expect(202);
    }
    let r = hookd.delete(&hookd.admin, &format!("/v1/keys/{}", publisher.id));
    assert_eq!(r.status, 204, "revoke: {r}");
    hookd
        .post(&publisher.token, "/v1/events", &json!({"type": "rk.after"}))
        .expect_error(401, "unauthorized");
    hookd
        .post(
            &publisher.token,
            "/v1/events",
            &json!([{"type": "rk.after"}, {"type": "rk.after"}]),
        )
        .expect_error(401, "unauthorized");
    let after = hookd.event_ids("rk.after");
    assert!(after.is_empty(), "a refused publish was stored: {after:?}");
    let before = hookd.event_ids("rk.before");
    assert_eq!(before.len(), 3, "{before:?}");
    // Other keys are untouched.
    hookd
        .post(&hookd.admin, "/v1/events", &json!({"type": "rk.admin"}))
        .expect(202);
}

#[test]
fn publisher_publishes_and_reads_but_cannot_manage_hooks_or_keys() {
    let hookd = Hookd::start();
    let sink = Sink::start();
    let hook = hookd.hook(&sink.url("/pub"), "p.*");
    let publisher = hookd.key("publisher", None);
    let r = hookd
        .post(
            &publisher.token,
            "/v1/events",
            &json!({"type": "p.x", "tenant": "acme"}),
        )
        .expect(202);
    assert!(r["id"].as_str().unwrap().starts_with("evt_"));
    let id = hookd.publish("p.y", "1", json!({"k": 1}));
    hookd
        .get(&publisher.token, &format!("/v1/events/{id}"))
        .expect(200);
    hookd.get(&publisher.token, "/v1/hooks").expect(200);
    hookd
        .get(
            &publisher.token,
            &format!("/v1/hooks/{}/deliveries", hook.id),
        )
        .expect(200);

    let denied = [
        hookd.post(
            &publisher.token,
            "/v1/hooks",
            &json!({"target_url": sink.url("/x"), "event": "p.*"}),
        ),
        hookd.patch(
            &publisher.token,
            &format!("/v1/hooks/{}", hook.id),
            &json!({"payload": "full"}),
        ),
        hookd.delete(&publisher.token, &format!("/v1/hooks/{}", hook.id)),
        hookd.get(&publisher.token, "/v1/keys"),
        hookd.post(&publisher.token, "/v1/keys", &json!({"role": "admin"})),
    ];
    for r in &denied {
        r.expect_error(403, "forbidden");
    }
    hookd
        .get(&hookd.admin, &format!("/v1/hooks/{}", hook.id))
        .expect(200);
}

#[test]
fn subscriber_keys_see_only_their_own_tenant() {
    let hookd = Hookd::start();
    let sink = Sink::start();
    let acme = hookd.key("subscriber", Some("acme"));
    let globex = hookd.key("subscriber", Some("globex"));
    let mine = hookd.create_hook_as(
        &acme.token,
        json!({"target_url": sink.url("/acme"), "event": "t.*"}),
    );
    assert_eq!(mine.body["tenant"], "acme", "tenant comes from the key");
    let theirs = hookd.create_hook_as(
        &globex.token,
        json!({"target_url": sink.url("/globex"), "event": "t.*"}),
    );
    assert_eq!(theirs.body["tenant"], "globex");

    let publish = |tenant: &str| {
        let r = hookd.publish_json(json!({"type": "t.x", "tenant": tenant, "data": {"t": tenant}}));
        assert_eq!(r["deliveries"], 1, "{tenant}'s event matched: {r}");
        r["id"].as_str().unwrap().to_string()
    };
    let acme_event = publish("acme");
    let globex_event = publish("globex");
    // A later acme event on the acme hook: everything routed there before it has arrived.
    let acme_marker = publish("acme");
    let reqs = sink.wait_until("the acme marker", |r| {
        r.iter()
            .any(|r| r.path == "/acme" && r.json()["event_id"] == acme_marker.as_str())
    });
    let on_acme: Vec<String> = reqs
        .iter()
        .filter(|r| r.path == "/acme")
        .map(|r| r.json()["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        on_acme,
        [acme_event.clone(), acme_marker.clone()],
        "acme's deliveries"
    );

    // Another tenant's ids answer exactly as ids that do not exist.
    let t = &acme.token;
    let h = format!("/v1/hooks/{}", theirs.id);
    let not_found = [
        hookd.get(t, &h),
        hookd.patch(t, &h, &json!({"payload": "full"})),
        hookd.delete(t, &h),
        hookd.get(t, &format!("{h}/deliveries")),
        hookd.post_empty(t, &format!("{h}/activate")),
        hookd.get(t, &format!("/v1/events/{globex_event}")),
        hookd.get(t, "/v1/hooks/hook_doesnotexist"),
    ];
    for r in &not_found {
        r.expect_error(404, "not_found");
    }
    let theirs_now = hookd.get(&hookd.admin, &h).expect(200);
    assert_eq!(
        theirs_now["payload"], "skinny",
        "acme's PATCH changed globex's hook"
    );

    let list = hookd.get(t, "/v1/hooks").expect(200);
    let ids = data_field(&list, "id");
    assert_eq!(ids, [&json!(mine.id)], "acme's hook list");

    // Its own delivered event it may fetch, with data; the list holds only its tenant's.
    let ev = hookd
        .get(t, &format!("/v1/events/{acme_event}"))
        .expect(200);
    assert_eq!(ev["data"], json!({"t": "acme"}));
    let events = hookd.get(t, "/v1/events?type=t.x").expect(200);
    let ids = data_field(&events, "event_id");
    assert_eq!(
        ids,
        [&json!(acme_marker), &json!(acme_event)],
        "acme's event list"
    );

    hookd
        .post(t, "/v1/events", &json!({"type": "t.x", "tenant": "acme"}))
        .expect_error(403, "forbidden");
    hookd.get(t, "/v1/keys").expect_error(403, "forbidden");

    let r = hookd.delete(&hookd.admin, &format!("/v1/keys/{}", acme.id));
    assert_eq!(r.status, 204);
    hookd.get(t, "/v1/hooks").expect_error(401, "unauthorized");
    hookd
        .get(t, &format!("/v1/hooks/{}", mine.id))
        .expect_error(401, "unauthorized");
}

/// One bad request and the error it must get.
struct Bad {
    req: Raw,
    status: u16,
    /// The error code, when the contract fixes one.
    code: Option<&'static str>,
    /// The field the message must name.
    field: Option<&'static str>,
}

/// A request that must get `status` with error `code`.
fn err(req: Raw, status: u16, code: &'static str) -> Bad {
    Bad {
        req,
        status,
        code: Some(code),
        field: None,
    }
}

/// A request that must get 400 `invalid_field` with a message naming `field`.
fn field(req: Raw, field: &'static str) -> Bad {
    Bad {
        field: Some(field),
        ..err(req, 400, "invalid_field")
    }
}

#[test]
fn bad_input_gets_a_json_error_and_the_server_carries_on() {
    let hookd = Hookd::start();
    let sink = Sink::start();
    let hook = hookd.hook(&sink.url("/still"), "still.*");
    let a = hookd.admin.clone();
    let events = || Raw::post("/v1/events").auth(&a);
    let hooks = || Raw::post("/v1/hooks").auth(&a);
    let target = sink.url("/x");
    let hook_with = |extra: &str| {
        let body = format!(r#"{{"target_url": "{target}", "event": "x", {extra}}}"#);
        hooks().json(body)
    };
    let hook_to = |url: &str| hooks().json(format!(r#"{{"target_url": "{url}", "event": "x"}}"#));
    let patch = || Raw::new("PATCH", &format!("/v1/hooks/{}", hook.id)).auth(&a);
    let two_mib = format!(r#"{{"type": "big", "data": "{}"}}"#, "a".repeat(2 << 20));
    let basic = format!("Basic {a}");

    let cases = [
        err(events().json(r#"{"type": "#), 400, "invalid_json"),
        err(events().json("not json"), 400, "invalid_json"),
        field(events().json("{}"), "type"),
        field(events().json(r#"{"type": 7}"#), "type"),
        field(events().json(r#"{"type": ""}"#), "type"),
        field(
            events().json(r#"{"type": "a", "resource_id": 5}"#),
            "resource_id",
        ),
        // The contract names no code for an empty batch: any 400 error body will do.
        Bad {
            code: None,
            ..err(events().json("[]"), 400, "")
        },
        field(hooks().json(r#"{"event": "x"}"#), "target_url"),
        field(hook_to("not a url"), "target_url"),
        field(hook_to("ftp://127.0.0.1/"), "target_url"),
        field(hook_to("http://u:p@127.0.0.1/"), "target_url"),
        field(hook_with(r#""batch_max": "x""#), "batch_max"),
        field(hook_with(r#""batch_max": 0"#), "batch_max"),
        field(hook_with(r#""batch_max": 1001"#), "batch_max"),
        field(hook_with(r#""payload": "huge""#), "payload"),
        field(patch().json(r#"{"batch_max": "x"}"#), "batch_max"),
        field(Raw::get("/v1/hooks?limit=abc").auth(&a), "limit"),
        err(
            events().body("text/plain", r#"{"type": "a"}"#),
            415,
            "unsupported_media_type",
        ),
        err(
            hooks().body("application/x-www-form-urlencoded", "a=b"),
            415,
            "unsupported_media_type",
        ),
        err(events().json(two_mib), 413, "payload_too_large"),
        err(
            events().json("{}").declared_length(1 << 40),
            413,
            "payload_too_large",
        ),
        err(Raw::get("/v1/nothing-here").auth(&a), 404, "not_found"),
        err(Raw::get("/nothing-here").auth(&a), 404, "not_found"),
        err(
            Raw::new("DELETE", "/v1/events").auth(&a),
            405,
            "method_not_allowed",
        ),
        err(
            Raw::new("PUT", "/v1/hooks").auth(&a).json("{}"),
            405,
            "method_not_allowed",
        ),
        err(Raw::get("/v1/hooks"), 401, "unauthorized"),
        err(
            Raw::get("/v1/hooks").auth("no-such-token"),
            401,
            "unauthorized",
        ),
        err(
            Raw::get("/v1/hooks").header("Authorization", &basic),
            401,
            "unauthorized",
        ),
        err(
            Raw::post("/v1/events").json(r#"{"type": "a"}"#),
            401,
            "unauthorized",
        ),
    ];

    for case in &cases {
        let r = hookd.raw(&case.req);
        let msg = match case.code {
            Some(code) => r.expect_error(case.status, code),
            None => r.expect_error_any(case.status).1,
        };
        if let Some(field) = case.field {
            assert!(
                msg.contains(field),
                "{r}: the message does not name `{field}`"
            );
        }
        hookd.assert_healthy();
        let listed = hookd.get(&hookd.admin, "/v1/hooks").expect(200);
        assert_eq!(
            listed["data"].as_array().map(Vec::len),
            Some(1),
            "after {r}: hook list {listed}"
        );
    }

    let unchanged = hookd
        .get(&hookd.admin, &format!("/v1/hooks/{}", hook.id))
        .expect(200);
    assert_eq!(
        unchanged["batch_max"], 1,
        "a rejected PATCH changed the hook"
    );

    // A charset parameter is still JSON.
    let ok = hookd.raw(&events().body(
        "application/json; charset=utf-8",
        r#"{"type": "still.ok", "resource_id": "1"}"#,
    ));
    assert_eq!(ok.status, 202, "{ok}");
    let later = hookd.publish("still.later", "2", json!(null));
    let delivered = sink.wait_delivered(2);
    assert_eq!(delivered[1]["event_id"], later.as_str());
    assert_eq!(sink.count(), 2, "a rejected request was delivered");
}
