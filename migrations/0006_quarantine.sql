-- The quarantine lane: mail set aside whole is an emails row whose
-- disposition is 'quarantined: REASON (DETAIL)', with its raw bytes in
-- blobs. `quarantine list` and `status` look them up by this index, which
-- holds only the (few) quarantined rows.
CREATE INDEX emails_quarantined ON emails(reader, id) WHERE disposition LIKE 'quarantined: %';
