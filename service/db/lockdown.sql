-- What the migration runner uses to keep every object the migrations create closed to the
-- roles a database's other clients may use (Supabase's Data API: anon, authenticated).

-- name: open_default_grants
-- The current user's default privileges that would give PUBLIC, anon or authenticated
-- something on the tables, sequences or functions it creates: per schema (Supabase grants
-- ALL in schema public to anon and authenticated) or everywhere (schema NULL), with the
-- built-in EXECUTE for PUBLIC on functions when no entry of its own replaces it.
WITH me AS (
  SELECT oid FROM pg_roles WHERE rolname = current_user
), entries AS (
  SELECT d.defaclnamespace AS schema_oid, d.defaclobjtype AS objtype, a.grantee,
         a.privilege_type, a.is_grantable
  FROM pg_default_acl AS d
  JOIN me ON d.defaclrole = me.oid
  CROSS JOIN LATERAL aclexplode(d.defaclacl) AS a
  WHERE d.defaclobjtype IN ('r', 'S', 'f')
  UNION ALL
  SELECT 0, 'f', 0, 'EXECUTE', false
  WHERE NOT EXISTS (
    SELECT FROM pg_default_acl AS d JOIN me ON d.defaclrole = me.oid
    WHERE d.defaclnamespace = 0 AND d.defaclobjtype = 'f'
  )
)
SELECT CASE WHEN e.schema_oid = 0 THEN NULL ELSE e.schema_oid::regnamespace::text END AS schema,
       CASE e.objtype WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES' ELSE 'FUNCTIONS' END
         AS objects,
       CASE WHEN e.grantee = 0 THEN 'PUBLIC' ELSE e.grantee::regrole::text END AS grantee,
       e.privilege_type AS privilege,
       e.is_grantable AS grantable
FROM entries AS e
WHERE e.grantee = 0
   OR e.grantee IN (SELECT oid FROM pg_roles WHERE rolname IN ('anon', 'authenticated'));

-- name: owned_relations
-- The tables and views the current user owns now.
SELECT coalesce(array_agg(c.oid), '{}')
FROM pg_class AS c
WHERE c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
  AND c.relkind IN ('r', 'p', 'v');

-- name: new_relations
-- The tables and views the current user owns that are not among $1, with what they lack:
-- row level security (tables), security_invoker (views).
SELECT c.oid::regclass::text AS name,
       c.relkind = 'v' AS is_view,
       c.relrowsecurity,
       coalesce('security_invoker=true' = ANY (c.reloptions)
                OR 'security_invoker=on' = ANY (c.reloptions), false) AS security_invoker
FROM pg_class AS c
WHERE c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
  AND c.relkind IN ('r', 'p', 'v')
  AND c.oid <> ALL ($1::oid[]);
