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

-- Touch only the run's orders: a customer-wide get_smart_token reissues the
-- tokens of all the customer's orders at the provider, so it is used only
-- for a customer whose orders (as the refresh pages showed) are all in the
-- run. `exclusive` records what the pages showed.
CREATE TABLE run_customers (
    run_id                   INTEGER NOT NULL,
    site_customer_identifier TEXT    NOT NULL,
    exclusive                INTEGER NOT NULL,
    PRIMARY KEY (run_id, site_customer_identifier)
) WITHOUT ROWID;

-- The order in which the writer recorded each row's URL and token: when
-- rows of a `refresh` name one order twice, every row carries the values
-- issued last (what the provider now holds).
ALTER TABLE rows ADD COLUMN url_seq INTEGER;
ALTER TABLE rows ADD COLUMN token_seq INTEGER;

-- Where each input row's record starts (byte offset; `line` has its line),
-- so that a customer's rows can be re-read without reading the file from
-- the top: customers stream through create → refresh → token one by one.
ALTER TABLE rows ADD COLUMN input_offset INTEGER;
