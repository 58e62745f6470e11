-- Runtime SQL of the shared rate limit budget, one row per model in ai_rate_limits
-- (sql/005_claude_budget.sql). Every change is read, compute, then a write that succeeds only
-- when nobody wrote the row in between (its xmin, the transaction that wrote the version we
-- read, is unchanged); otherwise the change is computed again from the newer row. No
-- transaction stays open across the computation.

-- name: create_bucket
-- A new bucket starts full: its first refill brings the infinite balance down to capacity.
INSERT INTO ai_rate_limits (bucket, requests_available, input_tokens_available,
                            output_tokens_available)
VALUES ($1, 'Infinity', 'Infinity', 'Infinity')
ON CONFLICT DO NOTHING;

-- name: read_bucket
-- The database's clock is the one every worker on every machine shares.
SELECT b.*, b.xmin AS version, clock_timestamp() AS now
FROM ai_rate_limits AS b
WHERE b.bucket = $1;

-- name: save_bucket
-- $13: the version read; "UPDATE 0" when another process wrote the row since.
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
WHERE bucket = $1 AND xmin = $13;
