-- Fair to every user: priorities, fair share between owners in the claim (the claim query
-- itself is in service/jobs/queries.sql), daily spending budgets, and rate-limit waits that
-- cost no attempt. docs/fairness.md tells the whole story.

-- priority: higher is claimed first (-10..10); it orders before fair share.
-- rate_limit_wait_s: seconds the job has been sent back to wait because Claude answered 429
-- or 529, or the shared rate limit budget held it; such a wait costs no attempt, and the job
-- fails once the waits add up to AIJOBS_MAX_WAIT.
ALTER TABLE ai_jobs
  ADD COLUMN priority integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN -10 AND 10),
  ADD COLUMN rate_limit_wait_s double precision NOT NULL DEFAULT 0
    CHECK (rate_limit_wait_s >= 0);

-- The claim without fair share walks this one: due pending jobs, highest priority first,
-- then oldest, a recovered one before a new one.
DROP INDEX ai_jobs_pending_idx;
CREATE INDEX ai_jobs_pending_idx ON ai_jobs (priority DESC, run_after, attempts DESC)
  WHERE status = 'pending';
-- The fair claim walks this one: the owners that have pending jobs (one probe each), and
-- each owner's jobs in the same order as above.
CREATE INDEX ai_jobs_pending_owner_idx
  ON ai_jobs ((coalesce(created_by, '')), priority DESC, run_after, attempts DESC)
  WHERE status = 'pending';
-- And this one: how many jobs each of those owners has running.
CREATE INDEX ai_jobs_running_owner_idx ON ai_jobs ((coalesce(created_by, '')))
  WHERE status = 'processing';

-- What each user's model calls cost, by day (UTC, of the call's recording): written with the
-- usage columns of ai_jobs (service/ai/usage.sql), read by dispatch against the budget and by
-- ai_jobs_by_user. created_by '' stands for jobs without an owner.
CREATE TABLE ai_user_spend (
  created_by         text NOT NULL,
  day                date NOT NULL,
  calls              bigint NOT NULL DEFAULT 0,
  input_tokens       bigint NOT NULL DEFAULT 0,
  output_tokens      bigint NOT NULL DEFAULT 0,
  cache_read_tokens  bigint NOT NULL DEFAULT 0,
  cache_write_tokens bigint NOT NULL DEFAULT 0,
  cost_usd           numeric NOT NULL DEFAULT 0,
  -- Calls to a model the price table had no price for: not in cost_usd.
  unpriced_calls     bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (created_by, day)
);

-- A user's own daily budget, over AIJOBS_USER_DAILY_BUDGET_USD: a row with a NULL budget
-- means no budget at all for that user. Operators write it from psql:
--   INSERT INTO ai_user_budgets VALUES ('user-id', 25)
--   ON CONFLICT (created_by) DO UPDATE SET daily_budget_usd = excluded.daily_budget_usd;
CREATE TABLE ai_user_budgets (
  created_by       text PRIMARY KEY,
  daily_budget_usd numeric CHECK (daily_budget_usd >= 0),
  updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER ai_user_budgets_touch BEFORE UPDATE ON ai_user_budgets
  FOR EACH ROW EXECUTE FUNCTION aijobs_touch_updated_at();

-- Only the service and operators read or write these: row level security on, no policy, so
-- the `authenticated` role sees nothing; nothing for anon.
ALTER TABLE ai_user_spend ENABLE ROW LEVEL SECURITY;
ALTER TABLE ai_user_budgets ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON ai_user_spend, ai_user_budgets FROM PUBLIC;
-- The roles exist on Supabase (and where 001 could create them), not on every server.
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
    REVOKE ALL ON ai_user_spend, ai_user_budgets FROM anon;
  END IF;
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    REVOKE ALL ON ai_user_spend, ai_user_budgets FROM authenticated;
  END IF;
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
    GRANT ALL ON ai_user_spend, ai_user_budgets TO service_role;
  END IF;
END $$;

-- Per user, now: jobs queued and running, jobs finished today (UTC), and what their model
-- calls used and cost today. daily_budget_usd is the user's own row in ai_user_budgets
-- (NULL: AIJOBS_USER_DAILY_BUDGET_USD applies, or none is set). created_by '' stands for jobs
-- without an owner.
CREATE VIEW ai_jobs_by_user WITH (security_invoker = true) AS
WITH today AS (
  SELECT (now() AT TIME ZONE 'UTC')::date AS day,
         date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS since
), jobs AS (
  SELECT coalesce(j.created_by, '') AS created_by,
         count(*) FILTER (WHERE j.status = 'pending')    AS queued,
         count(*) FILTER (WHERE j.status = 'processing') AS running,
         count(*) FILTER (WHERE j.status = 'completed')  AS completed_today,
         count(*) FILTER (WHERE j.status = 'failed')     AS failed_today
  FROM ai_jobs AS j, today
  WHERE j.status IN ('pending', 'processing') OR j.finished_at >= today.since
  GROUP BY 1
), spend AS (
  SELECT s.* FROM ai_user_spend AS s, today WHERE s.day = today.day
)
SELECT coalesce(j.created_by, s.created_by)           AS created_by,
       coalesce(j.queued, 0)                          AS queued,
       coalesce(j.running, 0)                         AS running,
       coalesce(j.completed_today, 0)                 AS completed_today,
       coalesce(j.failed_today, 0)                    AS failed_today,
       coalesce(s.calls, 0)                           AS calls_today,
       coalesce(s.input_tokens, 0)                    AS input_tokens_today,
       coalesce(s.output_tokens, 0)                   AS output_tokens_today,
       coalesce(s.cache_read_tokens, 0)               AS cache_read_tokens_today,
       coalesce(s.cache_write_tokens, 0)              AS cache_write_tokens_today,
       round(coalesce(s.cost_usd, 0), 6)              AS cost_usd_today,
       coalesce(s.unpriced_calls, 0)                  AS unpriced_calls_today,
       b.daily_budget_usd
FROM jobs AS j
FULL JOIN spend AS s ON s.created_by = j.created_by
LEFT JOIN ai_user_budgets AS b ON b.created_by = coalesce(j.created_by, s.created_by)
ORDER BY cost_usd_today DESC, queued DESC, created_by;

REVOKE ALL ON ai_jobs_by_user FROM PUBLIC;
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
    REVOKE ALL ON ai_jobs_by_user FROM anon;
  END IF;
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    REVOKE ALL ON ai_jobs_by_user FROM authenticated;
  END IF;
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
    GRANT SELECT ON ai_jobs_by_user TO service_role;
  END IF;
END $$;

-- Dispatch, as in 008, with two more things per request: its priority (`priorities`, NULL or
-- a NULL element: 0), and the user's daily budget. A user whose model calls cost at least
-- their budget since 00:00 UTC gets outcome budget_exhausted (message: the budget and the
-- spend; retry_after_s: until the next 00:00 UTC). The budget is the user's row in
-- ai_user_budgets, else `daily_budget` (NULL: none). Jobs already queued or running are
-- not touched: they finish.
DROP FUNCTION ai_jobs_enqueue(text, bigint, text, integer, text);
DROP FUNCTION ai_jobs_enqueue_many(text[], bigint[], text[], integer[], text[], integer, interval);
CREATE FUNCTION ai_jobs_enqueue_many(
  job_types text[],
  entity_ids bigint[],
  created_bys text[],
  max_attempts integer[],
  idempotency_keys text[],
  per_user_limit integer DEFAULT 0,
  rate_window interval DEFAULT interval '1 minute',
  priorities integer[] DEFAULT NULL,
  daily_budget numeric DEFAULT NULL
) RETURNS SETOF ai_jobs_dispatch_outcome
LANGUAGE plpgsql AS $$
DECLARE
  todo integer[];  -- the requests this round decides; NULL: all of them
  decided ai_jobs_dispatch_outcome[];
  rounds integer := 0;
BEGIN
  LOOP
    -- Every round decides its first request, unless another transaction's insert kept
    -- colliding with it.
    rounds := rounds + 1;
    IF rounds > coalesce(cardinality(job_types), 0) + 10 THEN
      RAISE EXCEPTION 'Could not record the jobs: they kept colliding with others'
        USING ERRCODE = 'serialization_failure';
    END IF;

    WITH round AS (
      SELECT t.n::integer AS n,
             job_types[t.n] AS job_type,
             entity_ids[t.n] AS entity_id,
             created_bys[t.n] AS created_by,
             coalesce(created_bys[t.n], '') AS owner,
             max_attempts[t.n] AS max_attempts,
             idempotency_keys[t.n] AS idempotency_key,
             coalesce(priorities[t.n], 0) AS priority
      FROM unnest(coalesce(todo, ARRAY(SELECT generate_subscripts(job_types, 1)))) AS t (n)
    ), compared AS (
      -- Each request against the earlier ones of its user with the same key, and with the
      -- same analysis: the least and greatest analysis (key) among them.
      SELECT round.*,
             min(round.job_type || ':' || round.entity_id) OVER same_key AS key_lo,
             max(round.job_type || ':' || round.entity_id) OVER same_key AS key_hi,
             min(coalesce('k' || round.idempotency_key, 'n')) OVER same_analysis AS an_lo,
             max(coalesce('k' || round.idempotency_key, 'n')) OVER same_analysis AS an_hi
      FROM round
      WINDOW same_key AS (
               PARTITION BY round.owner, round.idempotency_key ORDER BY round.n
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
             same_analysis AS (
               PARTITION BY round.owner, round.job_type, round.entity_id ORDER BY round.n
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
    ), marked AS (
      -- Held back to a later round: a request that shares its user and its key, or its user
      -- and its analysis, with an earlier one of this round that is not identical to it.
      -- Identical requests stay: the first decides, the others follow it.
      SELECT c.*,
             coalesce(c.idempotency_key IS NOT NULL
                        AND (c.key_lo <> c.job_type || ':' || c.entity_id
                             OR c.key_hi <> c.job_type || ':' || c.entity_id), false)
               OR coalesce(c.an_lo <> coalesce('k' || c.idempotency_key, 'n')
                           OR c.an_hi <> coalesce('k' || c.idempotency_key, 'n'), false)
               AS held_back
      FROM compared c
    ), req AS (
      SELECT m.n, m.job_type, m.entity_id, m.created_by, m.owner, m.max_attempts,
             m.idempotency_key, m.priority
      FROM marked m
      WHERE NOT m.held_back
    ), led AS (
      SELECT req.*,
             min(req.n) OVER (
               PARTITION BY req.owner, req.job_type, req.entity_id, req.idempotency_key
             ) AS leader
      FROM req
    ), checked AS (
      -- The checks ai_jobs_enqueue made until now (004), in the same order, with the same
      -- messages.
      SELECT led.*,
             CASE
               WHEN led.job_type = 'ai-match' THEN
                 CASE WHEN m.id IS NULL THEN 'missing'
                      WHEN length(btrim(md.content)) = 0 THEN 'not_analysable' END
               WHEN led.job_type = 'ai-coverage' THEN
                 CASE WHEN r.id IS NULL THEN 'missing' END
               WHEN led.job_type = 'ai-map-controls' THEN
                 CASE WHEN d.id IS NULL THEN 'missing'
                      WHEN length(btrim(d.content)) = 0 THEN 'not_analysable'
                      WHEN NOT EXISTS (SELECT FROM controls) THEN 'not_analysable' END
               ELSE 'not_analysable'
             END AS problem,
             CASE
               WHEN led.job_type = 'ai-match' THEN
                 CASE WHEN m.id IS NULL THEN format('Mapping %s not found', led.entity_id)
                      WHEN length(btrim(md.content)) = 0 THEN
                        format('Document %s of mapping %s has no content to analyse',
                               m.document_id, led.entity_id) END
               WHEN led.job_type = 'ai-coverage' THEN
                 CASE WHEN r.id IS NULL THEN format('Requirement %s not found', led.entity_id) END
               WHEN led.job_type = 'ai-map-controls' THEN
                 CASE WHEN d.id IS NULL THEN format('Document %s not found', led.entity_id)
                      WHEN length(btrim(d.content)) = 0 THEN
                        format('Document %s has no content to analyse', led.entity_id)
                      WHEN NOT EXISTS (SELECT FROM controls) THEN
                        'The control catalogue is empty; add controls first' END
               ELSE format('Unknown job type %s; use ai-match, ai-coverage or ai-map-controls',
                           led.job_type)
             END AS message
      FROM led
      LEFT JOIN requirement_mappings m ON led.job_type = 'ai-match' AND m.id = led.entity_id
      LEFT JOIN documents md ON md.id = m.document_id
      LEFT JOIN requirements r ON led.job_type = 'ai-coverage' AND r.id = led.entity_id
      LEFT JOIN documents d ON led.job_type = 'ai-map-controls' AND d.id = led.entity_id
    ), found AS (
      -- The job this request gets instead of a new one: the key's job, else the live one.
      SELECT c.*, e.id AS existing_id, e.status AS existing_status,
             e.job_type AS existing_type, e.entity_id AS existing_entity
      FROM checked c
      LEFT JOIN LATERAL (
        SELECT j.id, j.status, j.job_type, j.entity_id
        FROM ai_jobs j
        WHERE c.problem IS NULL
          AND coalesce(j.created_by, '') = c.owner
          AND (j.idempotency_key = c.idempotency_key
               OR (j.job_type = c.job_type AND j.entity_id = c.entity_id
                   AND j.status IN ('pending', 'processing')))
        ORDER BY j.idempotency_key IS NOT DISTINCT FROM c.idempotency_key DESC
        LIMIT 1
      ) AS e ON true
    ), recent AS (
      -- Each user's jobs in the window, as far as the limit: enough to tell whether it is
      -- reached, and as cheap as the user's own index entries up to it.
      SELECT u.created_by, c.jobs
      FROM (SELECT DISTINCT req.created_by FROM req
            WHERE per_user_limit > 0 AND req.created_by IS NOT NULL) AS u
      CROSS JOIN LATERAL (
        SELECT count(*) AS jobs FROM (
          SELECT FROM ai_jobs AS j
          WHERE j.created_by = u.created_by AND j.created_at > now() - rate_window
          LIMIT per_user_limit
        ) AS w
      ) AS c
    ), spending AS (
      -- Each user's daily budget (their row in ai_user_budgets, else daily_budget) and
      -- what their model calls cost since 00:00 UTC.
      SELECT u.created_by,
             CASE WHEN b.created_by IS NULL THEN daily_budget
                  ELSE b.daily_budget_usd END AS budget,
             coalesce(s.cost_usd, 0) AS spent
      FROM (SELECT DISTINCT req.created_by FROM req WHERE req.created_by IS NOT NULL) AS u
      LEFT JOIN ai_user_budgets AS b ON b.created_by = u.created_by
      LEFT JOIN ai_user_spend AS s
        ON s.created_by = u.created_by AND s.day = (now() AT TIME ZONE 'UTC')::date
    ), counted AS (
      -- A request is over the limit when the user's jobs in the window, with the new ones of
      -- the requests before it in this round, reach it.
      SELECT f.*,
             per_user_limit > 0 AND f.created_by IS NOT NULL
               AND coalesce(rc.jobs, 0) + count(*) FILTER (
                     WHERE f.problem IS NULL AND f.existing_id IS NULL AND f.n = f.leader
                   ) OVER (PARTITION BY f.owner ORDER BY f.n
                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                   >= per_user_limit AS limited,
             coalesce(sp.spent >= sp.budget, false) AS over_budget,
             sp.budget, sp.spent
      FROM found f
      LEFT JOIN recent rc ON rc.created_by = f.created_by
      LEFT JOIN spending sp ON sp.created_by = f.created_by
    ), verdicts AS (
      SELECT c.*,
             CASE WHEN c.limited THEN 'rate_limited'
                  WHEN c.over_budget THEN 'budget_exhausted'
                  WHEN c.problem IS NOT NULL THEN c.problem
                  WHEN c.existing_id IS NOT NULL THEN 'existing'
                  WHEN c.n = c.leader THEN 'new'
                  ELSE 'follow' END AS verdict
      FROM counted c
    ), inserted AS (
      INSERT INTO ai_jobs AS j
        (job_type, entity_id, created_by, max_attempts, idempotency_key, priority)
      SELECT v.job_type, v.entity_id, v.created_by, v.max_attempts, v.idempotency_key,
             v.priority
      FROM verdicts v
      WHERE v.verdict = 'new'
      -- One order for every process's groups: two groups meeting on the unique indexes
      -- wait for each other in the same order, not in a cycle.
      ORDER BY v.owner, v.job_type, v.entity_id
      ON CONFLICT DO NOTHING
      RETURNING j.id, j.status, j.job_type, j.entity_id, coalesce(j.created_by, '') AS owner
    )
    -- The answers of this round, and the requests left for the next one: those held back,
    -- and those whose insert met a job another transaction committed meanwhile (the next
    -- round's statement sees it).
    SELECT array_agg(r.o ORDER BY (r.o).n)
             FILTER (WHERE (r.o).outcome NOT IN ('collided', 'held_back')),
           array_agg((r.o).n ORDER BY (r.o).n)
             FILTER (WHERE (r.o).outcome IN ('collided', 'held_back'))
    INTO decided, todo
    FROM (
      SELECT ROW(
               v.n,
               CASE
                 WHEN v.verdict IN ('new', 'follow') AND i.id IS NULL THEN 'collided'
                 WHEN v.verdict = 'new' THEN 'created'
                 WHEN v.verdict = 'follow' THEN 'existing'
                 ELSE v.verdict
               END,
               CASE WHEN v.verdict IN ('missing', 'not_analysable') THEN v.message
                    WHEN v.verdict = 'budget_exhausted' THEN
                      format('The daily budget of %s USD is spent: %s USD since 00:00 UTC',
                             round(v.budget, 2), round(v.spent, 2)) END,
               CASE WHEN v.verdict = 'existing' THEN v.existing_id ELSE i.id END,
               CASE WHEN v.verdict = 'existing' THEN v.existing_status ELSE i.status END,
               CASE WHEN v.verdict = 'existing' THEN v.existing_type ELSE i.job_type END,
               CASE WHEN v.verdict = 'existing' THEN v.existing_entity ELSE i.entity_id END,
               -- In how many seconds the oldest of the user's jobs in the window leaves it
               -- (one made by this call: the whole window).
               CASE WHEN v.verdict = 'rate_limited' THEN (
                 SELECT greatest(ceil(extract(epoch FROM
                          least(min(j.created_at), now()) + rate_window - now()))::integer, 1)
                 FROM ai_jobs AS j
                 WHERE j.created_by = v.created_by AND j.created_at > now() - rate_window
               )
               -- The budget resets at the next 00:00 UTC.
               WHEN v.verdict = 'budget_exhausted' THEN greatest(ceil(extract(epoch FROM
                 ((now() AT TIME ZONE 'UTC')::date + 1) AT TIME ZONE 'UTC' - now()))::integer, 1)
               END
             )::ai_jobs_dispatch_outcome AS o
      FROM verdicts v
      LEFT JOIN inserted i
        ON v.verdict IN ('new', 'follow')
       AND (i.owner, i.job_type, i.entity_id) = (v.owner, v.job_type, v.entity_id)
      UNION ALL
      SELECT ROW(m.n, 'held_back', NULL, NULL, NULL, NULL, NULL, NULL)::ai_jobs_dispatch_outcome
      FROM marked m
      WHERE m.held_back
    ) AS r;

    RETURN QUERY SELECT * FROM unnest(decided);
    EXIT WHEN todo IS NULL;
  END LOOP;
END $$;
-- Dispatch one analysis, as in 008, with its priority: errors no_data_found (P0002) when the
-- entity does not exist, invalid_parameter_value (22023) when there is nothing to analyse or
-- the job type is unknown, program_limit_exceeded (54000) when the user's own daily budget
-- in ai_user_budgets is spent. Returns the new job, or the live (or same-key) one.
CREATE FUNCTION ai_jobs_enqueue(
  job_type text,
  entity_id bigint,
  created_by text DEFAULT NULL,
  max_attempts integer DEFAULT 5,
  idempotency_key text DEFAULT NULL,
  priority integer DEFAULT 0
) RETURNS ai_jobs
LANGUAGE plpgsql AS $$
DECLARE
  decided ai_jobs_dispatch_outcome;
  job ai_jobs;
BEGIN
  IF ai_jobs_enqueue.priority IS NULL OR ai_jobs_enqueue.priority NOT BETWEEN -10 AND 10 THEN
    RAISE EXCEPTION 'priority must be an integer from -10 to 10, got %', ai_jobs_enqueue.priority
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  SELECT * INTO decided FROM ai_jobs_enqueue_many(
    ARRAY[ai_jobs_enqueue.job_type], ARRAY[ai_jobs_enqueue.entity_id],
    ARRAY[ai_jobs_enqueue.created_by], ARRAY[ai_jobs_enqueue.max_attempts],
    ARRAY[ai_jobs_enqueue.idempotency_key], priorities => ARRAY[ai_jobs_enqueue.priority]);
  IF decided.outcome = 'missing' THEN
    RAISE EXCEPTION '%', decided.message USING ERRCODE = 'no_data_found';
  ELSIF decided.outcome = 'not_analysable' THEN
    RAISE EXCEPTION '%', decided.message USING ERRCODE = 'invalid_parameter_value';
  ELSIF decided.outcome = 'budget_exhausted' THEN
    RAISE EXCEPTION '%', decided.message USING ERRCODE = 'program_limit_exceeded';
  END IF;
  SELECT * INTO job FROM ai_jobs AS j WHERE j.id = decided.job_id;
  RETURN job;
END $$;

-- Reads as in 008, with the job's priority.
DROP FUNCTION ai_jobs_read_many(uuid[], text[], text[]);
CREATE FUNCTION ai_jobs_read_many(job_ids uuid[], claims text[], known_tags text[])
RETURNS TABLE (
  n                integer,
  tag              text,
  unchanged        boolean,
  id               uuid,
  job_type         text,
  entity_id        bigint,
  status           text,
  progress_message text,
  progress_current integer,
  progress_total   integer,
  result           jsonb,
  error_message    text,
  attempts         integer,
  max_attempts     integer,
  priority         integer,
  run_after        timestamptz,
  locked_by        text,
  locked_until     timestamptz,
  started_at       timestamptz,
  finished_at      timestamptz,
  created_by       text,
  created_at       timestamptz,
  updated_at       timestamptz
)
LANGUAGE plpgsql AS $$
DECLARE
  outer_role text := current_setting('role');
  outer_claims text := coalesce(current_setting('request.jwt.claims', true), '');
  reader record;
  scope text;
  visible integer[] := '{}';
BEGIN
  -- Which reads may see their job, one lookup each under row level security (it sees one
  -- user's claims at a time), the reads of one user together; then the jobs, in one query.
  FOR reader IN
    SELECT r.n::integer AS n, r.claims
    FROM unnest(claims) WITH ORDINALITY AS r (claims, n)
    ORDER BY r.claims NULLS FIRST, r.n
  LOOP
    IF reader.claims IS NULL THEN
      visible := visible || reader.n;
      CONTINUE;
    END IF;
    IF scope IS DISTINCT FROM reader.claims THEN
      scope := reader.claims;
      PERFORM set_config('role', 'authenticated', true),
              set_config('request.jwt.claims', scope, true);
    END IF;
    PERFORM FROM ai_jobs AS j WHERE j.id = job_ids[reader.n];
    IF FOUND THEN
      visible := visible || reader.n;
    END IF;
  END LOOP;
  IF scope IS NOT NULL THEN
    PERFORM set_config('role', outer_role, true),
            set_config('request.jwt.claims', outer_claims, true);
  END IF;
  RETURN QUERY
    SELECT v.n, v.tag, v.unchanged, j.id,
           CASE WHEN v.unchanged THEN NULL ELSE j.job_type END,
           CASE WHEN v.unchanged THEN NULL ELSE j.entity_id END,
           j.status,
           CASE WHEN v.unchanged THEN NULL ELSE j.progress_message END,
           CASE WHEN v.unchanged THEN NULL ELSE j.progress_current END,
           CASE WHEN v.unchanged THEN NULL ELSE j.progress_total END,
           CASE WHEN v.unchanged THEN NULL ELSE j.result END,
           CASE WHEN v.unchanged THEN NULL ELSE j.error_message END,
           CASE WHEN v.unchanged THEN NULL ELSE j.attempts END,
           CASE WHEN v.unchanged THEN NULL ELSE j.max_attempts END,
           CASE WHEN v.unchanged THEN NULL ELSE j.priority END,
           CASE WHEN v.unchanged THEN NULL ELSE j.run_after END,
           CASE WHEN v.unchanged THEN NULL ELSE j.locked_by END,
           CASE WHEN v.unchanged THEN NULL ELSE j.locked_until END,
           CASE WHEN v.unchanged THEN NULL ELSE j.started_at END,
           CASE WHEN v.unchanged THEN NULL ELSE j.finished_at END,
           CASE WHEN v.unchanged THEN NULL ELSE j.created_by END,
           CASE WHEN v.unchanged THEN NULL ELSE j.created_at END,
           CASE WHEN v.unchanged THEN NULL ELSE j.updated_at END
    FROM unnest(visible) AS s (n)
    JOIN ai_jobs AS j ON j.id = job_ids[s.n]
    CROSS JOIN LATERAL (
      SELECT s.n, t.tag,
             coalesce(t.tag = ANY (string_to_array(known_tags[s.n], ','))
                      OR '*' = ANY (string_to_array(known_tags[s.n], ',')), false)
               AS unchanged
      FROM (SELECT j.xmin::text || '-'
                   || floor(extract(epoch FROM j.updated_at) * 1000000)::bigint::text
                     AS tag) AS t
    ) AS v;
END $$;
