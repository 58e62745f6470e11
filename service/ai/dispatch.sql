-- name: enqueue_analysis
-- Validation and the idempotent insert, in one round trip: see ai_jobs_enqueue in sql/.
SELECT * FROM ai_jobs_enqueue($1, $2, $3, $4, $5);
