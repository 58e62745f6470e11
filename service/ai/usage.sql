-- Runtime SQL of the accounting of model calls, on the usage columns of ai_jobs
-- (sql/005_claude_budget.sql).

-- name: add_usage
-- Model calls' tokens and cost, added to their jobs: $1 to $7 are arrays with one entry per
-- job (each id at most once), and each job's totals after the addition are returned. Not
-- fenced by the lease: the tokens were spent whoever holds the job now. A NULL cost (no price
-- known) makes the job's NULL.
-- Rows are locked in id order, as the worker's other multi-row writes lock them.
WITH u AS (
  SELECT * FROM unnest($1::uuid[], $2::int[], $3::bigint[], $4::bigint[], $5::bigint[],
                       $6::bigint[], $7::numeric[])
    AS u (id, calls, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost)
), locked AS (
  SELECT j.id FROM ai_jobs AS j JOIN u ON u.id = j.id ORDER BY j.id FOR UPDATE OF j
)
UPDATE ai_jobs AS j
SET usage_calls = j.usage_calls + u.calls,
    usage_input_tokens = j.usage_input_tokens + u.input_tokens,
    usage_output_tokens = j.usage_output_tokens + u.output_tokens,
    usage_cache_read_tokens = j.usage_cache_read_tokens + u.cache_read_tokens,
    usage_cache_write_tokens = j.usage_cache_write_tokens + u.cache_write_tokens,
    cost_usd = j.cost_usd + u.cost
FROM u JOIN locked ON locked.id = u.id
WHERE j.id = u.id
RETURNING j.id, j.usage_calls, j.usage_input_tokens, j.usage_output_tokens,
          j.usage_cache_read_tokens, j.usage_cache_write_tokens, j.cost_usd;

-- name: job_usage
SELECT usage_calls, usage_input_tokens, usage_output_tokens, usage_cache_read_tokens,
       usage_cache_write_tokens, cost_usd
FROM ai_jobs
WHERE id = $1;
