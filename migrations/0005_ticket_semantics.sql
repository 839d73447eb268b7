-- Ticket semantics: routing columns on tickets, dispositions on emails
-- (a guarded mail is an email without a ticket), attachments stored once by
-- content, and the outbox of acknowledgements.
--
-- emails.ticket_id becomes nullable, which SQLite can only do by rebuilding
-- the table. Every table that references emails is rebuilt with it, children
-- first, so the foreign keys hold at every step of this one transaction (the
-- renames at the end point the children's references at the new tables).

ALTER TABLE tickets ADD COLUMN queue TEXT;
ALTER TABLE tickets ADD COLUMN priority TEXT;
ALTER TABLE tickets ADD COLUMN category TEXT;
-- A JSON array of strings, e.g. ["vip","printer"]; '[]' when none.
ALTER TABLE tickets ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
-- Random; hidden in the Message-IDs of our outbound mail, so a reply that
-- only keeps References still finds its ticket.
ALTER TABLE tickets ADD COLUMN thread_token TEXT;
CREATE UNIQUE INDEX tickets_thread_token ON tickets(thread_token);

-- Contents stored once: key 'sha256:<hex>' (attachments, raw mails), or
-- 'legacy:<attachment id>' for attachments stored before this migration.
CREATE TABLE blobs (
    key     TEXT PRIMARY KEY NOT NULL,
    size    INTEGER NOT NULL,
    content BLOB NOT NULL
);

CREATE TABLE emails_new (
    id          INTEGER PRIMARY KEY,
    -- NULL for a mail that opened no ticket (see disposition).
    ticket_id   INTEGER REFERENCES tickets(id),
    reader      TEXT NOT NULL,
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
    parse_note  TEXT,
    received_at TEXT NOT NULL,
    -- What became of the mail: 'ticket' (opened one), 'reply' (joined one),
    -- 'reopened' (joined a closed one and reopened it), 'bounce' (a delivery
    -- report about our mail, attached to its ticket), or 'ignored: <reason>
    -- (<detail>)' for a mail the guard or a rule kept out.
    disposition TEXT NOT NULL DEFAULT 'ticket',
    -- What was not stored because of a size limit, for a human to read.
    limit_note  TEXT,
    -- The raw mail's size in bytes, and its blob when keep_raw = true.
    size        INTEGER,
    raw_blob    TEXT REFERENCES blobs(key)
);
INSERT INTO emails_new (id, ticket_id, reader, dedup_key, message_id, in_reply_to, references_,
    from_addr, from_name, to_addrs, cc_addrs, subject, sent_at, body_text, body_html, parse_note,
    received_at)
SELECT id, ticket_id, reader, dedup_key, message_id, in_reply_to, references_,
    from_addr, from_name, to_addrs, cc_addrs, subject, sent_at, body_text, body_html, parse_note,
    received_at
FROM emails;

INSERT INTO blobs (key, size, content)
SELECT 'legacy:' || id, size, content FROM attachments;

CREATE TABLE attachments_new (
    id           INTEGER PRIMARY KEY,
    email_id     INTEGER NOT NULL REFERENCES emails_new(id),
    -- Sanitised: no path, no control characters; safe to export as is.
    filename     TEXT,
    content_type TEXT NOT NULL,
    size         INTEGER NOT NULL,
    -- Hex SHA-256 of the content (NULL only for attachments stored before
    -- this migration).
    sha256       TEXT,
    -- NULL when the content was not stored (see dropped).
    blob         TEXT REFERENCES blobs(key),
    -- Content-ID without angle brackets, for inline images (cid: URLs).
    content_id   TEXT,
    inline       INTEGER NOT NULL DEFAULT 0,
    -- Why the content was not stored, e.g. over max_attachment_size.
    dropped      TEXT
);
INSERT INTO attachments_new (id, email_id, filename, content_type, size, blob)
SELECT id, email_id, filename, content_type, size, 'legacy:' || id FROM attachments;

CREATE TABLE source_positions_new (
    reader      TEXT NOT NULL,
    folder      TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    uid         INTEGER NOT NULL,
    email_id    INTEGER NOT NULL REFERENCES emails_new(id),
    after_state TEXT NOT NULL DEFAULT 'pending',
    ingested_at TEXT NOT NULL,
    PRIMARY KEY (reader, folder, uidvalidity, uid)
);
INSERT INTO source_positions_new SELECT * FROM source_positions;

CREATE TABLE pop3_uidls_new (
    reader      TEXT NOT NULL,
    uidl        TEXT NOT NULL,
    email_id    INTEGER NOT NULL REFERENCES emails_new(id),
    after_state TEXT NOT NULL DEFAULT 'pending',
    ingested_at TEXT NOT NULL,
    PRIMARY KEY (reader, uidl)
);
INSERT INTO pop3_uidls_new SELECT * FROM pop3_uidls;

DROP TABLE attachments;
DROP TABLE source_positions;
DROP TABLE pop3_uidls;
DROP TABLE emails;
ALTER TABLE emails_new RENAME TO emails;
ALTER TABLE attachments_new RENAME TO attachments;
ALTER TABLE source_positions_new RENAME TO source_positions;
ALTER TABLE pop3_uidls_new RENAME TO pop3_uidls;

CREATE INDEX emails_ticket ON emails(ticket_id);
CREATE INDEX emails_message_id ON emails(message_id);
-- The per-sender rate limit counts a sender's recent mail.
CREATE INDEX emails_sender ON emails(lower(from_addr), received_at);
CREATE INDEX attachments_email ON attachments(email_id);
CREATE INDEX source_positions_pending ON source_positions(reader, folder, uidvalidity, after_state);

-- Mail we send (acknowledgements), written in the transaction that opens
-- the ticket and sent later, so sending never blocks ingest and a crash
-- loses nothing. At most one per ticket and kind.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    ticket_id       INTEGER NOT NULL REFERENCES tickets(id),
    -- The reader whose [reader.reply] sends it.
    reader          TEXT NOT NULL,
    kind            TEXT NOT NULL DEFAULT 'ack',
    -- Without angle brackets; in our domain, carrying the ticket's token.
    message_id      TEXT NOT NULL UNIQUE,
    to_addr         TEXT NOT NULL,
    -- The mail answered: its Message-ID and References, for threading.
    in_reply_to     TEXT,
    references_     TEXT,
    -- 'pending' until sent; 'sent'; 'failed' once retries gave up.
    state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    last_attempt_at TEXT,
    next_attempt_at TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    sent_at         TEXT,
    UNIQUE (ticket_id, kind)
);
CREATE INDEX outbox_due ON outbox(state, next_attempt_at);
