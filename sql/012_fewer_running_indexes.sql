-- A claim writes a new version of each row it takes, and an entry in every index whose
-- predicate the new version meets. Running jobs had two partial indexes: by lease end (for
-- the reaper) and by owner (for the fair claim). The owner index alone serves both: the
-- reaper reads every running job through it, and there are only as many as the fleet's
-- slots. One index entry fewer per claim; and a lease renewal, which changes only
-- locked_until, no longer changes an indexed column, so Postgres can write it in place (HOT).
DROP INDEX ai_jobs_processing_idx;
