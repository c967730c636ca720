-- Commerce Engine retry-payment results, and when a deferred row may go.
ALTER TABLE rows ADD COLUMN payment_id TEXT;
ALTER TABLE rows ADD COLUMN payment_status TEXT;
ALTER TABLE rows ADD COLUMN payment_link TEXT;
ALTER TABLE rows ADD COLUMN payment_link_expiry TEXT;

-- Rows a refresh customer row expanded into, in input order (costs nothing
-- for other rows).
CREATE INDEX rows_by_input_row ON rows (run_id, input_row, row_number) WHERE input_row IS NOT NULL;
