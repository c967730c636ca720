-- Runs: a command on an input (by fingerprint); the newest one of a command
-- and fingerprint is the one a run resumes. No secrets, no customer PII.
CREATE TABLE runs (
    id           INTEGER PRIMARY KEY,
    command      TEXT    NOT NULL,
    input_path   TEXT    NOT NULL,
    fingerprint  TEXT    NOT NULL,
    options      TEXT    NOT NULL,
    total_rows   INTEGER NOT NULL DEFAULT 0,
    registered   INTEGER NOT NULL DEFAULT 0,
    started_at   TEXT    NOT NULL,
    finished_at  TEXT
);
CREATE INDEX runs_by_fingerprint ON runs (command, fingerprint);

-- Rows: progress of each input row. Identifiers and results only; the order's
-- fields are re-read from the input file (checked by fingerprint) on resume.
CREATE TABLE rows (
    run_id                     INTEGER NOT NULL REFERENCES runs(id),
    row_number                 INTEGER NOT NULL,
    line                       INTEGER NOT NULL,
    site_customer_identifier   TEXT,
    site_order_identifier      TEXT,
    pnm_order_identifier       TEXT,
    pnm_customer_identifier    TEXT,
    state                      TEXT    NOT NULL,
    attempts                   INTEGER NOT NULL DEFAULT 0,
    next_attempt_at            INTEGER,
    last_error_code            TEXT,
    last_error                 TEXT,
    embedded_js_url            TEXT,
    embedded_js_url_expires_at TEXT,
    secure_smart_token         TEXT,
    secure_smart_link          TEXT,
    PRIMARY KEY (run_id, row_number)
) WITHOUT ROWID;

CREATE UNIQUE INDEX rows_by_site_order ON rows (run_id, site_order_identifier);
CREATE INDEX rows_by_state_customer ON rows (run_id, state, site_customer_identifier);

-- Attempts that did not succeed (successes are counted in `requests`).
CREATE TABLE attempts (
    run_id      INTEGER NOT NULL REFERENCES runs(id),
    row_number  INTEGER NOT NULL,
    endpoint    TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    error_code  TEXT    NOT NULL,
    error       TEXT    NOT NULL,
    latency_ms  INTEGER NOT NULL,
    at          TEXT    NOT NULL
);
CREATE INDEX attempts_by_row ON attempts (run_id, row_number);

-- Requests sent, per run and endpoint.
CREATE TABLE requests (
    run_id    INTEGER NOT NULL REFERENCES runs(id),
    endpoint  TEXT    NOT NULL,
    count     INTEGER NOT NULL,
    PRIMARY KEY (run_id, endpoint)
) WITHOUT ROWID;
