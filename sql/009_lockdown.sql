-- Locked down where the database has other clients: on Supabase, its Data API lets anyone
-- with the public anon key act as `anon`, and any signed-in user as `authenticated`. Only the
-- owner (the service) reads and writes; `authenticated` reads its own jobs and their events,
-- through row level security; `anon` gets nothing.
--
-- The migration runner keeps it so for what later migrations create (service/db/
-- migrations.py: default privileges suspended while a migration runs, row level security on
-- every new table, security_invoker on every new view). This one closes what the earlier
-- migrations created before it did.

DO $$
DECLARE
  tables text[] := ARRAY['aijobs_migrations', 'requirements', 'documents', 'controls',
                         'requirement_mappings', 'document_control_mappings', 'ai_jobs',
                         'ai_job_events', 'ai_worker_registry', 'ai_rate_limits'];
  views text[] := ARRAY['ai_jobs_overview', 'ai_jobs_running', 'ai_jobs_failures',
                        'ai_workers', 'ai_jobs_usage_daily'];
  grantees text;
  name text;
  fn regprocedure;
  seq regclass;
BEGIN
  SELECT string_agg(g, ', ') INTO grantees
  FROM (SELECT 'PUBLIC' AS g
        UNION ALL
        SELECT quote_ident(rolname) FROM pg_roles WHERE rolname IN ('anon', 'authenticated')) AS r;

  FOREACH name IN ARRAY tables LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', name);
    EXECUTE format('REVOKE ALL ON TABLE %I FROM %s', name, grantees);
  END LOOP;
  -- A view runs with the rights of whoever reads it, so row level security applies to them
  -- (its owner, the service, may bypass it).
  FOREACH name IN ARRAY views LOOP
    EXECUTE format('ALTER VIEW %I SET (security_invoker = true)', name);
    EXECUTE format('REVOKE ALL ON TABLE %I FROM %s', name, grantees);
  END LOOP;
  FOR seq IN
    SELECT c.oid FROM pg_class AS c
    WHERE c.relkind = 'S' AND c.relname = ANY (ARRAY['requirements_id_seq', 'documents_id_seq',
            'controls_id_seq', 'requirement_mappings_id_seq', 'ai_job_events_id_seq'])
      AND c.relnamespace = current_schema()::regnamespace
  LOOP
    EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM %s', seq, grantees);
  END LOOP;
  FOR fn IN
    SELECT p.oid FROM pg_proc AS p
    WHERE p.pronamespace = current_schema()::regnamespace
      AND p.proname = ANY (ARRAY['aijobs_touch_updated_at', 'ai_jobs_notify_new',
            'aijobs_request_user', 'ai_jobs_cancel', 'ai_job_events_record',
            'ai_job_events_prune', 'ai_jobs_enqueue', 'ai_jobs_retry', 'ai_jobs_prune',
            'ai_jobs_enqueue_many', 'ai_jobs_read_many'])
  LOOP
    EXECUTE format('REVOKE ALL ON FUNCTION %s FROM %s', fn, grantees);
  END LOOP;
END $$;

-- What `authenticated` may do: read its own jobs and their events (the policies of 001 and
-- 003). The policies call aijobs_request_user(), which reads only the request's claims.
GRANT SELECT ON ai_jobs, ai_job_events TO authenticated;
GRANT EXECUTE ON FUNCTION aijobs_request_user() TO authenticated;
