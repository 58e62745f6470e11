-- Idempotent dispatch and cancellation.

ALTER TABLE ai_jobs ADD COLUMN idempotency_key text;

-- At most one live job per type, entity and user: a second dispatch returns the first.
CREATE UNIQUE INDEX ai_jobs_one_live_idx ON ai_jobs (job_type, entity_id, coalesce(created_by, ''))
  WHERE status IN ('pending', 'processing');

-- An Idempotency-Key names one job per user, whatever became of it.
CREATE UNIQUE INDEX ai_jobs_idempotency_idx ON ai_jobs (coalesce(created_by, ''), idempotency_key)
  WHERE idempotency_key IS NOT NULL;

-- Cancel a job that has not finished. It fails at once with 'Cancelled'; a worker still
-- running it learns so by NOTIFY (or at its next heartbeat at the latest), and its later
-- writes are fenced off by the status, so the entity is left untouched.
-- Returns the cancelled job; nothing when there is no such job or it had finished already.
CREATE FUNCTION ai_jobs_cancel(job_id uuid) RETURNS SETOF ai_jobs
LANGUAGE plpgsql AS $$
DECLARE
  cancelled ai_jobs;
  was_running boolean;
BEGIN
  SELECT status = 'processing' INTO was_running FROM ai_jobs WHERE id = job_id FOR UPDATE;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  UPDATE ai_jobs
  SET status = 'failed',
      error_message = 'Cancelled',
      progress_message = 'Cancelled',
      locked_until = NULL,
      finished_at = now()
  WHERE id = job_id AND status IN ('pending', 'processing')
  RETURNING * INTO cancelled;
  IF FOUND THEN
    IF was_running THEN
      PERFORM pg_notify('ai_jobs_cancel', job_id::text);
    END IF;
    RETURN NEXT cancelled;
  END IF;
END $$;

-- Among jobs due at the same moment, one that already had an attempt (recovered from a
-- dead worker, or retried) goes first: it has waited longest.
DROP INDEX ai_jobs_pending_idx;
CREATE INDEX ai_jobs_pending_idx ON ai_jobs (run_after, attempts DESC) WHERE status = 'pending';
