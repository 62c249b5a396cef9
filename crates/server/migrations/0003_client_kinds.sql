-- SPEC §13: the kinds of collection a client's mailbox holds (contacts,
-- calendar, tasks, mail), comma-separated and sorted; NULL: all of them
-- (a client that never said).
ALTER TABLE sync_clients ADD COLUMN kinds TEXT;
