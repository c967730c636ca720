-- How many rows of each run are in each state: `status`, the report and the
-- end of a run read these instead of counting the run's rows (a million-row
-- run took a third of a second per count). Kept exact by every write that
-- adds a row or changes its state, in that write's transaction (the run's
-- writer, registration, retry's requeue; see src/store/counts.rs). A state
-- a run's rows have all left keeps its line, at 0.
CREATE TABLE row_states (
    run_id  INTEGER NOT NULL REFERENCES runs(id),
    state   TEXT    NOT NULL,
    count   INTEGER NOT NULL,
    PRIMARY KEY (run_id, state)
) WITHOUT ROWID;

-- What the rows of earlier versions' runs say.
INSERT INTO row_states (run_id, state, count)
SELECT run_id, state, COUNT(*) FROM rows GROUP BY run_id, state;
