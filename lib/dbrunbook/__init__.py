"""dbrunbook: runbook notebooks for Alembic migrations on PostgreSQL, with signed records."""
