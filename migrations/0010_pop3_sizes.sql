-- The size (octets, as LIST announced it) of the mail a POP3 UIDL was
-- ingested as. Some servers reuse a UIDL for a new mail once the old one is
-- gone: a listed mail whose size differs from its ledger row is a new mail,
-- ingested, and never deleted unread. NULL for rows from before: unknown,
-- taken as the same mail, as before.
ALTER TABLE pop3_uidls ADD COLUMN size INTEGER;
