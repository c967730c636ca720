-- Commerce Engine retry-payment results, and when a deferred row may go.
ALTER TABLE rows ADD COLUMN payment_id TEXT;
ALTER TABLE rows ADD COLUMN payment_status TEXT;
ALTER TABLE rows ADD COLUMN payment_link TEXT;
ALTER TABLE rows ADD COLUMN payment_link_expiry TEXT;
