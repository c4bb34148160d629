//! Read-only queries, one connection per thread that reads. Every list is keyset
//! paginated (`after`/`before` a cursor), never OFFSET.

use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::recent::RecentEvents;
use super::{Context, StoreError};
use crate::clock::Millis;
use crate::model::{
    ApiKey, Attempt, Delivery, DeliveryStatus, Event, Hook, HookStatus, PayloadKind, Role,
};
use crate::secrets::SecretBox;

pub(super) const HOOK_COLUMNS: &str = "id, tenant, target_url, events, payload, batch_max, \
     status, secret, consecutive_failures, created_at, updated_at, previous_secret, \
     previous_until, pending_target_url";

pub(super) fn hook_from_row(r: &Row, secrets: &SecretBox) -> rusqlite::Result<Hook> {
    let events: String = r.get(3)?;
    let payload: String = r.get(4)?;
    let status: String = r.get(6)?;
    let id: String = r.get(0)?;
    let open = |sealed: String| {
        secrets.open(&sealed, &id).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, e.into())
        })
    };
    let previous = match (
        r.get::<_, Option<String>>(11)?,
        r.get::<_, Option<i64>>(12)?,
    ) {
        (Some(sealed), Some(until)) => Some((open(sealed)?, until)),
        _ => None,
    };
    Ok(Hook {
        secret: open(r.get(7)?)?,
        previous_secret: previous,
        pending_target_url: r.get(13)?,
        id,
        tenant: r.get(1)?,
        target_url: r.get(2)?,
        events: serde_json::from_str(&events).unwrap_or_default(),
        payload: PayloadKind::parse(&payload).unwrap_or(PayloadKind::Skinny),
        batch_max: r.get(5)?,
        status: HookStatus::parse(&status).unwrap_or(HookStatus::Pending),
        consecutive_failures: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
    })
}

const EVENT_COLUMNS: &str = "id, tenant, type, resource_id, data, created_at";
/// One event by its id, in [`EVENT_COLUMNS`] (spelled out: `concat!` takes literals only,
/// and a dispatcher's queue read runs it per event it does not hold in memory).
const EVENT_BY_ID: &str =
    "SELECT id, tenant, type, resource_id, data, created_at FROM events WHERE id = ?1";
/// [`EVENT_COLUMNS`] of `events e` found through `event_types t`: the id is taken from
/// `t`, whose key SQLite then knows the rows come in (from `e` it would sort them all).
const EVENT_COLUMNS_BY_TYPE: &str =
    "t.event_id, e.tenant, e.type, e.resource_id, e.data, e.created_at";

pub(super) fn event_from_row(r: &Row) -> rusqlite::Result<Event> {
    event_at(r, 0)
}

/// The event whose [`EVENT_COLUMNS`] start at column `first` (a join puts them after
/// other columns).
fn event_at(r: &Row, first: usize) -> rusqlite::Result<Event> {
    Ok(Event {
        id: r.get(first)?,
        tenant: r.get(first + 1)?,
        event_type: r.get(first + 2)?,
        resource_id: r.get(first + 3)?,
        data: r.get(first + 4)?,
        created_at: r.get(first + 5)?,
    })
}

fn key_from_row(r: &Row) -> rusqlite::Result<ApiKey> {
    let role: String = r.get(1)?;
    Ok(ApiKey {
        id: r.get(0)?,
        role: Role::parse(&role).unwrap_or(Role::Subscriber),
        tenant: r.get(2)?,
        created_at: r.get(3)?,
    })
}

/// A row of a hook's outbox, as the dispatcher needs it.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub seq: i64,
    pub event_id: String,
    pub batch_id: Option<String>,
    pub attempts: u32,
    pub next_attempt_at: Option<Millis>,
}

/// An open row with its event.
#[derive(Debug, Clone)]
pub struct Queued {
    pub row: OutboxRow,
    /// Shared with the recent events in memory when it came from there (recent.rs).
    pub event: Arc<Event>,
}

fn outbox_from_row(r: &Row) -> rusqlite::Result<OutboxRow> {
    Ok(OutboxRow {
        seq: r.get(0)?,
        event_id: r.get(1)?,
        batch_id: r.get(2)?,
        attempts: r.get(3)?,
        next_attempt_at: r.get(4)?,
    })
}

/// The outbox's key for the hook `id` (deleted or not), if there is such a hook: the
/// outbox and its batches name a hook by this integer, not by its 31-byte id, which
/// kept their rows and index entries a third smaller (BENCHMARKS.md, item 45).
pub(super) fn hook_key(conn: &Connection, id: &str) -> Result<Option<i64>, StoreError> {
    conn.prepare_cached("SELECT key FROM hooks WHERE id = ?1")
        .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
        .ctx("finding a hook's key")
}

/// The hook of the unsent row whose derived id ([`crate::ids::delivery_id`]) is `id`:
/// among the rows of the events of the id's millisecond, each id derived again. A few
/// rows, found through the events' key and `deliveries_by_event`.
pub(super) fn unsent_row_hook(conn: &Connection, id: &str) -> Result<Option<String>, StoreError> {
    let Some(ms) = crate::ids::delivery_id_ms(id) else {
        return Ok(None);
    };
    let mut stmt = conn
        .prepare_cached(concat!(
            "SELECT h.id, d.event_id
             FROM events e CROSS JOIN deliveries d ON d.event_id = e.id
             CROSS JOIN hooks h ON h.key = d.hook_key
             WHERE e.id >= ?1 AND e.id < ?2 AND d.seq > ",
            batched!("d.hook_key")
        ))
        .ctx("finding a delivery")?;
    let from = crate::ids::id_at("evt", ms);
    let to = crate::ids::id_at("evt", ms + 1);
    let mut rows = stmt.query(params![from, to]).ctx("finding a delivery")?;
    while let Some(r) = rows.next().ctx("finding a delivery")? {
        let hook: String = r.get(0).ctx("finding a delivery")?;
        let event: String = r.get(1).ctx("finding a delivery")?;
        if crate::ids::delivery_id(&event, &hook) == id {
            return Ok(Some(hook));
        }
    }
    Ok(None)
}

/// Adds the queue rows `rows` yields (an [`OutboxRow`]'s columns), each with its event
/// as `event` finds it, to `out`, counting their events' bytes, until
/// `full(rows, bytes)`; true if it stopped there, false if the rows ran out. The rest
/// is never stepped.
fn take_queued(
    rows: &mut rusqlite::Rows<'_>,
    out: &mut Vec<Queued>,
    bytes: &mut usize,
    full: &dyn Fn(usize, usize) -> bool,
    event: &dyn Fn(&str) -> Result<Arc<Event>, StoreError>,
) -> Result<bool, StoreError> {
    while let Some(r) = rows.next().ctx("reading a hook's queue")? {
        let row = outbox_from_row(r).ctx("reading a hook's queue")?;
        let q = Queued {
            event: event(&row.event_id)?,
            row,
        };
        *bytes += q.event.data.len();
        out.push(q);
        if full(out.len(), *bytes) {
            return Ok(true);
        }
    }
    Ok(false)
}

pub struct Reader {
    conn: Connection,
    secrets: Arc<SecretBox>,
    /// The events the writer committed lately (a dispatcher's reader only).
    recent: Option<Arc<RecentEvents>>,
}

/// A read transaction of [`Reader::snapshot`]; rolled back when dropped before it ended.
struct OpenRead<'a> {
    reader: &'a Reader,
    ended: bool,
}

impl Drop for OpenRead<'_> {
    fn drop(&mut self) {
        if !self.ended {
            if let Err(e) = self.reader.run("ROLLBACK") {
                log::warn!("reader: cannot end a read transaction: {e}");
            }
        }
    }
}

impl Reader {
    pub(super) fn new(conn: Connection, secrets: Arc<SecretBox>) -> Reader {
        Reader {
            conn,
            secrets,
            recent: None,
        }
    }

    /// This reader takes queued rows' events from `recent` when they are there.
    pub fn with_recent(mut self, recent: Arc<RecentEvents>) -> Reader {
        self.recent = Some(recent);
        self
    }

    /// A queued row's event: from memory when it is there, else from the file (where
    /// the row's foreign key guarantees it).
    fn queued_event(&self, id: &str) -> Result<Arc<Event>, StoreError> {
        if let Some(e) = self.recent.as_ref().and_then(|r| r.get(id)) {
            return Ok(e);
        }
        self.event(id)?.map(Arc::new).ok_or(StoreError::NotFound)
    }

    /// Answers when the database does.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.conn
            .query_row("SELECT 1", [], |_| Ok(()))
            .ctx("pinging the database")
    }

    pub fn key_by_hash(&self, hash: &[u8]) -> Result<Option<ApiKey>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT id, role, tenant, created_at FROM api_keys
                 WHERE token_hash = ?1 AND revoked_at IS NULL",
            )
            .and_then(|mut s| s.query_row([hash], key_from_row).optional())
            .ctx("looking up a token")
    }

    pub fn list_keys(&self, after: &str, limit: u32) -> Result<Vec<ApiKey>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, role, tenant, created_at FROM api_keys
                 WHERE revoked_at IS NULL AND id > ?1 ORDER BY id LIMIT ?2",
            )
            .ctx("listing keys")?;
        let rows = stmt
            .query_map(params![after, limit], key_from_row)
            .ctx("listing keys")?;
        rows.collect::<Result<_, _>>().ctx("reading keys")
    }

    /// Runs `f` in one read transaction: its queries see one snapshot, and the read
    /// lock and the check for changes (which empties this connection's page cache when
    /// the file changed) are paid once instead of once per query.
    pub fn snapshot<T>(
        &self,
        f: impl FnOnce(&Reader) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run("BEGIN").ctx("starting a read")?;
        // Ended on every way out, a panic in `f` included: a read transaction left
        // open would make every later BEGIN here fail and keep the WAL from ever being
        // started over.
        let mut open = OpenRead {
            reader: self,
            ended: false,
        };
        let out = f(self)?;
        self.run("COMMIT").ctx("ending a read")?;
        open.ended = true;
        Ok(out)
    }

    /// Runs a statement without parameters or rows, from the statement cache.
    fn run(&self, sql: &str) -> rusqlite::Result<usize> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
    }

    /// A live (not deleted) hook.
    pub fn hook(&self, id: &str) -> Result<Option<Hook>, StoreError> {
        let sql = format!("SELECT {HOOK_COLUMNS} FROM hooks WHERE id = ?1 AND deleted_at IS NULL");
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_row([id], |r| hook_from_row(r, &self.secrets))
                    .optional()
            })
            .ctx("loading a hook")
    }

    /// Live hooks, of one tenant or all, by id after the cursor.
    pub fn list_hooks(
        &self,
        tenant: Option<&str>,
        after: &str,
        limit: u32,
    ) -> Result<Vec<Hook>, StoreError> {
        let sql = format!(
            "SELECT {HOOK_COLUMNS} FROM hooks
             WHERE deleted_at IS NULL AND (?1 IS NULL OR tenant = ?1) AND id > ?2
             ORDER BY id LIMIT ?3"
        );
        let mut stmt = self.conn.prepare_cached(&sql).ctx("listing hooks")?;
        let rows = stmt
            .query_map(params![tenant, after, limit], |r| {
                hook_from_row(r, &self.secrets)
            })
            .ctx("listing hooks")?;
        rows.collect::<Result<_, _>>().ctx("reading hooks")
    }

    pub fn event(&self, id: &str) -> Result<Option<Event>, StoreError> {
        self.conn
            .prepare_cached(EVENT_BY_ID)
            .and_then(|mut s| s.query_row([id], event_from_row).optional())
            .ctx("loading an event")
    }

    /// Was the event routed to (queued for) a hook of `tenant`?
    pub fn event_routed_to(&self, event_id: &str, tenant: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT 1 FROM deliveries d JOIN hooks h ON h.key = d.hook_key
                 WHERE d.event_id = ?1 AND h.tenant = ?2 LIMIT 1",
            )
            .and_then(|mut s| {
                s.query_row(params![event_id, tenant], |_| Ok(()))
                    .optional()
            })
            .ctx("checking an event's deliveries")
            .map(|o| o.is_some())
    }

    /// A tenant's events, newest first, before the cursor (an event id; "" for the
    /// newest). `routed_only` keeps those that were queued for one of its hooks.
    pub fn list_events(
        &self,
        tenant: &str,
        event_type: Option<&str>,
        before: &str,
        limit: u32,
        routed_only: bool,
    ) -> Result<Vec<Event>, StoreError> {
        // Every event id sorts below "evt_~", so the cursor is always a range bound
        // (`?3 = '' OR id < ?3` would make SQLite walk from the newest event each page).
        let before = if before.is_empty() { "evt_~" } else { before };
        let routed = "(?4 = 0 OR EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id))";
        let sql = match event_type {
            None => format!(
                "SELECT {EVENT_COLUMNS} FROM events e
                 WHERE tenant = ?1 AND id < ?3 AND {routed}
                 ORDER BY id DESC LIMIT ?5"
            ),
            // The type index holds the events up to `types_through`; the few after it
            // (written behind: schema.sql) are read from the events themselves. One
            // statement, so both parts see the same snapshot.
            Some(_) => format!(
                "SELECT {EVENT_COLUMNS} FROM events e
                 WHERE id > (SELECT value FROM meta WHERE key = 'types_through') AND id < ?3
                   AND tenant = ?1 AND type = ?2 AND {routed}
                 UNION ALL
                 SELECT {EVENT_COLUMNS_BY_TYPE} FROM event_types t JOIN events e ON e.id = t.event_id
                 WHERE t.tenant = ?1 AND t.type = ?2 AND t.event_id < ?3 AND {routed}
                 ORDER BY 1 DESC LIMIT ?5"
            ),
        };
        let mut stmt = self.conn.prepare_cached(&sql).ctx("listing events")?;
        let rows = stmt
            .query_map(
                params![tenant, event_type, before, routed_only, limit],
                event_from_row,
            )
            .ctx("listing events")?;
        rows.collect::<Result<_, _>>().ctx("reading events")
    }

    pub fn events_by_ids(&self, ids: &[String]) -> Result<Vec<Event>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(EVENT_BY_ID)
            .ctx("loading events")?;
        ids.iter()
            .map(|id| stmt.query_row([id], event_from_row).ctx("loading an event"))
            .collect()
    }

    /// A hook's delivery log, newest first, before sequence `before` (0: from the newest):
    /// its unsent rows (each a pending delivery of its own until it is sent), then its
    /// batches, whose sequence numbers are all lower.
    pub fn deliveries(
        &self,
        hook_id: &str,
        status: Option<DeliveryStatus>,
        before: i64,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut out = Vec::new();
        let Some(key) = hook_key(&self.conn, hook_id)? else {
            return Ok(out);
        };
        if status.is_none_or(|s| s == DeliveryStatus::Pending) {
            let mut stmt = self
                .conn
                .prepare_cached(concat!(
                    "SELECT d.seq, e.created_at, d.event_id
                     FROM deliveries d CROSS JOIN events e ON e.id = d.event_id
                     WHERE d.hook_key = ?1 AND d.seq > ",
                    batched!("?1"),
                    " AND (?2 = 0 OR seq < ?2)
                     ORDER BY seq DESC LIMIT ?3"
                ))
                .ctx("listing deliveries")?;
            let rows = stmt
                .query_map(params![key, before, limit], |r| {
                    let event_id: String = r.get(2)?;
                    Ok(Delivery {
                        id: crate::ids::delivery_id(&event_id, hook_id),
                        hook_id: hook_id.to_string(),
                        event_ids: vec![event_id],
                        sequence: r.get(0)?,
                        status: DeliveryStatus::Pending,
                        attempts: Vec::new(),
                        next_attempt_at: None,
                        created_at: r.get(1)?,
                    })
                })
                .ctx("listing deliveries")?;
            for d in rows {
                out.push(d.ctx("reading deliveries")?);
            }
        }
        let left = limit.saturating_sub(out.len() as u32);
        if left == 0 {
            return Ok(out);
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, first_seq, last_seq, status, next_attempt_at, created_at
                 FROM batches
                 WHERE hook_key = ?1 AND (?2 IS NULL OR status = ?2) AND (?3 = 0 OR first_seq < ?3)
                 ORDER BY first_seq DESC LIMIT ?4",
            )
            .ctx("listing deliveries")?;
        let batches = stmt
            .query_map(
                params![key, status.map(|s| s.as_str()), before, left],
                |r| {
                    let status: String = r.get(3)?;
                    Ok((
                        Delivery {
                            id: r.get(0)?,
                            hook_id: hook_id.to_string(),
                            event_ids: Vec::new(),
                            sequence: r.get(1)?,
                            status: DeliveryStatus::parse(&status)
                                .unwrap_or(DeliveryStatus::Pending),
                            attempts: Vec::new(),
                            next_attempt_at: r.get(4)?,
                            created_at: r.get(5)?,
                        },
                        r.get::<_, i64>(2)?,
                    ))
                },
            )
            .ctx("listing deliveries")?
            .collect::<Result<Vec<_>, _>>()
            .ctx("reading deliveries")?;
        for (mut d, last) in batches {
            d.event_ids = self.batch_event_ids(key, d.sequence, last)?;
            d.attempts = self.attempts(&d.id)?;
            out.push(d);
        }
        Ok(out)
    }

    fn batch_event_ids(
        &self,
        hook_key: i64,
        first: i64,
        last: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT event_id FROM deliveries WHERE hook_key = ?1 AND seq BETWEEN ?2 AND ?3
                 ORDER BY seq",
            )
            .ctx("listing a batch")?;
        let rows = stmt
            .query_map(params![hook_key, first, last], |r| r.get(0))
            .ctx("listing a batch")?;
        rows.collect::<Result<_, _>>().ctx("reading a batch")
    }

    fn attempts(&self, delivery_id: &str) -> Result<Vec<Attempt>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT at, status_code, error, duration_ms, response_snippet FROM attempts
                 WHERE delivery_id = ?1 ORDER BY id",
            )
            .ctx("listing attempts")?;
        let rows = stmt
            .query_map([delivery_id], |r| {
                Ok(Attempt {
                    at: r.get(0)?,
                    status_code: r.get(1)?,
                    error: r.get(2)?,
                    duration_ms: r.get(3)?,
                    response_snippet: r.get(4)?,
                })
            })
            .ctx("listing attempts")?;
        rows.collect::<Result<_, _>>().ctx("reading attempts")
    }

    /// The hook's oldest undelivered rows after sequence `after`, in sequence order,
    /// each with its event: what a dispatcher sends, in two queries (its open batches,
    /// then its unsent tail) however many requests they make. At least `min` rows
    /// when there are that many; then more, up to `max`, while the events' data stays
    /// under `max_bytes` (rows are stepped lazily, so the rest is never read). The flag
    /// is true when the rows ran out first: these are all the hook's open rows after
    /// `after` as of this read.
    pub fn queued(
        &self,
        hook_id: &str,
        after: i64,
        min: usize,
        max: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Queued>, bool), StoreError> {
        // Its open batches first (sent before, to be sent again), then its unsent tail:
        // every batch's rows come before the tail's. CROSS JOIN fixes the loops' order
        // (batches, then each one's rows through the outbox key, in seq order), so
        // ordering by first_seq orders the rows without a sort (ORDER
        // BY d.seq too made SQLite build a temporary B-tree per query); INDEXED BY: the
        // batches' own key also starts with (hook_key, first_seq), and SQLite may pick
        // it, walking the hook's whole history to find the open ones.
        let mut out = Vec::new();
        let Some(key) = hook_key(&self.conn, hook_id)? else {
            return Ok((out, true));
        };
        let mut bytes = 0;
        let full = |rows: usize, bytes: usize| rows >= max || (rows >= min && bytes >= max_bytes);
        // Each row's event, from memory when the writer kept it, else by its key.
        let event = |id: &str| self.queued_event(id);
        {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT d.seq, d.event_id, b.id, b.attempts, b.next_attempt_at
                     FROM batches b INDEXED BY batches_open
                     CROSS JOIN deliveries d
                         ON d.hook_key = b.hook_key AND d.seq BETWEEN b.first_seq AND b.last_seq
                     WHERE b.hook_key = ?1 AND b.status IN ('pending', 'failed')
                       AND b.last_seq > ?2 AND d.seq > ?2
                     ORDER BY b.first_seq",
                )
                .ctx("reading a hook's queue")?;
            let mut rows = stmt
                .query(params![key, after])
                .ctx("reading a hook's queue")?;
            if take_queued(&mut rows, &mut out, &mut bytes, &full, &event)? {
                return Ok((out, false));
            }
        }
        let mut stmt = self
            .conn
            .prepare_cached(concat!(
                "SELECT d.seq, d.event_id, NULL, 0, NULL
                 FROM deliveries d
                 WHERE d.hook_key = ?1 AND d.seq > max(?2, ",
                batched!("?1"),
                ")
                 ORDER BY d.seq LIMIT ?3"
            ))
            .ctx("reading a hook's queue")?;
        let mut rows = stmt
            .query(params![key, after, (max - out.len()) as i64])
            .ctx("reading a hook's queue")?;
        let full = take_queued(&mut rows, &mut out, &mut bytes, &full, &event)?;
        Ok((out, !full))
    }

    /// The rows of one open batch, in sequence order.
    pub fn batch_rows(&self, batch_id: &str) -> Result<Vec<OutboxRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT d.seq, d.event_id, b.id, b.attempts, b.next_attempt_at
                 FROM batches b CROSS JOIN deliveries d
                     ON d.hook_key = b.hook_key AND d.seq BETWEEN b.first_seq AND b.last_seq
                 WHERE b.id = ?1 AND b.status IN ('pending', 'failed') ORDER BY d.seq",
            )
            .ctx("reading a batch")?;
        let rows = stmt
            .query_map([batch_id], outbox_from_row)
            .ctx("reading a batch")?;
        rows.collect::<Result<_, _>>().ctx("reading a batch")
    }

    /// The most recent deliveries of every hook (newest first), for the CLI: the newest
    /// batches, and the newest unsent rows of each live hook, merged by id (ids are
    /// time-ordered to the millisecond; within one, in no particular order).
    pub fn recent_deliveries(
        &self,
        status: Option<DeliveryStatus>,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        // (id, hook, first sequence number) of each delivery: the log shows it from there.
        let mut found: Vec<(String, String, i64)> = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT b.id, h.id, b.first_seq
                     FROM batches b CROSS JOIN hooks h ON h.key = b.hook_key
                     WHERE (?1 IS NULL OR b.status = ?1)
                     ORDER BY b.id DESC LIMIT ?2",
                )
                .ctx("listing deliveries")?;
            let rows = stmt
                .query_map(params![status.map(|s| s.as_str()), limit], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .ctx("listing deliveries")?;
            rows.collect::<Result<_, _>>().ctx("reading deliveries")?
        };
        if status.is_none_or(|s| s == DeliveryStatus::Pending) {
            let hooks: Vec<(String, i64)> = {
                let mut stmt = self
                    .conn
                    .prepare_cached("SELECT id, key FROM hooks WHERE deleted_at IS NULL")
                    .ctx("listing hooks")?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .ctx("listing hooks")?;
                rows.collect::<Result<_, _>>().ctx("reading hooks")?
            };
            let mut stmt = self
                .conn
                .prepare_cached(concat!(
                    "SELECT event_id, seq FROM deliveries WHERE hook_key = ?1 AND seq > ",
                    batched!("?1"),
                    "
                     ORDER BY seq DESC LIMIT ?2"
                ))
                .ctx("listing deliveries")?;
            for (hook, key) in hooks {
                let rows = stmt
                    .query_map(params![key, limit], |r| {
                        let event: String = r.get(0)?;
                        Ok((
                            crate::ids::delivery_id(&event, &hook),
                            hook.clone(),
                            r.get(1)?,
                        ))
                    })
                    .ctx("listing deliveries")?;
                for row in rows {
                    found.push(row.ctx("reading deliveries")?);
                }
            }
            found.sort_unstable_by(|a, b| b.0.cmp(&a.0));
            found.truncate(limit as usize);
        }
        let mut out = Vec::new();
        for (_, hook_id, seq) in found {
            out.extend(self.deliveries(&hook_id, None, seq + 1, 1)?);
        }
        Ok(out)
    }

    /// Activity over the last `since` milliseconds: attempts that succeeded, that
    /// failed, and deliveries that went dead.
    pub fn activity(&self, since: Millis) -> Result<(u64, u64, u64), StoreError> {
        let (ok, failed): (i64, i64) = self
            .conn
            .query_row(
                "SELECT coalesce(sum(status_code BETWEEN 200 AND 299), 0),
                        coalesce(sum(status_code IS NULL OR status_code NOT BETWEEN 200 AND 299), 0)
                 FROM attempts WHERE at >= ?1",
                [since],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ctx("counting attempts")?;
        let dead: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM batches WHERE status = 'dead' AND updated_at >= ?1",
                [since],
                |r| r.get(0),
            )
            .ctx("counting dead deliveries")?;
        Ok((ok as u64, failed as u64, dead as u64))
    }

    /// Undelivered rows, and live hooks by status: the gauges of `/metrics`.
    pub fn gauges(&self) -> Result<crate::metrics::Gauges, StoreError> {
        // The rows of open batches, and every live hook's unsent rows: a hook's rows are
        // numbered without gaps and only sent ones are ever deleted, so those are its
        // newest number less its last sent one (two probes per hook, not a count).
        let outbox_pending: i64 = self
            .conn
            .prepare_cached(concat!(
                "SELECT (SELECT coalesce(sum(last_seq - first_seq + 1), 0)
                         FROM batches INDEXED BY batches_open
                         WHERE status IN ('pending', 'failed'))
                      + (SELECT coalesce(sum(max(0, coalesce((SELECT max(seq) FROM deliveries
                                                               WHERE hook_key = h.key), 0)
                                                    - ",
                batched!("h.key"),
                ")), 0)
                         FROM hooks h WHERE h.deleted_at IS NULL)"
            ))
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .ctx("counting the outbox")?;
        let mut hooks_by_status = Vec::new();
        for status in HookStatus::ALL {
            let n: i64 = self
                .conn
                .prepare_cached(
                    "SELECT count(*) FROM hooks WHERE status = ?1 AND deleted_at IS NULL",
                )
                .and_then(|mut s| s.query_row([status.as_str()], |r| r.get(0)))
                .ctx("counting hooks")?;
            hooks_by_status.push((status.as_str(), n as u64));
        }
        Ok(crate::metrics::Gauges {
            outbox_pending: outbox_pending as u64,
            hooks_by_status,
        })
    }

    /// Every active hook with undelivered rows, and whether it is failing: the
    /// scheduler's starting point.
    pub fn hooks_with_open_work(&self) -> Result<Vec<(String, bool)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(concat!(
                "SELECT h.id, h.consecutive_failures > 0 FROM hooks h
                 WHERE h.deleted_at IS NULL AND h.status = 'active' AND (
                     EXISTS (SELECT 1 FROM batches b INDEXED BY batches_open
                             WHERE b.hook_key = h.key AND b.status IN ('pending', 'failed'))
                     OR EXISTS (SELECT 1 FROM deliveries d
                                WHERE d.hook_key = h.key AND d.seq > ",
                batched!("h.key"),
                "))"
            ))
            .ctx("finding queued work")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .ctx("finding queued work")?;
        rows.collect::<Result<_, _>>().ctx("finding queued work")
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use super::*;

    #[test]
    fn a_snapshot_that_fails_or_panics_leaves_the_reader_usable() {
        let dir = super::super::test_dir("read");
        let opened = super::super::open(&dir.join("r.db"), &dir.join("r.key")).unwrap();
        let reader = super::super::open_reader(&opened.path, opened.secrets.clone()).unwrap();

        let failed: Result<(), StoreError> = reader.snapshot(|_| Err(StoreError::NotFound));
        assert!(matches!(failed, Err(StoreError::NotFound)), "{failed:?}");
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            reader.snapshot(|r| -> Result<(), StoreError> {
                r.ping()?;
                panic!("inside a read transaction")
            })
        }));
        assert!(panicked.is_err());

        // Each way out ended its transaction, and a new one starts.
        assert!(reader.conn.is_autocommit());
        let hook = reader.snapshot(|r| r.hook("hk_none")).unwrap();
        assert!(hook.is_none());
        drop(reader);
        drop(opened);
    }
}
