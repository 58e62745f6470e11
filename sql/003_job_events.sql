-- Live progress: every change of a job's status or progress is an event, in the same
-- transaction as the change, and a NOTIFY wakes the API processes that stream them.

-- The id is the event's sequence number: the SSE event id a client resumes from.
-- Events of one job are numbered in commit order: a change of a job holds the job row's lock
-- until it commits, so the next change of that job draws its number after this one committed.
CREATE TABLE ai_job_events (
  id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  job_id           uuid NOT NULL REFERENCES ai_jobs (id) ON DELETE CASCADE,
  status           text NOT NULL,
  progress_message text,
  progress_current integer,
  progress_total   integer,
  created_at       timestamptz NOT NULL DEFAULT now()
);

-- "Events of these jobs after seq N" walks this index.
CREATE INDEX ai_job_events_job_idx ON ai_job_events (job_id, id);

-- One NOTIFY per 100 changed jobs of a statement, never one per row: a transaction that
-- notifies takes a database-wide lock at commit. The payload names the events only
-- ("<job id>:<seq>,..."); the stream reads the rows. 100 entries of at most 57 bytes stay under
-- the 8000-byte payload limit, and no two payloads are equal, so none is merged away.
-- SECURITY DEFINER: whoever may change a job, its events are recorded.
CREATE FUNCTION ai_job_events_record() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
  entries text[];
  i integer;
BEGIN
  IF TG_OP = 'INSERT' THEN
    WITH inserted AS (
      INSERT INTO ai_job_events (job_id, status, progress_message, progress_current, progress_total)
      SELECT n.id, n.status, n.progress_message, n.progress_current, n.progress_total
      FROM new_rows AS n
      RETURNING job_id, id
    )
    SELECT array_agg(job_id || ':' || id ORDER BY id) INTO entries FROM inserted;
  ELSE
    -- A lease renewal or any other change leaves the stream alone.
    WITH inserted AS (
      INSERT INTO ai_job_events (job_id, status, progress_message, progress_current, progress_total)
      SELECT n.id, n.status, n.progress_message, n.progress_current, n.progress_total
      FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
      WHERE (n.status, n.progress_message, n.progress_current, n.progress_total)
            IS DISTINCT FROM (o.status, o.progress_message, o.progress_current, o.progress_total)
      RETURNING job_id, id
    )
    SELECT array_agg(job_id || ':' || id ORDER BY id) INTO entries FROM inserted;
  END IF;
  FOR i IN 1 .. coalesce(array_length(entries, 1), 0) BY 100 LOOP
    PERFORM pg_notify('ai_job_events', array_to_string(entries[i:i + 99], ','));
  END LOOP;
  RETURN NULL;
END $$;

-- Transition tables allow one event per trigger, hence two triggers.
CREATE TRIGGER ai_job_events_on_insert AFTER INSERT ON ai_jobs
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION ai_job_events_record();
CREATE TRIGGER ai_job_events_on_update AFTER UPDATE ON ai_jobs
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION ai_job_events_record();

-- Events of jobs that finished more than `older_than` ago; returns how many were deleted.
-- A finished job's stream needs only its final row, which stays in ai_jobs.
CREATE FUNCTION ai_job_events_prune(older_than interval) RETURNS bigint
LANGUAGE sql AS $$
  WITH deleted AS (
    DELETE FROM ai_job_events AS e
    USING ai_jobs AS j
    WHERE e.job_id = j.id
      AND j.status IN ('completed', 'failed')
      AND j.finished_at < now() - older_than
    RETURNING 1
  )
  SELECT count(*) FROM deleted
$$;

-- As on ai_jobs: an authenticated user reads the events of the jobs they created.
ALTER TABLE ai_job_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY ai_job_events_read_own ON ai_job_events FOR SELECT TO authenticated
  USING (EXISTS (
    SELECT 1 FROM ai_jobs AS j
    WHERE j.id = ai_job_events.job_id AND j.created_by = aijobs_request_user()
  ));
GRANT SELECT ON ai_job_events TO authenticated;
