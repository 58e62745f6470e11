-- An operator's retry keeps counting attempts up: every later write of a job is fenced by
-- its attempt, so the number must never repeat, or a stale actor of the earlier run could
-- pass the fence. The job gets as many attempts again as it had, and starts from scratch
-- (no checkpoint of the earlier run is reused).
CREATE OR REPLACE FUNCTION ai_jobs_retry(job_id uuid) RETURNS ai_jobs
LANGUAGE plpgsql AS $$
DECLARE
  job ai_jobs;
BEGIN
  UPDATE ai_jobs
  SET status = 'pending', max_attempts = attempts + max_attempts, run_after = now(),
      result = NULL, error_message = NULL, finished_at = NULL, started_at = NULL,
      locked_by = NULL, locked_until = NULL, checkpoint = NULL,
      progress_message = 'Queued again by an operator',
      progress_current = NULL, progress_total = NULL
  WHERE id = job_id AND status = 'failed'
  RETURNING * INTO job;
  IF NOT FOUND THEN
    IF EXISTS (SELECT 1 FROM ai_jobs WHERE id = job_id) THEN
      RAISE EXCEPTION 'Job % has not failed; only a failed job can be retried', job_id
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RAISE EXCEPTION 'Job % not found', job_id USING ERRCODE = 'no_data_found';
  END IF;
  PERFORM pg_notify('ai_jobs_new', '');
  RETURN job;
EXCEPTION WHEN unique_violation THEN
  RAISE EXCEPTION 'The same analysis is already pending or running; not retried'
    USING ERRCODE = 'unique_violation';
END $$;
