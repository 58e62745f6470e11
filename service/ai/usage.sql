-- Runtime SQL of the accounting of model calls, on the usage columns of ai_jobs
-- (sql/005_claude_budget.sql).

-- name: add_usage
-- One model call's tokens and cost, added to its job. Not fenced by the lease: the tokens
-- were spent whoever holds the job now. A NULL cost (no price known) makes the job's NULL.
UPDATE ai_jobs
SET usage_calls = usage_calls + $2,
    usage_input_tokens = usage_input_tokens + $3,
    usage_output_tokens = usage_output_tokens + $4,
    usage_cache_read_tokens = usage_cache_read_tokens + $5,
    usage_cache_write_tokens = usage_cache_write_tokens + $6,
    cost_usd = cost_usd + $7::numeric
WHERE id = $1;

-- name: job_usage
SELECT usage_calls, usage_input_tokens, usage_output_tokens, usage_cache_read_tokens,
       usage_cache_write_tokens, cost_usd
FROM ai_jobs
WHERE id = $1;
