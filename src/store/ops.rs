//! The SQL of every write. Each function runs inside the writer's transaction (a
//! savepoint of it) and reports what must happen after the commit through `Effects`.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension, ToSql};
use serde_json::json;

use super::read::{hook_from_row, hook_key, HOOK_COLUMNS};
use super::writer::{Effects, FanoutIndex, IndexChange, WriteOp, WriteOutput};
use super::{AttemptRecord, Context, HookPatch, NewEvent, NewHook, StoreError};
use crate::clock::{now_ms, Millis};
use crate::ids::new_id;
use crate::model::{ApiKey, Hook, HookStatus, Role};
use crate::retry::Verdict;
use crate::secrets::SecretBox;

/// How long the previous secret keeps signing after a rotation.
const ROTATION_OVERLAP_MS: i64 = 24 * 3600 * 1000;
/// How long an idempotency key is remembered.
const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

/// What a publish's multi-row INSERTs do when a row breaks a constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnConflict {
    /// Undo the statement alone (SQLite's default, ABORT). SQLite can do that only by
    /// first copying every page the statement changes into a statement journal.
    Abort,
    /// Roll the whole transaction back (`INSERT OR ROLLBACK`): no statement journal.
    /// For the writer's optimistic pass only, which starts its group over, carefully,
    /// when the transaction is gone.
    Rollback,
}

impl OnConflict {
    /// The statement's start, up to the table name.
    fn insert(self) -> &'static str {
        match self {
            OnConflict::Abort => "INSERT INTO ",
            OnConflict::Rollback => "INSERT OR ROLLBACK INTO ",
        }
    }
}

pub(super) fn apply(
    conn: &Connection,
    index: &FanoutIndex,
    secrets: &SecretBox,
    op: &WriteOp,
    on_conflict: OnConflict,
    fx: &mut Effects,
) -> Result<WriteOutput, StoreError> {
    match op {
        WriteOp::CreateKey {
            token_hash,
            role,
            tenant,
        } => insert_key(conn, token_hash, *role, tenant.as_deref()).map(WriteOutput::Key),
        WriteOp::RevokeKey { id } => revoke_key(conn, id).map(|_| WriteOutput::Done),
        WriteOp::CreateHook {
            hook,
            max_per_tenant,
        } => create_hook(conn, secrets, hook.clone(), *max_per_tenant, fx).map(WriteOutput::Hook),
        WriteOp::UpdateHook { id, scope, patch } => {
            update_hook(conn, secrets, id, scope.as_deref(), patch.clone(), fx)
                .map(WriteOutput::Hook)
        }
        WriteOp::DeleteHook { id, scope } => {
            delete_hook(conn, secrets, id, scope.as_deref(), fx).map(|_| WriteOutput::Done)
        }
        WriteOp::ActivateHook { id, scope } => {
            activate_hook(conn, secrets, id, scope.as_deref(), fx).map(WriteOutput::Hook)
        }
        WriteOp::SetVerification { id, code_hash } => {
            set_verification(conn, id, code_hash).map(|_| WriteOutput::Done)
        }
        WriteOp::VerifyHook {
            id,
            scope,
            code_hash,
        } => verify_hook(conn, secrets, id, scope.as_deref(), code_hash, fx).map(WriteOutput::Hook),
        WriteOp::RotateSecret { id, scope } => {
            rotate_secret(conn, secrets, id, scope.as_deref()).map(WriteOutput::Hook)
        }
        WriteOp::Publish { .. } => {
            let mut rows = PublishRows::default();
            let published = publish(conn, index, op, &mut rows, fx)?;
            insert_rows(conn, &rows, on_conflict)?;
            Ok(published)
        }
        WriteOp::ClaimBatch {
            hook_id,
            batch_id,
            seqs,
        } => claim_batch(conn, index, hook_id, batch_id, *seqs).map(WriteOutput::Count),
        WriteOp::RecordAttempt {
            record,
            disable_after,
            want_next,
        } => {
            record_attempt(conn, index, secrets, record, *disable_after, fx)?;
            let next = if *want_next {
                next_due(conn, &record.hook_id)?
            } else {
                None
            };
            Ok(WriteOutput::Next(next))
        }
        WriteOp::Prune { cutoff, limit } => prune(conn, *cutoff, *limit).map(WriteOutput::Count),
        WriteOp::Checkpoint => {
            // Inside the group's transaction a checkpoint cannot run; the writer runs it
            // after the commit (see `writer::commit_group`).
            Ok(WriteOutput::Done)
        }
        WriteOp::RetryDelivery { id, scope } => {
            retry_delivery(conn, id, scope.as_deref(), fx).map(|_| WriteOutput::Done)
        }
        WriteOp::Replay {
            hook_id,
            scope,
            since,
        } => replay(conn, secrets, hook_id, scope.as_deref(), *since, fx).map(WriteOutput::Count),
    }
}

fn insert_key(
    conn: &Connection,
    token_hash: &[u8],
    role: Role,
    tenant: Option<&str>,
) -> Result<ApiKey, StoreError> {
    let key = ApiKey {
        id: new_id("key"),
        role,
        tenant: tenant.map(str::to_string),
        created_at: now_ms(),
    };
    conn.prepare_cached(
        "INSERT INTO api_keys (id, token_hash, role, tenant, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| {
        s.execute(params![key.id, token_hash, role.as_str(), key.tenant, key.created_at])
    })
    .ctx("inserting a key")?;
    Ok(key)
}

/// Used by the admin bootstrap: a token already known (even revoked) is left alone.
pub(super) fn insert_key_if_missing(
    conn: &Connection,
    token_hash: &[u8],
    role: Role,
    tenant: Option<&str>,
) -> Result<(), StoreError> {
    let exists = conn
        .query_row(
            "SELECT 1 FROM api_keys WHERE token_hash = ?1",
            [token_hash],
            |_| Ok(()),
        )
        .optional()
        .ctx("looking up a key")?
        .is_some();
    if !exists {
        insert_key(conn, token_hash, role, tenant)?;
    }
    Ok(())
}

fn revoke_key(conn: &Connection, id: &str) -> Result<(), StoreError> {
    let n = conn
        .execute(
            "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, now_ms()],
        )
        .ctx("revoking a key")?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// A live hook of `scope` (any tenant's when `None`), with its outbox key (`hooks.key`).
fn load_hook(
    conn: &Connection,
    secrets: &SecretBox,
    id: &str,
    scope: Option<&str>,
) -> Result<(i64, Hook), StoreError> {
    let sql = format!("SELECT {HOOK_COLUMNS}, key FROM hooks WHERE id = ?1 AND deleted_at IS NULL");
    let (key, hook) = conn
        .prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_row([id], |r| Ok((r.get("key")?, hook_from_row(r, secrets)?)))
                .optional()
        })
        .ctx("loading a hook")?
        .ok_or(StoreError::NotFound)?;
    match scope {
        Some(t) if t != hook.tenant => Err(StoreError::NotFound),
        _ => Ok((key, hook)),
    }
}

fn index_upsert(key: i64, hook: &Hook) -> IndexChange {
    IndexChange::Upsert {
        tenant: hook.tenant.clone(),
        hook_id: hook.id.clone(),
        key,
        patterns: hook.events.clone(),
        eligible: hook.status.receives_events(),
        batch_max: hook.batch_max,
    }
}

/// A hook's outbox key, from the fan-out index when the hook is live (the dispatchers'
/// claims and outcomes, many a second), else from its row.
fn key_of(conn: &Connection, index: &FanoutIndex, id: &str) -> Result<Option<i64>, StoreError> {
    match index.slot(id) {
        Some(slot) => Ok(Some(slot.key)),
        None => hook_key(conn, id),
    }
}

fn create_hook(
    conn: &Connection,
    secrets: &SecretBox,
    new: NewHook,
    max_per_tenant: u32,
    fx: &mut Effects,
) -> Result<Hook, StoreError> {
    let live: i64 = conn
        .prepare_cached("SELECT count(*) FROM hooks WHERE tenant = ?1 AND deleted_at IS NULL")
        .and_then(|mut s| s.query_row([&new.tenant], |r| r.get(0)))
        .ctx("counting a tenant's hooks")?;
    if live >= i64::from(max_per_tenant) {
        return Err(StoreError::Conflict(format!(
            "tenant `{}` already holds {live} hooks, the most allowed (--max-hooks-per-tenant)",
            new.tenant
        )));
    }
    let now = now_ms();
    let hook = Hook {
        id: new.id,
        tenant: new.tenant,
        target_url: new.target_url,
        events: new.events,
        payload: new.payload,
        batch_max: new.batch_max,
        status: new.status,
        secret: crate::sign::new_secret(),
        previous_secret: None,
        pending_target_url: None,
        consecutive_failures: 0,
        created_at: now,
        updated_at: now,
    };
    conn.prepare_cached(
        "INSERT INTO hooks (id, tenant, target_url, events, payload, batch_max, status, secret,
                            verify_code_hash, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
    )
    .and_then(|mut s| {
        s.execute(params![
            hook.id,
            hook.tenant,
            hook.target_url,
            json!(hook.events).to_string(),
            hook.payload.as_str(),
            hook.batch_max,
            hook.status.as_str(),
            secrets.seal(&hook.secret, &hook.id),
            new.verify_code_hash,
            now
        ])
    })
    .ctx("inserting a hook")?;
    // `key` is the rowid, which the INSERT just gave it.
    fx.index.push(index_upsert(conn.last_insert_rowid(), &hook));
    Ok(hook)
}

fn update_hook(
    conn: &Connection,
    secrets: &SecretBox,
    id: &str,
    scope: Option<&str>,
    patch: HookPatch,
    fx: &mut Effects,
) -> Result<Hook, StoreError> {
    let (key, mut hook) = load_hook(conn, secrets, id, scope)?;
    if let Some(u) = patch.target_url {
        // Verified (or trusted): it takes effect now, and any older pending change goes.
        // A hook still waiting for its first verification is verified by this one.
        hook.target_url = u;
        hook.pending_target_url = None;
        if hook.status == HookStatus::Pending {
            hook.status = HookStatus::Active;
        }
        set_verification(conn, &hook.id, &[])?;
    }
    if let Some((u, code_hash)) = patch.pending_target {
        // Not verified yet: the old URL keeps receiving until `verify` finishes it.
        hook.pending_target_url = Some(u);
        set_verification(conn, &hook.id, &code_hash)?;
    }
    if let Some(e) = patch.events {
        hook.events = e;
    }
    if let Some(p) = patch.payload {
        hook.payload = p;
    }
    if let Some(b) = patch.batch_max {
        hook.batch_max = b;
    }
    hook.updated_at = now_ms();
    conn.prepare_cached(
        "UPDATE hooks SET target_url = ?2, events = ?3, payload = ?4, batch_max = ?5,
                          updated_at = ?6, pending_target_url = ?7, status = ?8
         WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            hook.id,
            hook.target_url,
            json!(hook.events).to_string(),
            hook.payload.as_str(),
            hook.batch_max,
            hook.updated_at,
            hook.pending_target_url,
            hook.status.as_str()
        ])
    })
    .ctx("updating a hook")?;
    fx.index.push(index_upsert(key, &hook));
    Ok(hook)
}

fn delete_hook(
    conn: &Connection,
    secrets: &SecretBox,
    id: &str,
    scope: Option<&str>,
    fx: &mut Effects,
) -> Result<(), StoreError> {
    let (key, hook) = load_hook(conn, secrets, id, scope)?;
    let now = now_ms();
    conn.execute(
        "UPDATE hooks SET deleted_at = ?2, updated_at = ?2 WHERE key = ?1",
        params![key, now],
    )
    .ctx("deleting a hook")?;
    // Unsubscribed: what it has not received yet will never be sent. Its open batches
    // are cancelled, and its unsent rows become one cancelled batch.
    conn.execute(
        "UPDATE batches INDEXED BY batches_open
         SET status = 'cancelled', next_attempt_at = NULL, updated_at = ?2
         WHERE hook_key = ?1 AND status IN ('pending', 'failed')",
        params![key, now],
    )
    .ctx("cancelling a deleted hook's deliveries")?;
    // Found through the key's ends, not by reading the tail: a hook deleted with
    // millions of rows queued does not hold the writer (and every publish) meanwhile.
    conn.execute(
        concat!(
            "INSERT INTO batches (hook_key, first_seq, last_seq, id, status, attempts,
                                  next_attempt_at, created_at, updated_at)
             SELECT ?1, d.seq, (SELECT max(seq) FROM deliveries WHERE hook_key = ?1), ?3,
                    'cancelled', 0, NULL, e.created_at, ?2
             FROM deliveries d CROSS JOIN events e ON e.id = d.event_id
             WHERE d.hook_key = ?1 AND d.seq > ",
            batched!("?1"),
            "
             ORDER BY d.seq LIMIT 1"
        ),
        params![key, now, new_id("dlv")],
    )
    .ctx("cancelling a deleted hook's unsent deliveries")?;
    fx.index.push(IndexChange::Remove {
        tenant: hook.tenant,
        hook_id: hook.id,
    });
    Ok(())
}

fn activate_hook(
    conn: &Connection,
    secrets: &SecretBox,
    id: &str,
    scope: Option<&str>,
    fx: &mut Effects,
) -> Result<Hook, StoreError> {
    let (key, mut hook) = load_hook(conn, secrets, id, scope)?;
    let now = now_ms();
    hook.status = HookStatus::Active;
    hook.consecutive_failures = 0;
    hook.updated_at = now;
    conn.execute(
        "UPDATE hooks SET status = 'active', consecutive_failures = 0, updated_at = ?2,
                          verify_code_hash = CASE WHEN pending_target_url IS NULL
                                                  THEN NULL ELSE verify_code_hash END
         WHERE id = ?1",
        params![hook.id, now],
    )
    .ctx("activating a hook")?;
    // Held deliveries go out now, in order, starting from the oldest (unsent rows are
    // due at once anyway).
    conn.execute(
        "UPDATE batches INDEXED BY batches_open SET next_attempt_at = ?2
         WHERE hook_key = ?1 AND status IN ('pending', 'failed')",
        params![key, now],
    )
    .ctx("resuming held deliveries")?;
    fx.reset.push(hook.id.clone());
    fx.index.push(index_upsert(key, &hook));
    Ok(hook)
}

/// Records the outstanding handshake code (its hash; empty clears it).
fn set_verification(conn: &Connection, id: &str, code_hash: &[u8]) -> Result<(), StoreError> {
    let value = (!code_hash.is_empty()).then_some(code_hash);
    conn.prepare_cached("UPDATE hooks SET verify_code_hash = ?2 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![id, value]))
        .ctx("storing a handshake code")?;
    Ok(())
}

/// Podio-style late verification: the subscriber sends back the code it was given.
fn verify_hook(
    conn: &Connection,
    secrets: &SecretBox,
    id: &str,
    scope: Option<&str>,
    code_hash: &[u8],
    fx: &mut Effects,
) -> Result<Hook, StoreError> {
    let (_, hook) = load_hook(conn, secrets, id, scope)?;
    let stored: Option<Vec<u8>> = conn
        .query_row(
            "SELECT verify_code_hash FROM hooks WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .ctx("loading a handshake code")?;
    let Some(stored) = stored else {
        return Err(StoreError::Conflict(
            "this hook has no verification outstanding".into(),
        ));
    };
    if !crate::sign::constant_time_eq(&stored, code_hash) {
        return Err(StoreError::Rejected(
            "`code` does not match the code sent in the handshake".into(),
        ));
    }
    let now = now_ms();
    conn.execute(
        "UPDATE hooks SET target_url = coalesce(pending_target_url, target_url),
                          pending_target_url = NULL, verify_code_hash = NULL,
                          status = CASE WHEN status = 'pending' THEN 'active' ELSE status END,
                          updated_at = ?2
         WHERE id = ?1",
        params![id, now],
    )
    .ctx("verifying a hook")?;
    if hook.status == HookStatus::Inactive {
        // The handshake of an `activate` finished late: the activation goes ahead.
        return activate_hook(conn, secrets, id, scope, fx);
    }
    let (key, hook) = load_hook(conn, secrets, id, scope)?;
    fx.index.push(index_upsert(key, &hook));
    Ok(hook)
}

/// A new secret; the old one keeps signing for 24 hours so receivers can switch.
fn rotate_secret(
    conn: &Connection,
    secrets: &SecretBox,
    id: &str,
    scope: Option<&str>,
) -> Result<Hook, StoreError> {
    let (_, mut hook) = load_hook(conn, secrets, id, scope)?;
    let now = now_ms();
    let until = now + ROTATION_OVERLAP_MS;
    let old = std::mem::replace(&mut hook.secret, crate::sign::new_secret());
    conn.execute(
        "UPDATE hooks SET secret = ?2, previous_secret = ?3, previous_until = ?4, updated_at = ?5
         WHERE id = ?1",
        params![
            hook.id,
            secrets.seal(&hook.secret, &hook.id),
            secrets.seal(&old, &hook.id),
            until,
            now
        ],
    )
    .ctx("rotating a secret")?;
    hook.previous_secret = Some((old, until));
    hook.updated_at = now;
    Ok(hook)
}

/// Looks up an idempotency key: `Some(stored response)` for a repeat of the same
/// request, a conflict for the same key on a different request.
fn idempotent_replay(
    conn: &Connection,
    key: &str,
    hash: &[u8],
) -> Result<Option<String>, StoreError> {
    let row: Option<(Vec<u8>, String, Millis)> = conn
        .prepare_cached("SELECT request_hash, response, created_at FROM idempotency WHERE key = ?1")
        .and_then(|mut s| {
            s.query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .ctx("looking up an idempotency key")?;
    match row {
        Some((_, _, at)) if at + IDEMPOTENCY_TTL_MS < now_ms() => {
            conn.execute("DELETE FROM idempotency WHERE key = ?1", [key])
                .ctx("expiring an idempotency key")?;
            Ok(None)
        }
        Some((h, response, _)) if h == hash => Ok(Some(response)),
        Some(_) => Err(StoreError::Conflict(
            "this Idempotency-Key was used with a different request".into(),
        )),
        None => Ok(None),
    }
}

fn remember(conn: &Connection, key: &str, hash: &[u8], response: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO idempotency (key, request_hash, response, created_at) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut s| s.execute(params![key, hash, response, now_ms()]))
    .ctx("storing an idempotency key")?;
    Ok(())
}

/// Refuses a write made with a key that was revoked since the API looked it up. The
/// key's pages stay in the writer's cache, so this costs a publish about a microsecond
/// where the lookup on a reader costs it several (api/keycache.rs).
fn check_key_live(conn: &Connection, key_id: &str) -> Result<(), StoreError> {
    let live = conn
        .prepare_cached("SELECT 1 FROM api_keys WHERE id = ?1 AND revoked_at IS NULL")
        .and_then(|mut s| s.exists([key_id]))
        .ctx("checking the publishing key")?;
    if live {
        Ok(())
    } else {
        Err(StoreError::KeyRevoked)
    }
}

/// A publish, all of it but the INSERTs: its rows are added to `pending` for the caller
/// to insert. [`apply`] inserts them at once; the writer's optimistic pass inserts those
/// of consecutive publishes together ([`insert_pending`]): single publishes come in
/// groups of 5–10, and two multi-row INSERTs for the group cost the writer less than
/// two single-row ones per publish (BENCHMARKS.md item 31). A publish that fails adds
/// no rows.
pub(super) fn publish<'a>(
    conn: &Connection,
    index: &FanoutIndex,
    op: &'a WriteOp,
    pending: &mut PublishRows<'a>,
    fx: &mut Effects,
) -> Result<WriteOutput, StoreError> {
    let WriteOp::Publish {
        events,
        array,
        request_key,
        key_id,
    } = op
    else {
        unreachable!("ops::publish takes publishes only");
    };
    check_key_live(conn, key_id)?;
    let mut rows = PublishRows::default();
    let (body, stored) = publish_rows(
        conn,
        index,
        events,
        *array,
        request_key.as_ref(),
        &mut rows,
        fx,
    )?;
    pending.events.append(&mut rows.events);
    pending.deliveries.append(&mut rows.deliveries);
    Ok(WriteOutput::Published { body, stored })
}

/// Inserts the rows [`publish`] left, as the optimistic pass does: a conflict
/// rolls the whole transaction back.
pub(super) fn insert_pending(
    conn: &Connection,
    pending: &mut PublishRows,
) -> Result<(), StoreError> {
    let result = insert_rows(conn, pending, OnConflict::Rollback);
    *pending = PublishRows::default();
    result
}

/// A publish's checks, numbering and idempotency records; its rows go to `rows`, for
/// the caller to insert.
fn publish_rows<'a>(
    conn: &Connection,
    index: &FanoutIndex,
    events: &'a [NewEvent],
    array: bool,
    request_key: Option<&(String, Vec<u8>)>,
    rows: &mut PublishRows<'a>,
    fx: &mut Effects,
) -> Result<(String, u64), StoreError> {
    let request_key = request_key.map(|(k, h)| (format!("request:{k}"), h));
    if let Some((key, hash)) = &request_key {
        if let Some(stored) = idempotent_replay(conn, key, hash)? {
            return Ok((stored, 0));
        }
    }
    let mut inserted = 0;
    // The response body is written as the events go: the writer is what bounds array
    // publishes, and a `serde_json::Value` per result cost it a map, three strings and
    // a serializer pass per event (3 % of ingest-batch samples, plus the allocator).
    let mut body = String::with_capacity(if array { 2 + events.len() * 48 } else { 48 });
    if array {
        body.push('[');
    }
    let now = now_ms();
    rows.events.reserve(events.len());
    // Consecutive events of one tenant and type (the usual array) match the same hooks:
    // matching once per run of them saves the writer a lookup and a list per event.
    let mut run: Option<(&str, &str)> = None;
    let mut hooks: Vec<Arc<str>> = Vec::new();
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let field_key = event
            .idempotency
            .as_ref()
            .map(|(k, h)| (format!("event:{k}"), h.clone()));
        if let Some((key, hash)) = &field_key {
            if let Some(stored) = idempotent_replay(conn, key, hash)? {
                body.push_str(&stored);
                continue;
            }
        }
        let kind = (event.tenant.as_str(), event.event_type.as_str());
        if run != Some(kind) {
            hooks = index.matching(kind.0, kind.1);
            run = Some(kind);
        }
        let (id, n) = fan_out(index, &hooks, event, now, rows, fx);
        inserted += 1;
        let start = body.len();
        push_result(&mut body, &id, n);
        if let Some((key, hash)) = &field_key {
            remember(conn, key, hash, &body[start..])?;
        }
        if n > 0 {
            // For the dispatchers' memory of recent events, once committed (recent.rs).
            fx.published.push((i, id, now));
        }
    }
    if array {
        body.push(']');
    }
    if let Some((key, hash)) = &request_key {
        remember(conn, key, hash, &body)?;
    }
    Ok((body, inserted))
}

/// `{"id":"evt_…","deliveries":n}`, as `serde_json` would write it (ids are ASCII
/// letters, digits and `_`: nothing to escape).
fn push_result(body: &mut String, id: &str, deliveries: u64) {
    use std::fmt::Write;
    debug_assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    let _ = write!(body, r#"{{"id":"{id}","deliveries":{deliveries}}}"#);
}

/// The rows one publish adds, inserted together at its end: a multi-row INSERT sets up
/// a statement and its cursors (a table and its indexes) once per chunk instead of
/// once per row.
#[derive(Default)]
pub(super) struct PublishRows<'a> {
    /// Each event with its id and the time its publish was applied.
    events: Vec<(String, &'a NewEvent, Millis)>,
    deliveries: Vec<DeliveryRow>,
}

impl PublishRows<'_> {
    pub(super) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

struct DeliveryRow {
    hook_key: i64,
    seq: i64,
    /// Shared by the event's rows.
    event_id: Arc<str>,
}

/// Numbers and queues one event for `hooks` (the hooks its tenant and type match);
/// returns its id and how many of them it was queued for.
fn fan_out<'a>(
    index: &FanoutIndex,
    hooks: &[Arc<str>],
    event: &'a NewEvent,
    now: Millis,
    rows: &mut PublishRows<'a>,
    fx: &mut Effects,
) -> (String, u64) {
    let id = new_id("evt");
    rows.events.push((id.clone(), event, now));
    let shared_id: Arc<str> = id.as_str().into();
    let mut matched = 0;
    for hook_id in hooks {
        // The index knows which hooks may receive (not pending, not deleted) and their
        // last sequence number: numbering needs no read or write of the hook row.
        let Some(slot) = index.slot(hook_id) else {
            continue;
        };
        if !slot.eligible {
            continue;
        }
        // A hook's first row in this op is also its one wake-up: an array of 100 events
        // for one hook tells the scheduler once, not 100 times.
        let seq = match fx.seqs.get_mut(hook_id) {
            Some(last) => {
                *last += 1;
                *last
            }
            None => {
                fx.seqs.insert(hook_id.clone(), slot.last_seq + 1);
                fx.new_work.push(hook_id.to_string());
                slot.last_seq + 1
            }
        };
        rows.deliveries.push(DeliveryRow {
            hook_key: slot.key,
            seq,
            event_id: shared_id.clone(),
        });
        matched += 1;
    }
    (id, matched)
}

/// Statement sizes for multi-row inserts: a few fixed ones, so the statement cache holds
/// four statements per table rather than one per row count.
const CHUNKS: [usize; 4] = [64, 16, 4, 1];

/// `INSERT … VALUES tuple, tuple, …` with `n` tuples: `insert`, then `head`.
fn values_sql(insert: &str, head: &str, tuple: &str, n: usize) -> String {
    let mut sql = String::with_capacity(insert.len() + head.len() + n * (tuple.len() + 1));
    sql.push_str(insert);
    sql.push_str(head);
    for i in 0..n {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(tuple);
    }
    sql
}

/// Splits `len` rows into runs of the sizes in [`CHUNKS`].
fn chunk_sizes(mut len: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        let n = CHUNKS.into_iter().find(|c| *c <= len)?;
        len -= n;
        Some(n)
    })
}

fn insert_rows(
    conn: &Connection,
    rows: &PublishRows,
    on_conflict: OnConflict,
) -> Result<(), StoreError> {
    // With `Rollback` neither INSERT needs a statement journal (the deliveries' foreign
    // keys are checked at COMMIT: schema.sql).
    insert_chunked(
        conn,
        "inserting events",
        on_conflict,
        "events (id, tenant, type, resource_id, data, created_at) VALUES ",
        "(?, ?, ?, ?, ?, ?)",
        &rows.events,
        |(id, e, now), values| {
            values.extend([
                id as &dyn ToSql,
                &e.tenant,
                &e.event_type,
                &e.resource_id,
                &e.data,
                now,
            ])
        },
    )?;
    insert_chunked(
        conn,
        "inserting deliveries",
        on_conflict,
        "deliveries (hook_key, seq, event_id) VALUES ",
        "(?, ?, ?)",
        &rows.deliveries,
        |d, values| values.extend([&d.hook_key as &dyn ToSql, &d.seq, &d.event_id]),
    )
}

/// Inserts `rows` with statements `head` (after the INSERT `on_conflict` asks for)
/// followed by `tuple` once per row, in chunks of the sizes in [`CHUNKS`]; `bind` adds
/// one row's values in `tuple`'s order.
fn insert_chunked<'r, T>(
    conn: &Connection,
    what: &str,
    on_conflict: OnConflict,
    head: &str,
    tuple: &str,
    rows: &'r [T],
    bind: impl Fn(&'r T, &mut Vec<&'r dyn ToSql>),
) -> Result<(), StoreError> {
    let per_row = tuple.matches('?').count();
    let mut rest = rows;
    for n in chunk_sizes(rows.len()) {
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let mut values = Vec::with_capacity(n * per_row);
        for row in chunk {
            bind(row, &mut values);
        }
        conn.prepare_cached(&values_sql(on_conflict.insert(), head, tuple, n))
            .and_then(|mut s| s.execute(&*values))
            .ctx(what)?;
    }
    Ok(())
}

/// Forms a batch of the hook's unsent rows `first..=last` before it is first sent: one
/// row for the whole batch, whatever its size. Nothing is written (0) unless `first`
/// starts the unsent tail and `last` exists: the rows changed under the dispatcher
/// (the hook was deleted).
fn claim_batch(
    conn: &Connection,
    index: &FanoutIndex,
    hook_id: &str,
    batch_id: &str,
    (first, last): (i64, i64),
) -> Result<u64, StoreError> {
    let Some(key) = key_of(conn, index, hook_id)? else {
        return Ok(0);
    };
    let made = conn
        .prepare_cached(concat!(
            "INSERT INTO batches (hook_key, first_seq, last_seq, id, status, attempts,
                                  next_attempt_at, created_at, updated_at)
             SELECT ?1, ?3, ?4, ?2, 'pending', 0, NULL, e.created_at, ?5
             FROM deliveries d CROSS JOIN events e ON e.id = d.event_id
             WHERE d.hook_key = ?1 AND d.seq = ?3 AND ?3 > ",
            batched!("?1"),
            "
               AND EXISTS (SELECT 1 FROM deliveries WHERE hook_key = ?1 AND seq = ?4)"
        ))
        .and_then(|mut s| s.execute(params![key, batch_id, first, last, now_ms()]))
        .ctx("claiming a batch")?;
    Ok(if made == 1 {
        (last - first + 1) as u64
    } else {
        0
    })
}

fn record_attempt(
    conn: &Connection,
    index: &FanoutIndex,
    secrets: &SecretBox,
    record: &AttemptRecord,
    disable_after: u32,
    fx: &mut Effects,
) -> Result<(), StoreError> {
    let now = now_ms();
    let a = &record.attempt;
    conn.prepare_cached(
        "INSERT INTO attempts (delivery_id, at, status_code, error, duration_ms, response_snippet)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            record.batch_id,
            a.at,
            a.status_code,
            a.error,
            a.duration_ms,
            a.response_snippet
        ])
    })
    .ctx("logging an attempt")?;
    let (status, next_at): (&str, Option<Millis>) = match record.verdict {
        Verdict::Delivered => ("delivered", None),
        Verdict::Retry { at } => ("failed", Some(at)),
        Verdict::Dead => ("dead", None),
        Verdict::Gone => ("cancelled", None),
    };
    // Only an open batch changes: a hook deleted mid-attempt keeps its cancellations.
    // A row sent alone has no batch to update yet (it was in the unsent tail when read,
    // and only this dispatcher sends for its hook).
    let updated = if record.single.is_some() {
        0
    } else {
        conn.prepare_cached(
            "UPDATE batches SET status = ?2, attempts = attempts + 1, next_attempt_at = ?3,
                                updated_at = ?4
             WHERE id = ?1 AND status IN ('pending', 'failed')",
        )
        .and_then(|mut s| s.execute(params![record.batch_id, status, next_at, now]))
        .ctx("updating a delivery")?
    };
    let single = match record.single {
        Some(seq) if updated == 0 => key_of(conn, index, &record.hook_id)?.map(|k| (k, seq)),
        _ => None,
    };
    if let Some((key, seq)) = single {
        // A row sent alone is written as a batch with its first outcome, unless a batch
        // took it meanwhile (its hook was deleted: the row is cancelled).
        conn.prepare_cached(
            "INSERT OR IGNORE INTO batches (hook_key, first_seq, last_seq, id, status, attempts,
                                            next_attempt_at, created_at, updated_at)
             SELECT ?1, ?2, ?2, ?3, ?4, 1, ?5, e.created_at, ?6
             FROM deliveries d CROSS JOIN events e ON e.id = d.event_id
             WHERE d.hook_key = ?1 AND d.seq = ?2
               AND ?2 > coalesce((SELECT last_seq FROM batches
                                  WHERE hook_key = ?1 AND first_seq <= ?2
                                  ORDER BY first_seq DESC LIMIT 1), 0)",
        )
        .and_then(|mut s| s.execute(params![key, seq, record.batch_id, status, next_at, now]))
        .ctx("writing a delivery")?;
    }

    if record.verdict == Verdict::Gone {
        log::info!("hook {} answered 410 Gone: unsubscribed", record.hook_id);
        match delete_hook(conn, secrets, &record.hook_id, None, fx) {
            Ok(()) | Err(StoreError::NotFound) => {}
            Err(e) => return Err(e),
        }
        return Ok(());
    }
    if record.verdict.is_failure() {
        let disabled: Option<i64> = conn
            .prepare_cached(
                "UPDATE hooks SET consecutive_failures = consecutive_failures + 1,
                     status = CASE WHEN ?2 > 0 AND consecutive_failures + 1 >= ?2
                                    AND status = 'active' THEN 'inactive' ELSE status END,
                     updated_at = ?3
                 WHERE id = ?1 RETURNING status = 'inactive'",
            )
            .and_then(|mut s| {
                s.query_row(params![record.hook_id, disable_after, now], |r| r.get(0))
                    .optional()
            })
            .ctx("counting a failure")?;
        if disabled == Some(1) {
            log::warn!(
                "hook {} is inactive after {disable_after} consecutive failed attempts",
                record.hook_id
            );
        }
    } else if record.after_failures {
        conn.prepare_cached(
            "UPDATE hooks SET consecutive_failures = 0 WHERE id = ?1 AND consecutive_failures > 0",
        )
        .and_then(|mut s| s.execute([&record.hook_id]))
        .ctx("resetting failures")?;
    }
    Ok(())
}

/// When the hook's oldest open delivery is due, if the hook may send at all: its first
/// open batch's next attempt, or now if it has only unsent rows.
fn next_due(conn: &Connection, hook_id: &str) -> Result<Option<Millis>, StoreError> {
    conn.prepare_cached(concat!(
        "SELECT coalesce(
                    (SELECT coalesce(b.next_attempt_at, 0) FROM batches b INDEXED BY batches_open
                     WHERE b.hook_key = h.key AND b.status IN ('pending', 'failed')
                     ORDER BY b.first_seq LIMIT 1),
                    (SELECT 0 FROM deliveries WHERE hook_key = h.key AND seq > ",
        batched!("h.key"),
        " LIMIT 1))
         FROM hooks h WHERE h.id = ?1 AND h.status = 'active' AND h.deleted_at IS NULL"
    ))
    .and_then(|mut s| {
        s.query_row([hook_id], |r| r.get::<_, Option<Millis>>(0))
            .optional()
    })
    .ctx("finding the next due delivery")
    .map(Option::flatten)
}

/// The hook of a delivery (batch head), checked against the caller's tenant.
fn delivery_hook(
    conn: &Connection,
    id: &str,
    scope: Option<&str>,
) -> Result<(String, String), StoreError> {
    // A batch, or an unsent row (a delivery of its own until it is sent).
    let batch: Option<(String, String)> = conn
        .query_row(
            "SELECT h.id, b.status FROM batches b JOIN hooks h ON h.key = b.hook_key
             WHERE b.id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .ctx("loading a delivery")?;
    let found = match batch {
        Some(found) => Some(found),
        None => super::read::unsent_row_hook(conn, id)?.map(|hook| (hook, "pending".into())),
    };
    let row: Option<(String, String, String)> = match found {
        None => None,
        Some((hook_id, status)) => conn
            .query_row(
                "SELECT tenant FROM hooks WHERE id = ?1 AND deleted_at IS NULL",
                [&hook_id],
                |r| r.get(0),
            )
            .optional()
            .ctx("loading a delivery")?
            .map(|tenant| (hook_id, tenant, status)),
    };
    let (hook_id, tenant, status) = row.ok_or(StoreError::NotFound)?;
    if scope.is_some_and(|t| t != tenant) {
        return Err(StoreError::NotFound);
    }
    Ok((hook_id, status))
}

fn retry_delivery(
    conn: &Connection,
    id: &str,
    scope: Option<&str>,
    fx: &mut Effects,
) -> Result<(), StoreError> {
    let (hook_id, status) = delivery_hook(conn, id, scope)?;
    match status.as_str() {
        "cancelled" => {
            return Err(StoreError::Conflict(
                "this delivery was cancelled with its hook".into(),
            ))
        }
        "pending" => return Err(StoreError::Conflict(
            "this delivery is already queued; only a failed, dead or delivered one is sent again"
                .into(),
        )),
        _ => {}
    }
    let now = now_ms();
    // A fresh round of the schedule, sent as soon as its turn in the hook's order comes.
    conn.execute(
        "UPDATE batches SET status = 'pending', attempts = 0, next_attempt_at = ?2,
                            updated_at = ?2
         WHERE id = ?1",
        params![id, now],
    )
    .ctx("queueing a delivery again")?;
    fx.reset.push(hook_id);
    Ok(())
}

fn replay(
    conn: &Connection,
    secrets: &SecretBox,
    hook_id: &str,
    scope: Option<&str>,
    since: Millis,
    fx: &mut Effects,
) -> Result<u64, StoreError> {
    let (key, _) = load_hook(conn, secrets, hook_id, scope)?;
    let now = now_ms();
    // Whole batches come back, so a retried request carries the same events as before.
    let batches = conn
        .execute(
            "UPDATE batches SET status = 'pending', attempts = 0, next_attempt_at = ?3,
                                updated_at = ?3
             WHERE hook_key = ?1 AND status = 'dead' AND created_at >= ?2",
            params![key, since, now],
        )
        .ctx("replaying dead deliveries")?;
    if batches > 0 {
        fx.reset.push(hook_id.to_string());
    }
    Ok(batches as u64)
}

/// Retention, one bounded batch at a time so the writer is never held for long:
/// finished deliveries made before `cutoff`, the attempts of deliveries that are gone,
/// events before it that no delivery needs, and expired idempotency keys. Ids are
/// time-ordered, so "made before" is a primary-key range. Returns the largest count
/// removed of one kind; the caller repeats while that is `limit`.
fn prune(conn: &Connection, cutoff: Millis, limit: u32) -> Result<u64, StoreError> {
    let dlv_bound = crate::ids::id_at("dlv", cutoff);
    let run = |what: &str, sql: &str, bound: &dyn rusqlite::ToSql| {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute(params![bound, limit]))
            .ctx(what)
    };
    // A finished batch goes with its rows, at most `limit` rows a call. A batch larger
    // than what is left of that (only a deleted hook's cancelled tail can be: the others
    // hold at most `batch_max` rows) loses its oldest rows and keeps the rest under a
    // higher `first_seq`, so a tail of millions is pruned over many calls, each a short
    // wait for the publishes behind it, rather than in one long one. A hook's last
    // sequence number lives in the writer's memory and is recovered at start from its
    // newest row, so before that row goes the number is kept in `hooks.last_seq`.
    let mut newest: HashMap<i64, i64> = HashMap::new();
    let mut deliveries = 0usize;
    // Read only as many batches as cover `limit` rows (one row each at batch_max 1, up
    // to 1,000 each otherwise), all before any is deleted: only the last one read can
    // hold more than what is left.
    let mut left = i64::from(limit.max(1));
    let finished: Vec<(i64, i64, i64)> = conn
        .prepare_cached(
            "SELECT hook_key, first_seq, last_seq FROM batches
             WHERE id < ?1 AND status IN ('delivered', 'dead', 'cancelled') LIMIT ?2",
        )
        .and_then(|mut s| {
            let mut found = s.query(params![dlv_bound, limit])?;
            let (mut out, mut covered) = (Vec::new(), 0i64);
            while covered < left {
                let Some(r) = found.next()? else { break };
                let (hook, first, last): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
                covered += last - first + 1;
                out.push((hook, first, last));
            }
            Ok(out)
        })
        .ctx("pruning deliveries")?;
    let mut rows = conn
        .prepare_cached("DELETE FROM deliveries WHERE hook_key = ?1 AND seq BETWEEN ?2 AND ?3")
        .ctx("pruning deliveries")?;
    for (hook, first, last) in finished {
        let upto = last.min(first + left - 1);
        deliveries += rows
            .execute(params![hook, first, upto])
            .ctx("pruning deliveries")?;
        left -= upto - first + 1;
        if upto == last {
            conn.prepare_cached("DELETE FROM batches WHERE hook_key = ?1 AND first_seq = ?2")
                .and_then(|mut s| s.execute(params![hook, first]))
        } else {
            conn.prepare_cached(
                "UPDATE batches SET first_seq = ?3 WHERE hook_key = ?1 AND first_seq = ?2",
            )
            .and_then(|mut s| s.execute(params![hook, first, upto + 1]))
        }
        .ctx("pruning deliveries")?;
        let e = newest.entry(hook).or_insert(upto);
        *e = (*e).max(upto);
    }
    let mut floor = conn
        .prepare_cached("UPDATE hooks SET last_seq = ?2 WHERE key = ?1 AND last_seq < ?2")
        .ctx("keeping a hook's sequence")?;
    for (hook, seq) in &newest {
        floor
            .execute(params![hook, seq])
            .ctx("keeping a hook's sequence")?;
    }
    // Attempts are keyed by the batch's first row: they go when it has gone.
    let attempts = run(
        "pruning attempts",
        "DELETE FROM attempts WHERE id IN (
             SELECT a.id FROM attempts a
             WHERE a.delivery_id < ?1
               AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.id = a.delivery_id)
             LIMIT ?2)",
        &dlv_bound,
    )?;
    let events = run(
        "pruning events",
        "DELETE FROM events WHERE id IN (
             SELECT e.id FROM events e
             WHERE e.id < ?1 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id)
             LIMIT ?2)",
        &crate::ids::id_at("evt", cutoff),
    )?;
    let keys = run(
        "pruning idempotency keys",
        "DELETE FROM idempotency WHERE key IN (
             SELECT key FROM idempotency WHERE created_at < ?1 LIMIT ?2)",
        &(now_ms() - IDEMPOTENCY_TTL_MS),
    )?;
    Ok(deliveries.max(attempts).max(events).max(keys) as u64)
}

/// Enters the events after meta's `types_through` into `event_types` and moves
/// `types_through` to the newest event: the type index written behind (schema.sql).
/// Returns how many events it entered. The caller commits both together.
pub(super) fn index_types(conn: &Connection) -> Result<usize, StoreError> {
    let entered = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO event_types (tenant, type, event_id)
                 SELECT tenant, type, id FROM events
                 WHERE id > (SELECT value FROM meta WHERE key = 'types_through')",
        )
        .and_then(|mut s| s.execute([]))
        .ctx("indexing events by type")?;
    if entered > 0 {
        types_through_newest(conn)?;
    }
    Ok(entered)
}

/// Records that every event up to the newest is in `event_types` (`index_types`, and
/// the bench's fill, which enters its own).
pub(super) fn types_through_newest(conn: &Connection) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE meta SET value = (SELECT max(id) FROM events) WHERE key = 'types_through'",
    )
    .and_then(|mut s| s.execute([]))
    .ctx("advancing the type index")
    .map(drop)
}

/// The newest event's id, if any: the writer's ids continue after it, whatever the
/// clock did while hookd was stopped (`types_through` relies on ids rising).
pub(super) fn newest_event(conn: &Connection) -> Result<Option<String>, StoreError> {
    conn.prepare_cached("SELECT max(id) FROM events")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .ctx("reading the newest event")
}

/// What the fan-out index keeps of a live hook.
pub(super) struct LiveHook {
    pub id: String,
    pub key: i64,
    pub tenant: String,
    pub patterns: Vec<String>,
    pub eligible: bool,
    pub batch_max: u32,
    /// The larger of `hooks.last_seq` (kept when rows are pruned) and its newest row.
    pub last_seq: i64,
}

/// Every live hook, to build the fan-out index. The newest row of each hook is found
/// through the outbox's key (hook_key, seq): one index probe per hook.
pub(super) fn live_hooks(conn: &Connection) -> Result<Vec<LiveHook>, StoreError> {
    let mut stmt = conn
        .prepare(
            "SELECT id, tenant, events, status, batch_max,
                    max(last_seq, coalesce((SELECT max(seq) FROM deliveries d
                                            WHERE d.hook_key = hooks.key), 0)),
                    key
             FROM hooks WHERE deleted_at IS NULL",
        )
        .ctx("listing hooks")?;
    let rows = stmt
        .query_map([], |r| {
            let events: String = r.get(2)?;
            let status: String = r.get(3)?;
            Ok(LiveHook {
                id: r.get(0)?,
                tenant: r.get(1)?,
                patterns: serde_json::from_str(&events).unwrap_or_default(),
                eligible: HookStatus::parse(&status).is_some_and(HookStatus::receives_events),
                batch_max: r.get(4)?,
                last_seq: r.get(5)?,
                key: r.get(6)?,
            })
        })
        .ctx("listing hooks")?;
    rows.collect::<Result<_, _>>().ctx("reading hooks")
}
