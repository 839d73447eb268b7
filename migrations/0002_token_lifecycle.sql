-- Token lifecycle: each reader's state, which account it uses (so that
-- `authorize` can release the readers waiting for it, and `status` can warn
-- before a refresh token dies of inactivity), and when a refresh token was
-- last used.

-- 'ok', 'retrying' (transient failure, backing off), 'needs_authorization'
-- (an admin must sign in again) or 'misconfigured' (the config or the app
-- registration must be fixed). The last two make no requests until released.
ALTER TABLE readers ADD COLUMN state TEXT NOT NULL DEFAULT 'ok'
    CHECK (state IN ('ok', 'retrying', 'needs_authorization', 'misconfigured'));
ALTER TABLE readers ADD COLUMN oauth TEXT;
ALTER TABLE readers ADD COLUMN account TEXT;
ALTER TABLE readers ADD COLUMN grant_type TEXT;
-- Keyed digest of the reader's settings and its secrets' current values:
-- a stopped reader is tried again when it changes (and not otherwise).
ALTER TABLE readers ADD COLUMN config_hash TEXT;

-- Entra ends a refresh token after 90 days without use; this is the clock.
ALTER TABLE oauth_tokens ADD COLUMN last_used_at TEXT;
UPDATE oauth_tokens SET last_used_at = updated_at;
