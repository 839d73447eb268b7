-- Operations: each reader's history, when it was first configured (the
-- clock for "stale" before its first success), and the daemon's own row
-- (heartbeat for `health`, the outcome of the last config reload).

-- Every state change, failed poll and recovery, newest 1000 per reader.
CREATE TABLE reader_events (
    id      INTEGER PRIMARY KEY,
    reader  TEXT NOT NULL,
    at      TEXT NOT NULL,
    -- 'info' (recovered, started, changed), 'warn' (a failure it retries),
    -- 'error' (a failure that waits for an admin).
    level   TEXT NOT NULL CHECK (level IN ('info', 'warn', 'error')),
    message TEXT NOT NULL
);
CREATE INDEX reader_events_by_reader ON reader_events (reader, id);

ALTER TABLE readers ADD COLUMN added_at TEXT;
UPDATE readers SET added_at = strftime('%Y-%m-%dT%H:%M:%SZ','now');

-- One row: the running (or last) daemon.
CREATE TABLE daemon (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    pid               INTEGER NOT NULL,
    started_at        TEXT NOT NULL,
    -- Written by the scheduler every `heartbeat_seconds`: proof that it is
    -- alive and the database writable. NULL once it stopped cleanly.
    heartbeat_at      TEXT,
    heartbeat_seconds REAL NOT NULL,
    stopped_at        TEXT,
    config_path       TEXT NOT NULL,
    -- The last reload: when, and why it was refused (NULL when it worked).
    reloaded_at       TEXT,
    reload_error      TEXT,
    reload_error_at   TEXT
);
