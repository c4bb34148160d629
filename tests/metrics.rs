//! `GET /metrics` (issue 6): parsed as the Prometheus text format by a small parser
//! here, and checked against traffic whose effect is known exactly: events published,
//! a delivered and a failed delivery, a hook disabled by failures holding its events,
//! and requests by route template.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// A parser for the Prometheus text exposition format (0.0.4)
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default, Clone)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<Sample>,
}

#[derive(Debug, Clone)]
struct Scrape {
    families: BTreeMap<String, Family>,
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// `{a="x",b="y\"z"}` (the braces included) → labels; the rest of the line.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("labels must start with {")?;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("a label without =")?;
        let name = rest[..eq].trim();
        if !is_name(name) || name.contains(':') {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("a label value must be quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} given twice"));
        }
        rest = &rest[end + 1..];
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("labels must be separated by commas".into());
        }
    }
}

/// Parses the whole exposition, failing on anything the format does not allow: a
/// sample before its family's TYPE, a HELP or TYPE given twice, a bad value.
fn parse(text: &str) -> Scrape {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let fail = |why: String| -> ! { panic!("/metrics line {}: {why}: {line:?}", n + 1) };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), help) => {
                    if !is_name(name) {
                        fail(format!("bad metric name {name:?}"));
                    }
                    let f = families.entry(name.to_string()).or_default();
                    if f.help.is_some() {
                        fail("HELP given twice".into());
                    }
                    f.help = Some(help.unwrap_or("").to_string());
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !matches!(
                        kind,
                        "counter" | "gauge" | "histogram" | "summary" | "untyped"
                    ) {
                        fail(format!("unknown type {kind}"));
                    }
                    let f = families.entry(name.to_string()).or_default();
                    if f.kind.is_some() {
                        fail("TYPE given twice".into());
                    }
                    if !f.samples.is_empty() {
                        fail("TYPE after the family's samples".into());
                    }
                    f.kind = Some(kind.to_string());
                }
                _ => {} // Any other comment is allowed.
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !is_name(name) {
            fail(format!("bad metric name {name:?}"));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).unwrap_or_else(|e| fail(e))
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value = fields
            .next()
            .and_then(parse_value)
            .unwrap_or_else(|| fail("no value".into()));
        if let Some(ts) = fields.next() {
            if ts.parse::<i64>().is_err() {
                fail(format!("bad timestamp {ts}"));
            }
        }
        if fields.next().is_some() {
            fail("trailing fields".into());
        }
        // The family: the name itself, or a histogram's `_bucket`, `_sum`, `_count`.
        let family = if families.get(name).is_some_and(|f| f.kind.is_some()) {
            name.to_string()
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|s| name.strip_suffix(s))
                .find(|base| {
                    families
                        .get(*base)
                        .is_some_and(|f| matches!(f.kind.as_deref(), Some("histogram" | "summary")))
                })
                .unwrap_or_else(|| fail("a sample before its family's TYPE line".into()))
                .to_string()
        };
        families.get_mut(&family).unwrap().samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Scrape { families }
}

impl Scrape {
    fn family(&self, name: &str) -> &Family {
        self.families
            .get(name)
            .unwrap_or_else(|| panic!("/metrics has no family {name}"))
    }

    /// The one sample called `name` with exactly these labels.
    #[track_caller]
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            panic!(
                "/metrics has no sample {name}{labels:?}; it has:\n{}",
                self.families
                    .values()
                    .flat_map(|f| &f.samples)
                    .filter(|s| s.name == name)
                    .map(|s| format!("  {}{:?} {}", s.name, s.labels, s.value))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<&Sample> = self
            .families
            .values()
            .flat_map(|f| &f.samples)
            .filter(|s| s.name == name && s.labels == want)
            .collect();
        assert!(
            found.len() <= 1,
            "{name}{labels:?} appears {} times",
            found.len()
        );
        found.first().map(|s| s.value)
    }

    /// Checks a histogram: buckets in increasing `le` order with cumulative counts,
    /// ending with `+Inf` equal to `_count`, and a `_sum`. Returns `_count`.
    #[track_caller]
    fn histogram(&self, name: &str) -> f64 {
        let f = self.family(name);
        assert_eq!(f.kind.as_deref(), Some("histogram"), "{name} type");
        let buckets: Vec<(f64, f64)> = f
            .samples
            .iter()
            .filter(|s| s.name == format!("{name}_bucket"))
            .map(|s| {
                let le = s
                    .labels
                    .get("le")
                    .unwrap_or_else(|| panic!("{name} bucket without le: {s:?}"));
                (parse_value(le).expect("le is a number"), s.value)
            })
            .collect();
        assert!(
            buckets.len() >= 2,
            "{name} has too few buckets: {buckets:?}"
        );
        for pair in buckets.windows(2) {
            assert!(
                pair[0].0 < pair[1].0,
                "{name}: buckets out of order: {buckets:?}"
            );
            assert!(
                pair[0].1 <= pair[1].1,
                "{name}: buckets are not cumulative: {buckets:?}"
            );
        }
        let (last_le, last) = *buckets.last().unwrap();
        assert!(
            last_le.is_infinite(),
            "{name}: the last bucket is not +Inf: {buckets:?}"
        );
        let count = self.value(&format!("{name}_count"), &[]);
        assert_eq!(last, count, "{name}: +Inf bucket != _count");
        let sum = self.value(&format!("{name}_sum"), &[]);
        assert!(sum >= 0.0 && sum.is_finite(), "{name}_sum = {sum}");
        count
    }
}

#[test]
fn the_parser_takes_the_format_and_refuses_what_it_forbids() {
    let s = parse(
        "# HELP a_total An \"a\".\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\\\\\"} 3\n\
         # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2 1700000000\n",
    );
    assert_eq!(s.value("a_total", &[("x", "1"), ("y", "q\"\\")]), 3.0);
    assert_eq!(s.histogram("h"), 2.0);
    for bad in [
        "a 1\n",
        "# TYPE a counter\n# TYPE a counter\na 1\n",
        "# TYPE a counter\na{x=1} 1\n",
        "# TYPE a counter\na one\n",
        "# TYPE a counter\na{x=\"1\" 1\n",
    ] {
        let r = std::panic::catch_unwind(|| parse(bad));
        assert!(r.is_err(), "the parser accepted {bad:?}");
    }
}

// ---------------------------------------------------------------------------
// The server's metrics
// ---------------------------------------------------------------------------

fn scrape(hookd: &Hookd) -> Scrape {
    let r = hookd.request("GET", "/metrics", None, &[], None);
    assert_eq!(r.status, 200, "{r}");
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("text/plain") && ct.contains("version=0.0.4"),
        "/metrics content type {ct:?}"
    );
    parse(&String::from_utf8(r.raw).expect("metrics are UTF-8"))
}

/// Every metric of issue 6, with its type.
const METRICS: &[(&str, &str)] = &[
    ("hookd_events_published_total", "counter"),
    ("hookd_deliveries_total", "counter"),
    ("hookd_delivery_attempt_duration_seconds", "histogram"),
    ("hookd_publish_to_delivery_seconds", "histogram"),
    ("hookd_outbox_pending", "gauge"),
    ("hookd_hooks", "gauge"),
    ("hookd_dispatchers_busy", "gauge"),
    ("hookd_http_requests_total", "counter"),
];

fn deliveries(s: &Scrape, result: &str) -> f64 {
    s.value("hookd_deliveries_total", &[("result", result)])
}

fn requests(s: &Scrape, route: &str, status: &str) -> f64 {
    s.get(
        "hookd_http_requests_total",
        &[("route", route), ("status", status)],
    )
    .unwrap_or(0.0)
}

/// Hooks by status, as the API lists them (admin: every tenant).
fn hooks_by_status(hookd: &Hookd) -> BTreeMap<String, f64> {
    let list = hookd.get(&hookd.admin, "/v1/hooks?limit=500").expect(200);
    let mut out = BTreeMap::new();
    for h in list["data"].as_array().unwrap() {
        *out.entry(h["status"].as_str().unwrap().to_string())
            .or_insert(0.0) += 1.0;
    }
    out
}

#[test]
fn metrics_follow_the_traffic() {
    // Three attempts per delivery; two failed attempts in a row disable a hook.
    let hookd = Hookd::options()
        .schedule("100ms,100ms")
        .disable_after(2)
        .start();
    let ok_sink = Sink::start();
    let bad_sink = Sink::start();
    bad_sink.set_default(500);
    let ignoring = Sink::start();
    ignoring.set_handshake(Handshake::Ignore);

    let ok = hookd.hook(&ok_sink.url("/ok"), "m.ok");
    let bad = hookd.hook(&bad_sink.url("/bad"), "m.bad");
    let pending = hookd
        .post(
            &hookd.admin,
            "/v1/hooks",
            &json!({"target_url": ignoring.url("/p"), "event": "m.ok"}),
        )
        .expect(201);
    assert_eq!(pending["status"], "pending", "{pending}");

    let before = scrape(&hookd);
    for (name, kind) in METRICS {
        let f = before.family(name);
        assert_eq!(f.kind.as_deref(), Some(*kind), "TYPE of {name}");
        assert!(
            f.help.as_deref().is_some_and(|h| !h.is_empty()),
            "{name} has no HELP"
        );
    }

    // Four events: one delivered, one failing, two that match no hook.
    let ok_evt = hookd.publish("m.ok", "1", json!({"n": 1}));
    let bad_evt = hookd.publish("m.bad", "2", json!({"n": 2}));
    let r = hookd.publish_json(json!([{"type": "m.none"}, {"type": "m.none"}]));
    assert_eq!(r.as_array().map(Vec::len), Some(2), "{r}");
    hookd.wait_delivery(&ok.id, &ok_evt, "delivered");
    hookd.wait_hook(&bad.id, "inactive", |r| r.body["status"] == "inactive");
    // Held by the inactive hook: counted in the outbox, not attempted.
    let held_evt = hookd.publish("m.bad", "3", json!(null));

    let settled = wait_until("the delivery counters to settle", WAIT, || {
        let s = scrape(&hookd);
        (deliveries(&s, "delivered") - deliveries(&before, "delivered") >= 1.0
            && deliveries(&s, "failed") - deliveries(&before, "failed") >= 2.0)
            .then_some(s)
    });
    let after = scrape(&hookd);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert_eq!(delta("hookd_events_published_total", &[]), 5.0);
    assert_eq!(
        delta("hookd_deliveries_total", &[("result", "delivered")]),
        1.0
    );
    assert_eq!(
        delta("hookd_deliveries_total", &[("result", "failed")]),
        2.0
    );
    assert_eq!(delta("hookd_deliveries_total", &[("result", "dead")]), 0.0);
    assert_eq!(
        deliveries(&settled, "failed"),
        deliveries(&after, "failed"),
        "an inactive hook's delivery was attempted again"
    );
    assert_eq!(
        bad_sink.count(),
        2,
        "the failing hook was attempted more than twice"
    );

    // Histograms: one observation per attempt, one per delivered event.
    let attempts = after.histogram("hookd_delivery_attempt_duration_seconds")
        - before.histogram("hookd_delivery_attempt_duration_seconds");
    assert_eq!(attempts, 3.0, "three attempts were made");
    let latency = after.histogram("hookd_publish_to_delivery_seconds")
        - before.histogram("hookd_publish_to_delivery_seconds");
    assert_eq!(latency, 1.0, "one event was delivered");

    // Gauges match the state the API shows.
    let by_status = hooks_by_status(&hookd);
    assert_eq!(by_status.get("active"), Some(&1.0), "{by_status:?}");
    assert_eq!(by_status.get("inactive"), Some(&1.0), "{by_status:?}");
    assert_eq!(by_status.get("pending"), Some(&1.0), "{by_status:?}");
    for status in ["pending", "active", "inactive"] {
        assert_eq!(
            after.value("hookd_hooks", &[("status", status)]),
            by_status.get(status).copied().unwrap_or(0.0),
            "hookd_hooks{{status={status}}}"
        );
    }
    let open: Vec<Value> = [&ok.id, &bad.id]
        .iter()
        .flat_map(|h| hookd.deliveries(h, None))
        .filter(|d| d["status"] == "pending" || d["status"] == "failed")
        .collect();
    assert_eq!(open.len(), 2, "the held deliveries: {open:?}");
    let held: Vec<&Value> = open
        .iter()
        .flat_map(|d| d["event_ids"].as_array().unwrap())
        .collect();
    assert!(held.contains(&&json!(bad_evt)) && held.contains(&&json!(held_evt)));
    assert_eq!(after.value("hookd_outbox_pending", &[]), 2.0);

    let busy = wait_until("no dispatcher to be busy", WAIT, || {
        let v = scrape(&hookd).value("hookd_dispatchers_busy", &[]);
        assert!((0.0..=4.0).contains(&v), "busy dispatchers: {v}");
        (v == 0.0).then_some(v)
    });
    assert_eq!(busy, 0.0);

    // Requests are counted by route template and status.
    let t0 = scrape(&hookd);
    for _ in 0..3 {
        hookd
            .get(&hookd.admin, &format!("/v1/hooks/{}", ok.id))
            .expect(200);
    }
    hookd
        .get(&hookd.admin, "/v1/hooks/hook_missing")
        .expect_error(404, "not_found");
    hookd
        .get("wrong-token", "/v1/events")
        .expect_error(401, "unauthorized");
    hookd
        .get(&hookd.admin, &format!("/nowhere/{}", ok.id))
        .expect_error(404, "not_found");
    let t1 = scrape(&hookd);
    let moved =
        |route: &str, status: &str| requests(&t1, route, status) - requests(&t0, route, status);
    assert_eq!(moved("/v1/hooks/{id}", "200"), 3.0);
    assert_eq!(moved("/v1/hooks/{id}", "404"), 1.0);
    assert_eq!(moved("/v1/events", "401"), 1.0);
    assert_eq!(
        moved("/metrics", "200"),
        1.0,
        "the scrape before counts itself"
    );
    let templates: Vec<&str> = hookd::api::ROUTES.iter().map(|(_, t)| *t).collect();
    for s in &t1.family("hookd_http_requests_total").samples {
        let route = &s.labels["route"];
        let status = &s.labels["status"];
        assert_eq!(s.labels.len(), 2, "labels of {s:?}");
        assert!(
            templates.contains(&route.as_str()) || route == "unknown",
            "route label {route:?} is not a route template"
        );
        assert!(
            !["hook_", "evt_", "dlv_", "key_"]
                .iter()
                .any(|p| route.contains(p)),
            "a raw id in a route label: {route}"
        );
        assert!(
            status.len() == 3 && status.parse::<u16>().is_ok(),
            "status label {status:?}"
        );
    }
}
