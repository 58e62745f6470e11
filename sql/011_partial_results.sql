-- Partial results: a job read for the API carries its checkpoint, from which the API shows
-- what a running job has found so far (`partialResult`). Reads as in 010, with the checkpoint.
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
  updated_at       timestamptz,
  checkpoint       jsonb
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
           CASE WHEN v.unchanged THEN NULL ELSE j.updated_at END,
           CASE WHEN v.unchanged THEN NULL ELSE j.checkpoint END
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
