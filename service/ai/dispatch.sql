-- name: enqueue_analysis
-- Validation and the idempotent insert, in one round trip: see ai_jobs_enqueue in sql/.
-- `created`: the job's insert is this transaction's, not an earlier dispatch's.
SELECT j.*, j.created_at = now() AS created FROM ai_jobs_enqueue($1, $2, $3, $4, $5) AS j;
