-- Claude-aware execution: a job's checkpoint, what its model calls used and cost, and the
-- rate limit budget every worker process shares.

-- What a job's processor saved of its progress, so that a later attempt (after a crash, a
-- lost lease or a transient failure) resumes rather than pays for the same work again.
-- Written only by the worker holding the job's lease; cleared when the job completes.
ALTER TABLE ai_jobs ADD COLUMN checkpoint jsonb;

-- Every model call of every attempt of the job adds to these, failed attempts included: the
-- tokens were spent. cost_usd is an estimate at the worker's price table; NULL once a call
-- was made to a model the table has no price for.
ALTER TABLE ai_jobs
  ADD COLUMN usage_calls              integer NOT NULL DEFAULT 0,
  ADD COLUMN usage_input_tokens       bigint  NOT NULL DEFAULT 0,
  ADD COLUMN usage_output_tokens      bigint  NOT NULL DEFAULT 0,
  ADD COLUMN usage_cache_read_tokens  bigint  NOT NULL DEFAULT 0,
  ADD COLUMN usage_cache_write_tokens bigint  NOT NULL DEFAULT 0,
  ADD COLUMN cost_usd                 numeric DEFAULT 0;

-- Claude's usage by day (UTC, of the job's creation) and job type, for `aijobs stats` and
-- dashboards. Jobs deleted by retention leave it.
CREATE VIEW ai_jobs_usage_daily AS
SELECT (created_at AT TIME ZONE 'UTC')::date               AS day,
       job_type,
       count(*)                                            AS jobs,
       sum(usage_calls)                                    AS calls,
       sum(usage_input_tokens)                             AS input_tokens,
       sum(usage_output_tokens)                            AS output_tokens,
       sum(usage_cache_read_tokens)                        AS cache_read_tokens,
       sum(usage_cache_write_tokens)                       AS cache_write_tokens,
       round(sum(cost_usd), 6)                             AS cost_usd,
       count(*) FILTER (WHERE cost_usd IS NULL)            AS unpriced_jobs
FROM ai_jobs
WHERE usage_calls > 0
GROUP BY 1, 2
ORDER BY 1 DESC, 2;

-- One token bucket per model, shared by every worker on every machine: each model call takes
-- its budget here (SELECT ... FOR UPDATE, then UPDATE, in one short transaction) before it is
-- sent, and gives back what it did not use after. The arithmetic is in service/ai/ratelimit.py.
-- *_limit are the per-minute limits the API last announced in its anthropic-ratelimit-*
-- headers (NULL: none announced); the available columns may go below zero when one call
-- needs more than the bucket holds; paused_until is set by a 429 for everyone.
CREATE TABLE ai_rate_limits (
  bucket                  text PRIMARY KEY,
  requests_limit          integer,
  input_tokens_limit      integer,
  output_tokens_limit     integer,
  learned_at              timestamptz,
  requests_available      double precision NOT NULL DEFAULT 0,
  input_tokens_available  double precision NOT NULL DEFAULT 0,
  output_tokens_available double precision NOT NULL DEFAULT 0,
  refilled_at             timestamptz NOT NULL DEFAULT clock_timestamp(),
  paused_until            timestamptz,
  rate_limited            bigint NOT NULL DEFAULT 0,
  last_rate_limited_at    timestamptz,
  updated_at              timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER ai_rate_limits_touch BEFORE UPDATE ON ai_rate_limits
  FOR EACH ROW EXECUTE FUNCTION aijobs_touch_updated_at();
