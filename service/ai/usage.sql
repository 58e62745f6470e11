-- Runtime SQL of the accounting of model calls, on the usage columns of ai_jobs
-- (sql/005_claude_budget.sql).

-- name: add_usage
-- Model calls' tokens and cost, added to their jobs: $1 to $7 are arrays with one entry per
-- job (each id at most once), and each job's totals after the addition are returned. Not
-- fenced by the lease: the tokens were spent whoever holds the job now. A NULL cost (no price
-- known) makes the job's NULL.
-- The same calls are added to their owners' spend of the day (ai_user_spend, UTC), which
-- dispatch holds against the daily budget.
-- Rows are locked in id order, as the worker's other multi-row writes lock them, then the
-- owners' spend rows in owner order.
WITH u AS (
  SELECT * FROM unnest($1::uuid[], $2::int[], $3::bigint[], $4::bigint[], $5::bigint[],
                       $6::bigint[], $7::numeric[])
    AS u (id, calls, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost)
), locked AS (
  SELECT j.id FROM ai_jobs AS j JOIN u ON u.id = j.id ORDER BY j.id FOR UPDATE OF j
), added AS (
  UPDATE ai_jobs AS j
  SET usage_calls = j.usage_calls + u.calls,
      usage_input_tokens = j.usage_input_tokens + u.input_tokens,
      usage_output_tokens = j.usage_output_tokens + u.output_tokens,
      usage_cache_read_tokens = j.usage_cache_read_tokens + u.cache_read_tokens,
      usage_cache_write_tokens = j.usage_cache_write_tokens + u.cache_write_tokens,
      cost_usd = j.cost_usd + u.cost
  FROM u JOIN locked ON locked.id = u.id
  WHERE j.id = u.id
  RETURNING j.id, j.created_by, u.calls, u.input_tokens, u.output_tokens, u.cache_read_tokens,
            u.cache_write_tokens, u.cost, j.usage_calls, j.usage_input_tokens,
            j.usage_output_tokens, j.usage_cache_read_tokens, j.usage_cache_write_tokens,
            j.cost_usd
), spent AS (
  INSERT INTO ai_user_spend AS s
    (created_by, day, calls, input_tokens, output_tokens, cache_read_tokens,
     cache_write_tokens, cost_usd, unpriced_calls)
  SELECT coalesce(a.created_by, ''), (now() AT TIME ZONE 'UTC')::date, sum(a.calls),
         sum(a.input_tokens), sum(a.output_tokens), sum(a.cache_read_tokens),
         sum(a.cache_write_tokens), coalesce(sum(a.cost), 0),
         coalesce(sum(a.calls) FILTER (WHERE a.cost IS NULL), 0)
  FROM added AS a
  GROUP BY 1
  ORDER BY 1
  ON CONFLICT (created_by, day) DO UPDATE
  SET calls = s.calls + excluded.calls,
      input_tokens = s.input_tokens + excluded.input_tokens,
      output_tokens = s.output_tokens + excluded.output_tokens,
      cache_read_tokens = s.cache_read_tokens + excluded.cache_read_tokens,
      cache_write_tokens = s.cache_write_tokens + excluded.cache_write_tokens,
      cost_usd = s.cost_usd + excluded.cost_usd,
      unpriced_calls = s.unpriced_calls + excluded.unpriced_calls
)
SELECT a.id, a.usage_calls, a.usage_input_tokens, a.usage_output_tokens,
       a.usage_cache_read_tokens, a.usage_cache_write_tokens, a.cost_usd
FROM added AS a;

-- name: job_usage
SELECT usage_calls, usage_input_tokens, usage_output_tokens, usage_cache_read_tokens,
       usage_cache_write_tokens, cost_usd
FROM ai_jobs
WHERE id = $1;
