//! Trust (issue 3): intent verification (SPEC §5), the private-target guard at create
//! and at connect time (§6), hook secrets sealed outside the database file, per-key
//! rate limiting and the per-tenant hook limit.

mod common;

use std::time::Instant;

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

/// `POST /v1/hooks` as `token`, whatever the answer.
fn try_create(hookd: &Hookd, token: &str, body: Value) -> Resp {
    hookd.post(token, "/v1/hooks", &body)
}

/// Creates a hook whose handshake must fail: 201, `pending`, a secret, and a
/// `verification.error` saying why. Returns the hook and the error.
#[track_caller]
fn create_pending(hookd: &Hookd, token: &str, body: Value) -> (Hook, String) {
    let r = try_create(hookd, token, body);
    let v = r.expect(201);
    assert_eq!(
        v["status"], "pending",
        "a hook whose handshake failed is not pending: {v}"
    );
    let error = v["verification"]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no verification.error on a pending hook: {v}"))
        .to_string();
    assert!(!error.is_empty(), "empty verification.error: {v}");
    let hook = Hook {
        id: v["id"].as_str().expect("hook id").to_string(),
        secret: v["secret"].as_str().expect("hook secret").to_string(),
        body: v,
    };
    (hook, error)
}

/// The hook as the admin sees it now.
fn hook_now(hookd: &Hookd, id: &str) -> Value {
    hookd
        .get(&hookd.admin, &format!("/v1/hooks/{id}"))
        .expect(200)
}

/// Publishes one event as admin and returns (event id, how many hooks it matched).
fn publish_counted(hookd: &Hookd, body: Value) -> (String, u64) {
    let v = hookd.publish_json(body);
    let id = v["id"].as_str().expect("event id").to_string();
    let n = v["deliveries"]
        .as_u64()
        .unwrap_or_else(|| panic!("no deliveries count: {v}"));
    (id, n)
}

// ---------------------------------------------------------------------------
// Intent verification
// ---------------------------------------------------------------------------

#[test]
fn each_way_of_returning_the_code_verifies_the_hook() {
    let hookd = Hookd::start();
    for (mode, name) in [
        (Handshake::Header, "header"),
        (Handshake::Json, "json"),
        (Handshake::Body, "body"),
    ] {
        let sink = Sink::start();
        sink.set_handshake(mode.clone());
        let v = try_create(
            &hookd,
            &hookd.admin,
            json!({"target_url": sink.url(&format!("/{name}")), "event": format!("hs.{name}")}),
        )
        .expect(201);
        assert_eq!(
            v["status"], "active",
            "the code returned as the {name} did not verify the hook: {v}"
        );
        assert!(
            v.get("verification").is_none(),
            "a verified hook reports a verification problem: {v}"
        );

        // The handshake: POST with the code in X-Hook-Secret and in the body.
        let hs = sink.handshakes();
        assert_eq!(hs.len(), 1, "{name}: handshakes {hs:?}");
        let h = &hs[0];
        assert_eq!(h.method, "POST");
        assert_eq!(h.path, format!("/{name}"));
        let code = h.must_header("x-hook-secret");
        assert!(code.len() >= 16, "a guessable handshake code {code:?}");
        let body = h.json();
        assert_eq!(body["type"], "hook.verify", "handshake body {body}");
        assert_eq!(body["hook_id"], v["id"], "handshake body {body}");
        assert_eq!(body["code"], code, "handshake body {body}");
        assert!(
            sink.requests().is_empty(),
            "the handshake counted as a delivery"
        );

        let (event, n) = publish_counted(&hookd, json!({"type": format!("hs.{name}")}));
        assert_eq!(n, 1, "{name}: a verified hook did not match");
        let got = sink.wait_delivered(1);
        assert_eq!(got[0]["event_id"], event.as_str());
    }
    // Each hook got its own code.
    let codes: std::collections::HashSet<String> = ["a", "b"]
        .iter()
        .map(|p| {
            let sink = Sink::start();
            hookd.hook(&sink.url(&format!("/{p}")), "hs.codes");
            sink.handshake_codes().remove(0)
        })
        .collect();
    assert_eq!(codes.len(), 2, "two handshakes sent the same code");
}

#[test]
fn answers_that_do_not_return_the_code_leave_the_hook_pending_and_unfed() {
    let hookd = Hookd::options().delivery_timeout("1s").start();
    let cases = [
        (Handshake::Status(500), "500 echoing the code"),
        (Handshake::Status(302), "302 echoing the code"),
        (Handshake::Status(404), "404 echoing the code"),
        (Handshake::WrongCode, "200 with another code"),
        (Handshake::Ignore, "200 without the code"),
        (Handshake::Hang, "no answer within the timeout"),
    ];
    let mut pending = Vec::new();
    for (mode, what) in cases {
        let sink = Sink::start();
        sink.set_handshake(mode.clone());
        let started = Instant::now();
        let (hook, error) = create_pending(
            &hookd,
            &hookd.admin,
            json!({"target_url": sink.url("/p"), "event": "pend.*"}),
        );
        assert_eq!(
            sink.handshakes().len(),
            1,
            "{what}: the handshake did not reach the receiver"
        );
        if mode == Handshake::Hang {
            assert!(
                error.to_ascii_lowercase().contains("time"),
                "{what}: the error does not say it timed out: {error}"
            );
            assert!(
                started.elapsed() < std::time::Duration::from_secs(5),
                "{what}: the handshake ignored --delivery-timeout 1s ({:?})",
                started.elapsed()
            );
        }
        assert_eq!(hook_now(&hookd, &hook.id)["status"], "pending", "{what}");
        pending.push((sink, hook, what));
    }

    // A verified hook on the same pattern is the witness that deliveries flow.
    let witness = Sink::start();
    hookd.hook(&witness.url("/w"), "pend.*");
    let (event, n) = publish_counted(&hookd, json!({"type": "pend.x"}));
    assert_eq!(n, 1, "pending hooks were counted as matches of {event}");
    let got = witness.wait_delivered(1);
    assert_eq!(got[0]["event_id"], event.as_str());
    // A later delivery to the witness: anything due to the pending hooks was due first.
    publish_counted(&hookd, json!({"type": "pend.y"}));
    witness.wait_delivered(2);
    for (sink, hook, what) in &pending {
        assert!(
            sink.requests().is_empty(),
            "{what}: the pending hook received {:?}",
            sink.requests()
                .iter()
                .map(Recorded::summary)
                .collect::<Vec<_>>()
        );
        assert!(
            hookd.deliveries(&hook.id, None).is_empty(),
            "{what}: the pending hook has deliveries in its log"
        );
    }
}

#[test]
fn a_pending_hook_is_finished_later_with_the_code_podio_style() {
    let hookd = Hookd::start();
    let sub = hookd.key("subscriber", Some("acme"));
    let sink = Sink::start();
    sink.set_handshake(Handshake::Ignore);
    let (hook, _) = create_pending(
        &hookd,
        &sub.token,
        json!({"target_url": sink.url("/podio"), "event": "po.*"}),
    );
    let code = sink.handshake_codes().remove(0);
    let (before, n) = publish_counted(&hookd, json!({"type": "po.a", "tenant": "acme"}));
    assert_eq!(n, 0, "a pending hook matched {before}");

    let verify = format!("/v1/hooks/{}/verify", hook.id);
    let msg = hookd
        .post(&sub.token, &verify, &json!({"code": format!("{code}x")}))
        .expect_error(400, "invalid_field");
    assert!(
        msg.contains("code"),
        "the message does not name `code`: {msg}"
    );
    hookd
        .post(&sub.token, &verify, &json!({"code": ""}))
        .expect_error(400, "invalid_field");
    hookd
        .post(&sub.token, &verify, &json!({}))
        .expect_error(400, "invalid_field");
    assert_eq!(
        hook_now(&hookd, &hook.id)["status"],
        "pending",
        "a wrong code changed the hook"
    );

    let v = hookd
        .post(&sub.token, &verify, &json!({"code": code}))
        .expect(200);
    assert_eq!(v["status"], "active", "verify answered {v}");
    assert_eq!(v["id"], hook.id.as_str());
    assert_eq!(hook_now(&hookd, &hook.id)["status"], "active");
    hookd
        .post(&sub.token, &verify, &json!({"code": code}))
        .expect_error(409, "nothing_to_verify");

    let (after, n) = publish_counted(&hookd, json!({"type": "po.b", "tenant": "acme"}));
    assert_eq!(n, 1, "the verified hook did not match");
    let got = sink.wait_delivered(1);
    assert_eq!(
        event_ids(&got),
        [after],
        "the event published while pending was delivered"
    );
    assert_eq!(got[0]["sequence"], 1);
    sink.requests()[0].assert_signed(&hook.secret);
}

#[test]
fn only_an_admin_may_skip_the_handshake() {
    let hookd = Hookd::start();
    let sink = Sink::start();
    let sub = hookd.key("subscriber", Some("acme"));

    let skipped = try_create(
        &hookd,
        &hookd.admin,
        json!({"target_url": sink.url("/skip"), "event": "sk.*", "verify": false,
               "tenant": "acme"}),
    )
    .expect(201);
    assert_eq!(skipped["status"], "active", "{skipped}");

    hookd
        .post(
            &sub.token,
            "/v1/hooks",
            &json!({"target_url": sink.url("/sub"), "event": "sk.*", "verify": false}),
        )
        .expect_error(403, "forbidden");
    let acme = hookd.get(&sub.token, "/v1/hooks").expect(200);
    let ids = data_field(&acme, "id");
    assert_eq!(
        ids,
        [&skipped["id"]],
        "the refused create left a hook: {acme}"
    );

    // A subscriber's own hook: PATCHing its URL without the handshake is refused too.
    let own = hookd.create_hook_as(
        &sub.token,
        json!({"target_url": sink.url("/own"), "event": "sk.*"}),
    );
    hookd
        .patch(
            &sub.token,
            &format!("/v1/hooks/{}", own.id),
            &json!({"target_url": sink.url("/moved"), "verify": false}),
        )
        .expect_error(403, "forbidden");
    assert_eq!(hook_now(&hookd, &own.id)["target_url"], sink.url("/own"));

    // The admin's skip sent nothing and the refused requests sent nothing: the only
    // handshake is the one of the subscriber's verified hook, created after them.
    let paths: Vec<String> = sink.handshakes().iter().map(|h| h.path.clone()).collect();
    assert_eq!(paths, ["/own"], "handshakes sent");

    hookd.publish_json(json!({"type": "sk.x", "tenant": "acme"}));
    let got = sink.wait_until("both active hooks fed", |r| r.len() >= 2);
    let mut fed: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
    fed.sort();
    assert_eq!(fed, ["/own", "/skip"]);
}

#[test]
fn trusted_hosts_skip_the_handshake_for_the_host_and_its_subdomains_only() {
    let hookd = Hookd::options()
        .arg("--trust-target-hosts")
        .arg("hooks.example.test")
        .arg("--resolve")
        .arg("hooks.example.test=127.0.0.1")
        .arg("--resolve")
        .arg("eu.hooks.example.test=127.0.0.1")
        .arg("--resolve")
        .arg("evilhooks.example.test=127.0.0.1")
        .arg("--resolve")
        .arg("hooks.example.test.evil.test=127.0.0.1")
        .start();
    let sink = Sink::start();
    // A receiver that cannot answer handshakes, like the platforms the flag is for.
    sink.set_handshake(Handshake::Ignore);
    let url = |host: &str, path: &str| format!("http://{host}:{}{path}", sink.port);

    for (host, path) in [
        ("hooks.example.test", "/trusted"),
        ("HOOKS.example.test.", "/dot"),
        ("eu.hooks.example.test", "/sub"),
    ] {
        let v = try_create(
            &hookd,
            &hookd.admin,
            json!({"target_url": url(host, path), "event": "tr.*"}),
        )
        .expect(201);
        assert_eq!(v["status"], "active", "{host} is trusted: {v}");
    }
    assert!(
        sink.handshakes().is_empty(),
        "a handshake went to a trusted host: {:?}",
        sink.handshakes()
    );

    for host in ["evilhooks.example.test", "hooks.example.test.evil.test"] {
        let (_, error) = create_pending(
            &hookd,
            &hookd.admin,
            json!({"target_url": url(host, "/untrusted"), "event": "tr.*"}),
        );
        assert!(!error.is_empty());
    }
    assert_eq!(
        sink.handshakes().len(),
        2,
        "look-alike hosts must get the handshake"
    );

    let (_, n) = publish_counted(&hookd, json!({"type": "tr.x"}));
    assert_eq!(
        n, 3,
        "the three trusted hooks match, the pending ones do not"
    );
    let got = sink.wait_until("three deliveries", |r| r.len() >= 3);
    let mut paths: Vec<&str> = got.iter().map(|r| r.path.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["/dot", "/sub", "/trusted"]);
}

#[test]
fn a_new_target_url_takes_effect_only_once_verified() {
    let hookd = Hookd::start();
    let old = Sink::start();
    let new = Sink::start();
    let direct = Sink::start();
    new.set_handshake(Handshake::Ignore);
    let hook = hookd.hook(&old.url("/old"), "mv.*");
    let path = format!("/v1/hooks/{}", hook.id);

    let v = hookd
        .patch(&hookd.admin, &path, &json!({"target_url": new.url("/new")}))
        .expect(200);
    assert_eq!(
        v["target_url"],
        old.url("/old"),
        "unverified URL took effect: {v}"
    );
    assert_eq!(v["pending_target_url"], new.url("/new"), "{v}");
    assert!(
        v["verification"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "no verification.error: {v}"
    );
    assert_eq!(v["status"], "active", "{v}");
    let code = new.handshake_codes().remove(0);

    let e1 = hookd.publish("mv.a", "1", json!(null));
    let got = old.wait_delivered(1);
    assert_eq!(
        got[0]["event_id"],
        e1.as_str(),
        "the old URL stopped receiving"
    );

    hookd
        .post(
            &hookd.admin,
            &format!("{path}/verify"),
            &json!({"code": "not-the-code"}),
        )
        .expect_error(400, "invalid_field");
    assert_eq!(hook_now(&hookd, &hook.id)["target_url"], old.url("/old"));

    let v = hookd
        .post(
            &hookd.admin,
            &format!("{path}/verify"),
            &json!({"code": code}),
        )
        .expect(200);
    assert_eq!(v["target_url"], new.url("/new"), "{v}");
    assert!(v.get("pending_target_url").is_none(), "{v}");
    assert_eq!(v["status"], "active");

    let e2 = hookd.publish("mv.b", "2", json!(null));
    let got = new.wait_delivered(1);
    assert_eq!(got[0]["event_id"], e2.as_str());
    assert_eq!(got[0]["sequence"], 2);
    new.requests()[0].assert_signed(&hook.secret);
    assert_eq!(old.count(), 1, "the old URL received after the switch");

    // A URL that answers the handshake takes effect at once.
    let v = hookd
        .patch(
            &hookd.admin,
            &path,
            &json!({"target_url": direct.url("/d")}),
        )
        .expect(200);
    assert_eq!(v["target_url"], direct.url("/d"), "{v}");
    assert!(v.get("pending_target_url").is_none(), "{v}");
    assert!(v.get("verification").is_none(), "{v}");
    assert_eq!(direct.handshakes().len(), 1);
    let e3 = hookd.publish("mv.c", "3", json!(null));
    let got = direct.wait_delivered(1);
    assert_eq!(got[0]["event_id"], e3.as_str());
    assert_eq!(new.count(), 1, "the previous URL received after the switch");
}

#[test]
fn activate_runs_the_handshake_again() {
    let hookd = Hookd::options().disable_after(2).start();

    // An inactive hook (disabled after failures) holding one event.
    let sink = Sink::start();
    let hook = hookd.hook(&sink.url("/act"), "ac.*");
    sink.set_default(500);
    let held = hookd.publish("ac.a", "1", json!(null));
    hookd.wait_hook(&hook.id, "inactive", |r| r.body["status"] == "inactive");
    let attempts = sink.count();

    sink.set_handshake(Handshake::Ignore);
    let activate = format!("/v1/hooks/{}/activate", hook.id);
    let msg = hookd
        .post_empty(&hookd.admin, &activate)
        .expect_error(409, "verification_failed");
    assert!(!msg.is_empty());
    assert_eq!(sink.handshakes().len(), 2, "activate sent no handshake");
    let now = hook_now(&hookd, &hook.id);
    assert_eq!(
        now["status"], "inactive",
        "a failed activate changed it: {now}"
    );
    assert_eq!(now["target_url"], sink.url("/act"));

    sink.set_default(200);
    sink.set_handshake(Handshake::EchoAll);
    let v = hookd.post_empty(&hookd.admin, &activate).expect(200);
    assert_eq!(v["status"], "active", "{v}");
    assert_eq!(sink.handshakes().len(), 3);
    let got = sink.wait_delivered(1);
    assert_eq!(got[0]["event_id"], held.as_str(), "the held event resumed");
    assert!(sink.count() > attempts);

    // A pending hook: activate with a handshake that fails again, then one that works.
    let late = Sink::start();
    late.set_handshake(Handshake::Ignore);
    let (p, _) = create_pending(
        &hookd,
        &hookd.admin,
        json!({"target_url": late.url("/late"), "event": "ac.*"}),
    );
    let activate = format!("/v1/hooks/{}/activate", p.id);
    hookd
        .post_empty(&hookd.admin, &activate)
        .expect_error(409, "verification_failed");
    assert_eq!(hook_now(&hookd, &p.id)["status"], "pending");
    late.set_handshake(Handshake::Json);
    let v = hookd.post_empty(&hookd.admin, &activate).expect(200);
    assert_eq!(v["status"], "active", "{v}");
    let e = hookd.publish("ac.b", "2", json!(null));
    let got = late.wait_delivered(1);
    assert_eq!(got[0]["event_id"], e.as_str());
}

// ---------------------------------------------------------------------------
// Private-target guard
// ---------------------------------------------------------------------------

/// Target URLs that must be refused without `--allow-private-targets`.
const BLOCKED: &[&str] = &[
    "http://127.0.0.1:9/x",
    "http://127.9.9.9/",
    "http://127.1/",
    "http://localhost:9/x",
    "http://LOCALHOST./",
    "http://app.localhost/",
    "http://[::1]:9/x",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0177.0.0.1/",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/",
    "http://100.64.0.1/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://224.0.0.1/",
    "http://[ff02::1]/",
    "http://0.0.0.0/",
    "http://[::]/",
    "http://192.0.2.1/",
    "http://[2001:db8::1]/",
    "https://255.255.255.255/",
    "http://user:pw@example.com/",
    "http://user@example.com/",
    "ftp://example.com/",
    "file:///etc/passwd",
    "http://hookd-test.invalid/",
];

#[test]
fn private_targets_are_refused_at_create_time_in_every_form() {
    let hookd = Hookd::options()
        .strict_targets()
        .arg("--resolve")
        .arg("public.test=1.1.1.1")
        .start();
    let sub = hookd.key("subscriber", Some("acme"));
    let mut wrong = Vec::new();
    for url in BLOCKED {
        for (who, token) in [("admin", &hookd.admin), ("subscriber", &sub.token)] {
            let r = try_create(&hookd, token, json!({"target_url": url, "event": "g.*"}));
            let ok = r.status == 400
                && r.body["error"]["code"] == "invalid_field"
                && r.body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("target_url"));
            if !ok {
                wrong.push(format!("{who} {url}: {r}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "targets not refused with 400 invalid_field naming `target_url`:\n{}",
        wrong.join("\n")
    );
    let all = hookd.get(&hookd.admin, "/v1/hooks").expect(200);
    assert_eq!(all["data"], json!([]), "a refused target left a hook");

    // The guard is not a blanket refusal: a public address passes (no handshake, so
    // nothing leaves the machine)…
    let public = try_create(
        &hookd,
        &hookd.admin,
        json!({"target_url": "http://public.test/h", "event": "g.*", "verify": false}),
    )
    .expect(201);
    assert_eq!(public["status"], "active");
    // …and a PATCH to a private target is refused and changes nothing.
    let path = format!("/v1/hooks/{}", public["id"].as_str().unwrap());
    for url in [
        "http://127.0.0.1:9/x",
        "http://0x7f000001/",
        "http://[::1]/",
    ] {
        let msg = hookd
            .patch(
                &hookd.admin,
                &path,
                &json!({"target_url": url, "verify": false}),
            )
            .expect_error(400, "invalid_field");
        assert!(msg.contains("target_url"), "{url}: {msg}");
    }
    let now = hookd.get(&hookd.admin, &path).expect(200);
    assert_eq!(now["target_url"], "http://public.test/h");
    assert!(now.get("pending_target_url").is_none(), "{now}");
}

#[test]
fn allow_target_net_opens_that_network_only() {
    let hookd = Hookd::options()
        .strict_targets()
        .arg("--allow-target-net")
        .arg("127.0.0.0/8")
        .start();
    let sink = Sink::start();
    let hook = hookd.hook(&sink.url("/lo"), "n.*");
    assert_eq!(sink.handshakes().len(), 1);
    let e = hookd.publish("n.a", "1", json!(null));
    let got = sink.wait_delivered(1);
    assert_eq!(got[0]["event_id"], e.as_str());
    sink.requests()[0].assert_signed(&hook.secret);

    for url in [
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://169.254.169.254/",
        "http://[::1]/",
        "http://[::ffff:10.0.0.1]/",
    ] {
        let msg = try_create(
            &hookd,
            &hookd.admin,
            json!({"target_url": url, "event": "n.*"}),
        )
        .expect_error(400, "invalid_field");
        assert!(msg.contains("target_url"), "{url}: {msg}");
    }
}

#[test]
fn a_name_that_resolves_to_loopback_is_refused_at_connect_time() {
    let sink = Sink::start();
    let mut hookd = Hookd::options()
        .strict_targets()
        .arg("--resolve")
        .arg("rebind.test=1.1.1.1")
        .start();
    let target = format!("http://rebind.test:{}/r", sink.port);
    // Public at create time (no handshake goes out: the admin skips it).
    let hook = try_create(
        &hookd,
        &hookd.admin,
        json!({"target_url": target, "event": "rb.*", "verify": false}),
    )
    .expect(201);
    let id = hook["id"].as_str().unwrap().to_string();

    // The name now points at loopback, where the sink listens on the URL's port.
    hookd.restart_with(|args| {
        let i = args
            .iter()
            .position(|a| a == "rebind.test=1.1.1.1")
            .expect("the --resolve argument");
        args[i] = "rebind.test=127.0.0.1".into();
    });
    let event = hookd.publish("rb.x", "1", json!(null));
    let attempted = wait_until_or(WAIT, || {
        hookd
            .deliveries(&id, None)
            .into_iter()
            .find(|d| d["attempts"].as_array().is_some_and(|a| !a.is_empty()))
    })
    .unwrap_or_else(|| {
        panic!(
            "no attempt logged for {event}; log: {:?}; the sink saw {:?}",
            hookd.deliveries(&id, None),
            sink.requests()
                .iter()
                .map(Recorded::summary)
                .collect::<Vec<_>>()
        )
    });
    for a in attempted["attempts"].as_array().unwrap() {
        assert!(
            a.get("status_code").is_none_or(Value::is_null),
            "an attempt reached a receiver: {attempted}"
        );
        let error = a["error"].as_str().unwrap_or_default();
        assert!(
            error.to_ascii_lowercase().contains("refused"),
            "the attempt's error does not say the target was refused: {attempted}"
        );
    }
    assert!(
        sink.requests().is_empty() && sink.handshakes().is_empty(),
        "the loopback receiver was reached: {:?}",
        sink.requests()
            .iter()
            .map(Recorded::summary)
            .collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------
// Secrets at rest
// ---------------------------------------------------------------------------

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The database file and its WAL and shared-memory companions, concatenated.
fn database_bytes(hookd: &Hookd) -> Vec<u8> {
    let db = hookd.db_path();
    let mut all = std::fs::read(&db).expect("read the database file");
    for suffix in ["-wal", "-shm"] {
        let mut p = db.clone().into_os_string();
        p.push(suffix);
        if let Ok(bytes) = std::fs::read(&p) {
            all.extend(bytes);
        }
    }
    all
}

#[test]
fn the_database_file_alone_reveals_no_secret() {
    let mut hookd = Hookd::start();
    let sink = Sink::start();
    let a = hookd.hook(&sink.url("/a"), "sec.*");
    let b = hookd.hook(&sink.url("/b"), "sec.*");
    let rotated = hookd
        .post_empty(&hookd.admin, &format!("/v1/hooks/{}/rotate-secret", a.id))
        .expect(200);
    let a_new = rotated["secret"].as_str().unwrap().to_string();
    let sub = hookd.key("subscriber", Some("acme"));
    hookd.publish("sec.x", "1", json!(null));
    let got = sink.wait_for(2);
    for r in &got {
        let secret = if r.path == "/a" { &a_new } else { &b.secret };
        r.assert_signed(secret);
    }

    let key_file = hookd.dir().join("hookd.key");
    let meta = std::fs::metadata(&key_file)
        .unwrap_or_else(|e| panic!("no key file beside the database: {e}"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "the key file is readable by others"
        );
    }
    let _ = meta;
    let key_text = std::fs::read_to_string(&key_file).unwrap();

    hookd.kill();
    let bytes = database_bytes(&hookd);
    // The grep works on this file: what is stored in the clear is found.
    assert!(
        contains(&bytes, a.id.as_bytes()),
        "hook id not found: wrong file?"
    );
    assert!(
        contains(&bytes, sink.url("/b").as_bytes()),
        "target URL not found"
    );

    let b64 = base64::engine::general_purpose::STANDARD;
    let mut leaks = Vec::new();
    for (what, secret) in [
        ("hook a's first secret", &a.secret),
        ("hook a's rotated secret", &a_new),
        ("hook b's secret", &b.secret),
    ] {
        let body = secret.strip_prefix("whsec_").unwrap();
        let raw = b64.decode(body).unwrap();
        assert_eq!(raw.len(), 32, "{what} is not 32 random bytes");
        for (form, needle) in [
            ("whsec_ string", secret.as_bytes().to_vec()),
            ("base64 body", body.as_bytes().to_vec()),
            ("raw key bytes", raw),
        ] {
            if contains(&bytes, &needle) {
                leaks.push(format!("{what} ({form})"));
            }
        }
    }
    for (what, token) in [
        ("the admin token", &hookd.admin),
        ("a subscriber token", &sub.token),
    ] {
        if contains(&bytes, token.as_bytes()) {
            leaks.push(what.to_string());
        }
    }
    let key_raw = b64.decode(key_text.trim()).unwrap();
    if contains(&bytes, key_text.trim().as_bytes()) || contains(&bytes, &key_raw) {
        leaks.push("the key file's key".into());
    }
    assert!(leaks.is_empty(), "the database file holds: {leaks:?}");
}

#[test]
fn a_missing_or_foreign_key_file_stops_the_server_from_starting() {
    let mut hookd = Hookd::start();
    let sink = Sink::start();
    let hook = hookd.hook(&sink.url("/k"), "key.*");
    hookd.kill();

    let key_file = hookd.dir().join("hookd.key");
    let kept = hookd.dir().join("kept.key");
    std::fs::rename(&key_file, &kept).unwrap();
    let args = hookd.args().to_vec();
    let missing = hookd.run_to_exit(&args);
    assert!(
        !missing.status.success(),
        "started without its key file: {missing:?}"
    );
    assert!(
        missing.stderr.contains("key file"),
        "the refusal does not mention the key file: {missing:?}"
    );
    assert!(!missing.stdout.contains("listening on"), "{missing:?}");
    assert!(
        !key_file.exists(),
        "a new key file was made for an existing database"
    );

    // Another valid key file is refused too, given by flag...
    let other = hookd.dir().join("other.key");
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    std::fs::write(&other, format!("{}\n", b64.encode(key))).unwrap();
    let mut with_other = args.clone();
    with_other.push("--secrets-key-file".into());
    with_other.push(other.to_string_lossy().into_owned());
    let foreign = hookd.run_to_exit(&with_other);
    assert!(
        !foreign.status.success(),
        "started with a foreign key file: {foreign:?}"
    );
    assert!(foreign.stderr.contains("key file"), "{foreign:?}");
    assert!(!foreign.stdout.contains("listening on"), "{foreign:?}");

    // ...or in the default place.
    std::fs::copy(&other, &key_file).unwrap();
    let swapped = hookd.run_to_exit(&args);
    assert!(
        !swapped.status.success(),
        "started with a swapped key file: {swapped:?}"
    );
    assert!(swapped.stderr.contains("key file"), "{swapped:?}");

    // The right key file, under another name, works; so does the original place.
    let mut with_kept = args.clone();
    with_kept.push("--secrets-key-file".into());
    with_kept.push(kept.to_string_lossy().into_owned());
    hookd.restart_with(|a| *a = with_kept);
    hookd.assert_healthy();
    std::fs::rename(&kept, &key_file).unwrap();
    hookd.restart_with(|a| *a = args);
    let e = hookd.publish("key.x", "1", json!(null));
    let got = sink.wait_delivered(1);
    assert_eq!(got[0]["event_id"], e.as_str());
    sink.requests()[0].assert_signed(&hook.secret);
}

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

#[test]
fn the_rate_limit_answers_429_per_key_and_recovers() {
    let hookd = Hookd::options().arg("--rate-limit").arg("5").start();
    let busy = hookd.key("subscriber", Some("acme"));
    let calm = hookd.key("subscriber", Some("globex"));

    let started = Instant::now();
    let answers: Vec<Resp> = (0..20)
        .map(|_| hookd.get(&busy.token, "/v1/hooks"))
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    let ok = answers.iter().filter(|r| r.status == 200).count();
    let limited: Vec<&Resp> = answers.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        ok + limited.len(),
        20,
        "answers other than 200/429: {:?}",
        answers.iter().map(|r| r.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(answers[0].status, 200, "the first request: {}", answers[0]);
    assert!(
        !limited.is_empty(),
        "20 requests at --rate-limit 5 were all served"
    );
    let allowed = 5 + (5.0 * elapsed).ceil() as usize + 1;
    assert!(
        ok <= allowed,
        "{ok} of 20 served in {elapsed:.2}s at 5/s (at most {allowed} expected)"
    );
    for r in &limited {
        r.expect_error(429, "rate_limited");
        let secs: u64 = r
            .header("retry-after")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("429 without Retry-After seconds: {r}"));
        assert!((1..=60).contains(&secs), "Retry-After {secs}: {r}");
    }

    // Another key has its own bucket; the health check needs none.
    hookd.get(&calm.token, "/v1/hooks").expect(200);
    hookd.assert_healthy();

    let recovered = wait_until_or(WAIT, || {
        let r = hookd.get(&busy.token, "/v1/hooks");
        (r.status == 200).then_some(r)
    });
    assert!(recovered.is_some(), "the limited key never recovered");
}

#[test]
fn a_tenant_holds_at_most_max_hooks_per_tenant() {
    let hookd = Hookd::options()
        .arg("--max-hooks-per-tenant")
        .arg("2")
        .start();
    let sink = Sink::start();
    let acme = hookd.key("subscriber", Some("acme"));
    let globex = hookd.key("subscriber", Some("globex"));
    let body = |p: &str| json!({"target_url": sink.url(p), "event": "m.*"});

    let first = hookd.create_hook_as(&acme.token, body("/1"));
    hookd.create_hook_as(&acme.token, body("/2"));
    let msg = try_create(&hookd, &acme.token, body("/3")).expect_error(409, "hook_limit_reached");
    assert!(!msg.is_empty());
    let mut admin_body = body("/3");
    admin_body["tenant"] = json!("acme");
    try_create(&hookd, &hookd.admin, admin_body).expect_error(409, "hook_limit_reached");
    let listed = hookd.get(&acme.token, "/v1/hooks").expect(200);
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(2), "{listed}");

    // Another tenant is not affected; a deleted hook frees its place.
    hookd.create_hook_as(&globex.token, body("/g"));
    let r = hookd.delete(&acme.token, &format!("/v1/hooks/{}", first.id));
    assert_eq!(r.status, 204, "{r}");
    hookd.create_hook_as(&acme.token, body("/4"));
}

// ---------------------------------------------------------------------------
// The outgoing client and the log
// ---------------------------------------------------------------------------

#[test]
fn the_outgoing_client_ignores_proxy_variables_and_never_follows_redirects() {
    let proxy = Sink::start();
    let p = proxy.url("");
    let mut opts = Hookd::options();
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        opts = opts.env(var, &p);
    }
    let hookd = opts.start();
    let sink = Sink::start();
    let elsewhere = Sink::start();

    let hook = hookd.hook(&sink.url("/direct"), "px.*");
    assert_eq!(
        sink.handshakes().len(),
        1,
        "the handshake did not come direct"
    );

    // A handshake answered by a redirect to a receiver that would return the code.
    let redirecting = Sink::start();
    redirecting.set_handshake(Handshake::Redirect(elsewhere.url("/verify-here")));
    let (_, error) = create_pending(
        &hookd,
        &hookd.admin,
        json!({"target_url": redirecting.url("/r"), "event": "px.*"}),
    );
    assert!(
        error.contains("302"),
        "the reason does not say 302: {error}"
    );

    // A delivery answered by a redirect: a failed attempt, retried at the same URL.
    sink.script([Reply::status(302).header("Location", &elsewhere.url("/moved"))]);
    let e = hookd.publish("px.a", "1", json!(null));
    let got = sink.wait_delivered(1);
    assert_eq!(got[0]["event_id"], e.as_str());
    let d = hookd.wait_delivery(&hook.id, &e, "delivered");
    let codes: Vec<&Value> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status_code"])
        .collect();
    assert_eq!(codes, [&json!(302), &json!(200)], "attempts: {d}");

    assert!(
        elsewhere.requests().is_empty() && elsewhere.handshakes().is_empty(),
        "a redirect was followed: {:?} {:?}",
        elsewhere.requests(),
        elsewhere.handshakes()
    );
    assert!(
        proxy.requests().is_empty() && proxy.handshakes().is_empty(),
        "the proxy from the environment was used: {:?} {:?}",
        proxy.requests(),
        proxy.handshakes()
    );
}

#[test]
fn tokens_secrets_and_handshake_codes_stay_out_of_the_log() {
    // Debug, the level an operator turns on to investigate. (At trace, ureq's wire dump
    // shows the handshake's X-Hook-Secret header, in hex.)
    let hookd = Hookd::options().env("RUST_LOG", "debug").start();
    let sink = Sink::start();
    let sub = hookd.key("subscriber", Some("acme"));
    let hook = hookd.create_hook_as(
        &sub.token,
        json!({"target_url": sink.url("/log"), "event": "lg.*"}),
    );
    let rotated = hookd
        .post_empty(&sub.token, &format!("/v1/hooks/{}/rotate-secret", hook.id))
        .expect(200);
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    let late = Sink::start();
    late.set_handshake(Handshake::Ignore);
    let (pending, _) = create_pending(
        &hookd,
        &sub.token,
        json!({"target_url": late.url("/late"), "event": "lg.*"}),
    );
    let code = late.handshake_codes().remove(0);
    hookd
        .post(
            &sub.token,
            &format!("/v1/hooks/{}/verify", pending.id),
            &json!({"code": code}),
        )
        .expect(200);
    let bogus = format!("bogus-{}", random_hex(16));
    hookd
        .get(&bogus, "/v1/hooks")
        .expect_error(401, "unauthorized");
    hookd.publish_json(json!({"type": "lg.x", "tenant": "acme"}));
    sink.wait_delivered(1);
    late.wait_delivered(1);

    let log = wait_until("the log to mention the verified hook", WAIT, || {
        let log = hookd.stderr();
        log.contains(&pending.id).then_some(log)
    });
    let mut secrets = vec![
        ("the admin token", hookd.admin.clone()),
        ("a subscriber token", sub.token.clone()),
        ("an unknown token presented", bogus),
        ("a handshake code", code),
        ("the first handshake code", sink.handshake_codes().remove(0)),
    ];
    for (what, s) in [
        ("a hook secret", &hook.secret),
        ("a rotated secret", &new_secret),
        ("the verified hook's secret", &pending.secret),
    ] {
        secrets.push((what, s.clone()));
        secrets.push((what, s.strip_prefix("whsec_").unwrap().to_string()));
    }
    let leaked: Vec<&str> = secrets
        .iter()
        .filter(|(_, s)| log.contains(s.as_str()))
        .map(|(what, _)| *what)
        .collect();
    assert!(
        leaked.is_empty(),
        "the log (RUST_LOG=debug) holds: {leaked:?}"
    );
}
