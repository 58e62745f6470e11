-- name: insert_requirement
INSERT INTO requirements (code, title, description) VALUES ($1, $2, $3) RETURNING *;

-- name: get_requirement
SELECT * FROM requirements WHERE id = $1;

-- name: insert_document
INSERT INTO documents (title, content) VALUES ($1, $2) RETURNING *;

-- name: get_document
SELECT * FROM documents WHERE id = $1;

-- name: insert_controls
INSERT INTO controls (code, title, description)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
RETURNING *;

-- name: list_controls
SELECT * FROM controls ORDER BY id;

-- name: count_controls
SELECT count(*) FROM controls;

-- name: insert_mapping
INSERT INTO requirement_mappings (requirement_id, document_id) VALUES ($1, $2) RETURNING *;

-- name: get_mapping
SELECT * FROM requirement_mappings WHERE id = $1;

-- name: get_mappings_for_analysis
-- The mappings among $1 that exist, each with its requirement and document.
SELECT m.id, m.requirement_id, m.document_id,
       r.code AS requirement_code, r.title AS requirement_title,
       r.description AS requirement_description,
       d.title AS document_title, d.content AS document_content
FROM requirement_mappings m
JOIN requirements r ON r.id = m.requirement_id
JOIN documents d ON d.id = m.document_id
WHERE m.id = ANY($1::bigint[]);

-- name: mapped_documents
SELECT d.id, d.title, d.content
FROM requirement_mappings m
JOIN documents d ON d.id = m.document_id
WHERE m.requirement_id = $1
ORDER BY d.id;

-- name: document_controls
SELECT c.id AS control_id, c.code, c.title, dcm.confidence, dcm.rationale, dcm.job_id,
       dcm.created_at
FROM document_control_mappings dcm
JOIN controls c ON c.id = dcm.control_id
WHERE dcm.document_id = $1
ORDER BY dcm.confidence DESC, c.code;

-- name: write_match_result
UPDATE requirement_mappings
SET ai_match_score = $2, ai_match_rationale = $3, ai_match_recommendations = $4,
    ai_matched_at = now()
WHERE id = $1
RETURNING id;

-- name: write_coverage_result
UPDATE requirements
SET coverage_score = $2, coverage_summary = $3, coverage_gaps = $4,
    coverage_documents = $5, coverage_analyzed_at = now()
WHERE id = $1
RETURNING id;

-- name: lock_document
SELECT id FROM documents WHERE id = $1 FOR UPDATE;

-- name: clear_document_controls
DELETE FROM document_control_mappings WHERE document_id = $1;

-- name: insert_document_controls
-- Controls deleted since the analysis began are skipped rather than failing the whole write.
INSERT INTO document_control_mappings (document_id, control_id, confidence, rationale, job_id)
SELECT $1, m.control_id, m.confidence, m.rationale, $5
FROM unnest($2::bigint[], $3::int[], $4::text[]) AS m (control_id, confidence, rationale)
JOIN controls c ON c.id = m.control_id;

-- name: find_requirement_by_code
SELECT * FROM requirements WHERE code = $1 ORDER BY id LIMIT 1;

-- name: find_document_by_title
SELECT * FROM documents WHERE title = $1 ORDER BY id LIMIT 1;

-- name: find_mapping
SELECT * FROM requirement_mappings WHERE requirement_id = $1 AND document_id = $2;

-- name: existing_control_codes
SELECT code FROM controls WHERE code = ANY($1::text[]);

-- name: list_requirements
SELECT * FROM requirements ORDER BY id LIMIT $1;

-- name: list_documents
-- Without the content, which may be megabytes: its length stands for it.
SELECT id, title, char_length(content) AS length, created_at, updated_at
FROM documents
ORDER BY id
LIMIT $1;

-- name: list_mappings
SELECT m.*, r.code AS requirement_code, r.title AS requirement_title,
       d.title AS document_title
FROM requirement_mappings m
JOIN requirements r ON r.id = m.requirement_id
JOIN documents d ON d.id = m.document_id
ORDER BY m.id
LIMIT $1;
