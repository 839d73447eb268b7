-- POP3's ledger: a maildrop has no folders and no UIDVALIDITY, only the
-- server's unique-id listing (UIDL), a string of up to 70 characters that
-- stays the same for a message across sessions (RFC 1939 section 7).
-- Written in the same transaction as the ticket, like source_positions.
CREATE TABLE pop3_uidls (
    reader      TEXT NOT NULL,
    uidl        TEXT NOT NULL,
    email_id    INTEGER NOT NULL REFERENCES emails(id),
    -- 'pending' until the after-step (DELE + QUIT) was confirmed; 'done'
    -- at once for after = "keep".
    after_state TEXT NOT NULL DEFAULT 'pending',
    ingested_at TEXT NOT NULL,
    PRIMARY KEY (reader, uidl)
);
