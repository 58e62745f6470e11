-- Runtime SQL of the shared rate limit budget, one row per model in ai_rate_limits
-- (sql/005_claude_budget.sql). Every change is lock, compute, save, in one short transaction.

-- name: create_bucket
-- A new bucket starts full: its first refill brings the infinite balance down to capacity.
INSERT INTO ai_rate_limits (bucket, requests_available, input_tokens_available,
                            output_tokens_available)
VALUES ($1, 'Infinity', 'Infinity', 'Infinity')
ON CONFLICT DO NOTHING;

-- name: lock_bucket
-- The database's clock is the one every worker on every machine shares.
SELECT b.*, clock_timestamp() AS now
FROM ai_rate_limits AS b
WHERE b.bucket = $1
FOR UPDATE;

-- name: save_bucket
UPDATE ai_rate_limits
SET requests_limit = $2,
    input_tokens_limit = $3,
    output_tokens_limit = $4,
    learned_at = $5,
    requests_available = $6,
    input_tokens_available = $7,
    output_tokens_available = $8,
    refilled_at = $9,
    paused_until = $10,
    rate_limited = $11,
    last_rate_limited_at = $12
WHERE bucket = $1;
