//! The writer thread: the one connection that writes. It takes every request waiting in
//! its queue, applies each inside its own savepoint of one transaction, commits once
//! (one fsync for all of them: group commit), and only then answers each request. An
//! answer therefore always means "on disk".
//!
//! It also owns the fan-out index (hook patterns per tenant), because every hook change
//! and every publish passes through here: the index is exactly what was committed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rusqlite::{Connection, TransactionBehavior};

use super::reply::ReplySender;
use super::{ops, AttemptRecord, Context, HookPatch, NewEvent, NewHook, StoreError};
use crate::clock::Millis;
use crate::model::{ApiKey, Event, Hook, Role};
use crate::patterns::TenantIndex;
use crate::secrets::SecretBox;

/// Most requests folded into one transaction; bounds the time one commit holds answers.
const MAX_GROUP: usize = 512;
/// WAL pages after which the writer checkpoints (SQLite's own default is 1,000). A
/// checkpoint writes each page once however many commits changed it, and a commit of
/// many hooks' rows changes the same few pages of each hook's queue again and again:
/// 16,000 pages (64 MiB) write each of them once
/// where 1,000 wrote them at nearly every commit (batch_max 100 to 100 hooks:
/// 67.7–69.9k against 78.7–84.4k events/s, 3 pairs).
pub(super) const CHECKPOINT_PAGES: i32 = 16_000;
/// How long a group of delivery outcomes alone may wait for more outcomes still on the
/// wire, and how many it waits for at most. Nobody waits on a success's commit but the
/// scheduler (the hook goes out again after it), so a millisecond costs nothing a
/// client sees, and a fan-out's outcomes share a few commits instead of one each.
const OUTCOME_LINGER: Duration = Duration::from_millis(1);
const OUTCOME_GROUP: usize = 64;
/// How long an event may wait to enter the type index (`event_types`, written behind:
/// schema.sql). A listing by type finds it meanwhile by reading the events after
/// `types_through`, at most this long's worth; each type's entries are inserted once per
/// interval instead of once per commit. Longer intervals share each type's pages among
/// more entries (batch_max 100: 1 s +3 % on 250 ms) but hold the writer longer at once
/// under heavy publishing (~10 % of its time goes here) and leave more for listings to
/// read from the events.
const TYPES_EVERY: Duration = Duration::from_millis(500);

/// The writer's nice value. It is the one thread every publish and every delivery
/// outcome waits for: while the kernel runs a connection thread or a dispatcher instead
/// (2 cores, dozens of runnable threads), every client waits. Lowering a nice value
/// needs CAP_SYS_NICE or an `RLIMIT_NICE` that allows it (systemd: `LimitNICE=-10`);
/// without either the writer keeps the default priority. BENCHMARKS.md, item 27.
const WRITER_NICE: i32 = -10;

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
    /// `key_id` is the API key that authorized it, which the API may have taken from its
    /// cache: nothing is written unless that key is still live.
    Publish {
        events: Vec<NewEvent>,
        array: bool,
        request_key: Option<(String, Vec<u8>)>,
        key_id: String,
    },
    /// Forms the batch `batch_id` of the hook's unsent rows with sequence numbers in
    /// `seqs` (both ends included) before they go out together; answers how many rows
    /// it holds (0: the rows changed under the dispatcher, and no batch was formed).
    ClaimBatch {
        hook_id: String,
        batch_id: String,
        seqs: (i64, i64),
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
    /// These events were committed and queued for at least one hook: the scheduler
    /// keeps them in memory for the dispatchers (recent.rs) before it reads the
    /// `NewWork` that follows, so the writer spends no time on that.
    Published(Vec<Event>),
    /// New deliveries were queued for these hooks.
    NewWork(Vec<String>),
    /// These hooks' queues changed in a way that may make something due now
    /// (activate, manual retry, replay).
    Reset(Vec<String>),
}

pub struct Request {
    pub op: WriteOp,
    pub reply: ReplySender<Result<WriteOutput, StoreError>>,
}

/// Side effects of an applied op. Index changes and sequence numbers take effect in
/// the writer's memory as soon as the op succeeds (later ops of the same group see
/// them); wakeups go out only once the transaction commits.
#[derive(Default)]
pub(super) struct Effects {
    pub index: Vec<IndexChange>,
    /// The last sequence number this op gave each hook.
    pub seqs: HashMap<Arc<str>, i64>,
    pub new_work: Vec<String>,
    pub reset: Vec<String>,
    /// Events this op queued for at least one hook: (index in the publish, id, time).
    pub published: Vec<(usize, String, Millis)>,
}

pub(super) enum IndexChange {
    Upsert {
        tenant: String,
        hook_id: String,
        /// Its key in the outbox (`hooks.key`).
        key: i64,
        patterns: Vec<String>,
        /// Receives events (active or inactive, not pending).
        eligible: bool,
        batch_max: u32,
    },
    Remove {
        tenant: String,
        hook_id: String,
    },
}

/// Hook patterns by tenant, for fan-out without scanning every hook, and what a
/// publish needs to know of each hook without touching its row.
#[derive(Default)]
pub(super) struct FanoutIndex {
    /// Hook ids are shared (`Arc<str>`): a publish copies one into each delivery row it
    /// makes, and a fan-out to 10,000 hooks makes 10,000.
    tenants: HashMap<String, TenantIndex<Arc<str>>>,
    slots: HashMap<Arc<str>, Slot>,
}

/// A live hook as the fan-out sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot {
    /// `hooks.key`: what its outbox rows and batches are keyed by.
    pub key: i64,
    pub eligible: bool,
    pub batch_max: u32,
    /// The sequence number of its newest delivery row (committed or applied in the
    /// current group).
    pub last_seq: i64,
}

impl FanoutIndex {
    pub(super) fn load(conn: &Connection) -> Result<FanoutIndex, StoreError> {
        let mut index = FanoutIndex::default();
        for h in ops::live_hooks(conn)? {
            index.apply(IndexChange::Upsert {
                tenant: h.tenant,
                hook_id: h.id.clone(),
                key: h.key,
                patterns: h.patterns,
                eligible: h.eligible,
                batch_max: h.batch_max,
            });
            index.advance(&h.id, h.last_seq);
        }
        Ok(index)
    }

    fn apply(&mut self, change: IndexChange) {
        match change {
            IndexChange::Upsert {
                tenant,
                hook_id,
                key,
                patterns,
                eligible,
                batch_max,
            } => {
                let hook_id: Arc<str> = hook_id.into();
                let slot = self.slots.entry(hook_id.clone()).or_insert(Slot {
                    key,
                    eligible,
                    batch_max,
                    last_seq: 0,
                });
                slot.eligible = eligible;
                slot.batch_max = batch_max;
                let t = self.tenants.entry(tenant).or_default();
                t.remove(&hook_id);
                t.insert(hook_id, &patterns);
            }
            IndexChange::Remove { tenant, hook_id } => {
                self.slots.remove(hook_id.as_str());
                if let Some(t) = self.tenants.get_mut(&tenant) {
                    t.remove(&Arc::from(hook_id));
                    if t.is_empty() {
                        self.tenants.remove(&tenant);
                    }
                }
            }
        }
    }

    fn advance(&mut self, hook_id: &str, last_seq: i64) {
        if let Some(slot) = self.slots.get_mut(hook_id) {
            slot.last_seq = slot.last_seq.max(last_seq);
        }
    }

    /// Takes in what a successful op changed.
    fn absorb(&mut self, fx: &mut Effects) {
        for change in fx.index.drain(..) {
            self.apply(change);
        }
        for (hook_id, seq) in fx.seqs.drain() {
            self.advance(&hook_id, seq);
        }
    }

    /// Candidate hooks for an event; see [`FanoutIndex::slot`] for which may receive.
    pub fn matching(&self, tenant: &str, event_type: &str) -> Vec<Arc<str>> {
        self.tenants
            .get(tenant)
            .map(|t| t.matching(event_type))
            .unwrap_or_default()
    }

    pub fn slot(&self, hook_id: &str) -> Option<Slot> {
        self.slots.get(hook_id).copied()
    }
}

/// Runs until every `Store` handle is dropped and the queue is empty.
pub fn run(
    mut conn: Connection,
    secrets: Arc<SecretBox>,
    requests: Receiver<Request>,
    wakeups: Sender<Wakeup>,
    outcomes_coming: Arc<AtomicUsize>,
) {
    raise_priority();
    let mut state = match WriterState::new(&conn) {
        Ok(s) => s,
        Err(e) => {
            log::error!("writer: cannot load hooks: {e}");
            return;
        }
    };
    // SQLite checkpoints automatically inside the COMMIT that takes the WAL past its
    // threshold, so the callers of that group waited for the copy into the database
    // file and its fsync as well (a fan-out to 10,000 hooks crosses it every time).
    // This hook replaces that: it only notes the WAL's size, and the writer checkpoints
    // after the group's callers have their answers, before it takes the next group.
    let wal_pages = Arc::new(AtomicI32::new(0));
    let noted = wal_pages.clone();
    let hook = conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages| {
        noted.store(pages, Ordering::Relaxed);
        Ok(())
    }));
    if let Err(e) = hook {
        // Without the hook SQLite's automatic checkpoint stays: slower answers, same data.
        log::warn!("writer: cannot watch the WAL, SQLite checkpoints by itself: {e}");
    }
    // Event ids rise in commit order, even across a restart with the clock behind:
    // the type index (`index_types`) relies on it.
    match ops::newest_event(&conn) {
        Ok(Some(id)) => crate::ids::continue_after(&id),
        Ok(None) => {}
        Err(e) => log::warn!("writer: {e}"),
    }
    // Events committed after the last entry of the type index (a stop) go in now.
    let mut types_due = index_types(&mut conn)
        .err()
        .map(|_| Instant::now() + TYPES_EVERY);
    let mut group: Vec<Request> = Vec::with_capacity(MAX_GROUP);
    let mut failing = false;
    loop {
        let first = match types_due {
            // Idle with events not yet in the type index: enter them when due.
            Some(due) => match requests.recv_deadline(due) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => {
                    types_due = index_types(&mut conn).err().map(|_| due + TYPES_EVERY);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            },
            None => match requests.recv() {
                Ok(r) => r,
                Err(_) => break,
            },
        };
        group.push(first);
        take_waiting(&requests, &mut group);
        linger(&requests, &mut group, &outcomes_coming);
        let checkpoint = group.iter().any(|r| matches!(r.op, WriteOp::Checkpoint));
        let published = group
            .iter()
            .any(|r| matches!(r.op, WriteOp::Publish { .. }));
        let result = commit_group(&mut conn, &mut state, &secrets, &mut group, &wakeups);
        if published && result.is_ok() && types_due.is_none() {
            types_due = Some(Instant::now() + TYPES_EVERY);
        }
        if let Some(due) = types_due.filter(|due| Instant::now() >= *due) {
            types_due = index_types(&mut conn).err().map(|_| due + TYPES_EVERY);
        }
        // A storage fault (disk full, I/O error) is logged once when it starts and once
        // when it ends, not once per request; callers get 503 meanwhile.
        if result.is_err() {
            // The group waited out the busy timeout (or hit a full disk) and failed. What
            // queued up meanwhile would only wait as long again, one group after
            // another: it is answered now, so callers hear 503 within one timeout.
            while let Ok(r) = requests.try_recv() {
                r.reply.send(Err(StoreError::Busy));
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
        } else if wal_pages.load(Ordering::Relaxed) >= CHECKPOINT_PAGES {
            // PASSIVE, as SQLite's own: it copies what no reader still needs and never
            // waits for readers. If it cannot finish, the next commit asks again.
            wal_pages.store(0, Ordering::Relaxed);
            if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
                log::warn!("writer: checkpoint failed: {e}");
            }
        }
    }
    if types_due.is_some() {
        let _ = index_types(&mut conn);
    }
    log::debug!("writer: queue closed, stopping");
}

/// Adds what is waiting in `requests` to `group`, up to [`MAX_GROUP`]: a group is
/// whatever queued while the last one was committed.
pub(super) fn take_waiting<T>(requests: &Receiver<T>, group: &mut Vec<T>) {
    while group.len() < MAX_GROUP {
        match requests.try_recv() {
            Ok(r) => group.push(r),
            Err(_) => break,
        }
    }
}

/// Enters the events committed since the last time into the type index, in a
/// transaction of its own (`ops::index_types`). A failure is logged; the caller tries
/// again later, and listings find the events meanwhile.
fn index_types(conn: &mut Connection) -> Result<usize, StoreError> {
    let run = |conn: &mut Connection| {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx("indexing events by type")?;
        let entered = ops::index_types(&tx)?;
        tx.commit().ctx("indexing events by type")?;
        Ok(entered)
    };
    let result = run(conn);
    if let Err(e) = &result {
        log::warn!("writer: {e}; trying again later");
    }
    result
}

/// Gives the calling (writer) thread [`WRITER_NICE`] if the process may.
pub(super) fn raise_priority() {
    let me = rustix::thread::gettid();
    match rustix::process::setpriority_process(Some(me), WRITER_NICE) {
        Ok(()) => log::debug!("writer: running at nice {WRITER_NICE}"),
        Err(e) => log::info!(
            "writer: keeps the default priority; nice {WRITER_NICE} needs CAP_SYS_NICE or \
             RLIMIT_NICE ({e})"
        ),
    }
}

/// Holds back a group of delivery outcomes alone while dispatchers still have requests
/// out, until more outcomes (up to [`OUTCOME_GROUP`]) arrive or [`OUTCOME_LINGER`] has
/// passed. Anything else arriving ends the wait: publishes and API writes are never
/// held. Without requests out (one delivery at a time) it does not wait at all.
///
/// It sleeps until a request arrives or the time is up, and looks at the count only
/// then: a dispatcher lowers the count before it queues its outcome, so the last
/// outcome finds it at 0. (It used to wake every 100 µs to look; at the writer's nice
/// -10 each such wake-up took a core from a dispatcher mid-delivery, and fan-outs to
/// 100 took ~10 % longer. An outcome that never comes, a dispatcher that failed before
/// queueing it, holds the group for the whole linger.)
fn linger(requests: &Receiver<Request>, group: &mut Vec<Request>, coming: &AtomicUsize) {
    let outcome = |r: &Request| matches!(r.op, WriteOp::RecordAttempt { .. });
    if !group.iter().all(outcome) {
        return;
    }
    let deadline = Instant::now() + OUTCOME_LINGER;
    while group.len() < OUTCOME_GROUP && coming.load(Ordering::Relaxed) > 0 {
        // Past the deadline (or with the queue closed) this returns at once.
        let Ok(r) = requests.recv_deadline(deadline) else {
            return;
        };
        let more = outcome(&r);
        group.push(r);
        if !more {
            return;
        }
    }
}

/// What the writer keeps in memory between groups.
struct WriterState {
    index: FanoutIndex,
    /// `PRAGMA data_version` when the index was last known to match the file. It
    /// changes when another connection (the `hookd` CLI) commits; the index is then
    /// reloaded, so a hook changed from outside is seen at once.
    data_version: i64,
}

impl WriterState {
    fn new(conn: &Connection) -> Result<WriterState, StoreError> {
        Ok(WriterState {
            index: FanoutIndex::load(conn)?,
            data_version: data_version(conn)?,
        })
    }

    /// After a pass that did not commit: the index holds what it applied.
    fn reload_index(&mut self, conn: &Connection) -> Result<(), StoreError> {
        self.index = FanoutIndex::load(conn)?;
        Ok(())
    }

    /// Inside the group's transaction, before any op: catches up with other writers.
    fn refresh(&mut self, conn: &Connection) -> Result<(), StoreError> {
        let v = data_version(conn)?;
        if v != self.data_version {
            log::debug!("writer: the file was changed by another connection; reloading hooks");
            self.reload_index(conn)?;
            self.data_version = v;
        }
        Ok(())
    }
}

fn data_version(conn: &Connection) -> Result<i64, StoreError> {
    conn.prepare_cached("PRAGMA data_version")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .ctx("reading the data version")
}

/// How a group is applied. Most groups have no failing op, and a savepoint per op
/// costs a statement journal of every page the op touches, so a group first runs
/// without them. An op that fails without having changed a row needs no rollback; one
/// that fails after changing rows makes the whole group start again, carefully, with a
/// savepoint per op so it is rolled back alone.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Optimistic,
    Careful,
}

impl Mode {
    /// An optimistic pass starts over anyway when an op fails after writing, so its
    /// INSERTs may end the transaction rather than undo themselves (which costs them a
    /// statement journal).
    fn on_conflict(self) -> ops::OnConflict {
        match self {
            Mode::Optimistic => ops::OnConflict::Rollback,
            Mode::Careful => ops::OnConflict::Abort,
        }
    }
}

/// The outcome of each op of a group that committed, and what to tell the scheduler.
struct Applied {
    results: Vec<Result<WriteOutput, StoreError>>,
    new_work: Vec<String>,
    reset: Vec<String>,
    /// The events to keep in memory (`RecentEvents`): (op, event of the op, id, time).
    published: Vec<(usize, usize, String, Millis)>,
}

fn commit_group(
    conn: &mut Connection,
    state: &mut WriterState,
    secrets: &SecretBox,
    group: &mut Vec<Request>,
    wakeups: &Sender<Wakeup>,
) -> Result<(), StoreError> {
    let (mut ops, replies): (Vec<WriteOp>, Vec<_>) = group
        .drain(..)
        .map(|Request { op, reply }| (op, reply))
        .unzip();
    // At most two passes over the group: a careful one never rolls back as a whole.
    // A foreign key broken at COMMIT cannot be traced to its op, so then each op is
    // committed alone.
    let mut mode = Mode::Optimistic;
    let outcome = loop {
        let pass = apply_group(conn, state, secrets, &ops, mode);
        if matches!(pass, Ok(Pass::RolledBack | Pass::ForeignKey(_))) {
            if let Err(e) = state.reload_index(conn) {
                break Err(e);
            }
        }
        match pass {
            Ok(Pass::Committed(applied)) => break Ok(applied),
            Ok(Pass::RolledBack) => mode = Mode::Careful,
            Ok(Pass::ForeignKey(_)) => break Ok(commit_each(conn, state, secrets, &ops)),
            Err(e) => break Err(e),
        }
    };
    match outcome {
        Ok(applied) => {
            // The callers wake one another: the writer wakes only the first (reply.rs).
            super::reply::send_all(replies.into_iter().zip(applied.results));
            if !applied.published.is_empty() {
                let events = committed_events(&mut ops, applied.published);
                let _ = wakeups.send(Wakeup::Published(events));
            }
            if !applied.new_work.is_empty() {
                let _ = wakeups.send(Wakeup::NewWork(applied.new_work));
            }
            if !applied.reset.is_empty() {
                let _ = wakeups.send(Wakeup::Reset(applied.reset));
            }
            Ok(())
        }
        Err(e) => {
            // Nothing in the group is committed: every caller hears so, and the index is
            // rebuilt from what is on disk.
            for reply in replies {
                reply.send(Err(StoreError::Busy));
            }
            match WriterState::new(conn) {
                Ok(s) => *state = s,
                Err(e) => log::debug!("writer: cannot reload hooks: {e}"),
            }
            Err(e)
        }
    }
}

/// The committed events `published` names, their strings moved out of the group's
/// publishes (which are done with) rather than copied.
fn committed_events(
    ops: &mut [WriteOp],
    published: Vec<(usize, usize, String, Millis)>,
) -> Vec<Event> {
    let mut out = Vec::with_capacity(published.len());
    for (op, i, id, created_at) in published {
        let Some(WriteOp::Publish { events, .. }) = ops.get_mut(op) else {
            continue;
        };
        let Some(e) = events.get_mut(i) else {
            continue;
        };
        out.push(Event {
            id,
            tenant: std::mem::take(&mut e.tenant),
            event_type: std::mem::take(&mut e.event_type),
            resource_id: e.resource_id.take(),
            data: std::mem::take(&mut e.data),
            created_at,
        });
    }
    out
}

/// How one pass over a group ended.
enum Pass {
    Committed(Applied),
    /// An optimistic pass met an op that failed after changing rows; the transaction
    /// was rolled back.
    RolledBack,
    /// COMMIT found a foreign key broken (they are checked then: schema.sql); the
    /// transaction was rolled back.
    ForeignKey(StoreError),
}

/// Commits each op in a transaction of its own, after a group's COMMIT failed on a
/// foreign key: only the op that broke it fails. A bug's path, not a busy one: an
/// fsync per op. Once one op has committed, every op gets its own answer, whatever
/// happens to the next.
fn commit_each(
    conn: &mut Connection,
    state: &mut WriterState,
    secrets: &SecretBox,
    ops: &[WriteOp],
) -> Applied {
    let mut all = Applied {
        results: Vec::with_capacity(ops.len()),
        new_work: Vec::new(),
        reset: Vec::new(),
        published: Vec::new(),
    };
    for (i, op) in ops.iter().enumerate() {
        let one = std::slice::from_ref(op);
        let failed = match apply_group(conn, state, secrets, one, Mode::Careful) {
            Ok(Pass::Committed(mut applied)) => {
                all.new_work.append(&mut applied.new_work);
                all.reset.append(&mut applied.reset);
                let published = applied.published.into_iter();
                all.published
                    .extend(published.map(|(_, e, id, at)| (i, e, id, at)));
                all.results.extend(applied.results);
                continue;
            }
            Ok(Pass::ForeignKey(e)) => {
                log::error!("writer: a request broke a foreign key and was refused: {e}");
                e
            }
            // A careful pass undoes a failed op alone and never rolls back as a whole.
            Ok(Pass::RolledBack) => StoreError::Busy,
            Err(e) => e,
        };
        // The op's transaction did not commit, but the index holds what it applied.
        if let Err(e) = state.reload_index(conn) {
            log::debug!("writer: cannot reload hooks: {e}");
        }
        all.results.push(Err(failed));
    }
    all
}

/// One pass over the group in one transaction.
fn apply_group(
    conn: &mut Connection,
    state: &mut WriterState,
    secrets: &SecretBox,
    ops: &[WriteOp],
    mode: Mode,
) -> Result<Pass, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .ctx("starting a write transaction")?;
    state.refresh(&tx)?;
    let mut applied = Applied {
        results: Vec::with_capacity(ops.len()),
        new_work: Vec::new(),
        reset: Vec::new(),
        published: Vec::new(),
    };
    // Cached statements rather than rusqlite's `Savepoint`, which parses its SQL anew
    // every time (a fifth of the writer's CPU as profiled).
    let run = |sql: &str| tx.prepare_cached(sql).and_then(|mut s| s.execute([]));
    let mut fx = Effects::default();
    // The optimistic pass inserts the rows of consecutive publishes together, before
    // the next op of another kind (which might read them) and before COMMIT. If that
    // fails, the group starts over carefully, where each publish inserts its own.
    let mut pending = ops::PublishRows::default();
    for (i, op) in ops.iter().enumerate() {
        let deferred = mode == Mode::Optimistic && matches!(op, WriteOp::Publish { .. });
        if !deferred && !flushed(&tx, &mut pending) {
            return Ok(Pass::RolledBack);
        }
        if mode == Mode::Careful {
            run("SAVEPOINT op").ctx("opening a savepoint")?;
        }
        let before = tx.total_changes();
        let result = if deferred {
            ops::publish(&tx, &state.index, op, &mut pending, &mut fx)
        } else {
            ops::apply(&tx, &state.index, secrets, op, mode.on_conflict(), &mut fx)
        };
        if result.is_ok() {
            state.index.absorb(&mut fx);
            applied.new_work.append(&mut fx.new_work);
            applied.reset.append(&mut fx.reset);
            let published = fx.published.drain(..);
            applied
                .published
                .extend(published.map(|(e, id, at)| (i, e, id, at)));
        } else {
            fx = Effects::default();
            if mode == Mode::Careful {
                run("ROLLBACK TO op").ctx("rolling back a savepoint")?;
            } else if tx.is_autocommit() || tx.total_changes() != before {
                // Rolled back already (an `INSERT OR ROLLBACK` met a conflict), or
                // dropping `tx` rolls it back.
                return Ok(Pass::RolledBack);
            }
        }
        if mode == Mode::Careful {
            run("RELEASE op").ctx("releasing a savepoint")?;
        }
        applied.results.push(result);
    }
    if !flushed(&tx, &mut pending) {
        return Ok(Pass::RolledBack);
    }
    match tx.commit() {
        Ok(()) => Ok(Pass::Committed(applied)),
        // The failed COMMIT left the transaction open; dropping it rolled it back.
        Err(e) => {
            let foreign_key = matches!(&e, rusqlite::Error::SqliteFailure(f, _)
                if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY);
            let e = StoreError::Db("committing".into(), e);
            if foreign_key {
                Ok(Pass::ForeignKey(e))
            } else {
                Err(e)
            }
        }
    }
}

/// Inserts the publishes' rows left in `pending`, if any; false when that failed, and the
/// optimistic pass must start over carefully.
fn flushed(conn: &Connection, pending: &mut ops::PublishRows) -> bool {
    if pending.is_empty() {
        return true;
    }
    match ops::insert_pending(conn, pending) {
        Ok(()) => true,
        Err(e) => {
            log::debug!("writer: a group's publishes failed together; one by one now: {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HookStatus, PayloadKind};
    use crate::store::{count, NewEvent};

    fn event(event_type: &str, key: Option<(&str, &[u8])>) -> NewEvent {
        NewEvent {
            tenant: "default".into(),
            event_type: event_type.into(),
            resource_id: None,
            data: "null".into(),
            idempotency: key.map(|(k, h)| (k.to_string(), h.to_vec())),
        }
    }

    /// The live key `fresh_store` adds, which the tests' publishes are made with.
    const KEY: &str = "key_test";

    fn publish(events: Vec<NewEvent>) -> WriteOp {
        WriteOp::Publish {
            events,
            array: true,
            request_key: None,
            key_id: KEY.into(),
        }
    }

    /// Single-event publishes, one per type.
    fn publishes(types: &[&str]) -> Vec<WriteOp> {
        types
            .iter()
            .map(|t| publish(vec![event(t, None)]))
            .collect()
    }

    /// The outbox's key for the hook `hook`; `None` (NULL, which no row matches) when
    /// its row is gone.
    fn key(conn: &Connection, hook: &str) -> Option<i64> {
        super::super::read::hook_key(conn, hook).unwrap()
    }

    /// The event of the hook's row `seq`.
    fn row_event(conn: &Connection, hook: &str, seq: i64) -> String {
        conn.query_row(
            "SELECT event_id FROM deliveries WHERE hook_key = ?1 AND seq = ?2",
            rusqlite::params![key(conn, hook), seq],
            |r| r.get(0),
        )
        .unwrap()
    }

    /// A hook's rows as (sequence, event type), in sequence order.
    fn hook_rows(conn: &Connection, hook: &str) -> Vec<(i64, String)> {
        conn.prepare(
            "SELECT d.seq, e.type FROM deliveries d JOIN events e ON e.id = d.event_id
             WHERE d.hook_key = ?1 ORDER BY d.seq",
        )
        .unwrap()
        .query_map([key(conn, hook)], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// Runs `ops` as one group, as the writer thread does; returns each op's result.
    fn group(
        conn: &mut Connection,
        state: &mut WriterState,
        secrets: &SecretBox,
        ops: Vec<WriteOp>,
    ) -> Vec<Result<WriteOutput, StoreError>> {
        group_waking(conn, state, secrets, ops).0
    }

    /// As `group`, with the wake-ups the group sent the scheduler.
    fn group_waking(
        conn: &mut Connection,
        state: &mut WriterState,
        secrets: &SecretBox,
        ops: Vec<WriteOp>,
    ) -> (Vec<Result<WriteOutput, StoreError>>, Vec<Wakeup>) {
        let (wakeups, woken) = crossbeam_channel::unbounded();
        let mut answers = Vec::new();
        let mut reqs = Vec::new();
        for op in ops {
            let (reply, answer) = super::super::reply::oneshot();
            reqs.push(Request { op, reply });
            answers.push(answer);
        }
        commit_group(conn, state, secrets, &mut reqs, &wakeups).expect("the group commits");
        let results = answers.into_iter().map(|a| a.recv().unwrap()).collect();
        (results, woken.try_iter().collect())
    }

    /// A store for a test: its directory (removed when dropped), writer connection,
    /// secrets and writer state.
    type TestStore = (
        super::super::TestDir,
        Connection,
        Arc<SecretBox>,
        WriterState,
    );

    /// A fresh store in the temp directory.
    fn fresh_store(name: &str) -> TestStore {
        let dir = super::super::test_dir(&format!("writer-{name}"));
        let opened = super::super::open(&dir.join("w.db"), &dir.join("w.key")).unwrap();
        let state = WriterState::new(&opened.writer_conn).unwrap();
        opened
            .writer_conn
            .execute(
                "INSERT INTO api_keys (id, token_hash, role, created_at)
                 VALUES (?1, x'00', 'publisher', 0)",
                [KEY],
            )
            .unwrap();
        (dir, opened.writer_conn, opened.secrets, state)
    }

    fn create_hook(
        conn: &mut Connection,
        state: &mut WriterState,
        secrets: &SecretBox,
        pattern: &str,
    ) -> crate::model::Hook {
        create_hook_batching(conn, state, secrets, pattern, 1)
    }

    /// As [`create_hook`], for a hook that takes up to `batch_max` events a request.
    fn create_hook_batching(
        conn: &mut Connection,
        state: &mut WriterState,
        secrets: &SecretBox,
        pattern: &str,
        batch_max: u32,
    ) -> crate::model::Hook {
        let created = group(
            conn,
            state,
            secrets,
            vec![WriteOp::CreateHook {
                hook: NewHook {
                    id: crate::ids::new_id("hk"),
                    tenant: "default".into(),
                    target_url: "http://127.0.0.1:9/".into(),
                    events: vec![pattern.into()],
                    payload: PayloadKind::Full,
                    batch_max,
                    status: HookStatus::Active,
                    verify_code_hash: None,
                },
                max_per_tenant: 10,
            }],
        );
        match created.into_iter().next() {
            Some(Ok(WriteOutput::Hook(hook))) => hook,
            other => panic!("creating a hook: {other:?}"),
        }
    }

    /// An array publish numbers each hook's rows in order and wakes the scheduler once
    /// per hook, however many of its events that hook matched.
    #[test]
    fn a_publish_wakes_each_matching_hook_once_and_numbers_its_rows() {
        let (_dir, mut conn, secrets, mut state) = fresh_store("wake");
        let all = create_hook(&mut conn, &mut state, &secrets, "t.*");
        let only_a = create_hook(&mut conn, &mut state, &secrets, "t.a");
        let (results, woken) = group_waking(
            &mut conn,
            &mut state,
            &secrets,
            // A run of one type (matched once), another type, the first again.
            vec![publish(vec![
                event("t.a", None),
                event("t.a", None),
                event("t.b", None),
                event("t.a", None),
            ])],
        );
        assert!(results[0].is_ok(), "{results:?}");
        // The committed events go to the scheduler for the dispatchers' memory of
        // recent events first, exactly as stored, before the work that needs them.
        assert!(
            matches!(woken.first(), Some(Wakeup::Published(_))),
            "{woken:?}"
        );
        let stored: Vec<Event> = {
            let mut stmt = conn
                .prepare(
                    "SELECT id, tenant, type, resource_id, data, created_at
                     FROM events ORDER BY id",
                )
                .unwrap();
            let rows = stmt
                .query_map([], super::super::read::event_from_row)
                .unwrap();
            rows.map(Result::unwrap).collect()
        };
        assert_eq!(stored.len(), 4);
        let mut hooks: Vec<String> = Vec::new();
        for w in woken {
            match w {
                Wakeup::NewWork(mut woke) => hooks.append(&mut woke),
                Wakeup::Published(events) => assert_eq!(events, stored),
                Wakeup::Reset(hooks) => panic!("a publish reset {hooks:?}"),
            }
        }
        hooks.sort();
        let mut want = vec![all.id.clone(), only_a.id.clone()];
        want.sort();
        assert_eq!(hooks, want, "hooks woken");
        let seqs = |hook: &str| -> Vec<i64> {
            conn.prepare("SELECT seq FROM deliveries WHERE hook_key = ?1 ORDER BY seq")
                .unwrap()
                .query_map([key(&conn, hook)], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(seqs(&all.id), [1, 2, 3, 4]);
        assert_eq!(seqs(&only_a.id), [1, 2, 3]);
        drop(conn);
    }

    /// The API may publish with a key from its cache; the writer is what makes a
    /// revocation take effect at once.
    #[test]
    fn a_publish_made_with_a_revoked_key_writes_nothing_and_the_rest_commits() {
        let (_dir, mut conn, secrets, mut state) = fresh_store("revoked");
        let hook = create_hook(&mut conn, &mut state, &secrets, "k.*");
        let results = group(
            &mut conn,
            &mut state,
            &secrets,
            vec![
                publish(vec![event("k.before", None)]),
                WriteOp::RevokeKey { id: KEY.into() },
                publish(vec![event("k.after", None)]),
            ],
        );
        assert!(
            matches!(&results[0], Ok(WriteOutput::Published { .. })),
            "{:?}",
            results[0]
        );
        assert!(
            matches!(&results[2], Err(StoreError::KeyRevoked)),
            "{:?}",
            results[2]
        );
        assert_eq!(count(&conn, "SELECT count(*) FROM events"), 1);
        assert_eq!(
            hook_rows(&conn, &hook.id),
            vec![(1, "k.before".to_string())]
        );
    }

    /// The optimistic pass inserts a run of publishes' rows together; an op of another
    /// kind after them in the same group must find them there.
    #[test]
    fn an_op_after_publishes_in_the_same_group_sees_their_rows() {
        let (_dir, mut conn, secrets, mut state) = fresh_store("deferred");
        let hook = create_hook_batching(&mut conn, &mut state, &secrets, "d.*", 10);
        let results = group(
            &mut conn,
            &mut state,
            &secrets,
            vec![
                publish(vec![event("d.1", None)]),
                publish(vec![event("d.2", None), event("d.3", None)]),
                WriteOp::ClaimBatch {
                    hook_id: hook.id.clone(),
                    batch_id: "dlv_claimed".into(),
                    seqs: (1, 3),
                },
                publish(vec![event("d.4", None)]),
            ],
        );
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert!(
            matches!(results[2], Ok(WriteOutput::Count(3))),
            "{:?}",
            results[2]
        );
        let want: Vec<(i64, String)> = (1..=4).map(|i| (i, format!("d.{i}"))).collect();
        assert_eq!(hook_rows(&conn, &hook.id), want);
        let claimed: (i64, i64) = conn
            .query_row(
                "SELECT first_seq, last_seq FROM batches WHERE id = 'dlv_claimed'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(claimed, (1, 3));
    }

    /// The optimistic pass meets an op that fails after writing rows (an array publish
    /// whose first event stores its idempotency key and whose second event reuses a
    /// key taken by another request): the group starts again
    /// with savepoints, that op alone is rolled back, the others commit, and the
    /// hook's sequence has no gap where the failed op's event would have been.
    #[test]
    fn an_op_failing_after_writes_is_rolled_back_alone_and_leaves_no_gap() {
        let (_dir, mut conn, secrets, mut state) = fresh_store("redo");
        let hook = create_hook(&mut conn, &mut state, &secrets, "t.*");
        let first = group(
            &mut conn,
            &mut state,
            &secrets,
            vec![publish(vec![event("t.a", Some(("k", b"one")))])],
        );
        assert!(first[0].is_ok(), "{first:?}");

        let results = group(
            &mut conn,
            &mut state,
            &secrets,
            vec![
                publish(vec![event("t.x", None)]),
                // Its first event's key is stored (a write) before the second's key
                // turns out to be taken.
                publish(vec![
                    event("t.lost", Some(("fresh", b"x"))),
                    event("t.b", Some(("k", b"two"))),
                ]),
                publish(vec![event("t.y", None)]),
            ],
        );
        assert!(results[0].is_ok(), "{results:?}");
        assert!(
            matches!(results[1], Err(StoreError::Conflict(_))),
            "{results:?}"
        );
        assert!(results[2].is_ok(), "{results:?}");

        let want: Vec<(i64, String)> =
            vec![(1, "t.a".into()), (2, "t.x".into()), (3, "t.y".into())];
        assert_eq!(hook_rows(&conn, &hook.id), want);
        let lost = count(&conn, "SELECT count(*) FROM events WHERE type = 't.lost'");
        assert_eq!(lost, 0, "the failed publish's first event was committed");
        let kept = count(
            &conn,
            "SELECT count(*) FROM idempotency WHERE key = 'event:fresh'",
        );
        assert_eq!(
            kept, 0,
            "the failed publish's idempotency key was committed"
        );
        drop(conn);
    }

    /// A publish whose rows break a constraint in the optimistic pass rolls the whole
    /// transaction back (`INSERT OR ROLLBACK`, so no statement journal); the group then
    /// starts over carefully with the index read again from the file, and every
    /// publish lands in order, before and after the one that collided.
    #[test]
    fn a_conflicting_insert_starts_the_group_over_and_loses_nothing() {
        let (_dir, mut conn, secrets, mut state) = fresh_store("conflict");
        let a = create_hook(&mut conn, &mut state, &secrets, "a.*");
        let b = create_hook(&mut conn, &mut state, &secrets, "b.*");
        // Hook a's next row, written behind the writer's index (which is not reloaded:
        // it was this connection), so a's next publish collides with it.
        conn.execute_batch(&format!(
            "INSERT INTO events (id, tenant, type, data, created_at)
                 VALUES ('evt_squat', 'default', 'a.squat', 'null', 0);
             INSERT INTO deliveries (hook_key, seq, event_id)
                 VALUES ({}, 1, 'evt_squat');",
            key(&conn, &a.id).expect("hook a")
        ))
        .unwrap();
        assert_eq!(state.index.slot(&a.id).unwrap().last_seq, 0);
        let results = group(
            &mut conn,
            &mut state,
            &secrets,
            publishes(&["b.1", "a.1", "b.2"]),
        );
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let want: Vec<(i64, String)> = vec![(1, "a.squat".into()), (2, "a.1".into())];
        assert_eq!(hook_rows(&conn, &a.id), want);
        let want: Vec<(i64, String)> = vec![(1, "b.1".into()), (2, "b.2".into())];
        assert_eq!(hook_rows(&conn, &b.id), want);
        let events = count(&conn, "SELECT count(*) FROM events");
        assert_eq!(events, 4, "an event of the abandoned pass was kept");
        drop(conn);
    }

    /// A store whose writer index still routes `x.*` to a hook whose row is gone, and
    /// a sound hook for `b.*`: the store and the two hooks.
    fn store_with_a_vanished_hook(
        name: &str,
    ) -> (TestStore, crate::model::Hook, crate::model::Hook) {
        let (dir, mut conn, secrets, mut state) = fresh_store(name);
        let gone = create_hook(&mut conn, &mut state, &secrets, "x.*");
        let b = create_hook(&mut conn, &mut state, &secrets, "b.*");
        conn.execute("DELETE FROM hooks WHERE id = ?1", [&gone.id])
            .unwrap();
        // As if no other connection had written, so the index is not reloaded.
        state.data_version = data_version(&conn).unwrap();
        assert!(state.index.slot(&gone.id).is_some());
        ((dir, conn, secrets, state), gone, b)
    }

    /// A foreign key is checked at COMMIT: the optimistic pass runs every op and its
    /// COMMIT fails. The group is then committed again op by op, with the index read
    /// again from the file, so nothing that was sound is refused and nothing broken is
    /// kept.
    #[test]
    fn a_broken_foreign_key_fails_the_commit_and_each_op_is_committed_alone() {
        let ops = || publishes(&["b.1", "x.1", "b.2"]);
        // The pass alone: every op ran, the COMMIT refused, nothing is on disk.
        let ((_dir, mut conn, secrets, mut state), _, _) = store_with_a_vanished_hook("fk-pass");
        let pass = apply_group(&mut conn, &mut state, &secrets, &ops(), Mode::Optimistic);
        assert!(
            matches!(pass, Ok(Pass::ForeignKey(_))),
            "not refused at COMMIT"
        );
        let rows = count(&conn, "SELECT count(*) FROM deliveries");
        assert_eq!(rows, 0, "a refused COMMIT left rows");
        drop(conn);

        // The group as the writer runs it.
        let ((_dir, mut conn, secrets, mut state), gone, b) = store_with_a_vanished_hook("fk");
        let results = group(&mut conn, &mut state, &secrets, ops());
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert!(
            matches!(&results[1], Ok(WriteOutput::Published { body, .. }) if body.contains(r#""deliveries":0"#)),
            "the event for the vanished hook was routed again: {results:?}"
        );
        assert!(state.index.slot(&gone.id).is_none());
        let want: Vec<(i64, String)> = vec![(1, "b.1".into()), (2, "b.2".into())];
        assert_eq!(hook_rows(&conn, &b.id), want);
        assert!(hook_rows(&conn, &gone.id).is_empty());
        let broken = count(&conn, "SELECT count(*) FROM pragma_foreign_key_check");
        assert_eq!(broken, 0);
        drop(conn);
    }

    fn request(op: WriteOp) -> Request {
        let (reply, _) = crate::store::reply::oneshot();
        Request { op, reply }
    }

    fn outcome() -> Request {
        request(record(
            "hook_1",
            "dlv_1",
            None,
            crate::retry::Verdict::Delivered,
        ))
    }

    /// The outcome of one attempt of batch `batch_id` of hook `hook_id` (`single`: a
    /// row sent alone that no batch holds yet).
    fn record(
        hook_id: &str,
        batch_id: &str,
        single: Option<i64>,
        verdict: crate::retry::Verdict,
    ) -> WriteOp {
        WriteOp::RecordAttempt {
            record: AttemptRecord {
                hook_id: hook_id.into(),
                batch_id: batch_id.into(),
                attempt: crate::model::Attempt {
                    at: 0,
                    status_code: Some(if verdict.is_failure() { 500 } else { 204 }),
                    error: None,
                    duration_ms: 1,
                    response_snippet: None,
                },
                verdict,
                after_failures: false,
                single,
            },
            disable_after: 50,
            want_next: false,
        }
    }

    /// The one value `sql` selects.
    fn scalar<T: rusqlite::types::FromSql>(
        conn: &Connection,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> T {
        conn.query_row(sql, params, |r| r.get(0)).unwrap()
    }

    /// A hook's batches as (first_seq, last_seq, status), in order.
    fn batches(conn: &Connection, hook: &str) -> Vec<(i64, i64, String)> {
        conn.prepare(
            "SELECT first_seq, last_seq, status FROM batches WHERE hook_key = ?1
             ORDER BY first_seq",
        )
        .unwrap()
        .query_map([key(conn, hook)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// A row sent alone is written as a batch with its outcome; a batch of several is
    /// claimed first, one row for all of them. Deleting the hook cancels its open
    /// batches and makes its unsent rows one cancelled batch, and what its dispatcher
    /// still had on the wire (an outcome, a claim) then writes nothing.
    #[test]
    fn batches_are_written_once_per_request_and_a_deletion_cancels_the_rest() {
        use crate::retry::Verdict;
        let (_dir, mut conn, secrets, mut state) = fresh_store("batches");
        let alone = create_hook(&mut conn, &mut state, &secrets, "a.*");
        let many = create_hook_batching(&mut conn, &mut state, &secrets, "m.*", 10);
        let row_id = |conn: &Connection, hook: &str, seq: i64| -> String {
            crate::ids::delivery_id(&row_event(conn, hook, seq), hook)
        };
        let mut ops = publishes(&["a.1", "a.2", "a.3", "m.1", "m.2", "m.3", "m.4"]);
        ops.push(WriteOp::ClaimBatch {
            hook_id: many.id.clone(),
            batch_id: "dlv_many".into(),
            seqs: (1, 3),
        });
        let results = group(&mut conn, &mut state, &secrets, ops);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert!(
            matches!(results[7], Ok(WriteOutput::Count(3))),
            "{results:?}"
        );
        let [a1, a2, a3] = [1, 2, 3].map(|seq| row_id(&conn, &alone.id, seq));
        let retry_at = Verdict::Retry { at: i64::MAX };
        let results = group(
            &mut conn,
            &mut state,
            &secrets,
            vec![
                record(&alone.id, &a1, Some(1), Verdict::Delivered),
                record(&alone.id, &a2, Some(2), retry_at),
                record(&many.id, "dlv_many", None, retry_at),
            ],
        );
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(
            batches(&conn, &alone.id),
            [(1, 1, "delivered".into()), (2, 2, "failed".into())]
        );
        assert_eq!(batches(&conn, &many.id), [(1, 3, "failed".into())]);
        let named: String = scalar(
            &conn,
            "SELECT id FROM batches WHERE hook_key = ?1 AND first_seq = 2",
            [key(&conn, &alone.id)],
        );
        assert_eq!(named, a2, "a row sent alone is a batch named after it");

        let delete = |id: &str| WriteOp::DeleteHook {
            id: id.into(),
            scope: None,
        };
        let results = group(
            &mut conn,
            &mut state,
            &secrets,
            vec![delete(&alone.id), delete(&many.id)],
        );
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        // On the wire while they were deleted: row 3 sent alone, rows 4.. claimed.
        let results = group(
            &mut conn,
            &mut state,
            &secrets,
            vec![
                record(&alone.id, &a3, Some(3), Verdict::Delivered),
                WriteOp::ClaimBatch {
                    hook_id: many.id.clone(),
                    batch_id: "dlv_late".into(),
                    seqs: (4, 4),
                },
            ],
        );
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert!(
            matches!(results[1], Ok(WriteOutput::Count(0))),
            "{results:?}"
        );
        assert_eq!(
            batches(&conn, &alone.id),
            [
                (1, 1, "delivered".into()),
                (2, 2, "cancelled".into()),
                (3, 3, "cancelled".into())
            ]
        );
        assert_eq!(
            batches(&conn, &many.id),
            [(1, 3, "cancelled".into()), (4, 4, "cancelled".into())]
        );
    }

    /// A deleted hook's unsent tail becomes one cancelled batch from its first row to
    /// its last, and retention prunes it at most `limit` rows a call: the batch keeps
    /// its newest rows under a higher first sequence until the last call takes it, the
    /// events go once no row needs them, and the hook's numbering is kept.
    #[test]
    fn a_deleted_hooks_long_tail_is_pruned_a_limit_at_a_time() {
        let (_dir, mut conn, secrets, mut state) = fresh_store("tail");
        let hook = create_hook(&mut conn, &mut state, &secrets, "t.*");
        let kept = create_hook(&mut conn, &mut state, &secrets, "k.*");
        let mut events: Vec<NewEvent> = (0..25).map(|_| event("t.x", None)).collect();
        events.push(event("k.x", None));
        let results = group(&mut conn, &mut state, &secrets, vec![publish(events)]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let delete = WriteOp::DeleteHook {
            id: hook.id.clone(),
            scope: None,
        };
        let results = group(&mut conn, &mut state, &secrets, vec![delete]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(batches(&conn, &hook.id), [(1, 25, "cancelled".into())]);

        let prune = |conn: &mut Connection, state: &mut WriterState| {
            let op = WriteOp::Prune {
                cutoff: crate::clock::now_ms() + 60_000,
                limit: 10,
            };
            match group(conn, state, &secrets, vec![op]).pop() {
                Some(Ok(WriteOutput::Count(n))) => n,
                other => panic!("pruning: {other:?}"),
            }
        };
        let events_left =
            |conn: &Connection| -> i64 { scalar(conn, "SELECT count(*) FROM events", []) };
        assert_eq!(prune(&mut conn, &mut state), 10);
        assert_eq!(batches(&conn, &hook.id), [(11, 25, "cancelled".into())]);
        assert_eq!(hook_rows(&conn, &hook.id).first().map(|r| r.0), Some(11));
        assert_eq!(
            events_left(&conn),
            16,
            "15 of the tail's and the kept hook's"
        );
        assert_eq!(prune(&mut conn, &mut state), 10);
        assert_eq!(batches(&conn, &hook.id), [(21, 25, "cancelled".into())]);
        assert_eq!(prune(&mut conn, &mut state), 5);
        assert!(batches(&conn, &hook.id).is_empty());
        assert!(hook_rows(&conn, &hook.id).is_empty());
        assert_eq!(prune(&mut conn, &mut state), 0);
        assert_eq!(events_left(&conn), 1, "the kept hook's unsent event stays");
        assert_eq!(hook_rows(&conn, &kept.id), [(1, "k.x".to_string())]);
        let last_seq: i64 = scalar(
            &conn,
            "SELECT last_seq FROM hooks WHERE id = ?1",
            [&hook.id],
        );
        assert_eq!(last_seq, 25, "the hook's numbering is kept");
    }

    #[test]
    fn outcomes_wait_for_outcomes_on_their_way_and_nothing_else_waits() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let coming = AtomicUsize::new(0);
        // Nothing on the wire: an outcome goes at once, the queue is left alone.
        tx.send(outcome()).unwrap();
        let mut group = vec![outcome()];
        linger(&rx, &mut group, &coming);
        assert_eq!((group.len(), rx.len()), (1, 1));
        rx.try_recv().unwrap();
        // Outcomes on the wire: the group takes the next outcome, and stops at the
        // first request that is not one (it joins the group and is not held).
        coming.store(3, Ordering::Relaxed);
        tx.send(outcome()).unwrap();
        tx.send(request(WriteOp::Checkpoint)).unwrap();
        tx.send(outcome()).unwrap();
        let mut group = vec![outcome()];
        linger(&rx, &mut group, &coming);
        assert_eq!((group.len(), rx.len()), (3, 1));
        assert!(matches!(group[2].op, WriteOp::Checkpoint));
        // A group holding anything but outcomes never waits.
        let mut group = vec![request(WriteOp::Checkpoint)];
        linger(&rx, &mut group, &coming);
        assert_eq!((group.len(), rx.len()), (1, 1));
        // The wait is bounded even if the outcomes never come.
        rx.try_recv().unwrap();
        let mut group = vec![outcome()];
        linger(&rx, &mut group, &coming);
        assert_eq!(group.len(), 1);
    }

    /// The CLI's list of recent deliveries: a hook's unsent rows (pending, each under
    /// its derived id) and its batches; with `pending`, the unsent only. (Newest first
    /// to the millisecond: these two events may share one, so the order is not checked.)
    #[test]
    fn recent_deliveries_list_unsent_rows_and_batches_newest_first() {
        use crate::model::DeliveryStatus;
        use crate::retry::Verdict;
        let (dir, mut conn, secrets, mut state) = fresh_store("recent");
        let hook = create_hook(&mut conn, &mut state, &secrets, "r.*");
        let results = group(&mut conn, &mut state, &secrets, publishes(&["r.1", "r.2"]));
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let event = |seq: i64| row_event(&conn, &hook.id, seq);
        let (first, second) = (event(1), event(2));
        let sent = crate::ids::delivery_id(&first, &hook.id);
        let unsent = crate::ids::delivery_id(&second, &hook.id);
        let recorded = group(
            &mut conn,
            &mut state,
            &secrets,
            vec![record(&hook.id, &sent, Some(1), Verdict::Delivered)],
        );
        assert!(recorded.iter().all(Result::is_ok), "{recorded:?}");

        let reader = super::super::open_reader(&dir.join("w.db"), secrets).unwrap();
        let mut listed: Vec<(String, DeliveryStatus, Vec<String>)> = reader
            .recent_deliveries(None, 10)
            .unwrap()
            .into_iter()
            .map(|d| (d.id, d.status, d.event_ids))
            .collect();
        let mut want = vec![
            (unsent.clone(), DeliveryStatus::Pending, vec![second]),
            (sent, DeliveryStatus::Delivered, vec![first]),
        ];
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(listed, want);
        let pending: Vec<String> = reader
            .recent_deliveries(Some(DeliveryStatus::Pending), 10)
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(pending, [unsent]);
    }

    /// A listing by type reads the type index up to `types_through` and the events after
    /// it: the same events, newest first, before and after the writer enters them, with
    /// a cursor on either side of the boundary; an event's entry leaves with it.
    #[test]
    fn a_type_listing_reads_the_index_written_behind_and_the_events_after_it() {
        let (dir, mut conn, secrets, mut state) = fresh_store("types");
        let two_of_each = || publishes(&["t.a", "t.b", "t.a", "t.b"]);
        let done = group(&mut conn, &mut state, &secrets, two_of_each());
        assert!(done.iter().all(Result::is_ok), "{done:?}");
        assert_eq!(index_types(&mut conn).unwrap(), 4);
        assert_eq!(index_types(&mut conn).unwrap(), 0, "nothing new");
        let done = group(&mut conn, &mut state, &secrets, two_of_each());
        assert!(done.iter().all(Result::is_ok), "{done:?}");
        let ids = |event_type: &str| -> Vec<String> {
            let mut stmt = conn
                .prepare("SELECT id FROM events WHERE type = ?1 ORDER BY id DESC")
                .unwrap();
            let rows = stmt.query_map([event_type], |r| r.get(0)).unwrap();
            rows.map(Result::unwrap).collect()
        };
        let (a, b) = (ids("t.a"), ids("t.b"));
        assert_eq!((a.len(), b.len()), (4, 4));

        let reader = super::super::open_reader(&dir.join("w.db"), secrets).unwrap();
        let list = |event_type: &str, before: &str, limit: u32| -> Vec<String> {
            reader
                .list_events("default", Some(event_type), before, limit, false)
                .unwrap()
                .into_iter()
                .map(|e| e.id)
                .collect()
        };
        // a[0], a[1] are after `types_through`; a[2], a[3] in the index.
        for pass in 0..2 {
            assert_eq!(list("t.a", "", 10), a);
            assert_eq!(list("t.b", "", 10), b);
            assert_eq!(list("t.a", "", 3), a[..3]);
            assert_eq!(list("t.a", &a[0], 2), a[1..3], "a page across the boundary");
            assert_eq!(list("t.a", &a[2], 10), a[3..]);
            assert_eq!(list("t.c", "", 10), Vec::<String>::new());
            // Then entered: the same answers from the index alone.
            let due = if pass == 0 { 4 } else { 0 };
            assert_eq!(index_types(&mut conn).unwrap(), due);
        }
        let entries = |conn: &Connection| -> i64 {
            conn.query_row("SELECT count(*) FROM event_types", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(entries(&conn), 8);
        conn.execute("DELETE FROM events WHERE id = ?1", [&a[3]])
            .unwrap();
        assert_eq!(entries(&conn), 7, "the entry left with its event");
        assert_eq!(list("t.a", "", 10), a[..3]);
    }
}
