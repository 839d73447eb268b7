-- Microsoft Graph readers. A message is known by its immutable id
-- (Prefer: IdType="ImmutableId"), which a move inside the mailbox keeps, so
-- the ledger is per reader, not per folder.
CREATE TABLE graph_messages (
    reader      TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    email_id    INTEGER NOT NULL REFERENCES emails(id),
    -- 'pending' until the after-step (isRead, move, delete) was confirmed;
    -- 'done' at once for after = "keep".
    after_state TEXT NOT NULL DEFAULT 'pending',
    ingested_at TEXT NOT NULL,
    PRIMARY KEY (reader, message_id)
);

-- Where the next delta query of a reader's folder starts: the whole
-- @odata.deltaLink Graph returned last. No row: a full sync (first contact,
-- or after Graph forgot the sync state); the ledger keeps it from
-- duplicating anything.
CREATE TABLE graph_delta_links (
    reader     TEXT NOT NULL,
    folder     TEXT NOT NULL,
    delta_link TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (reader, folder)
);

-- Mail that was in the folder at first contact and that `backfill` left:
-- never a ticket, also when a later full sync lists it again.
CREATE TABLE graph_skipped (
    reader     TEXT NOT NULL,
    message_id TEXT NOT NULL,
    skipped_at TEXT NOT NULL,
    PRIMARY KEY (reader, message_id)
) WITHOUT ROWID;
