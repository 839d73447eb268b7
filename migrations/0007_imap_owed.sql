-- IMAP UIDs a poll asked for and the server did not deliver (it refused
-- the FETCH, left the UID out of its answer, or sent it without a body).
-- The folder's ledger owes them: every poll asks for them again, however
-- far the positions above them have moved, until one is delivered (and
-- recorded in source_positions) or, refused `attempts` times, set aside in
-- the quarantine with the server's words. `last_words` is the server's
-- answer, scrubbed of credentials.
CREATE TABLE imap_owed (
    reader      TEXT NOT NULL,
    folder      TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    uid         INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 1,
    last_words  TEXT NOT NULL,
    first_at    TEXT NOT NULL,
    last_at     TEXT NOT NULL,
    PRIMARY KEY (reader, folder, uidvalidity, uid)
);
