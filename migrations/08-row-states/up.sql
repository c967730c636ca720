-- How many rows of each run are in each state: `status`, the report and the
-- end of a run read these instead of counting the run's rows (0.4 s per
-- count on a 1,000,000-row run). Kept exact by every write that adds a row
-- or changes its state, in that write's transaction (the run's writer,
-- registration, retry's requeue; see src/store/counts.rs). A state a run's
-- rows have all left keeps its line, at 0.
CREATE TABLE row_states (
    run_id  INTEGER NOT NULL REFERENCES runs(id),
    state   TEXT    NOT NULL,
    count   INTEGER NOT NULL,
    PRIMARY KEY (run_id, state)
) WITHOUT ROWID;

-- What the rows of earlier versions' runs say.
INSERT INTO row_states (run_id, state, count)
SELECT run_id, state, COUNT(*) FROM rows GROUP BY run_id, state;

-- The report's and status's errors: rows left failed, rejected or unknown,
-- by code, in row order (the first rows of each code) and by message (the
-- example of each code). Only rows in those states have entries: rows in
-- work, and runs without errors, cost them only the check of the condition.
-- The condition is spelt with OR: with IN, it made every update of a row's
-- state (or error) cost about 2.5 times as much. A query uses these indexes
-- when it names one of the states as a literal (`state = 'failed'`).
CREATE INDEX rows_by_error ON rows (run_id, state, last_error_code)
    WHERE state = 'failed' OR state = 'rejected' OR state = 'unknown';
CREATE INDEX rows_by_error_message ON rows (run_id, state, last_error_code, last_error)
    WHERE state = 'failed' OR state = 'rejected' OR state = 'unknown';
