//! `/v1/hooks` (SPEC §4) and the delivery log with retry and replay (SPEC §6).

use serde_json::{json, Value};

use super::input::{page_json, validate_tenant, Fields};
use super::{ApiError, Handled, Reply, Req};
use crate::clock::{parse_rfc3339, rfc3339};
use crate::dispatch::handshake::new_code;
use crate::ids::new_id;
use crate::model::{Delivery, DeliveryStatus, Hook, HookStatus, PayloadKind, Role};
use crate::patterns::validate_pattern;
use crate::store::{HookPatch, NewHook, StoreError, WriteOp, WriteOutput};
use crate::target::Policy;
use sha2::{Digest, Sha256};

/// Most patterns one hook may hold.
const MAX_PATTERNS: usize = 100;

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
    if let Some(pending) = &hook.pending_target_url {
        v["pending_target_url"] = json!(pending);
    }
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

/// The create-time check: URL rules and the private-target guard (see `target`).
fn validate_target(req: &Req, url: &str) -> Result<url::Url, ApiError> {
    req.ctx
        .limits
        .policy
        .check_url(url)
        .map_err(|why| ApiError::field("target_url", why))
}

/// How a target comes to be trusted.
enum Handshake {
    /// Verified now, skipped by an admin, or a trusted receiver platform.
    Passed,
    /// Failed: the reason, and the hash of the code the subscriber may send back later.
    Failed { error: String, code_hash: Vec<u8> },
}

/// Runs the intent verification for `url` unless an admin said `"verify": false` or
/// the host is a trusted receiver platform.
fn handshake(
    req: &Req,
    hook_id: &str,
    url: &url::Url,
    verify: Option<bool>,
) -> Result<Handshake, ApiError> {
    if verify == Some(false) {
        req.require(&[Role::Admin]).map_err(|_| {
            ApiError::forbidden("only an admin key may skip the verification handshake")
        })?;
        return Ok(Handshake::Passed);
    }
    let host = url.host_str().unwrap_or("");
    if Policy::host_matches(&req.ctx.limits.trusted_hosts, host) {
        return Ok(Handshake::Passed);
    }
    let code = new_code();
    Ok(
        match req.ctx.verifier.verify(url.as_str(), hook_id, &code) {
            Ok(()) => Handshake::Passed,
            Err(error) => Handshake::Failed {
                error,
                code_hash: code_hash(&code),
            },
        },
    )
}

fn code_hash(code: &str) -> Vec<u8> {
    Sha256::digest(code.as_bytes()).to_vec()
}

fn patterns(f: &mut Fields) -> Result<Option<Vec<String>>, ApiError> {
    let single = f.take("event");
    let many = f.take("events");
    let list = match (single, many) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field(
                "events",
                "cannot be given together with `event`",
            ))
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
    let url = validate_target(req, &target_url)?;
    let events = patterns(&mut f)?
        .ok_or_else(|| ApiError::field("event", "is required (or `events`, a list)"))?;
    let payload = payload_kind(&mut f)?.unwrap_or(PayloadKind::Skinny);
    let batch_max = f.integer("batch_max", 1, 1000)?.unwrap_or(1);
    let tenant = f.string("tenant")?;
    let verify = f.bool("verify")?;
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
    let id = new_id("hook");
    let (status, verify_code_hash, verification_error) = match handshake(req, &id, &url, verify)? {
        Handshake::Passed => (HookStatus::Active, None, None),
        Handshake::Failed { error, code_hash } => {
            (HookStatus::Pending, Some(code_hash), Some(error))
        }
    };
    let new = NewHook {
        id,
        tenant,
        target_url,
        events,
        payload,
        batch_max,
        status,
        verify_code_hash,
    };
    let op = WriteOp::CreateHook {
        hook: new,
        max_per_tenant: req.ctx.limits.max_hooks_per_tenant,
    };
    match req.ctx.store.api(op) {
        Ok(WriteOutput::Hook(hook)) => {
            log::info!(
                "hook {} created for tenant {} ({})",
                hook.id,
                hook.tenant,
                hook.status.as_str()
            );
            let mut body = hook_json(&hook, true);
            if let Some(error) = verification_error {
                body["verification"] = json!({ "error": error });
            }
            Ok(Reply::json(201, body))
        }
        Ok(_) => Err(ApiError::internal()),
        Err(StoreError::Conflict(m)) => Err(ApiError::conflict("hook_limit_reached", m)),
        Err(e) => Err(e.into()),
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
    let target_url = f
        .string("target_url")?
        .map(|u| validate_target(req, &u).map(|parsed| (u, parsed)))
        .transpose()?;
    let events = patterns(&mut f)?;
    let payload = payload_kind(&mut f)?;
    let batch_max = f.integer("batch_max", 1, 1000)?;
    let verify = f.bool("verify")?;
    f.finish()?;
    let mut patch = HookPatch {
        events,
        payload,
        batch_max,
        ..HookPatch::default()
    };
    let mut verification_error = None;
    if let Some((raw, parsed)) = target_url {
        // A new URL is verified before it takes effect; until then the old one receives.
        match handshake(req, id, &parsed, verify)? {
            Handshake::Passed => patch.target_url = Some(raw),
            Handshake::Failed { error, code_hash } => {
                patch.pending_target = Some((raw, code_hash));
                verification_error = Some(error);
            }
        }
    }
    let op = WriteOp::UpdateHook {
        id: id.to_string(),
        scope: req.scope(),
        patch,
    };
    match req.ctx.store.api(op).map_err(not_found_as_hook)? {
        WriteOutput::Hook(hook) => {
            let mut body = hook_json(&hook, false);
            if let Some(error) = verification_error {
                body["verification"] = json!({ "error": error });
            }
            Ok(Reply::json(200, body))
        }
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

/// Runs the handshake again; on success the hook is active and its held deliveries go
/// out in order. On failure nothing changes (409), and the code sent may still finish
/// the activation through `verify`.
pub fn activate(req: &Req, id: &str) -> Handled {
    req.require(&[Role::Admin, Role::Subscriber])?;
    let hook = visible_hook(req, id)?;
    let verify = if req.body.is_empty() {
        None
    } else {
        let mut f = Fields::new(super::input::parse_json(req.body)?, "")?;
        let v = f.bool("verify")?;
        f.finish()?;
        v
    };
    let url = url::Url::parse(&hook.target_url)
        .map_err(|_| ApiError::field("target_url", "is no longer a valid URL"))?;
    if let Handshake::Failed { error, code_hash } = handshake(req, id, &url, verify)? {
        req.ctx.store.api(WriteOp::SetVerification {
            id: id.to_string(),
            code_hash,
        })?;
        return Err(ApiError::conflict(
            "verification_failed",
            format!("the hook stays {}: {error}", hook.status.as_str()),
        ));
    }
    let op = WriteOp::ActivateHook {
        id: id.to_string(),
        scope: req.scope(),
    };
    match req.ctx.store.api(op).map_err(not_found_as_hook)? {
        WriteOutput::Hook(hook) => {
            log::info!("hook {id} activated");
            Ok(Reply::json(200, hook_json(&hook, false)))
        }
        _ => Err(ApiError::internal()),
    }
}

/// Podio-style: the subscriber sends back the code of a handshake it could not answer.
pub fn verify(req: &Req, id: &str) -> Handled {
    req.require(&[Role::Admin, Role::Subscriber])?;
    let mut f = Fields::new(super::input::parse_json(req.body)?, "")?;
    let code = f.required_string("code")?;
    f.finish()?;
    let op = WriteOp::VerifyHook {
        id: id.to_string(),
        scope: req.scope(),
        code_hash: code_hash(&code),
    };
    match req.ctx.store.api(op) {
        Ok(WriteOutput::Hook(hook)) => {
            log::info!("hook {id} verified");
            Ok(Reply::json(200, hook_json(&hook, false)))
        }
        Ok(_) => Err(ApiError::internal()),
        Err(StoreError::Conflict(m)) => Err(ApiError::conflict("nothing_to_verify", m)),
        Err(e) => Err(not_found_as_hook(e)),
    }
}

/// A new secret; the previous one keeps signing for 24 hours.
pub fn rotate_secret(req: &Req, id: &str) -> Handled {
    req.require(&[Role::Admin, Role::Subscriber])?;
    let op = WriteOp::RotateSecret {
        id: id.to_string(),
        scope: req.scope(),
    };
    match req.ctx.store.api(op).map_err(not_found_as_hook)? {
        WriteOutput::Hook(hook) => {
            log::info!("hook {id}: secret rotated");
            Ok(Reply::json(
                200,
                json!({
                    "id": hook.id,
                    "secret": hook.secret,
                    "previous_secret_expires_at": hook.previous_secret.map(|(_, until)| rfc3339(until)),
                }),
            ))
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
        Err(StoreError::Conflict(m)) => Err(ApiError::conflict("not_retryable", m)),
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
