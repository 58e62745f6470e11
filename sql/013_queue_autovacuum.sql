-- The queue table is vacuumed after 2% of its rows change, not a fifth.
-- Every job claimed and finished leaves dead entries in the small partial indexes the claim
-- walks (pending, running); they stay until vacuum removes them. Autovacuum's default trigger
-- is 20% of the table, so with a long retention (a million finished jobs) 200,000 changes
-- pile up first and every claim steps over their dead entries. 2% of the table plus 1,000
-- changes keeps the walked indexes clean at that size; on a small table it changes little.
ALTER TABLE ai_jobs SET (
  autovacuum_vacuum_scale_factor = 0.02,
  autovacuum_vacuum_threshold = 1000,
  autovacuum_analyze_scale_factor = 0.02,
  autovacuum_analyze_threshold = 1000
);
