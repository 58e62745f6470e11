-- name: overview
SELECT * FROM ai_jobs_overview;

-- name: workers
SELECT id, host, pid, concurrency, in_flight, heartbeat_age FROM ai_workers;

-- name: usage_view_exists
SELECT to_regclass('ai_jobs_usage_daily') IS NOT NULL;

-- name: usage_daily
SELECT * FROM ai_jobs_usage_daily ORDER BY 1 DESC, 2 LIMIT $1;

-- name: jobs
SELECT id, job_type, entity_id, status, attempts, progress_message, error_message, created_at
FROM ai_jobs
WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR job_type = $2)
ORDER BY created_at DESC
LIMIT $3;
