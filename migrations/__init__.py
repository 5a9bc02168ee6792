"""Sample Alembic projects (main and ai) that the runbooks act on, and a demo data generator."""
