"""A user's Alembic project, used unchanged: its config, history and graph, offline and captured SQL,
upgrade/downgrade/stamp/check driven in the thread and process env.py expects, ``dbrunbook init``.
"""
