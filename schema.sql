-- hookd's schema for a new database. Existing databases are upgraded by the append-only
-- migrations in src/store/mod.rs, keyed on PRAGMA user_version. Times are unix
-- milliseconds; ids are prefixed, time-ordered text (see src/ids.rs).

-- Facts about this database, e.g. a value sealed with the key file, so that a wrong
-- key file is a clear start-up error rather than undecryptable hooks later.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- API keys. Only the SHA-256 of a token is kept; the token is shown once.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    token_hash  BLOB NOT NULL UNIQUE,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'publisher', 'subscriber')),
    tenant      TEXT,             -- subscribers only
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

-- Subscriptions. Deleted hooks are kept (deleted_at set) so their delivery log and
-- the ids in it stay meaningful; every query for live hooks filters them out.
-- `key` is the name the outbox and its batches use for a hook: an integer takes 1-3
-- bytes in their rows and index entries where the 31-byte id took 32, and those pages
-- are most of what a publish writes. It is the rowid (INTEGER PRIMARY KEY), so
-- VACUUM and backups (VACUUM INTO) keep it.
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
CREATE INDEX hooks_by_tenant ON hooks (tenant, id) WHERE deleted_at IS NULL;

-- Published events, data as JSON text. Stored in id order, the table its own primary
-- key (WITHOUT ROWID): a rowid table keyed by text keeps a second B-tree for the key,
-- one more insert per event. Ids are time-ordered, so events append.
CREATE TABLE events (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    type        TEXT NOT NULL,
    resource_id TEXT,
    data        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX events_by_tenant ON events (tenant, id);

-- Events by type, for `GET /v1/events?type=` (the "perform list" clients poll). Written
-- behind, not with each publish: an index on events (tenant, type, id) took each
-- commit's rows at one place per type in the middle of its tree, and SQLite rewrites a
-- full leaf there with its two siblings and their parent, so it cost ~3.5 pages per
-- type per commit (BENCHMARKS.md, item 38). The writer instead copies the events after
-- meta's `types_through` (the newest event id entered here) twice a second, in one
-- transaction with the new `types_through`; a listing reads this table for
-- events up to it and the events table for those after it. Event ids increase in
-- commit order (the writer makes them, see src/ids.rs), so nothing is skipped.
CREATE TABLE event_types (
    tenant   TEXT NOT NULL,
    type     TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (tenant, type, event_id)
) WITHOUT ROWID;
-- An event's entry goes with the event (retention).
CREATE TRIGGER event_types_gone AFTER DELETE ON events BEGIN
    DELETE FROM event_types
    WHERE tenant = old.tenant AND type = old.type AND event_id = old.id;
END;
INSERT INTO meta (key, value) VALUES ('types_through', '');

-- The outbox: one row per (hook, event), numbered per hook, never changed once
-- inserted: what happened to a row is its batch's (below), so sending and recording
-- write one batch row per request, not one row per event, and a publish adds no entry
-- to any index of open work. A hook's rows after its newest batch's last_seq have not
-- been sent: they are its pending tail, in seq order. A row has no id column: while
-- it is a delivery of its own, its id is derived from its event's and hook's
-- (ids::delivery_id), so a publish adds no index entry for it.
-- Stored in (hook_key, seq) order (WITHOUT ROWID): a hook's consecutive rows share
-- pages, so reading a hook's queue touches a few pages, not one page per row, whatever
-- order the events of different hooks were published in. A row is made when its event
-- is, so its time is its event's `created_at` (not stored again: the outbox's pages
-- are most of what a commit writes).
-- The foreign keys are checked at COMMIT (deferred), not row by row: a multi-row
-- INSERT that could fail halfway must first copy every page it changes into a
-- statement journal, to undo itself alone; checked at COMMIT, a violation fails the
-- transaction instead, and the writer then commits each request of its group alone.
CREATE TABLE deliveries (
    hook_key   INTEGER NOT NULL REFERENCES hooks (key) DEFERRABLE INITIALLY DEFERRED,
    seq        INTEGER NOT NULL,
    event_id   TEXT NOT NULL REFERENCES events (id) DEFERRABLE INITIALLY DEFERRED,
    PRIMARY KEY (hook_key, seq)
) WITHOUT ROWID;
CREATE INDEX deliveries_by_event ON deliveries (event_id);

-- Deliveries as the API shows them and receivers see them: one request's consecutive
-- rows of one hook, first_seq to last_seq, sent with webhook-id = id on every retry,
-- so a retry is byte-for-byte the same set of events. A batch of several rows is
-- written (claimed) before it is first sent, under a new id; a row a hook sends alone
-- (batch_max 1) is a batch of its own named after the row, written with its first
-- outcome. A deleted hook's unsent rows become one cancelled batch.
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
-- The dispatcher's view: each hook's batches to send (again), in sequence order.
CREATE INDEX batches_open ON batches (hook_key, first_seq) WHERE status IN ('pending', 'failed');
-- `hookd stats`: deliveries that went dead recently.
CREATE INDEX batches_dead ON batches (updated_at) WHERE status = 'dead';

-- Every attempt, keyed by the delivery (batch) id.
CREATE TABLE attempts (
    id               INTEGER PRIMARY KEY,
    delivery_id      TEXT NOT NULL,
    at               INTEGER NOT NULL,
    status_code      INTEGER,
    error            TEXT,
    duration_ms      INTEGER NOT NULL,
    response_snippet TEXT
);
CREATE INDEX attempts_by_delivery ON attempts (delivery_id, id);
CREATE INDEX attempts_by_time ON attempts (at);

-- Idempotency keys of publishes: the first response is returned for a repeat.
CREATE TABLE idempotency (
    key          TEXT PRIMARY KEY,
    request_hash BLOB NOT NULL,
    response     TEXT NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE INDEX idempotency_by_time ON idempotency (created_at);
