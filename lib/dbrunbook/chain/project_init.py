"""``dbrunbook init``: a commented dbrunbook.toml for an existing Alembic project, read from its own files.

Everything comes from what the project already has: its ini files (or ``pyproject.toml``'s
``[tool.alembic]``) and their sections give the environments; each environment's env.py, read with ``ast``
and never run, gives its version table (when it is a literal) and the environment variable it reads its URL
from (``os.environ["X"]``, ``os.getenv("X")``, ``os.environ.get("X")``). One target per URL variable names
that variable; no URL, password or value is ever written. An existing file is never overwritten.
"""

from __future__ import annotations

import ast
import configparser
import importlib.util
import json
import logging
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from dbrunbook.errors import ConfigError, ConfigExists

log = logging.getLogger(__name__)

__all__ = ["EnvPyFacts", "Environment", "find_environments", "read_env_py", "render_config", "write_config"]

DEFAULT_VERSION_TABLE = "alembic_version"
#: A variable whose name says it holds a connection URL.
_URLISH = re.compile(r"(URL|URI|DSN|DATABASE|(^|_)DB($|_)|CONN)", re.IGNORECASE)


@dataclass(frozen=True)
class EnvPyFacts:
    """What env.py says about itself without being run."""

    version_table: str | None = None  # a literal version_table=..., else None (the default applies)
    version_table_note: str = ""  # why it is not known, when version_table= is not a literal
    version_table_schema: str | None = None
    url_env: str | None = None  # the environment variable env.py reads its URL from
    other_env: tuple[str, ...] = ()  # other variables it reads (named in a comment, never valued)
    takes_connection: bool = False  # uses config.attributes["connection"] (the Alembic cookbook pattern)


@dataclass(frozen=True)
class Environment:
    """One Alembic environment of the project: an ini file (or pyproject.toml) and a section of it."""

    name: str
    config_file: Path
    section: str
    script_location: Path | None
    facts: EnvPyFacts = field(default_factory=EnvPyFacts)


# --- reading env.py -------------------------------------------------------------------------------------
def _is_environ(node: ast.AST) -> bool:
    """``os.environ`` or a bare ``environ`` (``from os import environ``)."""
    return ((isinstance(node, ast.Attribute) and node.attr == "environ") or
            (isinstance(node, ast.Name) and node.id == "environ"))


def _env_name(node: ast.AST) -> str | None:
    """The variable a node reads from the environment, when it is one of the three spellings with a literal."""
    if isinstance(node, ast.Subscript) and _is_environ(node.value):
        key = node.slice
        return key.value if isinstance(key, ast.Constant) and isinstance(key.value, str) else None
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        f = node.func
        getenv = (isinstance(f, ast.Attribute) and f.attr == "getenv") or (isinstance(f, ast.Name) and f.id == "getenv")
        environ_get = isinstance(f, ast.Attribute) and f.attr == "get" and _is_environ(f.value)
        if getenv or environ_get:
            return node.args[0].value
    return None


def _literals(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "text"`` assignments, to resolve ``version_table=NAME``."""
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                for t in targets:
                    if isinstance(t, ast.Name):
                        found[t.id] = node.value.value
    return found


def _keyword_values(tree: ast.Module, keyword: str, literals: dict[str, str]) -> tuple[set[str], bool]:
    """Values of ``keyword=`` in ``*.configure(...)`` calls: the literal ones, and whether any is not."""
    values, opaque = set(), False
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "configure"):
            continue
        for kw in node.keywords:
            if kw.arg != keyword:
                continue
            if isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                values.add(kw.value.value)
            elif isinstance(kw.value, ast.Name) and kw.value.id in literals:
                values.add(literals[kw.value.id])
            else:
                opaque = True
    return values, opaque


def read_env_py(path: Path) -> EnvPyFacts:
    """Read an env.py with ``ast`` (never import it): version table, URL variable, other variables.

    Raises:
        ConfigError: the file cannot be parsed as Python.
    """
    try:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as err:
        raise ConfigError(f"{path} is not valid Python (line {err.lineno}: {err.msg}); fix it or pass another "
                          f"alembic.ini.") from err
    literals = _literals(tree)
    tables, opaque = _keyword_values(tree, "version_table", literals)
    schemas, _ = _keyword_values(tree, "version_table_schema", literals)
    note = ""
    if len(tables) > 1:
        note = f"env.py passes several version tables ({', '.join(sorted(tables))}): check which one this is"
    elif opaque and not tables:
        note = "env.py computes version_table at run time: check it and set it here"
    names = list(dict.fromkeys(n for n in (_env_name(node) for node in ast.walk(tree)) if n))
    urlish = [n for n in names if _URLISH.search(n)]
    url_env = urlish[0] if urlish else None
    return EnvPyFacts(
        version_table=sorted(tables)[0] if tables else None, version_table_note=note,
        version_table_schema=sorted(schemas)[0] if len(schemas) == 1 else None,
        url_env=url_env, other_env=tuple(n for n in names if n != url_env),
        takes_connection=bool(re.search(r"attributes\s*(\.get\s*\(|\[)\s*['\"]connection['\"]", text)),
    )


# --- finding the environments ---------------------------------------------------------------------------
def _script_location(value: str, base: Path) -> Path | None:
    """An ini's ``script_location``: a folder, relative to the ini, or ``package:folder``."""
    if ":" in value and not Path(value).is_absolute() and not re.match(r"^[A-Za-z]:[\\/]", value):
        package, _, sub = value.partition(":")
        spec = importlib.util.find_spec(package) if re.fullmatch(r"[\w.]+", package) else None
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(list(spec.submodule_search_locations)[0]) / sub
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _sections(config_file: Path) -> list[tuple[str, str]]:
    """(section, script_location) of every Alembic environment in an ini file or pyproject.toml."""
    if config_file.suffix == ".toml":
        data = tomllib.loads(config_file.read_text(encoding="utf-8"))
        location = data.get("tool", {}).get("alembic", {}).get("script_location")
        return [("alembic", location.replace("%(here)s", str(config_file.parent)))] if location else []
    parser = configparser.ConfigParser(defaults={"here": str(config_file.parent)})
    try:
        parser.read(config_file, encoding="utf-8")
    except configparser.Error as err:
        raise ConfigError(f"{config_file} is not a valid ini file ({err}); pass your alembic.ini.") from err
    found = []
    for section in parser.sections():
        try:
            location = parser.get(section, "script_location", fallback=None)
        except configparser.InterpolationError:
            location = parser.get(section, "script_location", raw=True, fallback=None)
        if location:
            found.append((section, location))
    return found


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "main"


def find_environments(config_files: list[Path]) -> list[Environment]:
    """Every Alembic environment of the given ini files (each section with a ``script_location``).

    Raises:
        ConfigError: a file does not exist, or none of them has an environment.
    """
    environments: list[Environment] = []
    names: set[str] = set()
    for config_file in config_files:
        config_file = config_file.expanduser().resolve()
        if not config_file.is_file():
            raise ConfigError(f"{config_file} does not exist. Pass the path of your alembic.ini "
                              f"(dbrunbook init path/to/alembic.ini ...).")
        sections = _sections(config_file)
        for section, location in sections:
            script = _script_location(location, config_file.parent)
            env_py = script / "env.py" if script is not None else None
            facts = read_env_py(env_py) if env_py is not None and env_py.is_file() else EnvPyFacts(
                version_table_note=f"env.py not found under script_location = {location}: check the version table")
            base = section if section != "alembic" else config_file.parent.name
            name, n = _slug(base), 2
            while name in names:
                name, n = f"{_slug(base)}_{n}", n + 1
            names.add(name)
            environments.append(Environment(name, config_file, section, script, facts))
    if not environments:
        raise ConfigError(f"No Alembic environment (a section with script_location) in "
                          f"{', '.join(str(p) for p in config_files)}. Pass your alembic.ini.")
    return environments


# --- writing dbrunbook.toml ------------------------------------------------------------------------------
def _q(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text, ensure_ascii=False)


def _target_name(url_env: str) -> str:
    stripped = re.sub(r"(_?(SQLALCHEMY_)?(DATABASE|DB)?_?(URL|URI|DSN))$", "", url_env, flags=re.IGNORECASE)
    return _slug(stripped) if stripped else "app"


def _relative(path: Path, root: Path) -> str:
    try:
        return os.path.relpath(path, root)
    except ValueError:  # another drive
        return str(path)


def render_config(environments: list[Environment], root: Path) -> str:
    """The text of a commented dbrunbook.toml for these environments, paths relative to ``root``."""
    out = [
        "# dbrunbook configuration, written by 'dbrunbook init' from the project's own Alembic files.",
        "# Never put a password or a URL here: a target names the environment variable that holds its URL",
        "# (url_env) or a libpq service; passwords belong in ~/.pgpass or PGPASSWORD. See the README,",
        "# \"Use it on your own project\".",
        "",
        "[project]",
        'outputs = "outputs"            # signed records: outputs/YYYY/MM/DD/<run-id>/',
        "# runbooks = \"runbooks\"       # your own copies of the runbooks; default: the ones installed with dbrunbook",
        'state_dir = ".dbrunbook"       # embedded PostgreSQL data, local keys (keep it out of git)',
        'default_target = "local"',
        "",
        "[targets.local]",
        "embedded = true                # a PostgreSQL that dbrunbook runs itself (dbrunbook db start), to try things",
        f"database = {_q(_slug(root.name))}",
    ]
    out += _target_lines(environments)
    for env in environments:
        out += _set_lines(env, root)
    return "\n".join(out) + "\n"


def _target_lines(environments: list[Environment]) -> list[str]:
    """The [targets.NAME] tables: one per URL variable an env.py reads (else an example)."""
    out: list[str] = []
    targets: dict[str, str] = {}
    for env in environments:
        if env.facts.url_env and env.facts.url_env not in targets.values():
            name = _target_name(env.facts.url_env)
            while name in targets or name == "local":
                name += "_db"
            targets[name] = env.facts.url_env
    for name, variable in targets.items():
        users = ", ".join(e.name for e in environments if e.facts.url_env == variable)
        out += ["", f"[targets.{name}]",
                f"url_env = {_q(variable)}   # the variable env.py of {users} reads; export it before a run",
                "# protected = true            # production rules: backups, approved previews, approvals",
                '# lock_timeout = "2s"', '# statement_timeout = "15min"']
    if not targets:
        out += ["", "# No env.py reads its URL from an environment variable: dbrunbook hands them the target's",
                "# connection (and sets sqlalchemy.url). Add a target per database, e.g.:",
                "# [targets.production]", '# url_env = "PRODUCTION_DATABASE_URL"', "# protected = true"]
    return out


def _set_lines(env: Environment, root: Path) -> list[str]:
    """The [migration_sets.NAME] table of one environment, with what env.py was seen to read."""
    f = env.facts
    out = ["", f"[migration_sets.{env.name}]",
           f"alembic_ini = {_q(_relative(env.config_file, root))}"]
    if env.section != "alembic":
        out.append(f"section = {_q(env.section)}")
    table = f.version_table or DEFAULT_VERSION_TABLE
    origin = "from env.py" if f.version_table else "Alembic's default"
    note = f"; {f.version_table_note}" if f.version_table_note else ""
    out.append(f"version_table = {_q(table)}   # {origin}" + note)
    if f.version_table_schema:
        out.append(f"version_table_schema = {_q(f.version_table_schema)}   # from env.py")
    if f.url_env:
        out.append(f"url_env = {_q(f.url_env)}   # env.py reads its URL from this; "
                   "dbrunbook sets it to the target's URL")
    else:
        out.append("# url_env = \"MYAPP_DATABASE_URL\"   # if env.py (or a settings module it imports) "
                   "reads its own variable")
    if f.other_env:
        names = ", ".join(f.other_env)
        them = "it" if len(f.other_env) == 1 else "them"
        out.append(f"# env.py also reads {names}: export {them}, "
                   f"or set env = {{ NAME = \"value\" }} (never a secret)")
    else:
        out.append('# env = { MYAPP_SETTINGS = "prod" }   # other variables env.py needs (never a secret)')
    if not f.takes_connection:
        out.append("# env.py does not read config.attributes[\"connection\"]: dbrunbook sets sqlalchemy.url "
                   "(and url_env) to the target's URL instead")
    out.append('# models = "myapp.models:Base"   # for alembic check and troubleshoot\'s drift check')
    return out


def write_config(config_files: list[Path] | None = None, output: Path | None = None) -> Path:
    """Write ``dbrunbook.toml`` for the project's Alembic environments; returns its path.

    Without ``config_files``, ``alembic.ini`` (else ``pyproject.toml`` with ``[tool.alembic]``) of the
    current folder is used.

    Raises:
        ConfigExists: the output file exists (it is never overwritten).
        ConfigError: no Alembic environment found in the files.
    """
    output = (output or Path("dbrunbook.toml")).expanduser().resolve()
    if output.exists():
        raise ConfigExists(f"{output} already exists; dbrunbook init never overwrites it. Edit it, or move it "
                           f"aside and run 'dbrunbook init' again.")
    if not config_files:
        here = Path.cwd()
        candidates = [here / "alembic.ini", here / "pyproject.toml"]
        config_files = [next((c for c in candidates if c.is_file() and _sections(c)), candidates[0])]
    environments = find_environments(list(config_files))
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "x", encoding="utf-8") as fh:  # "x": a file created meanwhile is not overwritten either
        fh.write(render_config(environments, output.parent))
    return output
