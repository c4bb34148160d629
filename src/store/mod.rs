//! The only module that touches SQLite. One file in WAL mode; every write goes through
//! the writer thread ([`writer`]), which commits whatever requests are waiting in one
//! transaction; reads use their own connections ([`read::Reader`]). Knows nothing of
//! HTTP or of delivery transport.

/// SQL for the last sequence number of the hook whose key is `$hook` (an SQL
/// expression, a literal) that is in a batch, 0 when none is: its rows after it are its unsent tail.
/// The batch with the highest first_seq has the highest last_seq (a hook's batches do
/// not overlap), so this is one probe of the batches' key. A macro, so that the
/// queries built with it are `concat!`-ed constants, not strings formatted at every
/// call on the dispatchers' and the writer's paths.
macro_rules! batched {
    ($hook:literal) => {
        concat!(
            "coalesce((SELECT last_seq FROM batches WHERE hook_key = ",
            $hook,
            " ORDER BY first_seq DESC LIMIT 1), 0)"
        )
    };
}

pub mod fill;
mod ops;
pub mod probe;
pub mod read;
pub mod recent;
pub mod reply;
pub mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;

use reply::ReplyReceiver;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::model::{PayloadKind, Role};
use crate::retry::Verdict;
use crate::secrets::SecretBox;

pub use read::Reader;
pub use writer::{WriteOp, WriteOutput};

const SCHEMA: &str = include_str!("../../schema.sql");

/// A migration that rebuilds the deliveries table as `$create` (its `CREATE TABLE`,
/// frozen with the migration): the old table is renamed to `$old` first (its indexes go
/// with it, and are dropped) so the new one is created by the same statement as in
/// schema.sql at that version, character for character (the migration test compares
/// the two schemas); then the rows are copied in key order and the indexes rebuilt.
macro_rules! rebuild_deliveries {
    ($old:literal, $create:literal) => {
        concat!(
            "ALTER TABLE deliveries RENAME TO ",
            $old,
            ";
             DROP INDEX deliveries_open;
             DROP INDEX deliveries_by_event;
             DROP INDEX deliveries_by_batch;
             DROP INDEX deliveries_dead;
             ",
            $create,
            ";
             INSERT INTO deliveries (id, hook_id, seq, event_id, batch_id, status, attempts,
                                     next_attempt_at, created_at, updated_at)
                 SELECT id, hook_id, seq, event_id, batch_id, status, attempts,
                        next_attempt_at, created_at, updated_at
                 FROM ",
            $old,
            " ORDER BY hook_id, seq;
             DROP TABLE ",
            $old,
            ";
             CREATE INDEX deliveries_open ON deliveries (hook_id, seq) WHERE status IN ('pending', 'failed');
             CREATE INDEX deliveries_by_event ON deliveries (event_id);
             CREATE INDEX deliveries_by_batch ON deliveries (batch_id) WHERE batch_id IS NOT NULL;
             CREATE INDEX deliveries_dead ON deliveries (updated_at) WHERE status = 'dead';"
        )
    };
}

/// Upgrades applied in order after the schema, each in its own transaction; append only.
/// Entry `i` takes `user_version` from `i + 1` to `i + 2`.
const MIGRATIONS: &[&str] = &[
    // 2: rows whose batch is not yet formed (hooks with batch_max > 1) stay out of the
    // batch index, so a publish inserts one index entry fewer per row and forming the
    // batch adds one instead of moving one. Every lookup is `batch_id = ?`, which SQLite
    // answers from a partial index on `batch_id IS NOT NULL`.
    "DROP INDEX deliveries_by_batch;
     CREATE INDEX deliveries_by_batch ON deliveries (batch_id) WHERE batch_id IS NOT NULL;",
    // 3: the outbox is stored in (hook_id, seq) order instead of insertion order, so a
    // hook's consecutive rows share pages (the queue of a backlog published for many
    // hooks at once lay one row per page). SQLite cannot change a table's key in
    // place: the rows are copied into a new table, in key order.
    rebuild_deliveries!(
        "deliveries_v2",
        "CREATE TABLE deliveries (
    id              TEXT NOT NULL UNIQUE,
    hook_id         TEXT NOT NULL REFERENCES hooks (id),
    seq             INTEGER NOT NULL,
    event_id        TEXT NOT NULL REFERENCES events (id),
    batch_id        TEXT,
    status          TEXT NOT NULL
                    CHECK (status IN ('pending', 'failed', 'delivered', 'dead', 'cancelled')),
    attempts        INTEGER NOT NULL DEFAULT 0,  -- in the current round of the schedule
    next_attempt_at INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (hook_id, seq)
) WITHOUT ROWID"
    ),
    // 4: the deliveries' foreign keys are checked at COMMIT (deferred), so a publish's
    // multi-row INSERT needs no statement journal (see schema.sql). A constraint's
    // timing is part of the table's definition: the table is rebuilt as in 3.
    rebuild_deliveries!(
        "deliveries_v3",
        "CREATE TABLE deliveries (
    id              TEXT NOT NULL UNIQUE,
    hook_id         TEXT NOT NULL REFERENCES hooks (id) DEFERRABLE INITIALLY DEFERRED,
    seq             INTEGER NOT NULL,
    event_id        TEXT NOT NULL REFERENCES events (id) DEFERRABLE INITIALLY DEFERRED,
    batch_id        TEXT,
    status          TEXT NOT NULL
                    CHECK (status IN ('pending', 'failed', 'delivered', 'dead', 'cancelled')),
    attempts        INTEGER NOT NULL DEFAULT 0,  -- in the current round of the schedule
    next_attempt_at INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (hook_id, seq)
) WITHOUT ROWID"
    ),
    // 5: what happened to the rows moves to `batches`, one row per request (see
    // schema.sql): each formed batch becomes one, named as before; a row never put in a
    // batch stays in the pending tail if it is open and after every batch of its hook,
    // and becomes a batch of its own otherwise. The outbox is then rebuilt without the
    // columns and indexes that moved (and without its id: an unsent row's id is derived
    // now, so the few unsent rows there are show new ids), and the events as a table
    // keyed by their id (WITHOUT ROWID: one B-tree fewer to insert into per event).
    "CREATE TABLE batches (
    hook_id         TEXT NOT NULL,
    first_seq       INTEGER NOT NULL,
    last_seq        INTEGER NOT NULL,
    id              TEXT NOT NULL UNIQUE,
    status          TEXT NOT NULL
                    CHECK (status IN ('pending', 'failed', 'delivered', 'dead', 'cancelled')),
    attempts        INTEGER NOT NULL DEFAULT 0,  -- in the current round of the schedule
    next_attempt_at INTEGER,
    created_at      INTEGER NOT NULL,            -- its first row's
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (hook_id, first_seq)
) WITHOUT ROWID;
     INSERT INTO batches (hook_id, first_seq, last_seq, id, status, attempts, next_attempt_at,
                          created_at, updated_at)
         SELECT d.hook_id, g.first, g.last, g.batch_id, d.status, d.attempts,
                d.next_attempt_at, d.created_at, d.updated_at
         FROM (SELECT batch_id, hook_id, min(seq) AS first, max(seq) AS last
               FROM deliveries WHERE batch_id IS NOT NULL GROUP BY batch_id) g
         JOIN deliveries d ON d.hook_id = g.hook_id AND d.seq = g.first;
     INSERT OR IGNORE INTO batches (hook_id, first_seq, last_seq, id, status, attempts,
                                    next_attempt_at, created_at, updated_at)
         SELECT hook_id, seq, seq, id, status, attempts, next_attempt_at, created_at, updated_at
         FROM deliveries d
         WHERE batch_id IS NULL
           AND (status NOT IN ('pending', 'failed')
                OR seq < (SELECT max(last_seq) FROM batches b WHERE b.hook_id = d.hook_id));
     CREATE INDEX batches_open ON batches (hook_id, first_seq) WHERE status IN ('pending', 'failed');
     CREATE INDEX batches_dead ON batches (updated_at) WHERE status = 'dead';
     ALTER TABLE events RENAME TO events_v4;
     DROP INDEX events_by_tenant;
     DROP INDEX events_by_tenant_type;
     CREATE TABLE events (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    type        TEXT NOT NULL,
    resource_id TEXT,
    data        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;
     INSERT INTO events (id, tenant, type, resource_id, data, created_at)
         SELECT id, tenant, type, resource_id, data, created_at FROM events_v4 ORDER BY id;
     ALTER TABLE deliveries RENAME TO deliveries_v4;
     DROP INDEX deliveries_open;
     DROP INDEX deliveries_by_event;
     DROP INDEX deliveries_by_batch;
     DROP INDEX deliveries_dead;
     CREATE TABLE deliveries (
    hook_id    TEXT NOT NULL REFERENCES hooks (id) DEFERRABLE INITIALLY DEFERRED,
    seq        INTEGER NOT NULL,
    event_id   TEXT NOT NULL REFERENCES events (id) DEFERRABLE INITIALLY DEFERRED,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (hook_id, seq)
) WITHOUT ROWID;
     INSERT INTO deliveries (hook_id, seq, event_id, created_at)
         SELECT hook_id, seq, event_id, created_at FROM deliveries_v4 ORDER BY hook_id, seq;
     DROP TABLE deliveries_v4;
     DROP TABLE events_v4;
     CREATE INDEX events_by_tenant ON events (tenant, id);
     CREATE INDEX events_by_tenant_type ON events (tenant, type, id);
     CREATE INDEX deliveries_by_event ON deliveries (event_id);",
    // 6: events by type move from an index written with every publish to a table the
    // writer fills behind (schema.sql, `event_types`), filled here from the index, in
    // its order, before the index goes.
    "CREATE TABLE event_types (
    tenant   TEXT NOT NULL,
    type     TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (tenant, type, event_id)
) WITHOUT ROWID;
     INSERT INTO event_types (tenant, type, event_id)
         SELECT tenant, type, id FROM events INDEXED BY events_by_tenant_type
         ORDER BY tenant, type, id;
     INSERT OR REPLACE INTO meta (key, value)
         VALUES ('types_through', coalesce((SELECT max(id) FROM events), ''));
     DROP INDEX events_by_tenant_type;
     CREATE TRIGGER event_types_gone AFTER DELETE ON events BEGIN
    DELETE FROM event_types
    WHERE tenant = old.tenant AND type = old.type AND event_id = old.id;
END;",
    // 7: an outbox row's time is its event's (both are made by the same publish), so
    // the rows lose their copy of it; the table is rebuilt, in key order.
    "ALTER TABLE deliveries RENAME TO deliveries_v6;
     DROP INDEX deliveries_by_event;
     CREATE TABLE deliveries (
    hook_id    TEXT NOT NULL REFERENCES hooks (id) DEFERRABLE INITIALLY DEFERRED,
    seq        INTEGER NOT NULL,
    event_id   TEXT NOT NULL REFERENCES events (id) DEFERRABLE INITIALLY DEFERRED,
    PRIMARY KEY (hook_id, seq)
) WITHOUT ROWID;
     INSERT INTO deliveries (hook_id, seq, event_id)
         SELECT hook_id, seq, event_id FROM deliveries_v6 ORDER BY hook_id, seq;
     DROP TABLE deliveries_v6;
     CREATE INDEX deliveries_by_event ON deliveries (event_id);",
    // 8: the outbox and its batches name a hook by an integer key instead of its id
    // (schema.sql, `hooks.key`). Each hook keeps its rowid as its key; the three tables
    // are copied, the outbox and batches in their new key order.
    "ALTER TABLE deliveries RENAME TO deliveries_v7;
     ALTER TABLE batches RENAME TO batches_v7;
     ALTER TABLE hooks RENAME TO hooks_v7;
     DROP INDEX hooks_by_tenant;
     DROP INDEX deliveries_by_event;
     DROP INDEX batches_open;
     DROP INDEX batches_dead;
     CREATE TABLE hooks (
    key                  INTEGER PRIMARY KEY,
    id                   TEXT NOT NULL UNIQUE,
    tenant               TEXT NOT NULL,
    target_url           TEXT NOT NULL,
    events               TEXT NOT NULL,   -- JSON array of patterns
    payload              TEXT NOT NULL CHECK (payload IN ('skinny', 'full')),
    batch_max            INTEGER NOT NULL CHECK (batch_max BETWEEN 1 AND 1000),
    status               TEXT NOT NULL CHECK (status IN ('pending', 'active', 'inactive')),
    secret               TEXT NOT NULL,   -- sealed with the key file (src/secrets.rs)
    previous_secret      TEXT,            -- sealed; still signs until previous_until
    previous_until       INTEGER,
    pending_target_url   TEXT,            -- a new URL waiting for its handshake
    verify_code_hash     BLOB,            -- SHA-256 of the outstanding handshake code
    last_seq             INTEGER NOT NULL DEFAULT 0,  -- floor of the sequence, kept by retention (the writer counts in memory)
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    deleted_at           INTEGER
);
     INSERT INTO hooks (key, id, tenant, target_url, events, payload, batch_max, status, secret,
                        previous_secret, previous_until, pending_target_url, verify_code_hash,
                        last_seq, consecutive_failures, created_at, updated_at, deleted_at)
         SELECT rowid, id, tenant, target_url, events, payload, batch_max, status, secret,
                previous_secret, previous_until, pending_target_url, verify_code_hash,
                last_seq, consecutive_failures, created_at, updated_at, deleted_at
         FROM hooks_v7 ORDER BY rowid;
     CREATE TABLE deliveries (
    hook_key   INTEGER NOT NULL REFERENCES hooks (key) DEFERRABLE INITIALLY DEFERRED,
    seq        INTEGER NOT NULL,
    event_id   TEXT NOT NULL REFERENCES events (id) DEFERRABLE INITIALLY DEFERRED,
    PRIMARY KEY (hook_key, seq)
) WITHOUT ROWID;
     INSERT INTO deliveries (hook_key, seq, event_id)
         SELECT h.key, d.seq, d.event_id
         FROM deliveries_v7 d CROSS JOIN hooks h ON h.id = d.hook_id
         ORDER BY h.key, d.seq;
     CREATE TABLE batches (
    hook_key        INTEGER NOT NULL,            -- hooks.key
    first_seq       INTEGER NOT NULL,
    last_seq        INTEGER NOT NULL,
    id              TEXT NOT NULL UNIQUE,
    status          TEXT NOT NULL
                    CHECK (status IN ('pending', 'failed', 'delivered', 'dead', 'cancelled')),
    attempts        INTEGER NOT NULL DEFAULT 0,  -- in the current round of the schedule
    next_attempt_at INTEGER,
    created_at      INTEGER NOT NULL,            -- its first row's
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (hook_key, first_seq)
) WITHOUT ROWID;
     INSERT INTO batches (hook_key, first_seq, last_seq, id, status, attempts, next_attempt_at,
                          created_at, updated_at)
         SELECT h.key, b.first_seq, b.last_seq, b.id, b.status, b.attempts, b.next_attempt_at,
                b.created_at, b.updated_at
         FROM batches_v7 b CROSS JOIN hooks h ON h.id = b.hook_id
         ORDER BY h.key, b.first_seq;
     DROP TABLE deliveries_v7;
     DROP TABLE batches_v7;
     DROP TABLE hooks_v7;
     CREATE INDEX hooks_by_tenant ON hooks (tenant, id) WHERE deleted_at IS NULL;
     CREATE INDEX deliveries_by_event ON deliveries (event_id);
     CREATE INDEX batches_open ON batches (hook_key, first_seq) WHERE status IN ('pending', 'failed');
     CREATE INDEX batches_dead ON batches (updated_at) WHERE status = 'dead';",
];

/// Bytes the WAL file is truncated back to after a checkpoint.
pub const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// The `user_version` of a database that has every migration.
const SCHEMA_VERSION: i64 = 1 + MIGRATIONS.len() as i64;

#[derive(Debug)]
pub enum StoreError {
    NotFound,
    /// A uniqueness or state conflict, with the reason.
    Conflict(String),
    /// The request was understood and refused, with the reason (e.g. a wrong code).
    Rejected(String),
    /// The writer is saturated or stopped: try again later.
    Busy,
    /// The API key a write was made with was revoked before it could commit.
    KeyRevoked,
    /// SQLite failed; the context says doing what.
    Db(String, rusqlite::Error),
    /// The database file cannot be used (foreign, newer, locked).
    Open(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::NotFound => write!(f, "not found"),
            StoreError::Conflict(m) => write!(f, "conflict: {m}"),
            StoreError::Rejected(m) => write!(f, "rejected: {m}"),
            StoreError::Busy => write!(f, "the database writer is busy"),
            StoreError::KeyRevoked => write!(f, "the API key was revoked"),
            StoreError::Db(ctx, e) => write!(f, "database error while {ctx}: {e}"),
            StoreError::Open(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Attaches what was being done to a rusqlite error.
pub(crate) trait Context<T> {
    fn ctx(self, what: &str) -> Result<T, StoreError>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn ctx(self, what: &str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Db(what.to_string(), e))
    }
}

/// An open database: the path (for new read connections), the exclusive process lock,
/// and the connection the writer thread will own.
pub struct Opened {
    pub path: PathBuf,
    pub writer_conn: Connection,
    pub secrets: Arc<SecretBox>,
    /// Held for the life of the process: a second `hookd serve` on the file fails to
    /// take it. The OS drops the lock when the process dies, so a crash leaves none.
    pub lock: File,
}

/// Opens (creating when missing) the database, takes the process lock, sets the pragmas
/// and brings the schema up to date.
pub fn open(path: &Path, key_file: &Path) -> Result<Opened, StoreError> {
    let lock = take_lock(path, "")?;
    let mut conn = Connection::open(path)
        .map_err(|e| StoreError::Open(format!("cannot open {}: {e}", path.display())))?;
    // Refuse a foreign file before changing anything in it (journal mode included).
    configure(&conn, true)?;
    let created = migrate(&mut conn, path)?;
    configure(&conn, false)?;
    let secrets = Arc::new(SecretBox::load_or_create(key_file, created).map_err(StoreError::Open)?);
    check_key(&conn, &secrets, key_file)?;
    Ok(Opened {
        path: path.to_path_buf(),
        writer_conn: conn,
        secrets,
        lock,
    })
}

/// Takes the process lock of `db` (`<db>.lock`), or says who holds it; `advice` ends
/// the message.
pub(crate) fn take_lock(db: &Path, advice: &str) -> Result<File, StoreError> {
    let lock_path = lock_path(db);
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::Open(format!("cannot open {}: {e}", lock_path.display())))?;
    if lock.try_lock().is_err() {
        return Err(StoreError::Open(format!(
            "{} is in use by another hookd process (lock {} is held){advice}",
            db.display(),
            lock_path.display()
        )));
    }
    Ok(lock)
}

fn lock_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// The writer's page cache, KiB (as a negative `cache_size`).
const WRITER_CACHE_KIB: i64 = -8 * 1024;

/// Pragmas for every connection, each with its reason.
fn configure(conn: &Connection, read_only: bool) -> Result<(), StoreError> {
    // Another connection holding the write lock (a checkpoint, the CLI) makes us wait
    // this long instead of failing at once.
    conn.busy_timeout(Duration::from_secs(5))
        .ctx("setting busy_timeout")?;
    // References between tables are checked by SQLite, not by hope.
    conn.pragma_update(None, "foreign_keys", "ON")
        .ctx("enabling foreign keys")?;
    conn.set_prepared_statement_cache_capacity(64);
    // Plans that do not depend on bound values: without this SQLite re-prepares the
    // queue queries (partial index `batches_open`) on every use, a quarter of the
    // dispatch CPU as profiled.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .ctx("enabling the query planner stability guarantee")?;
    if read_only {
        return Ok(());
    }
    // WAL: readers never block the writer and the writer never blocks readers.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(|e| StoreError::Open(format!("cannot use the database: {e}")))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Open(format!(
            "the database refused WAL mode (journal_mode is {mode})"
        )));
    }
    // FULL: a commit is on the disk (fsync of the WAL) before it returns, so an
    // accepted event survives power loss, not only a crash of hookd.
    conn.pragma_update(None, "synchronous", "FULL")
        .ctx("setting synchronous")?;
    // The WAL file keeps its high-water size after a checkpoint unless told otherwise:
    // truncate it back to this, so the files on disk stay bounded under steady load.
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
        .ctx("setting journal_size_limit")?;
    // The writer keeps what it touches between commits (the tails of the tables and
    // indexes, the hooks' queues); with SQLite's default of 2 MiB it read most pages
    // back from the OS on every commit, the largest cost of batched deliveries as
    // profiled. Readers keep the default: theirs is emptied whenever the file changes.
    conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)
        .ctx("setting cache_size")?;
    // A statement that writes many rows and may fail halfway (a multi-row INSERT with
    // foreign keys, an UPDATE with CHECKs) first copies every page it changes into a
    // statement journal. SQLite keeps that in memory only up to 64 KiB a statement and
    // then in a temporary file for the rest of the transaction: those file writes were
    // 12 % of hookd's CPU delivering with batch_max 1 as profiled. In memory it is
    // emptied after each statement outside a savepoint, so it stays one statement's
    // pages (one op's in a redone group).
    conn.pragma_update(None, "temp_store", "MEMORY")
        .ctx("setting temp_store")?;
    Ok(())
}

/// The key file must be the one this database's secrets were sealed with: a value
/// sealed at creation is opened at every start.
fn check_key(conn: &Connection, secrets: &SecretBox, key_file: &Path) -> Result<(), StoreError> {
    let stored: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| {
            r.get(0)
        })
        .optional()
        .ctx("reading the key check")?;
    match stored {
        Some(sealed) => secrets.open(&sealed, "key_check").map(|_| ()).map_err(|_| {
            StoreError::Open(format!(
                "{} is not the key file this database was created with",
                key_file.display()
            ))
        }),
        None => {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('key_check', ?1)",
                [secrets.seal("hookd", "key_check")],
            )
            .ctx("storing the key check")?;
            Ok(())
        }
    }
}

/// Brings the schema up to date; `true` when the database was new.
fn migrate(conn: &mut Connection, path: &Path) -> Result<bool, StoreError> {
    let foreign = |why: &str| {
        StoreError::Open(format!(
            "{} is not a hookd database ({why})",
            path.display()
        ))
    };
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| foreign(&e.to_string()))?;
    if version == 0 {
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| foreign(&e.to_string()))?;
        if tables > 0 {
            return Err(foreign("it has tables but no hookd schema version"));
        }
        let tx = conn.transaction().ctx("starting the schema transaction")?;
        tx.execute_batch(SCHEMA).ctx("creating the schema")?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .ctx("setting user_version")?;
        tx.commit().ctx("committing the schema")?;
        return Ok(true);
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::Open(format!(
            "{} has schema version {version}, newer than this hookd ({SCHEMA_VERSION})",
            path.display()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip((version - 1) as usize) {
        // A migration may rebuild an index over every row: seconds on a large file.
        log::info!(
            "{}: upgrading the schema from version {} to {}",
            path.display(),
            i + 1,
            i + 2
        );
        let tx = conn.transaction().ctx("starting a migration")?;
        tx.execute_batch(sql).ctx("applying a migration")?;
        tx.pragma_update(None, "user_version", i as i64 + 2)
            .ctx("setting user_version")?;
        tx.commit().ctx("committing a migration")?;
    }
    Ok(false)
}

/// Opens a connection for reading only.
pub fn open_reader(path: &Path, secrets: Arc<SecretBox>) -> Result<Reader, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Open(format!("cannot open {} to read: {e}", path.display())))?;
    configure(&conn, true)?;
    Ok(Reader::new(conn, secrets))
}

/// Direct access for the command-line tools, which work on the file itself so that they
/// also work while the server is down, and are safe while it runs: each operation is
/// one short IMMEDIATE transaction, waiting (busy timeout) for the server's writer.
/// A running server notices their changes within seconds (its scheduler re-reads the
/// queue), not at once.
pub struct Direct {
    conn: Connection,
    secrets: Arc<SecretBox>,
    path: PathBuf,
}

impl Direct {
    pub fn open(path: &Path, key_file: &Path) -> Result<Direct, StoreError> {
        if !path.exists() {
            return Err(StoreError::Open(format!(
                "{} does not exist",
                path.display()
            )));
        }
        let mut conn = Connection::open(path)
            .map_err(|e| StoreError::Open(format!("cannot open {}: {e}", path.display())))?;
        configure(&conn, true)?;
        migrate(&mut conn, path)?;
        configure(&conn, false)?;
        let secrets =
            Arc::new(SecretBox::load_or_create(key_file, false).map_err(StoreError::Open)?);
        check_key(&conn, &secrets, key_file)?;
        Ok(Direct {
            conn,
            secrets,
            path: path.to_path_buf(),
        })
    }

    pub fn reader(&self) -> Result<Reader, StoreError> {
        open_reader(&self.path, self.secrets.clone())
    }

    /// Runs one write operation in its own transaction.
    pub fn apply(&mut self, op: WriteOp) -> Result<WriteOutput, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .ctx("starting a transaction")?;
        // Publishing is the server's job; the other operations do not need the index.
        let index = writer::FanoutIndex::default();
        let mut effects = writer::Effects::default();
        let out = ops::apply(
            &tx,
            &index,
            &self.secrets,
            &op,
            ops::OnConflict::Abort,
            &mut effects,
        )?;
        tx.commit().ctx("committing")?;
        Ok(out)
    }
}

/// Writes a consistent, compacted copy of a live database to `dest` (SQLite's
/// `VACUUM INTO`, which reads one snapshot while writers carry on).
pub fn backup(db: &Path, dest: &Path) -> Result<(), StoreError> {
    if dest.exists() {
        return Err(StoreError::Open(format!(
            "{} already exists",
            dest.display()
        )));
    }
    if !db.exists() {
        return Err(StoreError::Open(format!("{} does not exist", db.display())));
    }
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| StoreError::Open(format!("cannot open {}: {e}", db.display())))?;
    configure(&conn, true)?;
    let dest_text = dest
        .to_str()
        .ok_or_else(|| StoreError::Open("the backup path is not valid UTF-8".into()))?;
    conn.execute("VACUUM INTO ?1", [dest_text])
        .map_err(|e| StoreError::Open(format!("backup to {} failed: {e}", dest.display())))?;
    Ok(())
}

/// SHA-256 of an API token: what the keys table holds instead of the token.
pub fn token_hash(token: &str) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Makes sure an admin can log in: `HOOKD_ADMIN_TOKEN` becomes an admin key if it is not
/// one yet; otherwise, when there is no live admin key at all, one is created and its
/// token returned so that `serve` can print it once. Runs before the writer starts.
pub fn bootstrap_admin(
    conn: &mut Connection,
    env_token: Option<&str>,
) -> Result<Option<String>, StoreError> {
    let tx = conn.transaction().ctx("starting the admin bootstrap")?;
    let created = match env_token {
        Some(token) => {
            ops::insert_key_if_missing(&tx, &token_hash(token), Role::Admin, None)?;
            None
        }
        None => {
            let admins: i64 = tx
                .query_row(
                    "SELECT count(*) FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL",
                    [],
                    |r| r.get(0),
                )
                .ctx("counting admin keys")?;
            if admins == 0 {
                let token = crate::ids::new_token();
                ops::insert_key_if_missing(&tx, &token_hash(&token), Role::Admin, None)?;
                Some(token)
            } else {
                None
            }
        }
    };
    tx.commit().ctx("committing the admin bootstrap")?;
    Ok(created)
}

/// A new hook as the API validated it.
#[derive(Debug, Clone)]
pub struct NewHook {
    /// Chosen before the insert: the handshake that precedes it names the hook.
    pub id: String,
    pub tenant: String,
    pub target_url: String,
    pub events: Vec<String>,
    pub payload: PayloadKind,
    pub batch_max: u32,
    pub status: crate::model::HookStatus,
    /// Hash of the handshake code, while the hook waits for `verify`.
    pub verify_code_hash: Option<Vec<u8>>,
}

/// Changes to a hook; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct HookPatch {
    pub target_url: Option<String>,
    pub events: Option<Vec<String>>,
    pub payload: Option<PayloadKind>,
    pub batch_max: Option<u32>,
    /// A new URL whose handshake failed, with the hash of its code: kept aside until
    /// `verify`, while the current URL keeps receiving.
    pub pending_target: Option<(String, Vec<u8>)>,
}

/// One event to publish, validated.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub tenant: String,
    pub event_type: String,
    pub resource_id: Option<String>,
    /// `data` as JSON text.
    pub data: String,
    /// The `idempotency_key` field, with the hash of this event's JSON.
    pub idempotency: Option<(String, Vec<u8>)>,
}

/// What the dispatcher reports after an attempt.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub hook_id: String,
    pub batch_id: String,
    pub attempt: crate::model::Attempt,
    pub verdict: Verdict,
    /// The hook had failed attempts before this one: a success sets its count back to 0.
    /// (Only one dispatcher sends for a hook, so it knows; the write is skipped otherwise.)
    pub after_failures: bool,
    /// `Some(seq)`: the batch is row `seq` alone, sent before any batch was written for
    /// it (batch_max 1, named after the row): this outcome writes it.
    pub single: Option<i64>,
}

/// Handle to the writer, cloned into every thread that writes.
#[derive(Clone)]
pub struct Store {
    tx: Sender<writer::Request>,
    /// How long an API request waits for room in the writer's queue before it is told
    /// 503: backpressure instead of unbounded buffering.
    enqueue_timeout: Duration,
    /// Deliveries out on the wire whose outcome is still to be queued (see
    /// [`Store::outcome_coming`]); the writer reads it.
    outcomes_coming: Arc<AtomicUsize>,
}

impl Store {
    pub(crate) fn new(tx: Sender<writer::Request>, enqueue_timeout: Duration) -> Store {
        Store {
            tx,
            enqueue_timeout,
            outcomes_coming: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The count behind [`Store::outcome_coming`], for the writer.
    pub(crate) fn outcome_count(&self) -> Arc<AtomicUsize> {
        self.outcomes_coming.clone()
    }

    /// Says that an outcome will follow: a dispatcher takes this before its request
    /// goes out and queues the outcome through it ([`OutcomeComing::submit`]). A group
    /// of outcomes alone waits a little for those still coming, so a burst of
    /// deliveries (a fan-out) is recorded in a few commits rather than one per handful.
    pub fn outcome_coming(&self) -> OutcomeComing<'_> {
        self.outcomes_coming.fetch_add(1, Ordering::Relaxed);
        OutcomeComing { store: self }
    }

    /// Sends one operation and waits until its transaction is committed (or failed).
    fn call(
        &self,
        op: WriteOp,
        wait_for_room: Option<Duration>,
    ) -> Result<WriteOutput, StoreError> {
        let (reply, result) = reply::oneshot();
        let request = writer::Request { op, reply };
        match wait_for_room {
            Some(t) => self
                .tx
                .send_timeout(request, t)
                .map_err(|_| StoreError::Busy)?,
            None => self.tx.send(request).map_err(|_| StoreError::Busy)?,
        }
        answer(result)
    }

    /// For API requests: gives up with `Busy` when the writer's queue stays full.
    pub fn api(&self, op: WriteOp) -> Result<WriteOutput, StoreError> {
        self.call(op, Some(self.enqueue_timeout))
    }

    /// For the engine's own bookkeeping, which must not be dropped: waits for room.
    pub fn internal(&self, op: WriteOp) -> Result<WriteOutput, StoreError> {
        self.call(op, None)
    }

    /// Queues an operation without waiting for its commit; the receiver gets the result.
    /// Operations from one thread are committed in the order they were sent.
    pub fn submit(
        &self,
        op: WriteOp,
    ) -> Result<ReplyReceiver<Result<WriteOutput, StoreError>>, StoreError> {
        let (reply, result) = reply::oneshot();
        self.tx
            .send(writer::Request { op, reply })
            .map_err(|_| StoreError::Busy)?;
        Ok(result)
    }
}

/// The answer to a queued operation, once its transaction is committed (or failed).
pub fn answer(
    result: ReplyReceiver<Result<WriteOutput, StoreError>>,
) -> Result<WriteOutput, StoreError> {
    result.recv().ok_or(StoreError::Busy)?
}

/// An outcome on its way to the writer; see [`Store::outcome_coming`].
pub struct OutcomeComing<'a> {
    store: &'a Store,
}

impl OutcomeComing<'_> {
    /// Queues the outcome ([`Store::submit`]); from then on the writer sees it in its
    /// queue rather than counted here. The count goes down first: the writer looks at
    /// it when this outcome wakes it, and must not wait for the outcome it holds.
    pub fn submit(
        self,
        op: WriteOp,
    ) -> Result<ReplyReceiver<Result<WriteOutput, StoreError>>, StoreError> {
        let store = self.store;
        drop(self);
        store.submit(op)
    }
}

impl Drop for OutcomeComing<'_> {
    fn drop(&mut self) {
        self.store.outcomes_coming.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The one number `sql` selects (a count, say), in a test.
#[cfg(test)]
pub(crate) fn count(conn: &Connection, sql: &str) -> i64 {
    count_with(conn, sql, "")
}

/// As [`count`], for `sql` with one parameter, `arg`.
#[cfg(test)]
pub(crate) fn count_with(conn: &Connection, sql: &str, arg: &str) -> i64 {
    let mut stmt = conn.prepare(sql).unwrap();
    let result = if stmt.parameter_count() == 1 {
        stmt.query_row([arg], |r| r.get(0))
    } else {
        stmt.query_row([], |r| r.get(0))
    };
    result.unwrap()
}

/// A new, empty directory for one test's files, removed with everything in it when the
/// test is done with it (dropped), so test runs leave nothing behind.
#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> TestDir {
    let dir = std::env::temp_dir().join(format!("hookd-{name}-{}", crate::ids::new_id("t")));
    std::fs::create_dir_all(&dir).unwrap();
    TestDir(dir)
}

#[cfg(test)]
pub(crate) struct TestDir(PathBuf);

#[cfg(test)]
impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

#[cfg(test)]
impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `.cargo/config.toml` reaches the bundled SQLite's build (BENCHMARKS.md, item 23).
    #[test]
    fn sqlite_is_built_without_memory_statistics() {
        let conn = Connection::open_in_memory().unwrap();
        let options: Vec<String> = conn
            .prepare("PRAGMA compile_options")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
    }

    /// `type, name, sql` of every schema object, in name order.
    fn schema_of(conn: &Connection) -> Vec<(String, String, Option<String>)> {
        let mut stmt = conn
            .prepare("SELECT type, name, sql FROM sqlite_schema ORDER BY name")
            .unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap();
        rows.map(Result::unwrap).collect()
    }

    /// `hooks` as versions 1 to 7 had it: keyed by its text id, with no integer key.
    const HOOKS_V1: &str = "CREATE TABLE hooks (
        id                   TEXT PRIMARY KEY,
        tenant               TEXT NOT NULL,
        target_url           TEXT NOT NULL,
        events               TEXT NOT NULL,
        payload              TEXT NOT NULL CHECK (payload IN ('skinny', 'full')),
        batch_max            INTEGER NOT NULL CHECK (batch_max BETWEEN 1 AND 1000),
        status               TEXT NOT NULL CHECK (status IN ('pending', 'active', 'inactive')),
        secret               TEXT NOT NULL,
        previous_secret      TEXT,
        previous_until       INTEGER,
        pending_target_url   TEXT,
        verify_code_hash     BLOB,
        last_seq             INTEGER NOT NULL DEFAULT 0,
        consecutive_failures INTEGER NOT NULL DEFAULT 0,
        created_at           INTEGER NOT NULL,
        updated_at           INTEGER NOT NULL,
        deleted_at           INTEGER
    );
    CREATE INDEX hooks_by_tenant ON hooks (tenant, id) WHERE deleted_at IS NULL;";

    /// Every row a query returns, each a single text column.
    fn texts(conn: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = conn.prepare(sql).unwrap();
        let rows = stmt.query_map([], |r| r.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    }

    /// Every outbox row of an upgraded file, with its hook's id (through its key).
    const ROWS_BY_HOOK_ID: &str = "SELECT json_array(h.id, d.seq, d.event_id)
        FROM deliveries d JOIN hooks h ON h.key = d.hook_key ORDER BY h.id, d.seq";
    /// Every batch of an upgraded file, with its hook's id (through its key).
    const BATCHES_BY_HOOK_ID: &str =
        "SELECT json_array(b.id, h.id, b.first_seq, b.last_seq, b.status, b.attempts,
                           b.next_attempt_at, b.created_at, b.updated_at)
         FROM batches b JOIN hooks h ON h.key = b.hook_key ORDER BY b.id";

    /// The file is sound: SQLite's integrity check, and no broken foreign key.
    fn assert_sound(conn: &Connection) {
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let broken: i64 = conn
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(broken, 0);
    }

    /// Version 8 names hooks by an integer key in the outbox: a version 7 file (a
    /// deleted hook with its cancelled tail, hooks whose rowids have a gap, open and
    /// finished batches, an unsent tail) keeps every row with its hook, each hook's
    /// rowid becomes its key, and the engine reads it as before.
    #[test]
    fn a_version_7_database_keeps_every_row_with_its_hook_under_an_integer_key() {
        let dir = test_dir("migrate7");
        let key = dir.join("m.key");
        let fresh = open(&dir.join("new.db"), &key).unwrap();
        let expected = schema_of(&fresh.writer_conn);
        drop(fresh);

        let path = dir.join("v7.db");
        drop(open(&path, &key).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "DROP TABLE batches; DROP TABLE deliveries; DROP TABLE hooks; {HOOKS_V1}
             CREATE TABLE deliveries (
                 hook_id  TEXT NOT NULL REFERENCES hooks (id) DEFERRABLE INITIALLY DEFERRED,
                 seq      INTEGER NOT NULL,
                 event_id TEXT NOT NULL REFERENCES events (id) DEFERRABLE INITIALLY DEFERRED,
                 PRIMARY KEY (hook_id, seq)
             ) WITHOUT ROWID;
             CREATE INDEX deliveries_by_event ON deliveries (event_id);
             CREATE TABLE batches (
                 hook_id TEXT NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
                 id TEXT NOT NULL UNIQUE,
                 status TEXT NOT NULL
                     CHECK (status IN ('pending', 'failed', 'delivered', 'dead', 'cancelled')),
                 attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at INTEGER,
                 created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
                 PRIMARY KEY (hook_id, first_seq)
             ) WITHOUT ROWID;
             CREATE INDEX batches_open ON batches (hook_id, first_seq)
                 WHERE status IN ('pending', 'failed');
             CREATE INDEX batches_dead ON batches (updated_at) WHERE status = 'dead';"
        ))
        .unwrap();
        conn.execute_batch(
            r#"INSERT INTO hooks (rowid, id, tenant, target_url, events, payload, batch_max,
                                  status, secret, last_seq, created_at, updated_at, deleted_at)
               VALUES (1, 'hk_a', 'default', 'http://127.0.0.1:9/', '["a"]', 'full', 10,
                       'active', 'x', 0, 1, 1, NULL),
                      (2, 'hk_gone', 'default', 'http://127.0.0.1:9/', '["a"]', 'full', 1,
                       'active', 'x', 0, 1, 2, 2),
                      (5, 'hk_b', 'other', 'http://127.0.0.1:9/', '["b"]', 'full', 1,
                       'active', 'x', 6, 1, 1, NULL);
               INSERT INTO events (id, tenant, type, data, created_at)
               VALUES ('ev_1', 'default', 'a', '{}', 1), ('ev_2', 'default', 'a', '{}', 2),
                      ('ev_3', 'default', 'a', '{"n":3}', 3), ('ev_4', 'other', 'b', '{}', 4);
               INSERT INTO deliveries (hook_id, seq, event_id)
               VALUES ('hk_a', 1, 'ev_1'), ('hk_a', 2, 'ev_2'), ('hk_a', 3, 'ev_3'),
                      ('hk_gone', 1, 'ev_1'), ('hk_gone', 2, 'ev_2'), ('hk_b', 7, 'ev_4');
               INSERT INTO batches (hook_id, first_seq, last_seq, id, status, attempts,
                                    next_attempt_at, created_at, updated_at)
               VALUES ('hk_a', 1, 1, 'dl_1', 'delivered', 1, NULL, 1, 5),
                      ('hk_a', 2, 2, 'dl_2', 'failed', 2, 99, 2, 6),
                      ('hk_gone', 1, 2, 'dl_3', 'cancelled', 0, NULL, 1, 2),
                      ('hk_b', 7, 7, 'dl_4', 'delivered', 1, NULL, 4, 4);
               PRAGMA user_version = 7;"#,
        )
        .unwrap();
        let deliveries = "SELECT json_array(hook_id, seq, event_id) FROM deliveries
                          ORDER BY hook_id, seq";
        let batches = "SELECT json_array(id, hook_id, first_seq, last_seq, status, attempts,
                                         next_attempt_at, created_at, updated_at)
                       FROM batches ORDER BY id";
        let (deliveries_before, batches_before) = (texts(&conn, deliveries), texts(&conn, batches));
        assert_eq!((deliveries_before.len(), batches_before.len()), (6, 4));
        drop(conn);

        let migrated = open(&path, &key).unwrap();
        let conn = &migrated.writer_conn;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(schema_of(conn), expected);
        assert_eq!(
            texts(conn, "SELECT json_array(id, key) FROM hooks ORDER BY key"),
            [r#"["hk_a",1]"#, r#"["hk_gone",2]"#, r#"["hk_b",5]"#],
            "each hook's rowid is its key"
        );
        // The same rows, each with the same hook (named through its key).
        assert_eq!(texts(conn, ROWS_BY_HOOK_ID), deliveries_before);
        assert_eq!(texts(conn, BATCHES_BY_HOOK_ID), batches_before);
        assert_sound(conn);

        // What the engine reads of it: the live hooks' keys and numbering (hk_b's from
        // its newest row, above its `last_seq`), a hook's log and its queue.
        let index = writer::FanoutIndex::load(conn).unwrap();
        let slot = |id: &str| index.slot(id).map(|s| (s.key, s.last_seq));
        assert_eq!(
            (slot("hk_a"), slot("hk_b"), slot("hk_gone")),
            (Some((1, 3)), Some((5, 7)), None)
        );
        let reader = open_reader(&migrated.path, migrated.secrets.clone()).unwrap();
        let log = reader
            .snapshot(|r| r.deliveries("hk_a", None, 0, 10))
            .unwrap();
        let log: Vec<(i64, &str, Vec<String>)> = log
            .iter()
            .map(|d| (d.sequence, d.status.as_str(), d.event_ids.clone()))
            .collect();
        assert_eq!(
            log,
            [
                (3, "pending", vec!["ev_3".to_string()]),
                (2, "failed", vec!["ev_2".to_string()]),
                (1, "delivered", vec!["ev_1".to_string()]),
            ]
        );
        let (queue, complete) = reader
            .snapshot(|r| r.queued("hk_a", 0, 1, 10, 1 << 20))
            .unwrap();
        let queue: Vec<(i64, String)> = queue
            .iter()
            .map(|q| (q.row.seq, q.event.id.clone()))
            .collect();
        assert_eq!(queue, [(2, "ev_2".to_string()), (3, "ev_3".to_string())]);
        assert!(complete);
        drop(reader);
        drop(migrated);
    }

    #[test]
    fn a_first_version_database_is_migrated_to_the_schema_of_a_new_one() {
        let dir = test_dir("migrate");
        let key = dir.join("m.key");
        let fresh = open(&dir.join("new.db"), &key).unwrap();
        let expected = schema_of(&fresh.writer_conn);
        drop(fresh);

        // The first schema version, as hookd 1 created it (the outbox in insertion
        // order, every row in the batch index, events in a rowid table, no batches),
        // with rows of two hooks in the outbox.
        let old_path = dir.join("old.db");
        drop(open(&old_path, &key).unwrap());
        let conn = Connection::open(&old_path).unwrap();
        conn.execute_batch(&format!(
            "DROP TABLE batches; DROP TABLE deliveries; DROP TABLE hooks; {HOOKS_V1}"
        ))
        .unwrap();
        conn.execute_batch(
            "DROP TABLE event_types;
             DELETE FROM meta WHERE key = 'types_through';
             DROP TABLE events;
             CREATE TABLE events (
                 id          TEXT PRIMARY KEY,
                 tenant      TEXT NOT NULL,
                 type        TEXT NOT NULL,
                 resource_id TEXT,
                 data        TEXT NOT NULL,
                 created_at  INTEGER NOT NULL
             );
             CREATE INDEX events_by_tenant ON events (tenant, id);
             CREATE INDEX events_by_tenant_type ON events (tenant, type, id);
             CREATE TABLE deliveries (
                 id              TEXT PRIMARY KEY,
                 hook_id         TEXT NOT NULL REFERENCES hooks (id),
                 seq             INTEGER NOT NULL,
                 event_id        TEXT NOT NULL REFERENCES events (id),
                 batch_id        TEXT,
                 status          TEXT NOT NULL
                     CHECK (status IN ('pending', 'failed', 'delivered', 'dead', 'cancelled')),
                 attempts        INTEGER NOT NULL DEFAULT 0,
                 next_attempt_at INTEGER,
                 created_at      INTEGER NOT NULL,
                 updated_at      INTEGER NOT NULL,
                 UNIQUE (hook_id, seq)
             );
             CREATE INDEX deliveries_open ON deliveries (hook_id, seq)
                 WHERE status IN ('pending', 'failed');
             CREATE INDEX deliveries_by_event ON deliveries (event_id);
             CREATE INDEX deliveries_by_batch ON deliveries (batch_id);
             CREATE INDEX deliveries_dead ON deliveries (updated_at) WHERE status = 'dead';
             INSERT INTO hooks (id, tenant, target_url, events, payload, batch_max, status,
                                secret, created_at, updated_at)
             VALUES ('hk_1', 'default', 'http://127.0.0.1:9/', '[\"a\"]', 'full', 1,
                     'active', 'x', 1, 1),
                    ('hk_2', 'default', 'http://127.0.0.1:9/', '[\"a\"]', 'full', 10,
                     'active', 'x', 1, 1);
             INSERT INTO events (id, tenant, type, data, created_at)
             VALUES ('ev_1', 'default', 'a', '{}', 1), ('ev_2', 'default', 'a', '{}', 2),
                    ('ev_3', 'default', 'a', '{\"n\":3}', 3);
             INSERT INTO deliveries (id, hook_id, seq, event_id, batch_id, status, attempts,
                                     next_attempt_at, created_at, updated_at)
             VALUES ('dl_1', 'hk_1', 1, 'ev_1', 'dl_1', 'delivered', 1, NULL, 1, 5),
                    ('dl_2', 'hk_2', 1, 'ev_1', 'dl_2', 'failed', 3, 99, 1, 6),
                    ('dl_3', 'hk_1', 2, 'ev_2', 'dl_3', 'pending', 0, 2, 2, 2),
                    ('dl_4', 'hk_2', 2, 'ev_2', NULL, 'pending', 0, 2, 2, 2),
                    ('dl_5', 'hk_2', 3, 'ev_3', 'dl_5', 'dead', 5, NULL, 3, 7),
                    ('dl_6', 'hk_2', 4, 'ev_3', 'dl_5', 'dead', 5, NULL, 3, 7),
                    ('dl_7', 'hk_2', 5, 'ev_3', NULL, 'pending', 0, NULL, 3, 3);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        let events = "SELECT json_array(*) FROM (SELECT * FROM events ORDER BY id)";
        let events_before = texts(&conn, events);
        assert_eq!(events_before.len(), 3);
        drop(conn);

        let migrated = open(&old_path, &key).unwrap();
        let conn = &migrated.writer_conn;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(schema_of(conn), expected);
        assert_eq!(
            texts(conn, events),
            events_before,
            "every event kept as it was"
        );
        // Every event in the type index, which goes on after the newest.
        assert_eq!(
            texts(
                conn,
                "SELECT json_array(tenant, type, event_id) FROM event_types"
            ),
            [
                r#"["default","a","ev_1"]"#,
                r#"["default","a","ev_2"]"#,
                r#"["default","a","ev_3"]"#,
            ]
        );
        let through: String = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'types_through'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(through, "ev_3");
        assert_eq!(
            texts(conn, ROWS_BY_HOOK_ID),
            [
                r#"["hk_1",1,"ev_1"]"#,
                r#"["hk_1",2,"ev_2"]"#,
                r#"["hk_2",1,"ev_1"]"#,
                r#"["hk_2",2,"ev_2"]"#,
                r#"["hk_2",3,"ev_3"]"#,
                r#"["hk_2",4,"ev_3"]"#,
                r#"["hk_2",5,"ev_3"]"#,
            ],
            "every row kept"
        );
        // Each formed batch, with its rows' state; dl_4, never sent but before a batch
        // of its hook, a batch of its own; dl_7, the unsent tail, none.
        assert_eq!(
            texts(conn, BATCHES_BY_HOOK_ID),
            [
                r#"["dl_1","hk_1",1,1,"delivered",1,null,1,5]"#,
                r#"["dl_2","hk_2",1,1,"failed",3,99,1,6]"#,
                r#"["dl_3","hk_1",2,2,"pending",0,2,2,2]"#,
                r#"["dl_4","hk_2",2,2,"pending",0,2,2,2]"#,
                r#"["dl_5","hk_2",3,4,"dead",5,null,3,7]"#,
            ]
        );
        assert_sound(conn);
        // Found through the new indexes: each hook's open batches in order.
        assert_eq!(
            texts(
                conn,
                "SELECT id FROM batches INDEXED BY batches_open
                 WHERE hook_key = (SELECT key FROM hooks WHERE id = 'hk_2')
                   AND status IN ('pending', 'failed') ORDER BY first_seq"
            ),
            ["dl_2", "dl_4"]
        );
        drop(migrated);
    }
}
