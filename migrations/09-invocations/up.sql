-- When the newest invocation of a run started (unix ms), written before it
-- sends anything. With the end of the run's timeline it bounds when a
-- killed or stopped invocation last sent a request: a resumed run waits
-- until such a request can no longer land before asking for anything it
-- would replace (a token, a forced URL).
ALTER TABLE runs ADD COLUMN invoked_ms INTEGER;
