-- The index by state and customer moved an entry at every change of state:
-- it cost each outcome write more than the row's own update. Stages now read
-- a run's rows by primary key, and group them by customer by sorting a
-- stage's rows once into a temporary table (`Store::for_each_row`).
DROP INDEX rows_by_state_customer;
