-- A run's timeline (src/timeline.rs): one row per time bucket of a second
-- or more, holding per endpoint requests, outcomes by class and a latency
-- sketch, rows finished per stage, and time held by a 429 gate or backoff,
-- as JSON. Counts and durations only: no identifiers, no personal data.
-- Written by the run's writer about once a second, never per request;
-- resumed runs add their buckets after the earlier ones.
CREATE TABLE timeline (
    run_id    INTEGER NOT NULL REFERENCES runs(id),
    start_ms  INTEGER NOT NULL,
    width_ms  INTEGER NOT NULL,
    bucket    TEXT    NOT NULL,
    PRIMARY KEY (run_id, start_ms)
) WITHOUT ROWID;
