"""aijobs: slow AI work behind a web application, run by Postgres-backed actors."""

__version__ = "0.1.0"
