-- scanhook store, SQLite dialect. Times are Unix microseconds (UTC) in
-- INTEGER columns so that both dialects share every query.

CREATE TABLE receipts (
    id          TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    received_at INTEGER NOT NULL
);

CREATE TABLE alerts (
    pk          INTEGER PRIMARY KEY,
    source      TEXT NOT NULL,
    alert_id    TEXT NOT NULL,
    receipt_id  TEXT NOT NULL REFERENCES receipts(id),
    received_at INTEGER NOT NULL,
    normalized  TEXT NOT NULL,
    raw         BLOB NOT NULL,
    UNIQUE (source, alert_id)
);

CREATE TABLE receipt_alerts (
    receipt_id TEXT NOT NULL REFERENCES receipts(id),
    alert_pk   INTEGER NOT NULL REFERENCES alerts(pk),
    PRIMARY KEY (receipt_id, alert_pk)
);

-- One row per device key; the ingest transaction locks it (PostgreSQL) so
-- decisions for one device are serialized, and it carries the cooldown clock.
CREATE TABLE devices (
    key            TEXT PRIMARY KEY,
    last_quick_at  INTEGER,
    last_quick_job INTEGER,
    last_full_at   INTEGER,
    last_full_job  INTEGER
);

CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY,
    alert_pk        INTEGER NOT NULL REFERENCES alerts(pk),
    source          TEXT NOT NULL,
    alert_id        TEXT NOT NULL,
    device_key      TEXT NOT NULL,
    device_id       TEXT NOT NULL,
    device_dns      TEXT NOT NULL,
    device_aad      TEXT NOT NULL,
    scan            TEXT NOT NULL,
    comment         TEXT NOT NULL,
    state           TEXT NOT NULL,
    open            INTEGER NOT NULL,
    calling         INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    due_at          INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER,
    machine_id      TEXT NOT NULL DEFAULT '',
    action_id       TEXT,
    last_error      TEXT NOT NULL DEFAULT '',
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX jobs_due ON jobs (due_at, id) WHERE state IN ('queued', 'retry', 'leased', 'calling');
CREATE INDEX jobs_open_device ON jobs (device_key, id) WHERE open = 1;
CREATE INDEX jobs_owner ON jobs (lease_owner) WHERE lease_owner IS NOT NULL;
CREATE INDEX jobs_action ON jobs (action_id) WHERE action_id IS NOT NULL;
CREATE INDEX jobs_alert ON jobs (alert_pk);
CREATE INDEX jobs_state ON jobs (state);

CREATE TABLE job_attempts (
    job_id     INTEGER NOT NULL REFERENCES jobs(id),
    attempt    INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    owner      TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    error      TEXT NOT NULL
);
CREATE INDEX job_attempts_job ON job_attempts (job_id);

CREATE TABLE decisions (
    id          INTEGER PRIMARY KEY,
    alert_pk    INTEGER NOT NULL REFERENCES alerts(pk),
    seq         INTEGER NOT NULL,
    source      TEXT NOT NULL,
    alert_id    TEXT NOT NULL,
    device_key  TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    device_dns  TEXT NOT NULL,
    device_aad  TEXT NOT NULL,
    has_device  INTEGER NOT NULL,
    rule        TEXT NOT NULL,
    scan        TEXT NOT NULL,
    comment     TEXT NOT NULL,
    rule_reason TEXT NOT NULL,
    cooldown_us INTEGER NOT NULL,
    dry_run     INTEGER NOT NULL,
    status      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    job_id      INTEGER REFERENCES jobs(id),
    created_at  INTEGER NOT NULL
);
CREATE INDEX decisions_alert ON decisions (alert_pk, seq);
CREATE INDEX decisions_created ON decisions (created_at, id);
CREATE INDEX decisions_device_id ON decisions (device_id);
CREATE INDEX decisions_device_dns ON decisions (device_dns);

CREATE TABLE actions (
    id             TEXT PRIMARY KEY,
    job_id         INTEGER NOT NULL REFERENCES jobs(id),
    machine_id     TEXT NOT NULL,
    status         TEXT NOT NULL,
    final          INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    last_polled_at INTEGER NOT NULL DEFAULT 0 -- 0: never polled
);
CREATE INDEX actions_open ON actions (last_polled_at, created_at) WHERE final = 0;
