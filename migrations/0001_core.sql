-- Core schema. Table and column names are a public interface: admins query them.

CREATE TABLE readers (
    name                 TEXT PRIMARY KEY NOT NULL,
    protocol             TEXT NOT NULL,
    last_poll_at         TEXT,
    last_success_at      TEXT,
    last_error           TEXT,
    last_error_at        TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE tickets (
    id             INTEGER PRIMARY KEY,
    reader         TEXT NOT NULL,
    subject        TEXT NOT NULL,
    requester      TEXT,
    requester_name TEXT,
    status         TEXT NOT NULL DEFAULT 'open',
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);

CREATE TABLE emails (
    id          INTEGER PRIMARY KEY,
    ticket_id   INTEGER NOT NULL REFERENCES tickets(id),
    reader      TEXT NOT NULL,
    -- Message-ID, or "sha256:<hex of the raw mail>" when the mail has none:
    -- the key that makes one mail one email, whichever reader saw it first.
    dedup_key   TEXT NOT NULL UNIQUE,
    message_id  TEXT,
    in_reply_to TEXT,
    references_ TEXT,
    from_addr   TEXT,
    from_name   TEXT,
    to_addrs    TEXT,
    cc_addrs    TEXT,
    subject     TEXT,
    sent_at     TEXT,
    body_text   TEXT,
    body_html   TEXT,
    -- What the parser could not understand; NULL when the mail parsed cleanly.
    parse_note  TEXT,
    received_at TEXT NOT NULL
);
CREATE INDEX emails_ticket ON emails(ticket_id);
CREATE INDEX emails_message_id ON emails(message_id);

CREATE TABLE attachments (
    id           INTEGER PRIMARY KEY,
    email_id     INTEGER NOT NULL REFERENCES emails(id),
    filename     TEXT,
    content_type TEXT NOT NULL,
    size         INTEGER NOT NULL,
    content      BLOB NOT NULL
);
CREATE INDEX attachments_email ON attachments(email_id);

-- Where each ingested mail came from. Written in the same transaction as the
-- email, so a position is recorded exactly when its ticket exists.
CREATE TABLE source_positions (
    reader      TEXT NOT NULL,
    folder      TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    uid         INTEGER NOT NULL,
    email_id    INTEGER NOT NULL REFERENCES emails(id),
    -- 'pending' until the after-step (e.g. \Seen) succeeded on the server.
    after_state TEXT NOT NULL DEFAULT 'pending',
    ingested_at TEXT NOT NULL,
    PRIMARY KEY (reader, folder, uidvalidity, uid)
);
CREATE INDEX source_positions_pending ON source_positions(reader, folder, uidvalidity, after_state);

-- OAuth refresh tokens per app registration and account, sealed with the
-- store key (XChaCha20-Poly1305): never in clear. One refresh token serves
-- every resource (IMAP, POP, SMTP, Graph) of that account.
CREATE TABLE oauth_tokens (
    oauth         TEXT NOT NULL,
    account       TEXT NOT NULL,
    refresh_token BLOB NOT NULL,
    updated_at    TEXT NOT NULL,
    PRIMARY KEY (oauth, account)
);

-- A known plaintext sealed with the store key, so a wrong key is detected at
-- start rather than as garbage later.
CREATE TABLE store_key_check (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    sealed BLOB NOT NULL
);
