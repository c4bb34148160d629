//! A dispatcher thread: takes a due hook, sends its head batch, records the outcome
//! through the writer, and tells the scheduler when the hook is next due. A failed
//! delivery is an outcome to record, never an error that unwinds the thread.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use ureq::Agent;

use super::{client, Done, Job};
use crate::clock::{now_ms, Millis};
use crate::metrics::{DeliveryResult, Metrics};
use crate::model::{Hook, HookStatus};
use crate::payload;
use crate::retry;
use crate::store::read::Queued;
use crate::store::reply::ReplyReceiver;
use crate::store::{AttemptRecord, Reader, Store, StoreError, WriteOp, WriteOutput};

/// After a store error, look at the hook again this much later.
const STORE_ERROR_BACKOFF_MS: i64 = 1000;

/// What every dispatcher shares.
#[derive(Clone)]
pub struct Shared {
    pub store: Store,
    /// Each dispatcher builds its own HTTP client from this (see `client::Client`).
    pub client: client::Client,
    pub schedule: Arc<Vec<Duration>>,
    pub disable_after: u32,
    /// Set at shutdown: take no new job.
    pub stopping: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
}

/// Where a dispatcher takes its jobs from.
pub enum Lanes {
    /// Healthy hooks only.
    Fast(Receiver<Job>),
    /// Failing hooks first; healthy ones when there are no failing ones waiting.
    Slow {
        slow: Receiver<Job>,
        fast: Receiver<Job>,
    },
}

impl Lanes {
    fn next(&self) -> Option<Job> {
        match self {
            Lanes::Fast(fast) => fast.recv().ok(),
            Lanes::Slow { slow, fast } => {
                if let Ok(job) = slow.try_recv() {
                    return Some(job);
                }
                crossbeam_channel::select! {
                    recv(slow) -> job => job.ok(),
                    recv(fast) -> job => job.ok(),
                }
            }
        }
    }
}

pub fn run(shared: Shared, reader: Reader, lanes: Lanes, done: Sender<Done>) {
    let agent = shared.client.dispatcher_agent();
    while let Some(job) = lanes.next() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        shared.metrics.busy(true);
        let ended = catch_unwind(AssertUnwindSafe(|| {
            deliver(&shared, &agent, &reader, &job.hook_id)
        }))
        .unwrap_or_else(|_| {
            log::error!(
                "dispatcher panicked on hook {}; retrying later",
                job.hook_id
            );
            Err(StoreError::Busy)
        })
        .unwrap_or_else(|e| {
            log::error!("dispatcher: hook {}: {e}", job.hook_id);
            Ended {
                next: Some(now_ms() + STORE_ERROR_BACKOFF_MS),
                healthy: true,
                uncommitted: None,
            }
        });
        shared.metrics.busy(false);
        let finished = Done {
            hook_id: job.hook_id,
            next: ended.next,
            healthy: ended.healthy,
        };
        match ended.uncommitted {
            // The hook is handed out again only once what was sent is on disk:
            // otherwise the next job would read those rows as still open and send them
            // twice. The writer hands it back after that commit; this thread goes on.
            Some(result) => {
                let done = done.clone();
                result.then(move |result| {
                    let _ = done.send(after_commit(finished, result));
                });
            }
            None => {
                if done.send(finished).is_err() {
                    break;
                }
            }
        }
    }
}

/// How a job ended.
struct Ended {
    next: Option<Millis>,
    healthy: bool,
    /// The last success it recorded without waiting, if its commit is still to come.
    uncommitted: Option<ReplyReceiver<Result<WriteOutput, StoreError>>>,
}

/// The job's end as the scheduler should see it, once its last outcome was written.
fn after_commit(mut done: Done, result: Option<Result<WriteOutput, StoreError>>) -> Done {
    if let Err(e) = result.unwrap_or(Err(StoreError::Busy)) {
        log::warn!(
            "hook {}: an outcome was not recorded ({e}); it will be sent again",
            done.hook_id
        );
        done.next = Some(now_ms() + STORE_ERROR_BACKOFF_MS);
    }
    done
}

/// How long one job may keep a dispatcher on one hook before yielding to others.
const JOB_BUDGET: Duration = Duration::from_millis(50);
/// Most requests one job sends for one hook.
const JOB_MAX_REQUESTS: usize = 100;
/// Rows a job reads ahead of what it sends, with their events, so a deep queue costs
/// one query per this many rows rather than two per request; bounded in bytes too, so
/// large events are not held in memory by every dispatcher.
const READ_AHEAD_ROWS: usize = 32;
const READ_AHEAD_BYTES: usize = 64 * 1024;

/// Sends the hook's due batches in order, one request at a time. A success is recorded
/// without waiting for its commit, so the next request overlaps the fsync; anything
/// else is recorded and waited for, because it decides when the hook goes next.
/// Returns when the hook is next due, whether it looks healthy, and the commit of its
/// last success if that is still to come.
fn deliver(
    shared: &Shared,
    agent: &Agent,
    reader: &Reader,
    hook_id: &str,
) -> Result<Ended, StoreError> {
    let idle = Ended {
        next: None,
        healthy: true,
        uncommitted: None,
    };
    // The hook and the head of its queue, read together.
    let first = reader.snapshot(|r| {
        let Some(hook) = r.hook(hook_id)? else {
            return Ok(None);
        };
        if hook.status != HookStatus::Active {
            return Ok(None);
        }
        let need = rows_needed(&hook);
        let rows = r.queued(
            hook_id,
            0,
            need,
            READ_AHEAD_ROWS.max(need),
            READ_AHEAD_BYTES,
        )?;
        Ok(Some((hook, rows)))
    })?;
    let Some((hook, (rows, mut end))) = first else {
        return Ok(idle);
    };
    let started = Instant::now();
    let mut healthy = hook.consecutive_failures == 0;
    // Rows up to this sequence were read (or sent) by this job; their outcomes may not
    // be committed yet, so the queue is read after them.
    let mut after = rows.last().map_or(0, |q| q.row.seq);
    // The hook's next open rows, read ahead. Only this job sends for this hook, so they
    // stay valid while it runs, except that a deletion or a retry elsewhere may change
    // them: a failure ends the job, and every job starts with a fresh read.
    let mut ahead: VecDeque<Queued> = rows.into();
    let mut uncommitted = None;
    let mut sent = 0;
    let need = rows_needed(&hook);
    let next = loop {
        // `end`: the last read reached the end of the queue, so `ahead` holds all of
        // it. Reading again would find nothing this job needs: rows queued since then
        // wake the scheduler, which hands the hook out again as soon as this job is done.
        if ahead.len() < need && !end {
            let (more, more_end) = reader.queued(
                hook_id,
                after,
                need - ahead.len(),
                READ_AHEAD_ROWS.max(need),
                READ_AHEAD_BYTES,
            )?;
            end = more_end;
            if let Some(last) = more.last() {
                after = last.row.seq;
            }
            ahead.extend(more);
        }
        let Some(head) = ahead.front() else {
            break None;
        };
        let head_due = head.row.next_attempt_at.unwrap_or(0);
        if head_due > now_ms() {
            break Some(head_due);
        }
        if sent >= JOB_MAX_REQUESTS || started.elapsed() >= JOB_BUDGET {
            break Some(now_ms());
        }
        let mut single = None;
        let batch = match claim(
            shared,
            reader,
            hook_id,
            ahead.make_contiguous(),
            hook.batch_max,
        )? {
            Claimed::Head(n) => ahead.drain(..n).collect::<Vec<_>>(),
            Claimed::Alone => {
                let mut head = ahead.drain(..1).collect::<Vec<_>>();
                single = Some(head[0].row.seq);
                head[0].row.batch_id = Some(crate::ids::delivery_id(&head[0].event.id, hook_id));
                head
            }
            Claimed::Reread(batch) => {
                // Read from the database: what was read ahead may be stale, and what
                // follows the batch is read again.
                ahead.clear();
                end = false;
                after = batch.last().map_or(after, |q| q.row.seq);
                batch
            }
        };
        let Some(batch_id) = batch.first().and_then(|q| q.row.batch_id.clone()) else {
            // Changed under us (cancelled, delivered by a retry): look again.
            break Some(now_ms());
        };
        // Tells the writer an outcome is on its way, until it is queued through this.
        let coming = shared.store.outcome_coming();
        // `healthy` is false only before this job's first success (a failure ends it).
        let (record, verdict) = attempt(shared, agent, &hook, (batch_id, single), &batch, !healthy);
        sent += 1;
        healthy = !verdict.is_failure();
        let delivered = verdict == retry::Verdict::Delivered;
        let op = WriteOp::RecordAttempt {
            record,
            disable_after: shared.disable_after,
            // A success is not waited for, and what follows it is read here anyway.
            want_next: !delivered,
        };
        let queued = coming.submit(op)?;
        if delivered {
            uncommitted = Some(queued);
            continue;
        }
        // Sent after every earlier outcome, so waiting for it waits for them too.
        uncommitted = None;
        break match crate::store::answer(queued)? {
            WriteOutput::Next(next) => next,
            _ => Some(now_ms()),
        };
    };
    Ok(Ended {
        next,
        healthy,
        uncommitted,
    })
}

/// Rows a batch decision needs: the rows it may take and one more (is the head alone?).
fn rows_needed(hook: &Hook) -> usize {
    hook.batch_max as usize + 1
}

/// One request: builds, signs and sends the batch (its id, and the row it is if it is a
/// row sent alone that no batch holds yet), and decides what follows.
fn attempt(
    shared: &Shared,
    agent: &Agent,
    hook: &Hook,
    (batch_id, single): (String, Option<i64>),
    batch: &[Queued],
    after_failures: bool,
) -> (AttemptRecord, retry::Verdict) {
    let numbered: Vec<(i64, &crate::model::Event)> =
        batch.iter().map(|q| (q.row.seq, &*q.event)).collect();
    let body = payload::build(hook, &numbered);

    let timestamp = now_ms() / 1000;
    let secrets = hook.signing_secrets(now_ms());
    let signature = crate::sign::header(&secrets, &batch_id, timestamp, &body);
    let headers = [
        ("webhook-id", batch_id.clone()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ];
    let result = client::send(agent, &hook.target_url, &headers, &body);
    let attempts = batch[0].row.attempts + 1;
    let verdict = retry::decide(&shared.schedule, attempts, result.outcome, now_ms(), jitter);
    if verdict == retry::Verdict::Dead {
        log::warn!(
            "delivery {batch_id} of hook {} is dead after {attempts} attempts",
            hook.id
        );
    }
    let m = &shared.metrics;
    m.attempt_duration
        .observe(result.attempt.duration_ms as f64 / 1000.0);
    m.delivery(match verdict {
        retry::Verdict::Delivered => DeliveryResult::Delivered,
        retry::Verdict::Retry { .. } => DeliveryResult::Failed,
        retry::Verdict::Dead => DeliveryResult::Dead,
        retry::Verdict::Gone => DeliveryResult::Gone,
    });
    if verdict == retry::Verdict::Delivered {
        let now = now_ms();
        for q in batch {
            m.publish_to_delivery
                .observe((now - q.event.created_at) as f64 / 1000.0);
        }
    }
    let record = AttemptRecord {
        hook_id: hook.id.clone(),
        batch_id,
        attempt: result.attempt,
        verdict,
        after_failures,
        single,
    };
    (record, verdict)
}

/// Which rows go out together.
enum Claimed {
    /// The first `n` rows read ahead, their batch id set.
    Head(usize),
    /// The first row read ahead, never sent, alone: a batch named after it, written with
    /// its first outcome (nothing to claim: the row alone is all it can ever hold).
    Alone,
    /// The batch as the database holds it now (its rows changed under us, or it was
    /// formed by an earlier job); empty when none of it is open any more.
    Reread(Vec<Queued>),
}

/// Picks the rows that go out together. `rows` are the hook's first open rows, at
/// least `batch_max + 1` of them when there are. A head that was sent before keeps its
/// batch (more than itself only if the next open row shares it: a batch is
/// consecutive). Otherwise, with `batch_max` 1, the head goes alone under its own id;
/// with more, up to `batch_max` never-sent rows at the head are claimed as one batch,
/// under a new id, before they are first sent. (A new id, not the head's: a row sent
/// alone and never recorded, say before a crash, must not share its id with a batch
/// that holds more.)
fn claim(
    shared: &Shared,
    reader: &Reader,
    hook_id: &str,
    rows: &mut [Queued],
    batch_max: u32,
) -> Result<Claimed, StoreError> {
    let head = &rows[0].row;
    if let Some(batch_id) = &head.batch_id {
        let alone = rows
            .get(1)
            .is_none_or(|next| next.row.batch_id.as_ref() != Some(batch_id));
        if alone {
            return Ok(Claimed::Head(1));
        }
        return reread(reader, batch_id);
    }
    if batch_max <= 1 {
        return Ok(Claimed::Alone);
    }
    let fresh = rows
        .iter()
        .take_while(|q| q.row.batch_id.is_none())
        .take(batch_max as usize)
        .count();
    let batch_id = crate::ids::new_id("dlv");
    // The fresh rows are the hook's open rows between these two numbers: new rows get
    // higher numbers, and a row opened again by a retry was sent before (it has a
    // batch). If the count still differs, the batch is read back as it was claimed.
    let claimed = shared.store.internal(WriteOp::ClaimBatch {
        hook_id: hook_id.to_string(),
        batch_id: batch_id.clone(),
        seqs: (head.seq, rows[fresh - 1].row.seq),
    })?;
    if matches!(claimed, WriteOutput::Count(n) if n == fresh as u64) {
        for q in &mut rows[..fresh] {
            q.row.batch_id = Some(batch_id.clone());
        }
        return Ok(Claimed::Head(fresh));
    }
    // Some rows changed under us (cancelled, retried): take what the batch really holds.
    reread(reader, &batch_id)
}

fn reread(reader: &Reader, batch_id: &str) -> Result<Claimed, StoreError> {
    let rows = reader.batch_rows(batch_id)?;
    let ids: Vec<String> = rows.iter().map(|r| r.event_id.clone()).collect();
    let events = reader.events_by_ids(&ids)?;
    Ok(Claimed::Reread(
        rows.into_iter()
            .zip(events)
            .map(|(row, event)| Queued {
                row,
                event: Arc::new(event),
            })
            .collect(),
    ))
}

fn jitter() -> f64 {
    let mut b = [0u8; 4];
    crate::ids::random_bytes(&mut b);
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}
