"""Scratch runs of a project's chain in a process of their own, for projects that read their URL once.

A project that reads its database URL from an environment variable (``url_env`` on the migration set)
often reads it once, when its settings module is first imported (prefect's settings, many a pydantic
``BaseSettings``), and keeps it for the life of the process. In a runbook's kernel the project is first
imported for the target, so a later run of env.py on a scratch database (stamp's truth check, review's
round trip and stairway, the capture of online-only revisions, a rehearsal) still connects to the target:
refused as ``DialectMismatch`` before anything runs, so nothing was harmed, but nothing was checked either.

``call(fn, mset, engine, ...)`` runs ``fn(mset, engine, ...)`` in a fresh Python process whose environment
holds the scratch URL before any of the project's code is imported, and hands back its result or its
exception. Sets without ``url_env`` get their URL through ``config.attributes``/``sqlalchemy.url`` on every
run, so they run in-process as before (no process start, no second import of the application).

The request (the scratch URL with its password, which is a throwaway server's) goes through a file only the
user can read, in a private folder removed afterwards; never through argv, where ``ps`` would show it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, Engine
from sqlalchemy.pool import NullPool

from dbrunbook.chain import drivers
from dbrunbook.config import MigrationSet
from dbrunbook.errors import DbRunbookError

__all__ = ["IsolatedRunFailed", "call", "isolated"]

#: Lines of the child's own output kept in the error when it dies without an answer.
_TAIL_LINES = 20


class IsolatedRunFailed(DbRunbookError):
    """The process that ran a scratch step ended without an answer (killed, out of memory, a crash)."""

    def __init__(self, mset: str, what: str, returncode: int, tail: str):
        self.migration_set, self.returncode, self.tail = mset, returncode, tail
        super().__init__(f"The process that ran {what} for migration set '{mset}' on a scratch database ended "
                         f"with exit status {returncode} and no result. Its last output:\n{tail or '(none)'}")


def isolated(mset: MigrationSet) -> bool:
    """Whether scratch runs of this set need a process of their own (it reads its URL from the environment)."""
    return bool(mset.url_env)


def call(fn: Callable[..., Any], mset: MigrationSet, engine: Engine | Connection, *args: Any,
         engine_options: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """``fn(mset, engine, *args, **kwargs)``; in a child process when ``isolated(mset)``.

    Args:
        fn: a module-level function (the child imports it by name) whose result can be pickled.
        engine: the scratch database; the child makes its own engine to the same URL.
        engine_options: keyword arguments of ``db.make_engine`` for the child's engine (timeouts, run id).

    Raises:
        whatever ``fn`` raised (the same class, message and attributes), or IsolatedRunFailed.
    """
    if not isolated(mset):
        return fn(mset, engine, *args, **kwargs)
    url = (engine.engine if isinstance(engine, Connection) else engine).url.render_as_string(hide_password=False)
    folder = Path(tempfile.mkdtemp(prefix="dbrunbook-isolated-"))
    try:
        request, answer, output = folder / "request.pickle", folder / "answer.pickle", folder / "output.log"
        # The project's driver, as the launcher exports it for the target (drivers.export_environment).
        env: dict[str, str] = {**mset.env, cast(str, mset.url_env): drivers.with_driver(  # isolated: url_env set
            url, mset.driver or "psycopg").render_as_string(hide_password=False)}
        with open(os.open(request, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
            pickle.dump(env, fh)  # read first, so it is in os.environ before the rest is unpickled
            pickle.dump((fn.__module__, fn.__qualname__, mset, url, args, kwargs, engine_options or {}), fh)
        child_env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])  # lib/, above dbrunbook/chain/
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, child_env.get("PYTHONPATH")) if p)
        with open(output, "wb") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "dbrunbook.chain.isolation", str(request), str(answer)],
                                    stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                    env=child_env)
            try:
                returncode = proc.wait()
            except BaseException:  # an interrupted run stops its child too
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
                if proc.poll() is None:
                    proc.kill()
                raise
        if not answer.is_file():
            tail = "\n".join(output.read_text(errors="replace").splitlines()[-_TAIL_LINES:])
            raise IsolatedRunFailed(mset.name, fn.__name__, returncode, _mask(tail, url))
        with open(answer, "rb") as fh:
            ok, value = pickle.load(fh)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if ok:
        return value
    raise _rebuilt(value)


def _mask(text: str, url: str) -> str:
    from dbrunbook.postgres import db

    password = db.parse_url(url).password
    return db.mask_secrets(text, secrets=[str(password)] if password else [])


def _transportable(err: BaseException) -> tuple:
    """An exception as (module, class name, message, picklable attributes): its own pickling needs its
    ``__init__`` to take ``args`` back, which ours (they compose their message) and SQLAlchemy's do not."""
    attrs = {}
    for key, value in vars(err).items():
        try:
            pickle.loads(pickle.dumps(value))
        except Exception:  # noqa: BLE001 - an attribute that cannot travel stays behind
            continue
        attrs[key] = value
    return type(err).__module__, type(err).__qualname__, str(err), attrs


def _rebuilt(transported: tuple) -> BaseException:
    module, name, message, attrs = transported
    try:
        cls: Any = importlib.import_module(module)
        for part in name.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, DbRunbookError)):
        # A third-party error (SQLAlchemy's, the driver's) is named, not rebuilt: its str() needs state
        # that does not cross processes.
        return DbRunbookError(f"{name}: {message}")
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    vars(err).update(attrs)
    return err


def _child(request: Path, answer: Path) -> int:
    with open(request, "rb") as fh:
        os.environ.update(pickle.load(fh))
        module, name, mset, url, args, kwargs, engine_options = pickle.load(fh)
    from dbrunbook.postgres import db

    fn: Any = importlib.import_module(module)
    for part in name.split("."):
        fn = getattr(fn, part)
    engine = db.make_engine(url, poolclass=NullPool, **engine_options)
    try:
        result: tuple = (True, fn(mset, engine, *args, **kwargs))
    except Exception as err:  # noqa: BLE001 - every failure goes back to the caller, which decides
        result = (False, _transportable(err))
    finally:
        engine.dispose()
    try:
        payload = pickle.dumps(result)
    except Exception as err:  # noqa: BLE001 - a result that cannot travel is an error of its own
        payload = pickle.dumps((False, _transportable(DbRunbookError(f"the result of {name} could not be "
                                                                     f"sent back: {err}"))))
    with open(os.open(answer, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
        fh.write(payload)
    return 0


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1]), Path(sys.argv[2])))
