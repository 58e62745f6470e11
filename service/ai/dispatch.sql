-- name: enqueue_many
-- A group of dispatches in one statement: see ai_jobs_enqueue_many in sql/. One row per
-- dispatch, `n` its position in the arrays; $7 is the rate window in seconds, $8 the
-- priorities, $9 the daily budget in USD (NULL: none).
SELECT n, outcome, message, job_id, status, job_type, entity_id, retry_after_s
FROM ai_jobs_enqueue_many($1, $2, $3, $4, $5, $6, make_interval(secs => $7), $8, $9::numeric);
