-- The index by state and customer moved an entry at every change of state:
-- it cost each outcome write more than the row's own update. Stages now scan
-- a run's rows by primary key, and group rows by customer with
-- `rows_by_customer`, which a run builds when it starts and drops when it
-- finishes (`Store::build_work_index`), so finished rows cost no index.
DROP INDEX rows_by_state_customer;
