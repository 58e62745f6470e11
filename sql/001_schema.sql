-- Domain tables of the gap analysis and the ai_jobs queue.

-- The role a user's reads run as (SET LOCAL ROLE), as Supabase has it; created here when
-- the server does not have it yet, which needs CREATEROLE. An existing one is used as it is.
-- No other role is needed, and none with BYPASSRLS (only a superuser may create those).
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    CREATE ROLE authenticated NOLOGIN;
    -- Before Postgres 16, its creator is not a member, and must be one to SET ROLE to it.
    EXECUTE format('GRANT authenticated TO %I', current_user);
  END IF;
EXCEPTION
  WHEN duplicate_object OR unique_violation THEN NULL;
  WHEN insufficient_privilege THEN
    RAISE EXCEPTION 'role "authenticated" does not exist, and % may not create it', current_user
      USING HINT = format('As an administrator: CREATE ROLE authenticated NOLOGIN; '
                          'GRANT authenticated TO %I;', current_user);
END $$;

CREATE FUNCTION aijobs_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END $$;

CREATE TABLE requirements (
  id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  code                 text NOT NULL,
  title                text NOT NULL,
  description          text NOT NULL DEFAULT '',
  coverage_score       integer CHECK (coverage_score BETWEEN 0 AND 100),
  coverage_summary     text,
  coverage_gaps        jsonb,
  coverage_documents   jsonb,
  coverage_analyzed_at timestamptz,
  created_at           timestamptz NOT NULL DEFAULT now(),
  updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE documents (
  id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  title      text NOT NULL,
  content    text NOT NULL DEFAULT '',
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE controls (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  code        text NOT NULL UNIQUE,
  title       text NOT NULL,
  description text NOT NULL DEFAULT '',
  created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE requirement_mappings (
  id                       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  requirement_id           bigint NOT NULL REFERENCES requirements (id) ON DELETE CASCADE,
  document_id              bigint NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
  ai_match_score           integer CHECK (ai_match_score BETWEEN 0 AND 100),
  ai_match_rationale       text,
  ai_match_recommendations jsonb,
  ai_matched_at            timestamptz,
  created_at               timestamptz NOT NULL DEFAULT now(),
  updated_at               timestamptz NOT NULL DEFAULT now(),
  UNIQUE (requirement_id, document_id)
);
CREATE INDEX requirement_mappings_document_idx ON requirement_mappings (document_id);

CREATE TABLE document_control_mappings (
  document_id bigint NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
  control_id  bigint NOT NULL REFERENCES controls (id) ON DELETE CASCADE,
  confidence  integer NOT NULL CHECK (confidence BETWEEN 0 AND 100),
  rationale   text NOT NULL DEFAULT '',
  job_id      uuid,
  created_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (document_id, control_id)
);
CREATE INDEX document_control_mappings_control_idx ON document_control_mappings (control_id);

CREATE TRIGGER requirements_touch BEFORE UPDATE ON requirements
  FOR EACH ROW EXECUTE FUNCTION aijobs_touch_updated_at();
CREATE TRIGGER documents_touch BEFORE UPDATE ON documents
  FOR EACH ROW EXECUTE FUNCTION aijobs_touch_updated_at();
CREATE TRIGGER requirement_mappings_touch BEFORE UPDATE ON requirement_mappings
  FOR EACH ROW EXECUTE FUNCTION aijobs_touch_updated_at();

-- The queue. A job is pending until a worker claims it (processing, with a lease), then
-- completed or failed. A retryable failure returns it to pending with a later run_after.
CREATE TABLE ai_jobs (
  id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  job_type         text NOT NULL
                   CHECK (job_type IN ('ai-match', 'ai-coverage', 'ai-map-controls')),
  entity_id        bigint NOT NULL,
  status           text NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
  progress_message text,
  progress_current integer,
  progress_total   integer,
  result           jsonb,
  error_message    text,
  attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
  max_attempts     integer NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
  run_after        timestamptz NOT NULL DEFAULT now(),
  locked_by        text,
  locked_until     timestamptz,
  started_at       timestamptz,
  finished_at      timestamptz,
  created_by       text,
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now(),
  CHECK (status <> 'processing' OR (locked_by IS NOT NULL AND locked_until IS NOT NULL))
);

-- The claim query walks this index: due pending jobs, oldest first.
CREATE INDEX ai_jobs_pending_idx ON ai_jobs (run_after) WHERE status = 'pending';
-- The lease reaper walks this one.
CREATE INDEX ai_jobs_processing_idx ON ai_jobs (locked_until) WHERE status = 'processing';
-- Lookups by entity and by owner.
CREATE INDEX ai_jobs_entity_idx ON ai_jobs (entity_id, job_type, created_at DESC);
CREATE INDEX ai_jobs_owner_idx ON ai_jobs (created_by, created_at DESC);

CREATE TRIGGER ai_jobs_touch BEFORE UPDATE ON ai_jobs
  FOR EACH ROW EXECUTE FUNCTION aijobs_touch_updated_at();

-- Wake idle workers. One NOTIFY per statement, never one per row: a transaction that
-- notifies takes a database-wide lock at commit. The payload is only a hint.
CREATE FUNCTION ai_jobs_notify_new() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('ai_jobs_new', '');
  RETURN NULL;
END $$;

CREATE TRIGGER ai_jobs_notify_new AFTER INSERT ON ai_jobs
  FOR EACH STATEMENT EXECUTE FUNCTION ai_jobs_notify_new();

-- Row level security, as the original design had it: an authenticated user reads the jobs
-- they created. The service connects as the table owner and is not subject to it.
CREATE FUNCTION aijobs_request_user() RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
$$;

ALTER TABLE ai_jobs ENABLE ROW LEVEL SECURITY;
CREATE POLICY ai_jobs_read_own ON ai_jobs FOR SELECT TO authenticated
  USING (created_by = aijobs_request_user());
GRANT SELECT ON ai_jobs TO authenticated;
