//! `/v1/events` (SPEC §7): publish one or up to 1000 events in one transaction, with
//! idempotency; fetch one; list a tenant's recent ones in the full delivery shape.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::input::{page_json, validate_tenant, Fields};
use super::{ApiError, Handled, Reply, Req};
use crate::clock::rfc3339;
use crate::model::{Event, Role};
use crate::patterns::validate_type;
use crate::payload::EventBody;
use crate::store::{NewEvent, StoreError, WriteOp, WriteOutput};

/// Most events in one array publish.
pub const MAX_BATCH: usize = 1000;
/// Longest idempotency key.
const MAX_IDEMPOTENCY_KEY: usize = 255;

fn event_json(e: &Event) -> Value {
    json!({
        "id": e.id,
        "type": e.event_type,
        "tenant": e.tenant,
        "resource_id": e.resource_id,
        "data": serde_json::from_str::<Value>(&e.data).unwrap_or(Value::Null),
        "created_at": rfc3339(e.created_at),
    })
}

fn parse_event(value: Value, path: &str) -> Result<NewEvent, ApiError> {
    // Only an event that carries its own idempotency key needs the hash of itself (to
    // tell a repeat from a different event under the same key).
    let hash = value
        .get("idempotency_key")
        .is_some_and(|k| !k.is_null())
        .then(|| Sha256::digest(value.to_string().as_bytes()).to_vec());
    let mut f = Fields::new(value, path)?;
    let event_type = f.required_string("type")?;
    validate_type(&event_type).map_err(|e| ApiError::field(&f.name("type"), e))?;
    let tenant = f.string("tenant")?.unwrap_or_else(|| "default".to_string());
    validate_tenant(&f.name("tenant"), &tenant)?;
    let resource_id = f.string("resource_id")?;
    if resource_id.as_ref().is_some_and(|r| r.len() > 255) {
        return Err(ApiError::field(
            &f.name("resource_id"),
            "must be at most 255 bytes",
        ));
    }
    let data = f.take_raw("data").unwrap_or(Value::Null).to_string();
    let idempotency_key = f.string("idempotency_key")?;
    if let Some(k) = &idempotency_key {
        check_idempotency_key(&f.name("idempotency_key"), k)?;
    }
    f.finish()?;
    Ok(NewEvent {
        tenant,
        event_type,
        resource_id,
        data,
        idempotency: idempotency_key.zip(hash),
    })
}

fn check_idempotency_key(name: &str, key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(ApiError::field(name, "must be 1 to 255 characters"));
    }
    Ok(())
}

pub fn publish(req: &Req, idempotency_key: Option<String>) -> Handled {
    req.require(&[Role::Admin, Role::Publisher])?;
    let value = super::input::parse_json(req.body)?;
    let (events, array) = match value {
        Value::Array(items) => {
            if items.is_empty() || items.len() > MAX_BATCH {
                return Err(ApiError::invalid_json(format!(
                    "an array publish holds 1 to {MAX_BATCH} events, not {}",
                    items.len()
                )));
            }
            let events = items
                .into_iter()
                .enumerate()
                .map(|(i, v)| parse_event(v, &format!("[{i}].")))
                .collect::<Result<Vec<_>, _>>()?;
            (events, true)
        }
        other => (vec![parse_event(other, "")?], false),
    };
    if let Some(k) = &idempotency_key {
        check_idempotency_key("Idempotency-Key", k)?;
    }
    let request_key = idempotency_key.map(|k| (k, Sha256::digest(req.body).to_vec()));
    match req.ctx.store.api(WriteOp::Publish {
        events,
        array,
        request_key,
        key_id: req.key.id.clone(),
    }) {
        Ok(WriteOutput::Published { body, stored }) => {
            req.ctx.metrics.published(stored);
            Ok(Reply::raw(202, body))
        }
        Ok(_) => Err(ApiError::internal()),
        Err(StoreError::Conflict(m)) => Err(ApiError::conflict("idempotency_conflict", m)),
        Err(StoreError::KeyRevoked) => {
            req.ctx.keys.forget(&req.key.id);
            Err(ApiError::unauthorized())
        }
        Err(e) => Err(e.into()),
    }
}

/// The event if the key may see it: a subscriber only sees events queued for one of
/// its tenant's hooks; anything else is "not found".
pub fn get(req: &Req, id: &str) -> Handled {
    let event = req
        .ctx
        .reader
        .event(id)?
        .ok_or_else(|| ApiError::not_found("event"))?;
    if let Some(own) = req.scope() {
        if own != event.tenant || !req.ctx.reader.event_routed_to(id, &own)? {
            return Err(ApiError::not_found("event"));
        }
    }
    Ok(Reply::json(200, event_json(&event)))
}

pub fn list(req: &Req) -> Handled {
    let (limit, after) = req.query.page()?;
    let tenant = match req.scope() {
        Some(own) => own,
        None => {
            let t = req.query.get("tenant").unwrap_or("default").to_string();
            validate_tenant("tenant", &t)?;
            t
        }
    };
    let event_type = req.query.get("type");
    if let Some(t) = event_type {
        validate_type(t).map_err(|e| ApiError::field("type", e))?;
    }
    let events = req.ctx.reader.list_events(
        &tenant,
        event_type,
        &after,
        limit + 1,
        req.key.role == Role::Subscriber,
    )?;
    Ok(Reply::json(
        200,
        page_json(
            events,
            limit,
            |e| serde_json::to_value(EventBody::new(e, true)).unwrap_or(Value::Null),
            |e| e.id.clone(),
        ),
    ))
}
