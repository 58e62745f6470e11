-- Runtime SQL of the job event stream. Events are written by the trigger in
-- sql/003_job_events.sql, in the transaction that changes the job; here they are only read.

-- name: job_with_seq
-- A job and the seq of its latest event, from one snapshot: a stream that starts from this
-- state resumes after this seq without missing or repeating a change.
SELECT j.*,
       (SELECT max(e.id) FROM ai_job_events AS e WHERE e.job_id = j.id) AS event_seq
FROM ai_jobs AS j
WHERE j.id = $1;

-- name: events_after
-- The events of many jobs after a seq each ($1 job ids, $2 the seq already read for each), at
-- most $3 of them per job, with each job's current row and the seq of its latest event: one
-- query per wake-up of the hub, whatever the number of jobs. A job with more than $3 new
-- events is read on from where this read stopped.
SELECT j.*, ev.events,
       (SELECT max(l.id) FROM ai_job_events AS l WHERE l.job_id = j.id) AS event_seq
FROM unnest($1::uuid[], $2::bigint[]) AS c (job_id, after_seq)
JOIN ai_jobs AS j ON j.id = c.job_id
CROSS JOIN LATERAL (
  SELECT array_agg(page.e ORDER BY (page.e).id) AS events
  FROM (
    SELECT e FROM ai_job_events AS e
    WHERE e.job_id = c.job_id AND e.id > c.after_seq
    ORDER BY e.id
    LIMIT $3
  ) AS page
) AS ev
WHERE ev.events IS NOT NULL;

-- name: prune_events
-- $1 in seconds; returns how many events were deleted.
SELECT ai_job_events_prune(make_interval(secs => $1));
