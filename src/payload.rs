//! The body of a delivery (SPEC §6): one object per event, or an array of them, oldest
//! first, when the hook batches. Pure.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::clock::rfc3339;
use crate::model::{Event, Hook, PayloadKind};

/// One event as a delivery carries it. Also the shape of `GET /v1/events` entries.
#[derive(Serialize)]
pub struct EventBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook_id: Option<&'a str>,
    pub event_id: &'a str,
    pub event: &'a str,
    pub resource_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<i64>,
    pub created_at: String,
    /// The published data, embedded as stored (never re-parsed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
}

impl<'a> EventBody<'a> {
    pub fn new(event: &'a Event, full: bool) -> EventBody<'a> {
        EventBody {
            hook_id: None,
            event_id: &event.id,
            event: &event.event_type,
            resource_id: event.resource_id.as_deref(),
            sequence: None,
            created_at: rfc3339(event.created_at),
            data: if full { raw(&event.data) } else { None },
        }
    }
}

fn raw(json: &str) -> Option<&RawValue> {
    serde_json::from_str(json).ok()
}

/// The bytes to POST for `events` (with their sequences), oldest first: exactly what
/// serializing an [`EventBody`] for each (an array when the hook batches) writes, but
/// written directly. The data goes in as stored: it is JSON text the API wrote itself
/// (`serde_json` output of the value it parsed), so it needs no second parse to be
/// embedded, and no structure or time string is made per event. (Through `EventBody`
/// this was a fifth of a dispatcher's CPU with 100-event batches: BENCHMARKS.md, item
/// 41.) A test holds it to `EventBody`'s output.
pub fn build(hook: &Hook, events: &[(i64, &Event)]) -> Vec<u8> {
    let full = hook.payload == PayloadKind::Full;
    let batch = hook.batch_max > 1;
    let events = if batch {
        events
    } else {
        &events[..events.len().min(1)]
    };
    let size: usize = events
        .iter()
        .map(|(_, e)| {
            160 + hook.id.len()
                + e.id.len()
                + e.event_type.len()
                + e.resource_id.as_ref().map_or(0, String::len)
                + if full { e.data.len() } else { 0 }
        })
        .sum();
    let mut out = Vec::with_capacity(size + 2);
    if batch {
        out.push(b'[');
    }
    for (i, (seq, e)) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_event(&mut out, &hook.id, *seq, e, full);
    }
    if batch {
        out.push(b']');
    }
    out
}

fn write_event(out: &mut Vec<u8>, hook_id: &str, seq: i64, e: &Event, full: bool) {
    use std::io::Write;
    out.extend_from_slice(b"{\"hook_id\":");
    json_str(out, hook_id);
    out.extend_from_slice(b",\"event_id\":");
    json_str(out, &e.id);
    out.extend_from_slice(b",\"event\":");
    json_str(out, &e.event_type);
    out.extend_from_slice(b",\"resource_id\":");
    match &e.resource_id {
        Some(r) => json_str(out, r),
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(out, ",\"sequence\":{seq},\"created_at\":");
    json_str(out, &rfc3339(e.created_at));
    // Stored data is never empty (the API stores `null` for none); were it, the body
    // would leave the field out rather than be invalid, as `EventBody` does.
    if full && !e.data.is_empty() {
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(e.data.as_bytes());
    }
    out.push(b'}');
}

/// `s` as a JSON string, escaped by `serde_json`.
fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HookStatus;

    fn hook(payload: PayloadKind, batch_max: u32) -> Hook {
        Hook {
            id: "hook_1".into(),
            tenant: "t".into(),
            target_url: "http://x".into(),
            events: vec!["*".into()],
            payload,
            batch_max,
            status: HookStatus::Active,
            secret: String::new(),
            previous_secret: None,
            pending_target_url: None,
            consecutive_failures: 0,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn event(id: &str) -> Event {
        Event {
            id: id.into(),
            tenant: "t".into(),
            event_type: "item.create".into(),
            resource_id: Some("123".into()),
            data: r#"{"b":1,"a":[2]}"#.into(),
            created_at: 1_614_265_330_000,
        }
    }

    /// What `build` must write: each event's `EventBody`, serialized.
    fn reference(hook: &Hook, events: &[(i64, &Event)]) -> Vec<u8> {
        let full = hook.payload == PayloadKind::Full;
        let bodies: Vec<EventBody> = events
            .iter()
            .map(|(seq, e)| EventBody {
                hook_id: Some(&hook.id),
                sequence: Some(*seq),
                ..EventBody::new(e, full)
            })
            .collect();
        if hook.batch_max > 1 {
            serde_json::to_vec(&bodies).unwrap()
        } else {
            serde_json::to_vec(&bodies[0]).unwrap()
        }
    }

    #[test]
    fn bodies_are_what_event_bodies_serialize_to() {
        let mut odd = event("evt_3");
        odd.resource_id = Some("quote \" back \\ tab \t nl \n ctl \u{1} é 🦀".into());
        odd.data = r#"{"s":"x\"y\u00e9","n":[1,2.5,-3e2,null,true],"o":{}}"#.into();
        let mut bare = event("evt_4");
        bare.resource_id = None;
        bare.data = "null".into();
        let (e1, e2) = (event("evt_1"), event("evt_2"));
        let all = [(1, &e1), (2, &odd), (3, &bare), (4, &e2)];
        for payload in [PayloadKind::Full, PayloadKind::Skinny] {
            for batch_max in [1, 10] {
                let h = hook(payload, batch_max);
                for n in 1..=all.len() {
                    let got = build(&h, &all[..n]);
                    let want = reference(&h, &all[..n]);
                    assert_eq!(
                        String::from_utf8(got).unwrap(),
                        String::from_utf8(want).unwrap(),
                        "{payload:?}, batch_max {batch_max}, {n} events"
                    );
                }
            }
        }
    }

    #[test]
    fn skinny_single_and_full_batch() {
        let e1 = event("evt_1");
        let e2 = event("evt_2");
        let skinny = build(&hook(PayloadKind::Skinny, 1), &[(7, &e1)]);
        assert_eq!(
            String::from_utf8(skinny).unwrap(),
            r#"{"hook_id":"hook_1","event_id":"evt_1","event":"item.create","resource_id":"123","sequence":7,"created_at":"2021-02-25T15:02:10.000Z"}"#
        );
        let full = build(&hook(PayloadKind::Full, 10), &[(1, &e1), (2, &e2)]);
        let v: serde_json::Value = serde_json::from_slice(&full).unwrap();
        assert_eq!(v[0]["data"], serde_json::json!({"b":1,"a":[2]}));
        assert_eq!(v[1]["event_id"], "evt_2");
        assert_eq!(v[1]["sequence"], 2);
    }
}
