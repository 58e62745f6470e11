"""Database access: the pool, the migration runner, the embedded server."""
