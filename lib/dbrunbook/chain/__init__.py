"""A user's Alembic project, used unchanged: its config, history and graph, offline and captured SQL,
upgrade/downgrade/stamp/check driven in the thread and process env.py expects, ``dbrunbook init``.

``migrations`` is the front door (it re-exports the names below); the modules, lowest first:
``values`` (RevisionInfo, SqlStep, StepResult), ``script_cache`` and ``project`` (the Config, ``in_project``,
the script directory), ``history`` (current, heads, history, resolve, pending), ``digests``, ``models``
(models and baseline objects), ``environment`` (one env.py run and its checks), ``drivers`` and
``alembic_thread`` (the project's driver, env.py's thread), ``offline`` (offline SQL), ``migrations`` (the
online runs), ``isolation`` (a run in a process of its own), ``sql_render``, ``capture`` and ``online_guard``
(SQL of online-only revisions, recorded on a scratch database, and the guard for the rest), ``project_init``.
"""
