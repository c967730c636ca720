-- Commerce Engine retry-payment results, and when a deferred row may go.
ALTER TABLE rows ADD COLUMN payment_id TEXT;
ALTER TABLE rows ADD COLUMN payment_status TEXT;
ALTER TABLE rows ADD COLUMN payment_link TEXT;
ALTER TABLE rows ADD COLUMN payment_link_expiry TEXT;

-- Rows a refresh customer row expanded into, in input order (costs nothing
-- for other rows).
CREATE INDEX rows_by_input_row ON rows (run_id, input_row, row_number) WHERE input_row IS NOT NULL;

-- The stages' index by state and customer covers only rows still in work:
-- finished rows (most of a database, most of the time) cost it nothing.
DROP INDEX rows_by_state_customer;
CREATE INDEX rows_by_state_customer ON rows (run_id, state, site_customer_identifier)
    WHERE state NOT IN ('done', 'failed', 'rejected', 'skipped');
