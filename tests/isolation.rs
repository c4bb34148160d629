//! Tenant isolation (issue 3, §5) as one table: every endpoint × every role, against
//! resources owned by tenant A. Subscriber B must get, for A's ids, exactly the answer
//! a nonexistent id gets; publishers may not manage hooks or keys; subscribers may not
//! publish or manage keys. On failure the whole matrix is printed.

mod common;

use std::cell::RefCell;
use std::fmt::Write as _;

use common::*;
use serde_json::{json, Value};

const ROLES: [&str; 4] = ["admin", "publisher", "subscriber A", "subscriber B"];

/// Which ids a request names: tenant A's, or ones that never existed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ids {
    TenantA,
    Ghost,
}

/// Everything the cells work on.
struct World {
    hookd: Hookd,
    sink: Sink,
    tokens: [String; 4],
    sub_a: Key,
    /// Tenant A's hook, one of its delivered deliveries and its event.
    hook: String,
    delivery: String,
    event: String,
    /// Subscriber B's own hook (B's list must show it, and nothing of A's).
    b_hook: String,
    /// A key the non-admin roles try to revoke; it must still work afterwards.
    victim: Key,
    ghost_hook: String,
    ghost_delivery: String,
    ghost_event: String,
    ghost_key: String,
    /// Hooks made for cells that delete successfully.
    made: RefCell<Vec<String>>,
}

impl World {
    fn build() -> World {
        let hookd = Hookd::start();
        let sink = Sink::start();
        let publisher = hookd.key("publisher", None);
        let sub_a = hookd.key("subscriber", Some("acme"));
        let sub_b = hookd.key("subscriber", Some("globex"));
        let victim = hookd.key("subscriber", Some("acme"));
        let hook = hookd
            .create_hook_as(
                &sub_a.token,
                json!({"target_url": sink.url("/a"), "event": "iso.*"}),
            )
            .id;
        let b_hook = hookd
            .create_hook_as(
                &sub_b.token,
                json!({"target_url": sink.url("/b"), "event": "iso.*"}),
            )
            .id;
        let event = hookd
            .publish_json(json!({"type": "iso.a", "tenant": "acme", "data": {"x": 1}}))["id"]
            .as_str()
            .unwrap()
            .to_string();
        let delivery = hookd.wait_delivery(&hook, &event, "delivered")["id"]
            .as_str()
            .unwrap()
            .to_string();
        World {
            tokens: [
                hookd.admin.clone(),
                publisher.token,
                sub_a.token.clone(),
                sub_b.token,
            ],
            hookd,
            sink,
            sub_a,
            hook,
            delivery,
            event,
            b_hook,
            victim,
            ghost_hook: format!("hook_{}", random_hex(13)),
            ghost_delivery: format!("dlv_{}", random_hex(13)),
            ghost_event: format!("evt_{}", random_hex(13)),
            ghost_key: format!("key_{}", random_hex(13)),
            made: RefCell::new(Vec::new()),
        }
    }

    /// A's hook; a fresh one of A's when the request is expected to delete it.
    fn hook(&self, ids: Ids, consumes: bool) -> String {
        match (ids, consumes) {
            (Ids::Ghost, _) => self.ghost_hook.clone(),
            (Ids::TenantA, false) => self.hook.clone(),
            (Ids::TenantA, true) => {
                let id = self
                    .hookd
                    .create_hook_as(
                        &self.sub_a.token,
                        json!({"target_url": self.sink.url("/fresh"), "event": "fresh.*"}),
                    )
                    .id;
                self.made.borrow_mut().push(id.clone());
                id
            }
        }
    }

    fn delivery(&self, ids: Ids) -> &str {
        match ids {
            Ids::TenantA => &self.delivery,
            Ids::Ghost => &self.ghost_delivery,
        }
    }

    fn event(&self, ids: Ids) -> &str {
        match ids {
            Ids::TenantA => &self.event,
            Ids::Ghost => &self.ghost_event,
        }
    }

    /// A real key (a fresh one when the request is expected to revoke it).
    fn key(&self, ids: Ids, consumes: bool) -> String {
        match (ids, consumes) {
            (Ids::Ghost, _) => self.ghost_key.clone(),
            (Ids::TenantA, false) => self.victim.id.clone(),
            (Ids::TenantA, true) => self.hookd.key("subscriber", Some("acme")).id,
        }
    }

    /// What must not change while publisher and subscriber B try everything: A's hook,
    /// its delivery log, and the keys.
    fn snapshot(&self) -> Value {
        let h = &self.hookd;
        json!({
            "hook": h.get(&h.admin, &format!("/v1/hooks/{}", self.hook)).expect(200),
            "deliveries": h.deliveries(&self.hook, None),
            "hooks": h.get(&h.admin, "/v1/hooks?tenant=acme").expect(200),
            "keys": h.get(&h.admin, "/v1/keys?limit=500").expect(200),
        })
    }
}

type Run = Box<dyn Fn(&World, &str, Ids, bool) -> Resp>;

struct Case {
    name: &'static str,
    /// The status for admin, publisher, subscriber A, subscriber B on tenant A's ids.
    expect: [u16; 4],
    /// Names an id: also run with nonexistent ids.
    by_id: bool,
    /// A list: the id of A's that every role but subscriber B must see in it.
    shows: Option<fn(&World) -> String>,
    run: Run,
}

fn case(name: &'static str, expect: [u16; 4], by_id: bool, run: Run) -> Case {
    Case {
        name,
        expect,
        by_id,
        shows: None,
        run,
    }
}

fn cases() -> Vec<Case> {
    let hook_path = |w: &World, ids: Ids, consumes: bool, tail: &str| {
        format!("/v1/hooks/{}{tail}", w.hook(ids, consumes))
    };
    vec![
        case(
            "GET /v1/hooks/{id}",
            [200, 200, 200, 404],
            true,
            Box::new(move |w, t, ids, _| w.hookd.get(t, &hook_path(w, ids, false, ""))),
        ),
        case(
            "PATCH /v1/hooks/{id}",
            [200, 403, 200, 404],
            true,
            Box::new(move |w, t, ids, _| {
                w.hookd.patch(
                    t,
                    &hook_path(w, ids, false, ""),
                    &json!({"batch_max": 7, "payload": "full"}),
                )
            }),
        ),
        case(
            "DELETE /v1/hooks/{id}",
            [204, 403, 204, 404],
            true,
            Box::new(move |w, t, ids, ok| w.hookd.delete(t, &hook_path(w, ids, ok, ""))),
        ),
        case(
            "GET /v1/hooks/{id}/deliveries",
            [200, 200, 200, 404],
            true,
            Box::new(move |w, t, ids, _| {
                w.hookd
                    .get(t, &hook_path(w, ids, false, "/deliveries?status=delivered"))
            }),
        ),
        case(
            "POST /v1/hooks/{id}/activate",
            [200, 403, 200, 404],
            true,
            Box::new(move |w, t, ids, _| {
                w.hookd
                    .post_empty(t, &hook_path(w, ids, false, "/activate"))
            }),
        ),
        case(
            "POST /v1/hooks/{id}/verify",
            [409, 403, 409, 404],
            true,
            Box::new(move |w, t, ids, _| {
                w.hookd.post(
                    t,
                    &hook_path(w, ids, false, "/verify"),
                    &json!({"code": "0123456789abcdef"}),
                )
            }),
        ),
        case(
            "POST /v1/hooks/{id}/rotate-secret",
            [200, 403, 200, 404],
            true,
            Box::new(move |w, t, ids, _| {
                w.hookd
                    .post_empty(t, &hook_path(w, ids, false, "/rotate-secret"))
            }),
        ),
        case(
            "POST /v1/hooks/{id}/replay",
            [202, 403, 202, 404],
            true,
            Box::new(move |w, t, ids, _| {
                w.hookd.post(
                    t,
                    &hook_path(w, ids, false, "/replay"),
                    &json!({"since": rfc3339_now(-3_600_000)}),
                )
            }),
        ),
        case(
            "POST /v1/deliveries/{id}/retry",
            [202, 403, 202, 404],
            true,
            Box::new(|w, t, ids, _| {
                w.hookd
                    .post_empty(t, &format!("/v1/deliveries/{}/retry", w.delivery(ids)))
            }),
        ),
        case(
            "GET /v1/events/{id}",
            [200, 200, 200, 404],
            true,
            Box::new(|w, t, ids, _| w.hookd.get(t, &format!("/v1/events/{}", w.event(ids)))),
        ),
        Case {
            shows: Some(|w| w.hook.clone()),
            ..case(
                "GET /v1/hooks",
                [200, 200, 200, 200],
                false,
                Box::new(|w, t, _, _| w.hookd.get(t, "/v1/hooks?limit=500")),
            )
        },
        Case {
            shows: Some(|w| w.hook.clone()),
            ..case(
                "GET /v1/hooks?tenant=acme",
                [200, 200, 200, 200],
                false,
                Box::new(|w, t, _, _| w.hookd.get(t, "/v1/hooks?tenant=acme&limit=500")),
            )
        },
        Case {
            shows: Some(|w| w.event.clone()),
            ..case(
                "GET /v1/events?tenant=acme",
                [200, 200, 200, 200],
                false,
                Box::new(|w, t, _, _| w.hookd.get(t, "/v1/events?tenant=acme&limit=500")),
            )
        },
        case(
            "POST /v1/hooks (tenant acme)",
            [201, 403, 201, 403],
            false,
            Box::new(|w, t, _, _| {
                w.hookd.post(
                    t,
                    "/v1/hooks",
                    &json!({"target_url": w.sink.url("/new"), "event": "new.*",
                            "tenant": "acme"}),
                )
            }),
        ),
        case(
            "POST /v1/keys",
            [201, 403, 403, 403],
            false,
            Box::new(|w, t, _, _| {
                w.hookd.post(
                    t,
                    "/v1/keys",
                    &json!({"role": "subscriber", "tenant": "acme"}),
                )
            }),
        ),
        case(
            "GET /v1/keys",
            [200, 403, 403, 403],
            false,
            Box::new(|w, t, _, _| w.hookd.get(t, "/v1/keys")),
        ),
        case(
            "DELETE /v1/keys/{id}",
            [204, 403, 403, 403],
            true,
            Box::new(|w, t, ids, ok| w.hookd.delete(t, &format!("/v1/keys/{}", w.key(ids, ok)))),
        ),
        case(
            "POST /v1/events (tenant acme)",
            [202, 202, 403, 403],
            false,
            Box::new(|w, t, _, _| {
                w.hookd.post(
                    t,
                    "/v1/events",
                    // A type no hook matches, so the delivery log stays as it was.
                    &json!({"type": "unmatched.b", "tenant": "acme"}),
                )
            }),
        ),
    ]
}

/// The error code a status must carry.
fn code_for(status: u16) -> Option<&'static str> {
    match status {
        403 => Some("forbidden"),
        404 => Some("not_found"),
        _ => None,
    }
}

/// One cell's verdict: `None` when right, else what is wrong.
fn judge(w: &World, c: &Case, role: usize, r: &Resp) -> Option<String> {
    let want = c.expect[role];
    if r.status != want {
        return Some(format!("{} (want {want})", r.status));
    }
    if let Some(code) = code_for(want) {
        if r.body["error"]["code"] != code {
            return Some(format!("{want} but code {}", r.body["error"]["code"]));
        }
    }
    if let Some(shows) = c.shows {
        let id = shows(w);
        let seen = r.raw.windows(id.len()).any(|x| x == id.as_bytes());
        if role == 3 && seen {
            return Some(format!("{want} but lists A's {id}"));
        }
        if role != 3 && !seen {
            return Some(format!("{want} but omits A's {id}"));
        }
    }
    None
}

/// `(status, error code, message)`: what tells two error answers apart.
fn signature(r: &Resp) -> (u16, Value, Value) {
    (
        r.status,
        r.body["error"]["code"].clone(),
        r.body["error"]["message"].clone(),
    )
}

#[test]
fn every_endpoint_for_every_role_keeps_tenants_apart() {
    let w = World::build();
    let cases = cases();
    // cells[case][role]: (shown, failure)
    let mut cells: Vec<[(String, Option<String>); 4]> = vec![Default::default(); cases.len()];
    let mut ghosts: Vec<[(String, Option<String>); 4]> = vec![Default::default(); cases.len()];
    let mut problems = Vec::new();

    // Those who must not change A's things go first, each checked against a snapshot.
    for role in [3, 1, 2, 0] {
        let before = (role == 3 || role == 1).then(|| w.snapshot());
        for (i, c) in cases.iter().enumerate() {
            let token = &w.tokens[role];
            let consumes = (200..300).contains(&c.expect[role]);
            let r = (c.run)(&w, token, Ids::TenantA, consumes);
            let failure = judge(&w, c, role, &r);
            if let Some(f) = &failure {
                problems.push(format!("{} as {}: {f}: {r}", c.name, ROLES[role]));
            }
            cells[i][role] = (r.status.to_string(), failure);

            if c.by_id {
                // A nonexistent id: 404, or 403 where the role may not do this at all.
                let g = (c.run)(&w, token, Ids::Ghost, false);
                let want = if c.expect[role] == 403 { 403 } else { 404 };
                let mut failure = (g.status != want).then(|| format!("{} (want {want})", g.status));
                if role == 3 && signature(&g) != signature(&r) {
                    failure = Some(format!(
                        "A's id and a nonexistent id answer differently: {r} vs {g}"
                    ));
                }
                if let Some(f) = &failure {
                    problems.push(format!("{} as {} (ghost id): {f}", c.name, ROLES[role]));
                }
                ghosts[i][role] = (g.status.to_string(), failure);
            }
        }
        if let Some(before) = before {
            let after = w.snapshot();
            if before != after {
                problems.push(format!(
                    "{} changed tenant A's state:\nbefore {before:#}\nafter {after:#}",
                    ROLES[role]
                ));
            }
        }
    }

    // The victim key still works; B still sees its own hook.
    let victim = w.hookd.get(&w.victim.token, "/v1/hooks");
    if victim.status != 200 {
        problems.push(format!("a refused revoke revoked the key: {victim}"));
    }
    let b_list = w.hookd.get(&w.tokens[3], "/v1/hooks").expect(200);
    if !b_list.to_string().contains(&w.b_hook) {
        problems.push(format!("subscriber B does not see its own hook: {b_list}"));
    }

    if !problems.is_empty() {
        let mut table = String::new();
        let width = cases.iter().map(|c| c.name.len()).max().unwrap_or(0);
        table.push_str("each cell: status for tenant A's ids | status for nonexistent ids\n");
        let _ = write!(table, "{:width$}", "endpoint");
        for role in ROLES {
            let _ = write!(table, " | {role:>21}");
        }
        table.push('\n');
        for (i, c) in cases.iter().enumerate() {
            let _ = write!(table, "{:width$}", c.name);
            for role in 0..4 {
                let mark = |(s, f): &(String, Option<String>)| match (s.is_empty(), f) {
                    (true, _) => "-".to_string(),
                    (false, None) => format!("{s} ok"),
                    (false, Some(_)) => format!("{s} XX"),
                };
                let cell = format!("{} | {}", mark(&cells[i][role]), mark(&ghosts[i][role]));
                let _ = write!(table, " | {cell:>21}");
            }
            table.push('\n');
        }
        panic!(
            "tenant isolation matrix ({} problem(s)):\n{table}\n{}",
            problems.len(),
            problems.join("\n")
        );
    }
}
