//! The writer thread: the one connection that writes. It takes every request waiting in
//! its queue, applies each inside its own savepoint of one transaction, commits once
//! (one fsync for all of them: group commit), and only then answers each request. An
//! answer therefore always means "on disk".
//!
//! It also owns the fan-out index (hook patterns per tenant), because every hook change
//! and every publish passes through here: the index is exactly what was committed.

use std::collections::HashMap;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use rusqlite::{Connection, TransactionBehavior};

use super::{ops, AttemptRecord, Context, HookPatch, NewEvent, NewHook, StoreError};
use crate::clock::Millis;
use crate::model::{ApiKey, Hook, Role};
use crate::patterns::TenantIndex;
use crate::secrets::SecretBox;

/// Most requests folded into one transaction; bounds the time one commit holds answers.
const MAX_GROUP: usize = 512;

/// One write, sent by an API handler or a dispatcher.
#[derive(Debug)]
pub enum WriteOp {
    CreateKey {
        token_hash: Vec<u8>,
        role: Role,
        tenant: Option<String>,
    },
    RevokeKey {
        id: String,
    },
    /// Refused (`Conflict`) when the tenant already holds `max_per_tenant` hooks.
    CreateHook {
        hook: NewHook,
        max_per_tenant: u32,
    },
    /// `scope`: the subscriber's tenant; a hook outside it is `NotFound`.
    UpdateHook {
        id: String,
        scope: Option<String>,
        patch: HookPatch,
    },
    DeleteHook {
        id: String,
        scope: Option<String>,
    },
    ActivateHook {
        id: String,
        scope: Option<String>,
    },
    /// Stores the hash of an outstanding handshake code.
    SetVerification {
        id: String,
        code_hash: Vec<u8>,
    },
    /// Finishes a handshake with the code the subscriber sends back.
    VerifyHook {
        id: String,
        scope: Option<String>,
        code_hash: Vec<u8>,
    },
    RotateSecret {
        id: String,
        scope: Option<String>,
    },
    /// One or many events in one transaction. `array` shapes the response body;
    /// `request_key` is the `Idempotency-Key` header with the hash of the request body.
    Publish {
        events: Vec<NewEvent>,
        array: bool,
        request_key: Option<(String, Vec<u8>)>,
    },
    /// Gives never-sent rows `ids` the batch id `batch_id` before they go out together.
    ClaimBatch {
        batch_id: String,
        ids: Vec<String>,
    },
    /// `want_next`: answer when the hook's next delivery is due (a query the
    /// dispatcher skips for successes it does not wait for).
    RecordAttempt {
        record: AttemptRecord,
        disable_after: u32,
        want_next: bool,
    },
    /// Deletes up to `limit` finished deliveries (with their attempts) made before
    /// `cutoff`, events before it that no delivery needs, and expired idempotency keys.
    Prune {
        cutoff: Millis,
        limit: u32,
    },
    /// Moves the WAL into the database file and truncates it (at shutdown).
    Checkpoint,
    RetryDelivery {
        id: String,
        scope: Option<String>,
    },
    Replay {
        hook_id: String,
        scope: Option<String>,
        since: Millis,
    },
}

#[derive(Debug)]
pub enum WriteOutput {
    Key(ApiKey),
    Hook(Hook),
    /// The response body of a publish, and how many events it newly stored (repeats
    /// under an idempotency key are not counted).
    Published {
        body: String,
        stored: u64,
    },
    Count(u64),
    /// After an attempt: when the hook's next delivery is due, if it has one and may send.
    Next(Option<Millis>),
    Done,
}

/// What the scheduler is told after a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wakeup {
    /// New deliveries were queued for these hooks.
    NewWork(Vec<String>),
    /// These hooks' queues changed in a way that may make something due now
    /// (activate, manual retry, replay).
    Reset(Vec<String>),
}

pub struct Request {
    pub op: WriteOp,
    pub reply: Sender<Result<WriteOutput, StoreError>>,
}

/// Side effects of an applied op, carried out only once the transaction commits.
#[derive(Default)]
pub(super) struct Effects {
    pub index: Vec<IndexChange>,
    pub new_work: Vec<String>,
    pub reset: Vec<String>,
}

pub(super) enum IndexChange {
    Upsert {
        tenant: String,
        hook_id: String,
        patterns: Vec<String>,
    },
    Remove {
        tenant: String,
        hook_id: String,
    },
}

/// Hook patterns by tenant, for fan-out without scanning every hook.
#[derive(Default)]
pub(super) struct FanoutIndex {
    tenants: HashMap<String, TenantIndex<String>>,
}

impl FanoutIndex {
    fn load(conn: &Connection) -> Result<FanoutIndex, StoreError> {
        let mut index = FanoutIndex::default();
        for (id, tenant, patterns) in ops::live_hook_patterns(conn)? {
            index.apply(IndexChange::Upsert {
                tenant,
                hook_id: id,
                patterns,
            });
        }
        Ok(index)
    }

    fn apply(&mut self, change: IndexChange) {
        match change {
            IndexChange::Upsert {
                tenant,
                hook_id,
                patterns,
            } => {
                let t = self.tenants.entry(tenant).or_default();
                t.remove(&hook_id);
                t.insert(hook_id, &patterns);
            }
            IndexChange::Remove { tenant, hook_id } => {
                if let Some(t) = self.tenants.get_mut(&tenant) {
                    t.remove(&hook_id);
                    if t.is_empty() {
                        self.tenants.remove(&tenant);
                    }
                }
            }
        }
    }

    /// Candidate hooks for an event; the publish re-checks each hook's state in SQL.
    pub fn matching(&self, tenant: &str, event_type: &str) -> Vec<String> {
        self.tenants
            .get(tenant)
            .map(|t| t.matching(event_type))
            .unwrap_or_default()
    }
}

/// Runs until every `Store` handle is dropped and the queue is empty.
pub fn run(
    mut conn: Connection,
    secrets: Arc<SecretBox>,
    requests: Receiver<Request>,
    wakeups: Sender<Wakeup>,
) {
    let mut index = match FanoutIndex::load(&conn) {
        Ok(i) => i,
        Err(e) => {
            log::error!("writer: cannot load hooks: {e}");
            return;
        }
    };
    let mut group: Vec<Request> = Vec::with_capacity(MAX_GROUP);
    let mut failing = false;
    while let Ok(first) = requests.recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match requests.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let checkpoint = group.iter().any(|r| matches!(r.op, WriteOp::Checkpoint));
        let result = commit_group(&mut conn, &mut index, &secrets, &mut group, &wakeups);
        // A storage fault (disk full, I/O error) is logged once when it starts and once
        // when it ends, not once per request; callers get 503 meanwhile.
        if result.is_err() {
            // The group waited out the busy timeout (or hit a full disk) and failed. What
            // queued up meanwhile would only wait as long again, one group after
            // another: it is answered now, so callers hear 503 within one timeout.
            while let Ok(r) = requests.try_recv() {
                let _ = r.reply.send(Err(StoreError::Busy));
            }
        }
        match (result, failing) {
            (Err(e), false) => {
                log::error!("writer: commits are failing, answering 503 until they succeed: {e}");
                failing = true;
            }
            (Err(e), true) => log::debug!("writer: still failing: {e}"),
            (Ok(()), true) => {
                log::warn!("writer: commits succeed again");
                failing = false;
            }
            (Ok(()), false) => {}
        }
        if checkpoint {
            if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
                log::warn!("writer: checkpoint failed: {e}");
            }
        }
    }
    log::debug!("writer: queue closed, stopping");
}

fn commit_group(
    conn: &mut Connection,
    index: &mut FanoutIndex,
    secrets: &SecretBox,
    group: &mut Vec<Request>,
    wakeups: &Sender<Wakeup>,
) -> Result<(), StoreError> {
    let mut replies = Vec::with_capacity(group.len());
    let mut results = Vec::with_capacity(group.len());
    let mut effects = Effects::default();
    let outcome = (|| -> Result<(), StoreError> {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx("starting a write transaction")?;
        // Each op in its own savepoint: one failing op (a conflict, a constraint) is
        // rolled back alone and the others still commit. Cached statements rather than
        // rusqlite's `Savepoint`, which parses its SQL anew every time (a fifth of the
        // writer's CPU as profiled).
        let run = |sql: &str| tx.prepare_cached(sql).and_then(|mut s| s.execute([]));
        for Request { op, reply } in group.drain(..) {
            replies.push(reply);
            run("SAVEPOINT op").ctx("opening a savepoint")?;
            let mut op_effects = Effects::default();
            let result = ops::apply(&tx, index, secrets, op, &mut op_effects);
            if result.is_ok() {
                effects.index.append(&mut op_effects.index);
                effects.new_work.append(&mut op_effects.new_work);
                effects.reset.append(&mut op_effects.reset);
            } else {
                run("ROLLBACK TO op").ctx("rolling back a savepoint")?;
            }
            run("RELEASE op").ctx("releasing a savepoint")?;
            results.push(result);
        }
        tx.commit().ctx("committing")
    })();
    match outcome {
        Ok(()) => {
            for change in effects.index {
                index.apply(change);
            }
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
            if !effects.new_work.is_empty() {
                let _ = wakeups.send(Wakeup::NewWork(effects.new_work));
            }
            if !effects.reset.is_empty() {
                let _ = wakeups.send(Wakeup::Reset(effects.reset));
            }
            Ok(())
        }
        Err(e) => {
            // Nothing in the group is committed: every caller hears so (the requests
            // not reached yet included), and the index is rebuilt from what is on disk.
            for reply in replies.into_iter().chain(group.drain(..).map(|r| r.reply)) {
                let _ = reply.send(Err(StoreError::Busy));
            }
            match FanoutIndex::load(conn) {
                Ok(i) => *index = i,
                Err(e) => log::debug!("writer: cannot reload hooks: {e}"),
            }
            Err(e)
        }
    }
}
