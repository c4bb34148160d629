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
CREATE TABLE hooks (
    id                   TEXT PRIMARY KEY,
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

-- Published events, data as JSON text.
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

-- The outbox: one row per (hook, event), numbered per hook. A request to the receiver
-- carries one or more consecutive rows; they share batch_id, the id of the first row,
-- which is the delivery id the API shows and the webhook-id the receiver sees. A row
-- gets its batch_id when first sent (at insert when the hook's batch_max is 1), and
-- keeps it on every retry, so a retry is byte-for-byte the same set of events.
-- Stored in (hook_id, seq) order (WITHOUT ROWID): a hook's consecutive rows share
-- pages, so sending and recording a hook's queue touches a few pages, not one page per
-- row, whatever order the events of different hooks were published in.
-- The foreign keys are checked at COMMIT (deferred), not row by row: a multi-row
-- INSERT that could fail halfway must first copy every page it changes into a
-- statement journal, to undo itself alone; checked at COMMIT, a violation fails the
-- transaction instead, and the writer then commits each request of its group alone.
CREATE TABLE deliveries (
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
) WITHOUT ROWID;
-- The dispatcher's view: each hook's undelivered rows in sequence order.
CREATE INDEX deliveries_open ON deliveries (hook_id, seq) WHERE status IN ('pending', 'failed');
CREATE INDEX deliveries_by_event ON deliveries (event_id);
CREATE INDEX deliveries_by_batch ON deliveries (batch_id) WHERE batch_id IS NOT NULL;
-- `hookd stats`: deliveries that went dead recently.
CREATE INDEX deliveries_dead ON deliveries (updated_at) WHERE status = 'dead';

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
