-- `refresh` expands a customer row into one state row per order found: such
-- rows get their own row_number and point back at their input row.
ALTER TABLE rows ADD COLUMN input_row INTEGER;

-- A site_order_identifier may name the same order in several rows of a
-- refresh run; `run` checks repeats itself when it registers rows.
DROP INDEX rows_by_site_order;
CREATE INDEX rows_by_site_order ON rows (run_id, site_order_identifier);
