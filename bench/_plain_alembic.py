"""Plain Alembic, no dbrunbook: one alembic.command call, run inside a chain's own venv by bench/real_chains.py.

Usage: python _plain_alembic.py INI URL [--connection] [--section NAME] [--script-location DIR] [--anyio-thread] COMMAND [ARG ...]

The URL goes into ``sqlalchemy.url`` (what ``alembic -x``-less projects read). With ``--connection``, an engine is
made from the URL and its connection handed to env.py in ``config.attributes["connection"]``: the Alembic
cookbook's "Sharing a Connection" recipe, which is how applications such as Dagster call their own chain
(their env.py refuses to run without one). With ``--anyio-thread`` the command runs in an AnyIO worker thread,
as ``prefect server database upgrade`` runs its chain (env.py calls ``anyio.from_thread.run``).
"""

import sys

from alembic import command
from alembic.config import Config


def main(argv: list[str]) -> int:
    ini, url, *rest = argv
    use_connection = False
    section = "alembic"
    script_location = None
    anyio_thread = False
    while rest and rest[0].startswith("--"):
        flag = rest.pop(0)
        if flag == "--connection":
            use_connection = True
        elif flag == "--section":
            section = rest.pop(0)
        elif flag == "--anyio-thread":
            anyio_thread = True
        elif flag == "--script-location":
            script_location = rest.pop(0)
    name, *args = rest
    cfg = Config(ini, ini_section=section)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if script_location:
        cfg.set_main_option("script_location", script_location)
    fn = getattr(command, name)
    kwargs = {}
    if name in ("upgrade", "downgrade") and args and args[-1] == "--sql":
        args.pop()
        kwargs["sql"] = True
    if anyio_thread:  # Prefect calls its chain this way: env.py uses anyio.from_thread.run
        import functools

        import anyio
        import anyio.to_thread

        anyio.run(anyio.to_thread.run_sync, functools.partial(fn, cfg, *args, **kwargs))
        return 0
    if not use_connection:
        fn(cfg, *args, **kwargs)
        return 0
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        fn(cfg, *args, **kwargs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
