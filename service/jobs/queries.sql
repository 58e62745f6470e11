-- Runtime SQL of the queue. Every later write of a claimed job is fenced by its status,
-- its lease owner and its attempt: a worker that lost its lease changes nothing.

-- name: enqueue
-- Nothing is inserted when the same job is live already, or the key was used: see
-- find_duplicate.
INSERT INTO ai_jobs (job_type, entity_id, created_by, max_attempts, idempotency_key)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT DO NOTHING
RETURNING *;

-- name: find_duplicate
-- The job an enqueue collided with: the one with this Idempotency-Key, else the live one.
SELECT * FROM ai_jobs
WHERE coalesce(created_by, '') = coalesce($3, '')
  AND (idempotency_key = $4::text
       OR (job_type = $1 AND entity_id = $2 AND status IN ('pending', 'processing')))
ORDER BY idempotency_key IS NOT DISTINCT FROM $4::text DESC
LIMIT 1;

-- name: cancel_job
SELECT * FROM ai_jobs_cancel($1);

-- name: get_job
SELECT * FROM ai_jobs WHERE id = $1;

-- name: list_jobs
SELECT * FROM ai_jobs
WHERE ($1::text IS NULL OR status = $1)
  AND ($2::text IS NULL OR job_type = $2)
  AND ($3::bigint IS NULL OR entity_id = $3)
  AND ($4::text IS NULL OR created_by = $4)
ORDER BY created_at DESC, id DESC
LIMIT $5;

-- name: claim_jobs
-- Claim up to $1 due jobs in one statement, fair between owners (created_by); commit at once.
-- Highest priority first; then, among owners, the job whose turn comes first: an owner's
-- k-th job in line (in its own order: priority, run_after, a recovered job first) has turn
-- (its owner's running jobs + k), so an owner with nothing running goes before one with
-- twenty, whatever the size of their backlogs; then the oldest. $4 > 0 caps one owner's
-- running jobs across the fleet.
-- Each owner offers at most 2 x $1 jobs: enough for this claim even when a concurrent claim
-- holds (SKIP LOCKED) as many of them as it takes. The owners are found one index probe each.
WITH RECURSIVE owners AS (
  (SELECT coalesce(created_by, '') AS owner FROM ai_jobs
   WHERE status = 'pending'
   ORDER BY 1
   LIMIT 1)
  UNION ALL
  SELECT (SELECT coalesce(j.created_by, '') FROM ai_jobs AS j
          WHERE j.status = 'pending' AND coalesce(j.created_by, '') > o.owner
          ORDER BY 1
          LIMIT 1)
  FROM owners AS o
  WHERE o.owner IS NOT NULL
), running AS MATERIALIZED (
  SELECT o.owner,
         (SELECT count(*) FROM ai_jobs AS j
          WHERE j.status = 'processing' AND coalesce(j.created_by, '') = o.owner) AS n
  FROM owners AS o
  WHERE o.owner IS NOT NULL
), offered AS (
  SELECT c.id, c.priority, c.run_after, c.attempts,
         r.n + row_number() OVER (
           PARTITION BY r.owner ORDER BY c.priority DESC, c.run_after, c.attempts DESC
         ) AS turn
  FROM running AS r
  CROSS JOIN LATERAL (
    SELECT j.id, j.priority, j.run_after, j.attempts FROM ai_jobs AS j
    WHERE j.status = 'pending' AND coalesce(j.created_by, '') = r.owner
      AND j.run_after <= now()
    ORDER BY j.priority DESC, j.run_after, j.attempts DESC
    LIMIT CASE WHEN $4::int > 0 THEN greatest(least(2 * $1, $4::int - r.n), 0) ELSE 2 * $1 END
  ) AS c
), due AS (
  -- The offered jobs in claim order, each locked by its primary key as the order reaches it,
  -- until $1 are: one taken by a concurrent claim is skipped.
  SELECT j.id
  FROM unnest(ARRAY(
         SELECT o.id FROM offered AS o
         ORDER BY o.priority DESC, o.turn, o.run_after, o.attempts DESC
       )) WITH ORDINALITY AS o (id, n)
  JOIN ai_jobs AS j ON j.id = o.id
  WHERE j.status = 'pending' AND j.run_after <= now()
  ORDER BY o.n
  LIMIT $1
  -- NO KEY: the claim changes no key, and a dispatch that records an Idempotency-Key for a
  -- pending job holds a key share lock on it (ai_idempotency_keys' foreign key) until it
  -- commits; the claim must not skip the job for that.
  FOR NO KEY UPDATE OF j SKIP LOCKED
)
UPDATE ai_jobs AS j
SET status = 'processing',
    attempts = j.attempts + 1,
    locked_by = $2,
    locked_until = now() + make_interval(secs => $3),
    -- The moment the row is taken, after this statement's snapshot: now() is when the
    -- statement arrived, before its planning, and a job that finished meanwhile (seen by
    -- this claim as done) could carry a later finished_at than this start.
    started_at = clock_timestamp(),
    progress_message = 'Starting...',
    progress_current = NULL,
    progress_total = NULL,
    error_message = NULL
FROM due
WHERE j.id = due.id
RETURNING j.*;

-- name: claim_jobs_in_order
-- The claim without fair share (AIJOBS_FAIR_SHARE=off): up to $1 due jobs, highest priority
-- first, then oldest, whoever their owner. No cap per owner either.
WITH due AS (
  SELECT id FROM ai_jobs
  WHERE status = 'pending' AND run_after <= now()
  ORDER BY priority DESC, run_after, attempts DESC
  LIMIT $1
  FOR NO KEY UPDATE SKIP LOCKED  -- as in claim_jobs
)
UPDATE ai_jobs AS j
SET status = 'processing',
    attempts = j.attempts + 1,
    locked_by = $2,
    locked_until = now() + make_interval(secs => $3),
    -- The moment the row is taken, after this statement's snapshot: now() is when the
    -- statement arrived, before its planning, and a job that finished meanwhile (seen by
    -- this claim as done) could carry a later finished_at than this start.
    started_at = clock_timestamp(),
    progress_message = 'Starting...',
    progress_current = NULL,
    progress_total = NULL,
    error_message = NULL
FROM due
WHERE j.id = due.id
RETURNING j.*;

-- name: update_progress_many
-- The progress of many running jobs in one statement (see JobStore.progress): $1..$6 are
-- parallel arrays of job id, lease owner, attempt, message, current and total, one entry per
-- job. Each row is fenced; the ids returned are the jobs written, any other was no longer
-- ours. Rows are locked in id order, as every multi-row write of the worker locks them.
WITH reported AS (
  SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[], $5::int[], $6::int[])
    AS r (id, locked_by, attempts, message, current, total)
), mine AS (
  SELECT j.id, reported.message, reported.current, reported.total FROM ai_jobs AS j
  JOIN reported ON j.id = reported.id AND j.locked_by = reported.locked_by
    AND j.attempts = reported.attempts
  WHERE j.status = 'processing'
  ORDER BY j.id
  FOR UPDATE OF j
)
UPDATE ai_jobs AS j
SET progress_message = mine.message, progress_current = mine.current,
    progress_total = mine.total
FROM mine
WHERE j.id = mine.id
RETURNING j.id;

-- name: save_checkpoint
UPDATE ai_jobs
SET checkpoint = $4
WHERE id = $1 AND status = 'processing' AND locked_by = $2 AND attempts = $3;

-- name: complete_job
-- locked_by stays on a finished job: it names the worker that ran it. A completed job has no
-- use for its checkpoint any more.
UPDATE ai_jobs
SET status = 'completed',
    result = $4,
    checkpoint = NULL,
    progress_message = $5,
    progress_current = coalesce(progress_total, progress_current),
    error_message = NULL,
    locked_until = NULL,
    finished_at = now()
WHERE id = $1 AND status = 'processing' AND locked_by = $2 AND attempts = $3
RETURNING *;

-- name: complete_without_effect
-- Many completions in one statement (see Completer): $1..$5 are parallel arrays of job id,
-- lease owner, attempt, result (JSON text) and final message. Each row is fenced as in
-- complete_job; the ids returned are the jobs completed, any other was no longer ours.
WITH done AS (
  SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[], $5::text[])
    AS d (id, locked_by, attempts, result, message)
), mine AS (
  SELECT j.id, done.result, done.message FROM ai_jobs AS j
  JOIN done ON j.id = done.id AND j.locked_by = done.locked_by AND j.attempts = done.attempts
  WHERE j.status = 'processing'
  ORDER BY j.id
  FOR UPDATE OF j
)
UPDATE ai_jobs AS j
SET status = 'completed',
    result = mine.result::jsonb,
    checkpoint = NULL,
    progress_message = mine.message,
    progress_current = coalesce(j.progress_total, j.progress_current),
    error_message = NULL,
    locked_until = NULL,
    finished_at = now()
FROM mine
WHERE j.id = mine.id
RETURNING j.id;

-- name: fail_job
UPDATE ai_jobs
SET status = 'failed',
    error_message = $4,
    locked_until = NULL,
    finished_at = now()
WHERE id = $1 AND status = 'processing' AND locked_by = $2 AND attempts = $3
RETURNING *;

-- name: retry_job
-- Back to pending after a transient failure; $4 is the delay in seconds.
UPDATE ai_jobs
SET status = 'pending',
    run_after = now() + make_interval(secs => $4),
    progress_message = $5,
    error_message = $6,
    locked_by = NULL,
    locked_until = NULL
WHERE id = $1 AND status = 'processing' AND locked_by = $2 AND attempts = $3
RETURNING *;

-- name: snooze_job
-- Back to pending after a rate limit or an overloaded provider refused the job for now; $4
-- is the delay in seconds, added to the job's rate_limit_wait_s. The wait costs no attempt:
-- max_attempts grows by one rather than attempts going down, because every later write of a
-- job is fenced by its attempt, and an attempt number must never come back.
UPDATE ai_jobs
SET status = 'pending',
    run_after = now() + make_interval(secs => $4),
    max_attempts = max_attempts + 1,
    rate_limit_wait_s = rate_limit_wait_s + $4,
    progress_message = $5,
    error_message = $6,
    locked_by = NULL,
    locked_until = NULL
WHERE id = $1 AND status = 'processing' AND locked_by = $2 AND attempts = $3
RETURNING *;

-- name: release_job
-- Hand a job back untouched (a graceful shutdown, the database away while it ran): the
-- attempt is not counted, and its checkpoint stays. run_after is left as it was, so the job
-- is first in line again rather than behind the backlog. $4: the progress message.
UPDATE ai_jobs
SET status = 'pending',
    attempts = attempts - 1,
    progress_message = $4,
    locked_by = NULL,
    locked_until = NULL
WHERE id = $1 AND status = 'processing' AND locked_by = $2 AND attempts = $3;

-- name: release_orphans
-- Jobs the database says worker $1 runs but it does not: a claim or an outcome that a crash
-- undid (a commit acknowledged before it was flushed, as the worker's asynchronous commits
-- are, is lost with the crash). Handed back at once, the attempt not counted, instead of
-- waiting for their leases to run out. $2, $3: the (job id, attempt)s the worker does run.
UPDATE ai_jobs AS j
SET status = 'pending',
    attempts = j.attempts - 1,
    progress_message = $4,
    locked_by = NULL,
    locked_until = NULL
WHERE j.status = 'processing' AND j.locked_by = $1
  AND NOT EXISTS (
    SELECT 1 FROM unnest($2::uuid[], $3::int[]) AS m (id, attempts)
    WHERE m.id = j.id AND m.attempts = j.attempts
  )
RETURNING j.id;

-- name: extend_leases
-- Fenced by the attempt too: a job reaped and claimed again is another actor's lease.
-- Rows are locked in id order, as complete_without_effect locks them: two statements of one
-- worker over the same jobs never wait for each other in a cycle.
WITH mine AS (
  SELECT j.id FROM ai_jobs AS j
  JOIN unnest($2::uuid[], $4::int[]) AS m (id, attempts)
    ON j.id = m.id AND j.attempts = m.attempts
  WHERE j.status = 'processing' AND j.locked_by = $1
  ORDER BY j.id
  FOR UPDATE OF j
)
UPDATE ai_jobs AS j
SET locked_until = now() + make_interval(secs => $3)
FROM mine
WHERE j.id = mine.id
RETURNING j.id;

-- name: reap_expired
-- Jobs whose worker stopped renewing its lease: back to pending, or failed when out of
-- attempts. The attempt the dead worker used stays counted. run_after is left as it was, so
-- a recovered job goes to the front of the queue.
WITH expired AS (
  SELECT id FROM ai_jobs
  WHERE status = 'processing' AND locked_until < now()
  ORDER BY locked_until
  LIMIT $1
  FOR UPDATE SKIP LOCKED
)
UPDATE ai_jobs AS j
SET status = CASE WHEN j.attempts >= j.max_attempts THEN 'failed' ELSE 'pending' END,
    error_message = CASE WHEN j.attempts >= j.max_attempts
      THEN 'The worker running this job stopped responding and no attempts are left ('
           || j.attempts || ' of ' || j.max_attempts || ')'
      ELSE NULL END,
    progress_message = CASE WHEN j.attempts >= j.max_attempts THEN j.progress_message
      ELSE 'Worker lost; queued to run again (attempt ' || j.attempts || ' of '
           || j.max_attempts || ' used)' END,
    finished_at = CASE WHEN j.attempts >= j.max_attempts THEN now() ELSE NULL END,
    locked_by = NULL,
    locked_until = NULL
FROM expired
WHERE j.id = expired.id
RETURNING j.id, j.status;

-- name: try_reaper_lock
SELECT pg_try_advisory_xact_lock($1);

-- name: worker_heartbeat
-- Registers the worker too: a row removed while the worker was cut off comes back.
INSERT INTO ai_worker_registry (id, host, pid, concurrency, job_types)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now();

-- name: deregister_worker
DELETE FROM ai_worker_registry WHERE id = $1;

-- name: remove_stale_workers
-- Workers that stopped renewing their row without removing it: killed, or cut off.
DELETE FROM ai_worker_registry WHERE heartbeat_at < now() - make_interval(secs => $1);

-- name: try_prune_lock
SELECT pg_try_advisory_xact_lock($1);

-- name: prune_finished
-- One batch, one short transaction, as ai_jobs_prune in sql/ does it: the oldest $2 jobs
-- finished more than $1 seconds ago (their events go with them), from finished_at $3 on (NULL:
-- from the oldest). The pruner passes the previous batch's last finished_at: the index
-- entries of the rows it deleted stay in ai_jobs_finished_idx until vacuum, and a scan from
-- the start would step over all of them again, so that each batch of a long prune cost more
-- than the one before. Returns how many were deleted and the last one's finished_at.
WITH doomed AS (
  SELECT id, finished_at FROM ai_jobs
  WHERE status IN ('completed', 'failed')
    AND finished_at < now() - make_interval(secs => $1)
    AND finished_at >= coalesce($3::timestamptz, '-infinity')
  ORDER BY finished_at
  LIMIT $2
  FOR UPDATE SKIP LOCKED
), deleted AS (
  DELETE FROM ai_jobs AS j USING doomed WHERE j.id = doomed.id RETURNING doomed.finished_at
)
SELECT count(*) AS deleted, max(finished_at) AS last_finished_at FROM deleted;

-- name: session_role
SELECT current_user::text;

-- name: enter_user_scope
-- For the rest of this transaction, act as an authenticated user with these JWT claims:
-- row level security then shows only that user's jobs, whatever a query's WHERE says.
SELECT set_config('role', 'authenticated', true), set_config('request.jwt.claims', $1, true);

-- -- dispatch and reads: one round trip for many reads ---------------------------------

-- name: read_jobs
-- Jobs as the API shows them, many readers at once: job ids $1, each read as the user of the
-- JWT claims in $2 (JSON text; NULL: the service's own rights), with its version tag; only
-- the tag and status when the tag is among the comma-separated ones in $3. See
-- ai_jobs_read_many in sql/.
SELECT * FROM ai_jobs_read_many($1, $2, $3);

-- -- listeners ---------------------------------------------------------------------------

-- name: notify
-- A listener's round trip: sent through the pool, as real notifications are, so that it
-- proves what they need (see jobs/listener.py).
SELECT pg_notify($1, $2);

-- name: notify_many
-- Notifications on one channel ($2 their payloads) in one statement: delivered together, in
-- order, when it commits.
SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p;
