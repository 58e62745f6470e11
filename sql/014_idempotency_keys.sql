-- An Idempotency-Key keeps the first job it was answered with, whether dispatch made that job
-- or found it live (made without a key, or with another one): the same key then returns that
-- job whatever became of it, and the same key for another analysis is refused. Until now
-- only a job made with the key remembered it (ai_jobs.idempotency_key), so a key that found a
-- live job made a new job once that one had finished.

-- The job each user's key was first answered with; a key goes with its job when retention
-- deletes the job. owner is created_by, '' for jobs without an owner.
CREATE TABLE ai_idempotency_keys (
  owner           text NOT NULL,
  idempotency_key text NOT NULL,
  job_id          uuid NOT NULL REFERENCES ai_jobs (id) ON DELETE CASCADE,
  PRIMARY KEY (owner, idempotency_key)
);
-- Deleting a job finds its key through this one.
CREATE INDEX ai_idempotency_keys_job_idx ON ai_idempotency_keys (job_id);

INSERT INTO ai_idempotency_keys (owner, idempotency_key, job_id)
SELECT coalesce(created_by, ''), idempotency_key, id
FROM ai_jobs
WHERE idempotency_key IS NOT NULL;

-- Only the service and operators read or write it: row level security on, no policy, so the
-- `authenticated` role sees nothing; nothing for anon.
ALTER TABLE ai_idempotency_keys ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON ai_idempotency_keys FROM PUBLIC;
-- The roles exist on Supabase (and where 001 could create them), not on every server.
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
    REVOKE ALL ON ai_idempotency_keys FROM anon;
  END IF;
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    REVOKE ALL ON ai_idempotency_keys FROM authenticated;
  END IF;
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
    GRANT ALL ON ai_idempotency_keys TO service_role;
  END IF;
END $$;

-- Dispatch, as in 010, with the keys kept: a request with a key looks it up here first, and
-- every request with a key that is answered with a job (new, live, or its key's) records
-- that job for the key in the same statement, unless the key has one already. Two
-- transactions giving one key a job at once: the one whose record comes second goes on to
-- the next round, which finds the first one's; a job it made for the key is deleted.
CREATE OR REPLACE FUNCTION ai_jobs_enqueue_many(
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
  unkept uuid[];  -- jobs this round made whose key another transaction took meanwhile
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
      -- The job this request gets instead of a new one: the job its key was first answered
      -- with, else the job made with its key, else the live one.
      SELECT c.*, coalesce(kj.id, e.id) AS existing_id,
             coalesce(kj.status, e.status) AS existing_status,
             coalesce(kj.job_type, e.job_type) AS existing_type,
             coalesce(kj.entity_id, e.entity_id) AS existing_entity,
             kj.id IS NOT NULL AS key_kept
      FROM checked c
      -- One lookup per request with a key (LIMIT 1 keeps it one): a request without a key
      -- never reads the keys, whatever plan their table's statistics suggest.
      LEFT JOIN LATERAL (
        SELECT j.id, j.status, j.job_type, j.entity_id
        FROM ai_idempotency_keys AS k
        JOIN ai_jobs AS j ON j.id = k.job_id
        WHERE c.problem IS NULL AND c.idempotency_key IS NOT NULL
          AND k.owner = c.owner AND k.idempotency_key = c.idempotency_key
        LIMIT 1
      ) AS kj ON true
      LEFT JOIN LATERAL (
        SELECT j.id, j.status, j.job_type, j.entity_id
        FROM ai_jobs j
        WHERE c.problem IS NULL AND kj.id IS NULL
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
    ), answered AS (
      SELECT v.*, i.id AS new_id, i.status AS new_status, i.job_type AS new_type,
             i.entity_id AS new_entity
      FROM verdicts v
      LEFT JOIN inserted i
        ON v.verdict IN ('new', 'follow')
       AND (i.owner, i.job_type, i.entity_id) = (v.owner, v.job_type, v.entity_id)
    ), kept AS (
      -- A key answered with a job for the first time keeps that job, whether new or not.
      -- A key another transaction gave a job meanwhile keeps that one: the request goes to
      -- the next round, which finds it.
      INSERT INTO ai_idempotency_keys AS k (owner, idempotency_key, job_id)
      SELECT DISTINCT ON (a.owner, a.idempotency_key)
             a.owner, a.idempotency_key, coalesce(a.new_id, a.existing_id)
      FROM answered a
      WHERE a.idempotency_key IS NOT NULL AND NOT a.key_kept
        AND (a.verdict = 'existing' OR a.new_id IS NOT NULL)
      ORDER BY a.owner, a.idempotency_key
      ON CONFLICT (owner, idempotency_key) DO NOTHING
      RETURNING k.owner, k.idempotency_key
    ), settled AS (
      SELECT a.*,
             CASE
               WHEN a.verdict IN ('new', 'follow') AND a.new_id IS NULL THEN 'collided'
               WHEN a.idempotency_key IS NOT NULL AND NOT a.key_kept
                    AND a.verdict IN ('new', 'follow', 'existing')
                    AND NOT EXISTS (SELECT FROM kept
                                    WHERE (kept.owner, kept.idempotency_key)
                                          = (a.owner, a.idempotency_key)) THEN 'collided'
               WHEN a.verdict = 'new' THEN 'created'
               WHEN a.verdict = 'follow' THEN 'existing'
               ELSE a.verdict
             END AS outcome
      FROM answered a
    )
    -- The answers of this round, and the requests left for the next one: those held back,
    -- and those whose insert met a job another transaction committed meanwhile (the next
    -- round's statement sees it), or whose key another transaction gave a job meanwhile
    -- (a job this round made for such a key is deleted before the next round).
    SELECT array_agg(r.o ORDER BY (r.o).n)
             FILTER (WHERE (r.o).outcome NOT IN ('collided', 'held_back')),
           array_agg((r.o).n ORDER BY (r.o).n)
             FILTER (WHERE (r.o).outcome IN ('collided', 'held_back')),
           array_agg(DISTINCT r.unkept) FILTER (WHERE r.unkept IS NOT NULL)
    INTO decided, todo, unkept
    FROM (
      SELECT ROW(
               v.n,
               v.outcome,
               CASE WHEN v.verdict IN ('missing', 'not_analysable') THEN v.message
                    WHEN v.verdict = 'budget_exhausted' THEN
                      format('The daily budget of %s USD is spent: %s USD since 00:00 UTC',
                             round(v.budget, 2), round(v.spent, 2)) END,
               CASE WHEN v.verdict = 'existing' THEN v.existing_id ELSE v.new_id END,
               CASE WHEN v.verdict = 'existing' THEN v.existing_status ELSE v.new_status END,
               CASE WHEN v.verdict = 'existing' THEN v.existing_type ELSE v.new_type END,
               CASE WHEN v.verdict = 'existing' THEN v.existing_entity ELSE v.new_entity END,
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
             )::ai_jobs_dispatch_outcome AS o,
             CASE WHEN v.outcome = 'collided' THEN v.new_id END AS unkept
      FROM settled v
      UNION ALL
      SELECT ROW(m.n, 'held_back', NULL, NULL, NULL, NULL, NULL, NULL)::ai_jobs_dispatch_outcome,
             NULL
      FROM marked m
      WHERE m.held_back
    ) AS r;

    IF unkept IS NOT NULL THEN
      DELETE FROM ai_jobs AS j WHERE j.id = ANY (unkept);
    END IF;
    RETURN QUERY SELECT * FROM unnest(decided);
    EXIT WHEN todo IS NULL;
  END LOOP;
END $$;
