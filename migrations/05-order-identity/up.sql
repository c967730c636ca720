-- One order per identity per database: a later `run` that names a
-- site_order_identifier an earlier run already registered adopts that
-- order instead of creating it again. The lookup goes by identifier across
-- runs, so the identifier leads the index (the per-run duplicate check
-- still uses it with both columns).
DROP INDEX rows_by_site_order;
CREATE INDEX rows_by_site_order ON rows (site_order_identifier, run_id);

-- The amount a `run` row was created with (not personal data): the same
-- identifier with another customer or amount is a conflict, not the same
-- order.
ALTER TABLE rows ADD COLUMN order_amount TEXT;

-- For rows whose identifier was derived (files without
-- site_order_identifier): a keyed digest of what the row sends, so that an
-- edited, reordered or re-encoded copy of the file is recognised. The key
-- is in `meta`; the row's content itself is never stored.
ALTER TABLE rows ADD COLUMN content BLOB;
CREATE INDEX rows_by_content ON rows (content) WHERE content IS NOT NULL;

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

-- When the row's last intent (a request about to leave) was recorded, unix
-- seconds: a resumed Commerce Engine retry compares it with the order's
-- payment attempts to tell whether the retry landed.
ALTER TABLE rows ADD COLUMN intent_at INTEGER;
