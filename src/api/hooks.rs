//! `/v1/hooks` (SPEC §4) and the delivery log with retry and replay (SPEC §6).

use serde_json::{json, Value};

use super::input::{page_json, validate_tenant, Fields};
use super::{ApiError, Handled, Reply, Req};
use crate::clock::{parse_rfc3339, rfc3339};
use crate::model::{Delivery, DeliveryStatus, Hook, HookStatus, PayloadKind, Role};
use crate::patterns::validate_pattern;
use crate::store::{HookPatch, NewHook, StoreError, WriteOp, WriteOutput};

/// Most patterns one hook may hold.
const MAX_PATTERNS: usize = 100;
/// Longest target URL.
const MAX_URL: usize = 2048;

pub fn hook_json(hook: &Hook, with_secret: bool) -> Value {
    let mut v = json!({
        "id": hook.id,
        "target_url": hook.target_url,
        "events": hook.events,
        "payload": hook.payload.as_str(),
        "batch_max": hook.batch_max,
        "tenant": hook.tenant,
        "status": hook.status.as_str(),
        "consecutive_failures": hook.consecutive_failures,
        "created_at": rfc3339(hook.created_at),
        "updated_at": rfc3339(hook.updated_at),
    });
    if with_secret {
        v["secret"] = json!(hook.secret);
    }
    v
}

fn delivery_json(d: &Delivery) -> Value {
    json!({
        "id": d.id,
        "hook_id": d.hook_id,
        "event_ids": d.event_ids,
        "sequence": d.sequence,
        "status": d.status.as_str(),
        "attempts": d.attempts.iter().map(|a| {
            let mut v = json!({
                "at": rfc3339(a.at),
                "duration_ms": a.duration_ms,
                "response_snippet": a.response_snippet,
            });
            match (a.status_code, &a.error) {
                (Some(code), _) => v["status_code"] = json!(code),
                (None, Some(e)) => v["error"] = json!(e),
                (None, None) => {}
            }
            v
        }).collect::<Vec<_>>(),
        "next_attempt_at": d.next_attempt_at.map(rfc3339),
        "created_at": rfc3339(d.created_at),
    })
}

/// An absolute http(s) URL with a host, no userinfo, at most 2048 bytes.
fn validate_target(url: &str) -> Result<(), ApiError> {
    let bad = |why: &str| ApiError::field("target_url", why);
    if url.len() > MAX_URL {
        return Err(bad("must be at most 2048 bytes"));
    }
    let parsed = url::Url::parse(url).map_err(|e| bad(&format!("is not a valid URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("must use http or https"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("must have a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("must not carry a user name or password"));
    }
    Ok(())
}

fn patterns(f: &mut Fields) -> Result<Option<Vec<String>>, ApiError> {
    let single = f.take("event");
    let many = f.take("events");
    let list = match (single, many) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field("events", "cannot be given together with `event`"))
        }
        (Some(serde_json::Value::String(s)), None) => vec![s],
        (Some(_), None) => return Err(ApiError::field("event", "must be a string")),
        (None, Some(serde_json::Value::Array(items))) => items
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s),
                _ => Err(ApiError::field("events", "must be a list of strings")),
            })
            .collect::<Result<_, _>>()?,
        (None, Some(_)) => return Err(ApiError::field("events", "must be a list of strings")),
        (None, None) => return Ok(None),
    };
    if list.is_empty() || list.len() > MAX_PATTERNS {
        return Err(ApiError::field(
            "events",
            format!("must hold 1 to {MAX_PATTERNS} patterns"),
        ));
    }
    for p in &list {
        validate_pattern(p)
            .map_err(|e| ApiError::field("events", format!("has a bad pattern `{p}`: {e}")))?;
    }
    let mut unique = list;
    unique.dedup();
    Ok(Some(unique))
}

fn payload_kind(f: &mut Fields) -> Result<Option<PayloadKind>, ApiError> {
    f.string("payload")?
        .map(|p| {
            PayloadKind::parse(&p)
                .ok_or_else(|| ApiError::field("payload", "must be `skinny` or `full`"))
        })
        .transpose()
}

pub fn create(req: &Req) -> Handled {
    req.require(&[Role::Admin, Role::Subscriber])?;
    let mut f = Fields::new(super::input::parse_json(req.body)?, "")?;
    let target_url = f.required_string("target_url")?;
    validate_target(&target_url)?;
    let events = patterns(&mut f)?
        .ok_or_else(|| ApiError::field("event", "is required (or `events`, a list)"))?;
    let payload = payload_kind(&mut f)?.unwrap_or(PayloadKind::Skinny);
    let batch_max = f.integer("batch_max", 1, 1000)?.unwrap_or(1);
    let tenant = f.string("tenant")?;
    // Intent verification comes with the trust work; until then every hook is active,
    // which is also what `"verify": false` asks for.
    let _verify = f.bool("verify")?;
    f.finish()?;
    let tenant = match (req.scope(), tenant) {
        (Some(own), Some(asked)) if own != asked => {
            return Err(ApiError::forbidden(
                "a subscriber key may create hooks in its own tenant only",
            ))
        }
        (Some(own), _) => own,
        (None, Some(t)) => {
            validate_tenant("tenant", &t)?;
            t
        }
        (None, None) => "default".to_string(),
    };
    let new = NewHook {
        tenant,
        target_url,
        events,
        payload,
        batch_max,
        status: HookStatus::Active,
    };
    match req.ctx.store.api(WriteOp::CreateHook(new))? {
        WriteOutput::Hook(hook) => {
            log::info!("hook {} created for tenant {}", hook.id, hook.tenant);
            Ok(Reply::json(201, hook_json(&hook, true)))
        }
        _ => Err(ApiError::internal()),
    }
}

pub fn list(req: &Req) -> Handled {
    let (limit, after) = req.query.page()?;
    let tenant = match req.scope() {
        Some(own) => Some(own),
        None => req.query.get("tenant").map(str::to_string),
    };
    let hooks = req
        .ctx
        .reader
        .list_hooks(tenant.as_deref(), &after, limit + 1)?;
    Ok(Reply::json(
        200,
        page_json(hooks, limit, |h| hook_json(h, false), |h| h.id.clone()),
    ))
}

/// The hook if the key may see it; another tenant's hook is "not found", exactly as
/// one that does not exist.
fn visible_hook(req: &Req, id: &str) -> Result<Hook, ApiError> {
    let hook = req
        .ctx
        .reader
        .hook(id)?
        .ok_or_else(|| ApiError::not_found("hook"))?;
    match req.scope() {
        Some(own) if own != hook.tenant => Err(ApiError::not_found("hook")),
        _ => Ok(hook),
    }
}

fn not_found_as_hook(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found("hook"),
        other => other.into(),
    }
}

pub fn get(req: &Req, id: &str) -> Handled {
    Ok(Reply::json(200, hook_json(&visible_hook(req, id)?, false)))
}

pub fn patch(req: &Req, id: &str) -> Handled {
    req.require(&[Role::Admin, Role::Subscriber])?;
    visible_hook(req, id)?;
    let mut f = Fields::new(super::input::parse_json(req.body)?, "")?;
    let target_url = f.string("target_url")?;
    if let Some(u) = &target_url {
        validate_target(u)?;
    }
    let patch = HookPatch {
        target_url,
        events: patterns(&mut f)?,
        payload: payload_kind(&mut f)?,
        batch_max: f.integer("batch_max", 1, 1000)?,
    };
    f.finish()?;
    match req
        .ctx
        .store
        .api(WriteOp::UpdateHook {
            id: id.to_string(),
            scope: req.scope(),
            patch,
        })
        .map_err(not_found_as_hook)?
    {
        WriteOutput::Hook(hook) => Ok(Reply::json(200, hook_json(&hook, false))),
        _ => Err(ApiError::internal()),
    }
}

pub fn delete(req: &Req, id: &str) -> Handled {
    req.require(&[Role::Admin, Role::Subscriber])?;
    req.ctx
        .store
        .api(WriteOp::DeleteHook {
            id: id.to_string(),
            scope: req.scope(),
        })
        .map_err(not_found_as_hook)?;
    log::info!("hook {id} deleted");
    Ok(Reply::no_content())
}

pub fn activate(req: &Req, id: &str) -> Handled {
    req.require(&[Role::Admin, Role::Subscriber])?;
    match req
        .ctx
        .store
        .api(WriteOp::ActivateHook {
            id: id.to_string(),
            scope: req.scope(),
        })
        .map_err(not_found_as_hook)?
    {
        WriteOutput::Hook(hook) => {
            log::info!("hook {id} activated");
            Ok(Reply::json(200, hook_json(&hook, false)))
        }
        _ => Err(ApiError::internal()),
    }
}

pub fn deliveries(req: &Req, id: &str) -> Handled {
    visible_hook(req, id)?;
    let (limit, after) = req.query.page()?;
    let before = if after.is_empty() {
        0
    } else {
        after
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ApiError::field("after", "is not a cursor this list gave out"))?
    };
    let status = req
        .query
        .get("status")
        .map(|s| {
            DeliveryStatus::parse(s).ok_or_else(|| {
                ApiError::field(
                    "status",
                    "must be one of pending, failed, delivered, dead, cancelled",
                )
            })
        })
        .transpose()?;
    let list = req.ctx.reader.deliveries(id, status, before, limit + 1)?;
    Ok(Reply::json(
        200,
        page_json(list, limit, delivery_json, |d| d.sequence.to_string()),
    ))
}

pub fn retry_delivery(req: &Req, id: &str) -> Handled {
    req.require(&[Role::Admin, Role::Subscriber])?;
    match req.ctx.store.api(WriteOp::RetryDelivery {
        id: id.to_string(),
        scope: req.scope(),
    }) {
        Ok(_) => Ok(Reply::json(202, json!({"id": id, "status": "pending"}))),
        Err(StoreError::NotFound) => Err(ApiError::not_found("delivery")),
        Err(StoreError::Conflict(m)) => Err(ApiError::conflict("delivery_cancelled", m)),
        Err(e) => Err(e.into()),
    }
}

pub fn replay(req: &Req, id: &str) -> Handled {
    req.require(&[Role::Admin, Role::Subscriber])?;
    let mut f = Fields::new(super::input::parse_json(req.body)?, "")?;
    let since_text = f.required_string("since")?;
    f.finish()?;
    let since = parse_rfc3339(&since_text)
        .ok_or_else(|| ApiError::field("since", "must be an RFC 3339 time"))?;
    match req
        .ctx
        .store
        .api(WriteOp::Replay {
            hook_id: id.to_string(),
            scope: req.scope(),
            since,
        })
        .map_err(not_found_as_hook)?
    {
        WriteOutput::Count(n) => Ok(Reply::json(202, json!({"queued": n}))),
        _ => Err(ApiError::internal()),
    }
}
