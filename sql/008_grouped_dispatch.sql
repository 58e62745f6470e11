-- Grouped dispatch and one-round-trip reads.
--
-- An API process collects the dispatches that arrive while its previous group is being
-- written and records them with one call of ai_jobs_enqueue_many: one statement, one commit,
-- one NOTIFY ai_jobs_new and one NOTIFY ai_job_events (per 100 jobs), whatever the number of
-- requests. A transaction that notifies takes a database-wide lock at commit, so commits that
-- notify do not group; this makes one of them per group instead of one per request.

-- What became of one dispatch of a group.
--   outcome: created        a new job (job_*)
--            existing       the live job of the same analysis, or the job first made with
--                           this Idempotency-Key (job_*; its type and entity may differ from
--                           the request's when the key was used for another analysis)
--            missing        the entity does not exist (message)
--            not_analysable there is nothing to analyse, or the job type is unknown (message)
--            rate_limited   the user dispatched per_user_limit jobs in the window already
--                           (retry_after_s: when the oldest of them leaves the window)
CREATE TYPE ai_jobs_dispatch_outcome AS (
  n             integer,  -- the request's position in the arrays, from 1
  outcome       text,
  message       text,
  job_id        uuid,
  status        text,
  job_type      text,
  entity_id     bigint,
  retry_after_s integer
);

-- Dispatch many analyses at once: the i-th elements of the arrays are one request. Each gets
-- the answer it would get alone, as if the requests had come one after another in array
-- order, and nothing is written for one that fails. Checks per request, in this order: the
-- user's rate (when per_user_limit > 0: at most that many new jobs per user in rate_window),
-- the entity (as ai_jobs_enqueue), then the live job of the same analysis or the key's job.
--
-- Requests of one user that name the same key or the same analysis but are not identical
-- are decided in a later round of the same call, each round one INSERT. So is a request
-- whose insert met a job committed by another transaction after this round read the table:
-- the next round finds that job. A call whose requests are all different, the usual case,
-- is one round.
CREATE FUNCTION ai_jobs_enqueue_many(
  job_types text[],
  entity_ids bigint[],
  created_bys text[],
  max_attempts integer[],
  idempotency_keys text[],
  per_user_limit integer DEFAULT 0,
  rate_window interval DEFAULT interval '1 minute'
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
             idempotency_keys[t.n] AS idempotency_key
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
             m.idempotency_key
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
    ), counted AS (
      -- A request is over the limit when the user's jobs in the window, with the new ones of
      -- the requests before it in this round, reach it.
      SELECT f.*,
             per_user_limit > 0 AND f.created_by IS NOT NULL
               AND coalesce(rc.jobs, 0) + count(*) FILTER (
                     WHERE f.problem IS NULL AND f.existing_id IS NULL AND f.n = f.leader
                   ) OVER (PARTITION BY f.owner ORDER BY f.n
                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                   >= per_user_limit AS limited
      FROM found f
      LEFT JOIN recent rc ON rc.created_by = f.created_by
    ), verdicts AS (
      SELECT c.*,
             CASE WHEN c.limited THEN 'rate_limited'
                  WHEN c.problem IS NOT NULL THEN c.problem
                  WHEN c.existing_id IS NOT NULL THEN 'existing'
                  WHEN c.n = c.leader THEN 'new'
                  ELSE 'follow' END AS verdict
      FROM counted c
    ), inserted AS (
      INSERT INTO ai_jobs AS j (job_type, entity_id, created_by, max_attempts, idempotency_key)
      SELECT v.job_type, v.entity_id, v.created_by, v.max_attempts, v.idempotency_key
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
               CASE WHEN v.verdict IN ('missing', 'not_analysable') THEN v.message END,
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
               ) END
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

-- Dispatch one analysis, as before, now through the same checks as a group: errors
-- no_data_found (P0002) when the entity does not exist, invalid_parameter_value (22023) when
-- there is nothing to analyse or the job type is unknown. Returns the new job, or the live
-- (or same-key) one.
CREATE OR REPLACE FUNCTION ai_jobs_enqueue(
  job_type text,
  entity_id bigint,
  created_by text DEFAULT NULL,
  max_attempts integer DEFAULT 5,
  idempotency_key text DEFAULT NULL
) RETURNS ai_jobs
LANGUAGE plpgsql AS $$
DECLARE
  decided ai_jobs_dispatch_outcome;
  job ai_jobs;
BEGIN
  SELECT * INTO decided FROM ai_jobs_enqueue_many(
    ARRAY[ai_jobs_enqueue.job_type], ARRAY[ai_jobs_enqueue.entity_id],
    ARRAY[ai_jobs_enqueue.created_by], ARRAY[ai_jobs_enqueue.max_attempts],
    ARRAY[ai_jobs_enqueue.idempotency_key]);
  IF decided.outcome = 'missing' THEN
    RAISE EXCEPTION '%', decided.message USING ERRCODE = 'no_data_found';
  ELSIF decided.outcome = 'not_analysable' THEN
    RAISE EXCEPTION '%', decided.message USING ERRCODE = 'invalid_parameter_value';
  END IF;
  SELECT * INTO job FROM ai_jobs AS j WHERE j.id = decided.job_id;
  RETURN job;
END $$;

-- Jobs as the API shows them, for many readers in one round trip: request i reads job
-- job_ids[i] as the user the JWT claims claims[i] name (JSON text), under row level security
-- as the `authenticated` role, or with the caller's own rights when claims[i] is NULL; the
-- role and claims are restored before returning. A job's `tag` changes whenever its row
-- does (the row version's transaction id and updated_at). When it is among known_tags[i]
-- (comma-separated; '*': any), only n, tag, status and unchanged = true are returned: the
-- reader's copy is current. No row for request i: no such job, or not that user's.
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
