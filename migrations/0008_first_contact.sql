-- What each reader found the first time it read a mailbox (an IMAP folder at
-- one UIDVALIDITY; POP3's maildrop as folder 'INBOX', uidvalidity 0), and
-- what `backfill` took of the mail already there. A row here means the
-- first contact is over: from then on the ledger takes everything new.
CREATE TABLE first_contacts (
    reader      TEXT NOT NULL,
    folder      TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    backfill    TEXT NOT NULL,
    -- Mails in the mailbox at first contact, and how many were taken.
    messages    INTEGER NOT NULL,
    taken       INTEGER NOT NULL,
    skipped     INTEGER NOT NULL,
    -- IMAP: the highest UID at first contact. Mail above it is new and
    -- always taken; at or below it only the UIDs in imap_backfill are.
    -- 0 when everything was taken (and for POP3).
    floor_uid   INTEGER NOT NULL,
    at          TEXT NOT NULL,
    PRIMARY KEY (reader, folder, uidvalidity)
);

-- The IMAP UIDs at or below the floor that the first contact took; one not
-- in source_positions yet is still owed (a first poll cut short).
CREATE TABLE imap_backfill (
    reader      TEXT NOT NULL,
    folder      TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    uid         INTEGER NOT NULL,
    PRIMARY KEY (reader, folder, uidvalidity, uid)
) WITHOUT ROWID;

-- POP3 mail that was on the server at first contact and that `backfill`
-- left: never a ticket, never deleted by after = "delete".
CREATE TABLE pop3_skipped (
    reader     TEXT NOT NULL,
    uidl       TEXT NOT NULL,
    skipped_at TEXT NOT NULL,
    PRIMARY KEY (reader, uidl)
) WITHOUT ROWID;
