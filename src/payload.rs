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

/// The bytes to POST for `events` (with their sequences), oldest first.
pub fn build(hook: &Hook, events: &[(i64, &Event)]) -> Vec<u8> {
    let full = hook.payload == PayloadKind::Full;
    let bodies: Vec<EventBody> = events
        .iter()
        .map(|(seq, e)| EventBody {
            hook_id: Some(&hook.id),
            sequence: Some(*seq),
            ..EventBody::new(e, full)
        })
        .collect();
    let out = if hook.batch_max > 1 {
        serde_json::to_vec(&bodies)
    } else {
        serde_json::to_vec(&bodies[0])
    };
    out.unwrap_or_default()
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
