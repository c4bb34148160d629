//! Grows a database by many finished deliveries at once, for `hookd bench --scenario
//! outbox`: ingest and delivery measured against an outbox of millions of delivered rows,
//! which real traffic would take hours to leave behind.
//!
//! Each row is what the engine leaves after one successful attempt: an event, its
//! delivery, its batch (`delivered`, the row alone, one attempt in the round) and that attempt
//! (answered 204). Rows go round-robin to existing hooks, numbered after each hook's
//! `last_seq`, which moves on with them so that later publishes continue every hook's
//! sequence. Rows are dated within the last hour (the retention janitor leaves them
//! alone) and after every row already there, and they are inserted in id order, so
//! every primary-key B-tree appends.
//!
//! It must run on a file no server holds: it takes the lock `serve` takes, and fails if
//! it is held. It must never run inside `serve`, and it trades safety for speed on its
//! own connection only (no fsync, no foreign-key checks on rows it makes consistent by
//! construction): a crash in the middle can leave the database of a benchmark
//! unusable, nothing else. All the work is SQL run inside SQLite (`INSERT … SELECT` over
//! a recursive CTE), with no Rust per row.

use std::collections::HashSet;
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};

use super::{take_lock, Context, StoreError, SCHEMA_VERSION};
use crate::clock::now_ms;

/// Rows per transaction: big enough that commits cost nothing, small enough that a
/// transaction's journal and the CTE's queue stay small.
const CHUNK: u64 = 250_000;
/// Filled rows are dated within this long before now.
const WINDOW_MS: i64 = 3_600_000;
/// The filling connection's page cache, KiB: holds the right edge of every B-tree and
/// the per-hook insertion points of the (hook, seq) and (tenant, type) indexes.
const CACHE_KIB: i64 = 128 * 1024;
/// `data` of every filled event: the size of what `hookd bench` publishes.
const DATA: &str = r#"{"amount":1234,"currency":"eur","note":"hookd outbox fill"}"#;

/// What a fill did.
#[derive(Debug, Clone)]
pub struct FillStats {
    /// From opening the file to closing it, its final fsync included.
    pub elapsed: Duration,
    /// Each hook's `last_seq` afterwards, in the order the hooks were given.
    pub last_seq: Vec<u64>,
    /// Size of the database file afterwards.
    pub db_bytes: u64,
}

/// Appends `rows` delivered deliveries to the database at `db_path`, spread round-robin
/// over `hooks` (ids of live hooks), with their events and attempts, numbered after each
/// hook's last sequence number (the larger of `last_seq` and its newest row's), and sets
/// `last_seq` to the last number given. One transaction per [`CHUNK`] rows; each leaves a consistent
/// database. The file is left in WAL mode, as `serve` wants it.
pub fn fill_delivered(
    db_path: &Path,
    hooks: &[String],
    rows: u64,
) -> Result<FillStats, StoreError> {
    let started = Instant::now();
    if hooks.is_empty() {
        return Err(StoreError::Rejected(
            "a fill needs at least one hook".into(),
        ));
    }
    if hooks.iter().collect::<HashSet<_>>().len() != hooks.len() {
        return Err(StoreError::Rejected("a hook is named twice".into()));
    }
    if !db_path.exists() {
        return Err(StoreError::Open(format!(
            "{} does not exist",
            db_path.display()
        )));
    }
    let lock = take_lock(db_path, ": stop it before filling")?;
    let mut conn = Connection::open(db_path)
        .map_err(|e| StoreError::Open(format!("cannot open {}: {e}", db_path.display())))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .ctx("reading the schema version")?;
    if version != SCHEMA_VERSION {
        return Err(StoreError::Open(format!(
            "{} has schema version {version}, not {SCHEMA_VERSION}: open it with this hookd first",
            db_path.display()
        )));
    }
    // A rollback journal instead of the WAL: appended pages are written once, into the
    // file, instead of into the WAL and again at the checkpoint. Needs the file to
    // ourselves, which the lock gives.
    conn.pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get::<_, String>(0))
        .ctx("leaving WAL mode for the fill")?;
    // No fsync: a fill that dies is thrown away with its benchmark.
    conn.pragma_update(None, "synchronous", "OFF")
        .ctx("turning fsync off for the fill")?;
    // The rows are consistent by construction; checking every reference costs two
    // index lookups per delivery.
    conn.pragma_update(None, "foreign_keys", "OFF")
        .ctx("turning foreign-key checks off for the fill")?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)
        .ctx("growing the page cache for the fill")?;

    let result = fill(&mut conn, hooks, rows);
    // Back to what `serve` expects, whether or not the fill went through.
    let wal = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
        .ctx("going back to WAL mode");
    let last_seq = result?;
    wal?;
    drop(conn);
    // On the disk before anyone measures: otherwise the kernel writes the fill back
    // while the next server runs, and its commits wait behind that.
    let file = File::open(db_path)
        .and_then(|f| f.sync_all().map(|()| f))
        .map_err(|e| StoreError::Open(format!("cannot sync {}: {e}", db_path.display())))?;
    let db_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    drop(lock);
    Ok(FillStats {
        elapsed: started.elapsed(),
        last_seq,
        db_bytes,
    })
}

/// The fill proper, on a prepared connection; returns each hook's `last_seq`.
fn fill(conn: &mut Connection, hooks: &[String], rows: u64) -> Result<Vec<u64>, StoreError> {
    conn.execute_batch(
        "CREATE TEMP TABLE fill_hooks (
             k      INTEGER PRIMARY KEY,  -- row i goes to hook i % (number of hooks)
             id     TEXT NOT NULL UNIQUE,
             key    INTEGER NOT NULL,     -- hooks.key: the outbox's name for it
             tenant TEXT NOT NULL,
             type   TEXT NOT NULL,        -- an event type the hook's first pattern matches
             seq0   INTEGER NOT NULL      -- its last sequence number before the fill
         );",
    )
    .ctx("creating the fill's hook table")?;
    // A hook's last sequence number is the larger of `last_seq` and its newest row's:
    // whichever of the two the engine keeps up to date, the fill continues after it.
    for (k, id) in hooks.iter().enumerate() {
        let key: Option<i64> = conn
            .query_row(
                "INSERT INTO temp.fill_hooks (k, id, key, tenant, type, seq0)
                 SELECT ?1, id, key, tenant,
                        CASE WHEN p = '*' THEN 'outbox.fill'
                             WHEN p LIKE '%.*' THEN substr(p, 1, length(p) - 1) || 'fill'
                             ELSE p END,
                        max(last_seq, coalesce((SELECT max(seq) FROM deliveries d
                                                WHERE d.hook_key = key), 0))
                 FROM (SELECT id, key, tenant,
                              coalesce(json_extract(events, '$[0]'), '*') AS p, last_seq
                       FROM hooks WHERE id = ?2 AND deleted_at IS NULL)
                 RETURNING key",
                params![k as i64, id],
                |r| r.get(0),
            )
            .optional()
            .ctx("reading a hook to fill")?;
        let Some(key) = key else {
            return Err(StoreError::Rejected(format!("no live hook {id} to fill")));
        };
        // Filled rows are sent batches: after them, unsent rows would read as sent.
        let unsent: bool = conn
            .query_row(
                concat!(
                    "SELECT EXISTS (SELECT 1 FROM deliveries WHERE hook_key = ?1 AND seq > ",
                    batched!("?1"),
                    ")"
                ),
                [key],
                |r| r.get(0),
            )
            .ctx("reading a hook to fill")?;
        if unsent {
            return Err(StoreError::Rejected(format!(
                "hook {id} has unsent deliveries: fill a hook with none"
            )));
        }
    }
    // Events the writer had not yet entered into the type index (a crash) go in first:
    // the fill's own rows are entered as they are made.
    {
        let tx = conn.transaction().ctx("starting a fill transaction")?;
        super::ops::index_types(&tx)?;
        tx.commit().ctx("committing a fill transaction")?;
    }
    let h = hooks.len() as i64;
    let total = rows as i64;
    // After every row already there (ids and times), within the last hour, before now.
    let now = now_ms();
    let start = (now - WINDOW_MS).max(latest_ms(conn)? + 1);
    let span = (now - 2 - start).max(0);

    // Rows `?1..?2` of the fill, each with its millisecond, and the hook it goes to.
    // An id's 26 characters, as `ids::new_id` spells them: the millisecond (10
    // characters), then 80 bits that are random in `new_id` and here the row's number,
    // so that ids are unique and increase with it. An event, its delivery, its batch
    // and its attempt share them.
    let rows_sql = |insert: &str, select: &str| {
        format!(
            "{insert}
             WITH RECURSIVE n(i, ms) AS (
                 SELECT ?1, ?3 + ?1 * ?4 / ?5
                 UNION ALL
                 SELECT i + 1, ?3 + (i + 1) * ?4 / ?5 FROM n WHERE i + 1 < ?2
             )
             SELECT {} FROM n CROSS JOIN temp.fill_hooks h WHERE h.k = n.i % ?6",
            select.replace(
                "{id}",
                &format!(
                    "{} || '000000' || {}",
                    base32_sql("n.ms"),
                    base32_sql("n.i")
                )
            )
        )
    };
    let statements = [
        (
            "filling events",
            rows_sql(
                "INSERT INTO events (id, tenant, type, resource_id, data, created_at)",
                "'evt_' || {id}, h.tenant, h.type, 'fill', ?7, n.ms",
            ),
        ),
        // The type index, as the writer would have entered them (`ops::index_types`);
        // `types_through` moves past them in the same transaction, below.
        (
            "filling the type index",
            rows_sql(
                "INSERT INTO event_types (tenant, type, event_id)",
                "h.tenant, h.type, 'evt_' || {id}",
            ),
        ),
        (
            "filling deliveries",
            rows_sql(
                "INSERT INTO deliveries (hook_key, seq, event_id)",
                "h.key, h.seq0 + n.i / ?6 + 1, 'evt_' || {id}",
            ),
        ),
        // Each row was sent alone: a batch of its own, under an id that shares the
        // event's characters (time order, and unique) rather than one derived from it
        // (`ids::delivery_id`): SQL cannot hash, and nothing needs to derive it again.
        (
            "filling batches",
            rows_sql(
                "INSERT INTO batches (hook_key, first_seq, last_seq, id, status, attempts,
                                      next_attempt_at, created_at, updated_at)",
                "h.key, h.seq0 + n.i / ?6 + 1, h.seq0 + n.i / ?6 + 1, 'dlv_' || {id},
                 'delivered', 1, NULL, n.ms, n.ms + 1",
            ),
        ),
        (
            "filling attempts",
            rows_sql(
                "INSERT INTO attempts (delivery_id, at, status_code, error, duration_ms,
                                       response_snippet)",
                "'dlv_' || {id}, n.ms, 204, NULL, 1, NULL",
            ),
        ),
    ];
    let mut first = 0i64;
    while first < total {
        let end = (first + CHUNK as i64).min(total);
        let tx = conn.transaction().ctx("starting a fill transaction")?;
        for (what, sql) in &statements {
            let mut stmt = tx.prepare(sql).ctx(what)?;
            // Only the events take the data (?7).
            let made = if stmt.parameter_count() == 7 {
                stmt.execute(params![first, end, start, span, total, h, DATA])
            } else {
                stmt.execute(params![first, end, start, span, total, h])
            }
            .ctx(what)?;
            if made as i64 != end - first {
                return Err(StoreError::Conflict(format!(
                    "{what}: made {made} rows where {} were due",
                    end - first
                )));
            }
        }
        // Hook k has had the rows i < end with i % h = k.
        tx.execute(
            "UPDATE hooks SET last_seq = (SELECT f.seq0 + (?1 + ?2 - 1 - f.k) / ?2
                                          FROM temp.fill_hooks f WHERE f.id = hooks.id)
             WHERE id IN (SELECT id FROM temp.fill_hooks)",
            params![end, h],
        )
        .ctx("advancing the hooks' sequences")?;
        super::ops::types_through_newest(&tx)?;
        tx.commit().ctx("committing a fill transaction")?;
        first = end;
    }
    let mut last_seq = Vec::with_capacity(hooks.len());
    for id in hooks {
        let seq: i64 = conn
            .query_row("SELECT last_seq FROM hooks WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .ctx("reading a hook's sequence")?;
        last_seq.push(seq.max(0) as u64);
    }
    // The temporary table goes with the connection.
    Ok(last_seq)
}

/// The latest millisecond any event, delivery or attempt carries (0 when empty).
fn latest_ms(conn: &Connection) -> Result<i64, StoreError> {
    let max_id = |sql: &str| -> Result<i64, StoreError> {
        let id: Option<String> = conn
            .query_row(sql, [], |r| r.get(0))
            .ctx("reading the newest id")?;
        Ok(id.and_then(|id| crate::ids::time_of(&id)).unwrap_or(0))
    };
    let attempt: Option<i64> = conn
        .query_row("SELECT max(at) FROM attempts", [], |r| r.get(0))
        .ctx("reading the newest attempt")?;
    Ok(max_id("SELECT max(id) FROM events")?
        .max(max_id("SELECT max(id) FROM batches")?)
        .max(attempt.unwrap_or(0)))
}

/// SQL for the 10 Crockford base32 characters of the 50-bit integer `x`, most
/// significant first, as `ids` spells them.
fn base32_sql(x: &str) -> String {
    let alphabet = std::str::from_utf8(crate::ids::CROCKFORD).expect("the alphabet is ASCII");
    (0..10)
        .rev()
        .map(|k| format!("substr('{alphabet}', (({x} >> {}) & 31) + 1, 1)", 5 * k))
        .collect::<Vec<_>>()
        .join(" || ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HookStatus, PayloadKind};
    use crate::store::{count, count_with, Direct, NewHook, WriteOp, WriteOutput};
    use std::path::PathBuf;

    /// A database made by `store::open`, with `n` active hooks created through the
    /// store's own write path; returns its directory (removed when dropped), the database
    /// path and the hook ids.
    fn database_with_hooks(n: usize) -> (crate::store::TestDir, PathBuf, Vec<String>) {
        let dir = crate::store::test_dir("fill");
        let db = dir.join("hookd.db");
        let key = dir.join("hookd.key");
        drop(crate::store::open(&db, &key).unwrap());
        let mut direct = Direct::open(&db, &key).unwrap();
        let ids = (0..n)
            .map(|i| {
                let hook = NewHook {
                    id: crate::ids::new_id("hook"),
                    tenant: "acme".into(),
                    target_url: format!("https://example.com/{i}"),
                    events: vec![if i == 0 {
                        "orders.*".to_string()
                    } else {
                        format!("orders.h{i}")
                    }],
                    payload: PayloadKind::Full,
                    batch_max: 1,
                    status: HookStatus::Active,
                    verify_code_hash: None,
                };
                let id = hook.id.clone();
                let out = direct
                    .apply(WriteOp::CreateHook {
                        hook,
                        max_per_tenant: 100,
                    })
                    .unwrap();
                assert!(matches!(out, WriteOutput::Hook(_)), "{out:?}");
                id
            })
            .collect();
        (dir, db, ids)
    }

    /// (id, hook id, seq, event_id, batch id, batch status, attempts, next_attempt_at,
    /// created_at) of every delivery, with the batch that holds it, in insertion order.
    type Row = (
        String,
        String,
        i64,
        String,
        String,
        String,
        i64,
        Option<i64>,
        i64,
    );

    fn deliveries(conn: &Connection) -> Vec<Row> {
        let mut stmt = conn
            .prepare(
                "SELECT b.id, h.id, d.seq, d.event_id, b.id, b.status, b.attempts,
                        b.next_attempt_at, e.created_at
                 FROM deliveries d JOIN batches b ON b.hook_key = d.hook_key
                     AND d.seq BETWEEN b.first_seq AND b.last_seq
                 JOIN events e ON e.id = d.event_id
                 JOIN hooks h ON h.key = d.hook_key
                 ORDER BY b.id",
            )
            .unwrap();
        stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    #[test]
    fn fill_appends_delivered_rows_that_continue_every_hooks_sequence() {
        let (_dir, db, hooks) = database_with_hooks(2);
        let before = now_ms();
        let size_before = std::fs::metadata(&db).unwrap().len();
        let stats = fill_delivered(&db, &hooks, 1000).unwrap();
        assert_eq!(stats.last_seq, vec![500, 500]);
        assert!(
            stats.db_bytes > size_before,
            "the file grew: {} -> {}",
            size_before,
            stats.db_bytes
        );

        let conn = Connection::open(&db).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal", "the file is left as serve wants it");
        assert_eq!(count(&conn, "SELECT count(*) FROM events"), 1000);
        assert_eq!(count(&conn, "SELECT count(*) FROM deliveries"), 1000);
        assert_eq!(count(&conn, "SELECT count(*) FROM attempts"), 1000);
        assert_eq!(count(&conn, "SELECT count(*) FROM batches"), 1000);
        // Every event in the type index, under its own type, and nothing left for the
        // writer to enter.
        assert_eq!(
            count(
                &conn,
                "SELECT count(*) FROM events e JOIN event_types t
                     ON t.event_id = e.id AND t.tenant = e.tenant AND t.type = e.type"
            ),
            1000
        );
        assert_eq!(
            count(
                &conn,
                "SELECT count(*) FROM meta
                 WHERE key = 'types_through' AND value = (SELECT max(id) FROM events)"
            ),
            1
        );
        assert_eq!(
            count(&conn, "SELECT count(*) FROM pragma_foreign_key_check"),
            0
        );
        let rows = deliveries(&conn);
        let mut seqs: Vec<Vec<i64>> = vec![Vec::new(); 2];
        for (i, (id, hook, seq, event, batch, status, attempts, next, created)) in
            rows.iter().enumerate()
        {
            assert_eq!(hook, &hooks[i % 2], "round-robin over the hooks");
            seqs[i % 2].push(*seq);
            assert_eq!((status.as_str(), *attempts, *next), ("delivered", 1, None));
            assert_eq!(batch, id, "a batch of its own");
            assert!(id.starts_with("dlv_") && id.len() == 30, "{id}");
            assert!(
                event.starts_with("evt_") && event[4..] == id[4..],
                "{event}"
            );
            assert_eq!(crate::ids::time_of(id), Some(*created));
            assert!(*created >= before - WINDOW_MS && *created <= now_ms());
            if i == 0 {
                assert_eq!(event, &crate::ids::id_at("evt", *created));
            }
        }
        for s in &seqs {
            assert_eq!(
                s,
                &(1..=500).collect::<Vec<i64>>(),
                "numbered 1, 2, … per hook"
            );
        }
        let ids: Vec<&String> = rows.iter().map(|r| &r.0).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "inserted in id order, ids unique"
        );
        // Every delivery has one successful attempt, keyed by its batch, and an event
        // of the hook's tenant with a type its pattern matches.
        assert_eq!(
            count_with(
                &conn,
                "SELECT count(*) FROM deliveries d
                 JOIN batches b ON b.hook_key = d.hook_key AND b.first_seq = d.seq
                                AND b.last_seq = d.seq
                 JOIN attempts a ON a.delivery_id = b.id AND a.status_code = 204
                                 AND a.error IS NULL
                 JOIN events e ON e.id = d.event_id AND a.at = e.created_at
                 JOIN hooks h ON h.key = d.hook_key AND h.tenant = e.tenant
                 WHERE e.type = CASE WHEN h.id = ?1 THEN 'orders.fill'
                                     ELSE json_extract(h.events, '$[0]') END",
                &hooks[0]
            ),
            1000
        );
        drop(conn);

        // A second fill goes on after the first: sequences, ids and times.
        let stats = fill_delivered(&db, &hooks, 11).unwrap();
        assert_eq!(stats.last_seq, vec![506, 505]);
        let conn = Connection::open(&db).unwrap();
        let rows = deliveries(&conn);
        assert_eq!(rows.len(), 1011);
        assert!(rows.windows(2).all(|w| w[0].0 < w[1].0 && w[0].8 <= w[1].8));
        assert_eq!(
            (rows[1000].1.as_str(), rows[1000].2),
            (hooks[0].as_str(), 501)
        );
        assert_eq!(
            (rows[1010].1.as_str(), rows[1010].2),
            (hooks[0].as_str(), 506)
        );
        let last: Vec<i64> = hooks
            .iter()
            .map(|h| {
                conn.query_row("SELECT last_seq FROM hooks WHERE id = ?1", [h], |r| {
                    r.get(0)
                })
                .unwrap()
            })
            .collect();
        assert_eq!(last, vec![506, 505]);
        drop(conn);
        // And the store opens it as ever.
        drop(crate::store::open(&db, &db.with_file_name("hookd.key")).unwrap());
    }

    /// Writes an event and its row `seq` of `hook`, as a publish would, behind the store.
    fn queue_row(conn: &Connection, hook: &str, seq: i64) {
        let evt = crate::ids::new_id("evt");
        conn.execute(
            "INSERT INTO events (id, tenant, type, data, created_at)
             VALUES (?1, 'acme', 'orders.x', '{}', 1)",
            [&evt],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO deliveries (hook_key, seq, event_id)
             VALUES ((SELECT key FROM hooks WHERE id = ?1), ?2, ?3)",
            params![hook, seq, evt],
        )
        .unwrap();
    }

    #[test]
    fn fill_continues_after_a_hooks_newest_row_when_last_seq_lags() {
        let (_dir, db, hooks) = database_with_hooks(1);
        let conn = Connection::open(&db).unwrap();
        let dlv = crate::ids::new_id("dlv");
        queue_row(&conn, &hooks[0], 7);
        conn.execute(
            "INSERT INTO batches (hook_key, first_seq, last_seq, id, status, attempts,
                                  created_at, updated_at)
             VALUES ((SELECT key FROM hooks WHERE id = ?2), 7, 7, ?1, 'delivered', 1, 1, 1)",
            params![dlv, hooks[0]],
        )
        .unwrap();
        drop(conn);
        let stats = fill_delivered(&db, &hooks, 3).unwrap();
        assert_eq!(stats.last_seq, vec![10]);
        let conn = Connection::open(&db).unwrap();
        let rows = deliveries(&conn);
        let seqs: Vec<i64> = rows.iter().map(|r| r.2).collect();
        assert_eq!(seqs, vec![7, 8, 9, 10]);
        assert!(rows[1].0 > dlv, "filled ids sort after every existing one");
        drop(conn);
    }

    #[test]
    fn fill_refuses_a_file_a_server_holds_and_unknown_hooks() {
        let (_dir, db, hooks) = database_with_hooks(1);
        let held = crate::store::open(&db, &db.with_file_name("hookd.key")).unwrap();
        let err = fill_delivered(&db, &hooks, 10).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        drop(held);
        let err = fill_delivered(&db, &["hook_nope".to_string()], 10).unwrap_err();
        assert!(matches!(err, StoreError::Rejected(_)), "{err}");
        let err = fill_delivered(&db, &[hooks[0].clone(), hooks[0].clone()], 10).unwrap_err();
        assert!(matches!(err, StoreError::Rejected(_)), "{err}");
        let conn = Connection::open(&db).unwrap();
        assert_eq!(count(&conn, "SELECT count(*) FROM deliveries"), 0);
        // A hook with unsent rows: filled rows after them would make them read as sent.
        queue_row(&conn, &hooks[0], 1);
        drop(conn);
        let err = fill_delivered(&db, &hooks, 10).unwrap_err();
        assert!(err.to_string().contains("unsent"), "{err}");
        let conn = Connection::open(&db).unwrap();
        assert_eq!(count(&conn, "SELECT count(*) FROM deliveries"), 1);
        assert_eq!(count(&conn, "SELECT count(*) FROM batches"), 0);
        drop(conn);
    }
}
