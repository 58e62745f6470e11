-- Operating aijobs from psql: registered workers, views to look, functions to act.

-- Every worker process registers itself, renews its heartbeat, and removes itself on a clean
-- stop; a row whose heartbeat went stale is removed by the reaper of another worker.
CREATE TABLE ai_worker_registry (
  id           text PRIMARY KEY,
  host         text NOT NULL,
  pid          integer NOT NULL,
  concurrency  integer NOT NULL,
  job_types    text[] NOT NULL DEFAULT '{}',
  started_at   timestamptz NOT NULL DEFAULT now(),
  heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- The jobs a dashboard or an operator looks at: finished ones by finish time.
CREATE INDEX ai_jobs_finished_idx ON ai_jobs (finished_at) WHERE status IN ('completed', 'failed');

-- Counts by job type and status, with how old the oldest due pending job is, how many run
-- now, and how many failed in the last hour.
CREATE VIEW ai_jobs_overview AS
SELECT t.job_type,
       count(j.id) FILTER (WHERE j.status = 'pending')    AS pending,
       count(j.id) FILTER (WHERE j.status = 'processing') AS processing,
       count(j.id) FILTER (WHERE j.status = 'completed')  AS completed,
       count(j.id) FILTER (WHERE j.status = 'failed')     AS failed,
       now() - min(j.run_after) FILTER (WHERE j.status = 'pending' AND j.run_after <= now())
                                                          AS oldest_pending_age,
       count(j.id) FILTER (WHERE j.status = 'processing') AS running_now,
       count(j.id) FILTER (WHERE j.status = 'failed' AND j.finished_at > now() - interval '1 hour')
                                                          AS failed_last_hour
FROM (VALUES ('ai-match'), ('ai-coverage'), ('ai-map-controls')) AS t (job_type)
LEFT JOIN ai_jobs j ON j.job_type = t.job_type
GROUP BY t.job_type
ORDER BY t.job_type;

-- What runs now, where, since when, with how much lease left and how far it got.
CREATE VIEW ai_jobs_running AS
SELECT id, job_type, entity_id, locked_by AS worker, started_at,
       now() - started_at AS running_for,
       locked_until - now() AS lease_left,
       attempts, max_attempts, progress_message, progress_current, progress_total
FROM ai_jobs
WHERE status = 'processing'
ORDER BY started_at;

-- Recent failures, newest first.
CREATE VIEW ai_jobs_failures AS
SELECT id, job_type, entity_id, error_message, attempts, max_attempts, locked_by AS worker,
       created_at, finished_at
FROM ai_jobs
WHERE status = 'failed'
ORDER BY finished_at DESC NULLS LAST;

-- Live workers: registered, heartbeat within the last two minutes, with their jobs in flight.
CREATE VIEW ai_workers AS
SELECT w.id, w.host, w.pid, w.concurrency, w.job_types, w.started_at, w.heartbeat_at,
       now() - w.heartbeat_at AS heartbeat_age,
       (SELECT count(*) FROM ai_jobs j WHERE j.status = 'processing' AND j.locked_by = w.id)
         AS in_flight
FROM ai_worker_registry w
WHERE w.heartbeat_at > now() - interval '2 minutes'
ORDER BY w.started_at;

-- Dispatch, as the API does it: check that the entity can be analysed, then record a job,
-- unless the same analysis is live already (or the key was used), in which case that job is
-- returned. The insert trigger wakes the workers.
-- Errors: no_data_found (P0002) when the entity does not exist; invalid_parameter_value
-- (22023) when there is nothing to analyse or the job type is unknown.
CREATE FUNCTION ai_jobs_enqueue(
  job_type text,
  entity_id bigint,
  created_by text DEFAULT NULL,
  max_attempts integer DEFAULT 5,
  idempotency_key text DEFAULT NULL
) RETURNS ai_jobs
LANGUAGE plpgsql AS $$
DECLARE
  facts record;
  job ai_jobs;
BEGIN
  IF job_type = 'ai-match' THEN
    SELECT m.document_id, length(btrim(d.content)) > 0 AS has_content INTO facts
    FROM requirement_mappings m JOIN documents d ON d.id = m.document_id
    WHERE m.id = entity_id;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'Mapping % not found', entity_id USING ERRCODE = 'no_data_found';
    END IF;
    IF NOT facts.has_content THEN
      RAISE EXCEPTION 'Document % of mapping % has no content to analyse',
        facts.document_id, entity_id USING ERRCODE = 'invalid_parameter_value';
    END IF;
  ELSIF job_type = 'ai-coverage' THEN
    PERFORM 1 FROM requirements r WHERE r.id = entity_id;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'Requirement % not found', entity_id USING ERRCODE = 'no_data_found';
    END IF;
  ELSIF job_type = 'ai-map-controls' THEN
    SELECT length(btrim(d.content)) > 0 AS has_content INTO facts
    FROM documents d WHERE d.id = entity_id;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'Document % not found', entity_id USING ERRCODE = 'no_data_found';
    END IF;
    IF NOT facts.has_content THEN
      RAISE EXCEPTION 'Document % has no content to analyse', entity_id
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM 1 FROM controls LIMIT 1;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'The control catalogue is empty; add controls first'
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
  ELSE
    RAISE EXCEPTION 'Unknown job type %; use ai-match, ai-coverage or ai-map-controls', job_type
      USING ERRCODE = 'invalid_parameter_value';
  END IF;

  -- A unique index decides whether this is a new job, not a read: identical dispatches at
  -- the same moment make one job. A live job we collided with may finish before we read it:
  -- then try again.
  FOR attempt IN 1 .. 5 LOOP
    INSERT INTO ai_jobs AS j (job_type, entity_id, created_by, max_attempts, idempotency_key)
    VALUES (ai_jobs_enqueue.job_type, ai_jobs_enqueue.entity_id, ai_jobs_enqueue.created_by,
            ai_jobs_enqueue.max_attempts, ai_jobs_enqueue.idempotency_key)
    ON CONFLICT DO NOTHING
    RETURNING * INTO job;
    IF FOUND THEN
      RETURN job;
    END IF;
    SELECT * INTO job FROM ai_jobs j
    WHERE coalesce(j.created_by, '') = coalesce(ai_jobs_enqueue.created_by, '')
      AND (j.idempotency_key = ai_jobs_enqueue.idempotency_key
           OR (j.job_type = ai_jobs_enqueue.job_type AND j.entity_id = ai_jobs_enqueue.entity_id
               AND j.status IN ('pending', 'processing')))
    ORDER BY j.idempotency_key IS NOT DISTINCT FROM ai_jobs_enqueue.idempotency_key DESC
    LIMIT 1;
    IF FOUND THEN
      RETURN job;
    END IF;
  END LOOP;
  RAISE EXCEPTION 'Could not record the job: it kept colliding with another'
    USING ERRCODE = 'serialization_failure';
END $$;

-- Run a failed job again from scratch: pending, attempts reset, result and error cleared.
CREATE FUNCTION ai_jobs_retry(job_id uuid) RETURNS ai_jobs
LANGUAGE plpgsql AS $$
DECLARE
  job ai_jobs;
BEGIN
  UPDATE ai_jobs
  SET status = 'pending', attempts = 0, run_after = now(), result = NULL,
      error_message = NULL, finished_at = NULL, started_at = NULL, locked_by = NULL,
      locked_until = NULL, progress_message = 'Queued again by an operator',
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

-- Delete finished jobs (and, by cascade, their events) that finished more than `older_than`
-- ago, at most `batch_size` of them (all when NULL); returns how many were deleted. Call it
-- again until it returns less than the batch to prune a large backlog in short transactions.
CREATE FUNCTION ai_jobs_prune(older_than interval, batch_size integer DEFAULT NULL)
RETURNS bigint
LANGUAGE sql AS $$
  WITH doomed AS (
    SELECT id FROM ai_jobs
    WHERE status IN ('completed', 'failed') AND finished_at < now() - older_than
    ORDER BY finished_at
    LIMIT batch_size
    FOR UPDATE SKIP LOCKED
  ), deleted AS (
    DELETE FROM ai_jobs j USING doomed WHERE j.id = doomed.id RETURNING 1
  )
  SELECT count(*) FROM deleted
$$;
