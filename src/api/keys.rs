//! `/v1/keys` (admin only): create, list, revoke. Tokens are returned once, at creation.

use serde_json::{json, Value};

use super::input::{page_json, validate_tenant, Fields};
use super::{ApiError, Handled, Reply, Req};
use crate::clock::rfc3339;
use crate::model::{ApiKey, Role};
use crate::store::{token_hash, StoreError, WriteOp, WriteOutput};

fn key_json(key: &ApiKey) -> Value {
    json!({
        "id": key.id,
        "role": key.role.as_str(),
        "tenant": key.tenant,
        "created_at": rfc3339(key.created_at),
    })
}

pub fn create(req: &Req) -> Handled {
    req.require(&[Role::Admin])?;
    let mut f = Fields::new(super::input::parse_json(req.body)?, "")?;
    let role_text = f.required_string("role")?;
    let role = Role::parse(&role_text)
        .ok_or_else(|| ApiError::field("role", "must be `admin`, `publisher` or `subscriber`"))?;
    let tenant = f.string("tenant")?;
    f.finish()?;
    let tenant = match (role, tenant) {
        (Role::Subscriber, Some(t)) => {
            validate_tenant("tenant", &t)?;
            Some(t)
        }
        (Role::Subscriber, None) => {
            return Err(ApiError::field(
                "tenant",
                "is required for a subscriber key",
            ))
        }
        (_, Some(_)) => {
            return Err(ApiError::field(
                "tenant",
                "applies to subscriber keys only (admin and publisher keys see every tenant)",
            ))
        }
        (_, None) => None,
    };
    let token = crate::ids::new_token();
    let WriteOutput::Key(key) = req.ctx.store.api(WriteOp::CreateKey {
        token_hash: token_hash(&token),
        role,
        tenant,
    })?
    else {
        return Err(ApiError::internal());
    };
    let mut body = key_json(&key);
    body["token"] = json!(token);
    Ok(Reply::json(201, body))
}

pub fn list(req: &Req) -> Handled {
    req.require(&[Role::Admin])?;
    let (limit, after) = req.query.page()?;
    let keys = req.ctx.reader.list_keys(&after, limit + 1)?;
    Ok(Reply::json(
        200,
        page_json(keys, limit, key_json, |k| k.id.clone()),
    ))
}

pub fn revoke(req: &Req, id: &str) -> Handled {
    req.require(&[Role::Admin])?;
    match req.ctx.store.api(WriteOp::RevokeKey { id: id.to_string() }) {
        Ok(_) => Ok(Reply::no_content()),
        Err(StoreError::NotFound) => Err(ApiError::not_found("key")),
        Err(e) => Err(e.into()),
    }
}
