"""Runbooks and their typed parameters: found under runbooks/, read from the `parameters` cell, validated.

A runbook declares its parameters as ``name: type = default  # help`` lines (str, int, float, bool), parsed with
``ast`` and never executed. Validation happens before anything runs: an unknown name is an error (papermill only
warns), values keep their declared type (papermill's own ``-p`` would turn a revision id ``0012`` into 12),
and names or values that look like secrets are refused, because parameters end up in records.
"""

from __future__ import annotations

import ast
import contextlib
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import nbformat

from dbrunbook import protocol
from dbrunbook.config import Config, load_config
from dbrunbook.errors import ConfigError, ParameterError, RunbookNotFound
from dbrunbook.views.tables import escape_html, grid_html

__all__ = [
    "Parameter",
    "RunbookInfo",
    "find_runbook",
    "installed_runbooks",
    "list_runbooks",
    "mask_secrets",
    "parse_parameters",
    "read_parameters",
    "runbooks_dir",
    "validate_parameters",
]

_TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool}
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


@dataclass(frozen=True)
class Parameter:
    """One line of a runbook's ``parameters`` cell: ``name: type = default  # help``."""

    name: str
    type: str
    default: Any
    help: str = ""


@dataclass(frozen=True)
class RunbookInfo:
    """What ``dbrunbook list`` shows of a runbook, read from the notebook without executing it."""

    name: str
    path: Path
    title: str
    description: str
    changes_database: bool
    parameters: tuple[Parameter, ...]

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)

    @property
    def operator_parameters(self) -> tuple[Parameter, ...]:
        """The parameters an operator may set with ``-p`` (all but the launcher's own)."""
        return tuple(p for p in self.parameters if p.name not in protocol.LAUNCHER_PARAMETERS)

    def _repr_html_(self) -> str:
        rows = [[p.name, p.type, repr(p.default), p.help] for p in self.operator_parameters]
        return (f"<b>{escape_html(self.name)}</b>: {escape_html(self.title)}"
                + grid_html(["parameter", "type", "default", "help"], rows))


def read_notebook(path: Path) -> nbformat.NotebookNode:
    try:
        return nbformat.read(str(path), as_version=4)
    except FileNotFoundError:
        raise
    except Exception as err:  # nbformat raises several unrelated classes for a malformed file
        raise ConfigError(
            f"{path} is not a readable notebook: {err}. Open it in JupyterLab and save it again."
        ) from err


def _parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode | None:
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return cell
    return None


def _comments_by_line(source: str) -> dict[int, str]:
    comments: dict[int, str] = {}
    with contextlib.suppress(tokenize.TokenError, IndentationError):
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
    return comments


def parse_parameters(source: str, where: str = "parameters cell") -> tuple[Parameter, ...]:
    """Parse the source of a ``parameters`` cell with ``ast`` (never executed).

    Each statement must be ``name: type = literal  # help`` with type str, int, float or bool (an
    unannotated ``name = literal`` takes the literal's type). Anything else is an authoring error: the
    launcher could not type-check ``-p`` values against it.

    Raises:
        ParameterError: a statement the launcher cannot read, with its line and what to write instead.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise ParameterError(
            f"{where}: line {err.lineno} is not valid Python ({err.msg}). Fix the cell."
        ) from err
    comments = _comments_by_line(source)
    params: list[Parameter] = []
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) or isinstance(node, ast.Pass):
            continue
        line = ast.get_source_segment(source, node) or ""
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, value = node.target.id, node.value
            type_name = ast.unparse(node.annotation)
        elif isinstance(node, ast.Assign) and [type(t) for t in node.targets] == [ast.Name]:
            name, type_name, value = cast(ast.Name, node.targets[0]).id, "", node.value
        else:
            raise ParameterError(
                f"{where}, line {node.lineno}: '{line}' is not a parameter. Write one parameter per line as "
                f"name: str|int|float|bool = value  # help."
            )
        try:
            default = ast.literal_eval(value)
        except ValueError as err:
            raise ParameterError(
                f"{where}, line {node.lineno}: the default of '{name}' must be a literal, not "
                f"'{ast.unparse(value)}'."
            ) from err
        type_name = type_name or type(default).__name__
        if type_name not in _TYPES:
            raise ParameterError(
                f"{where}, line {node.lineno}: parameter '{name}' has type '{type_name}'; "
                f"use one of {', '.join(_TYPES)}."
            )
        if type_name == "float" and type(default) is int:
            default = float(default)
        if type(default) is not _TYPES[type_name]:
            raise ParameterError(
                f"{where}, line {node.lineno}: the default of '{name}' is {default!r}, not "
                f"{_article(type_name)} {type_name}."
            )
        params.append(Parameter(name, type_name, default, comments.get(node.end_lineno or node.lineno, "")))
    return tuple(params)


def read_parameters(nb_path: Path) -> tuple[Parameter, ...]:
    """Return the typed parameters of a notebook's ``parameters`` cell (empty if it has none).

    Raises:
        ParameterError: the cell holds something other than ``name: type = literal`` lines.
    """
    cell = _parameters_cell(read_notebook(Path(nb_path)))
    if cell is None:
        return ()
    return parse_parameters(cell.source, where=f"{nb_path} (parameters cell)")


def _title_and_description(nb: nbformat.NotebookNode) -> tuple[str, str]:
    title, description = "", ""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        lines = cell.source.splitlines()
        for i, text in enumerate(lines):
            if text.startswith("#") and not title:
                title = text.lstrip("#").strip()
                paragraph = []
                for rest in lines[i + 1:]:
                    if rest.strip():
                        if rest.startswith("#"):
                            break
                        paragraph.append(rest.strip())
                    elif paragraph:
                        break
                description = " ".join(paragraph)
                return title, description
    return title, description


def _runbook_info(path: Path) -> RunbookInfo:
    nb = read_notebook(path)
    meta = nb.metadata.get("dbrunbook", {})
    title, description = _title_and_description(nb)
    cell = _parameters_cell(nb)
    params = parse_parameters(cell.source, where=f"{path} (parameters cell)") if cell is not None else ()
    return RunbookInfo(
        name=path.stem,
        path=path,
        title=title or meta.get("title") or path.stem,
        description=description or meta.get("description", ""),
        changes_database=bool(meta.get("changes_database", False)),
        parameters=params,
    )


def installed_runbooks() -> Path:
    """The runbooks that come with dbrunbook: inside the installed package, or the checkout's ``runbooks/``.

    A wheel ships them as ``dbrunbook/runbooks/*.ipynb`` (setup.py copies them at build time); an editable
    install of a clone reads the clone's own ``runbooks/`` folder.
    """
    package = Path(__file__).resolve().parents[1]  # lib/dbrunbook (this module is in execution/)
    packaged = package / "runbooks"
    return packaged if packaged.is_dir() else package.parents[1] / "runbooks"


def runbooks_dir(config: Config) -> Path:
    """Where the project's runbooks are: ``[project] runbooks`` when it holds any, else the installed ones."""
    own = Path(config.runbooks_dir)
    if any(p for p in own.glob("*.ipynb") if not p.name.startswith((".", "_"))):
        return own
    return installed_runbooks()


def _runbook_paths(config: Config) -> list[Path]:
    return sorted(p for p in runbooks_dir(config).glob("*.ipynb") if not p.name.startswith((".", "_")))


def list_runbooks(config: Config | None = None) -> list[RunbookInfo]:
    """Return every runbook under the project's runbooks folder, sorted by name."""
    config = config or load_config()
    return [_runbook_info(p) for p in _runbook_paths(config)]


def find_runbook(config: Config | None, name: str) -> RunbookInfo:
    """Return the runbook called ``name`` (``upgrade`` or ``upgrade.ipynb``).

    Raises:
        RunbookNotFound: no such notebook; the message lists the known names.
    """
    config = config or load_config()
    stem = name.removesuffix(".ipynb")
    path = runbooks_dir(config) / f"{stem}.ipynb"
    if "/" in stem or not path.is_file():
        raise RunbookNotFound(name, [p.stem for p in _runbook_paths(config)])
    return _runbook_info(path)


def mask_secrets(text: str) -> str:
    """Mask every secret in ``text`` with ``***`` (``dbrunbook.postgres.db.mask_secrets``, the one masker)."""
    from dbrunbook.postgres.db import mask_secrets as mask

    return mask(text)


def _article(type_name: str) -> str:
    return "an" if type_name == "int" else "a"


def _convert(info: RunbookInfo, param: Parameter, value: Any) -> Any:
    if not isinstance(value, str):
        # A caller of the library may pass typed values; ints are fine where floats are expected.
        if param.type == "float" and type(value) is int:
            return float(value)
        if type(value) is _TYPES[param.type]:
            return value
        raise ParameterError(
            f"Parameter '{param.name}' of runbook '{info.name}' is {_article(param.type)} {param.type}; "
            f"got {value!r} ({type(value).__name__})."
        )
    if param.type == "str":
        return value  # '0012' stays '0012': a revision id or a label is text, whatever it looks like
    if param.type == "bool":
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ParameterError(
            f"Parameter '{param.name}' of runbook '{info.name}' is a bool; '{value}' is not one. "
            f"Use true/false, yes/no, on/off or 1/0."
        )
    try:
        return _TYPES[param.type](value.strip())
    except ValueError:
        raise ParameterError(
            f"Parameter '{param.name}' of runbook '{info.name}' is {_article(param.type)} {param.type}; "
            f"'{value}' is not one."
        ) from None


def validate_parameters(info: RunbookInfo, raw: dict[str, Any]) -> dict[str, object]:
    """Check ``-p NAME VALUE`` pairs against the runbook's declared parameters and convert them.

    Runs before anything executes, so a typo never reaches a database. Returns every operator parameter:
    the given ones converted to their declared type, the others at the notebook's default.

    Raises:
        ParameterError: a name that is unknown, set by the launcher, or looks like a secret; a value that
            does not parse as the declared type or holds a password.
    """
    known = [p.name for p in info.operator_parameters]
    for name, value in raw.items():
        if name in protocol.LAUNCHER_PARAMETERS:
            raise ParameterError(
                f"Parameter '{name}' of runbook '{info.name}' is set by the launcher for every run; "
                f"remove -p {name}."
            )
        if any(word in name.lower() for word in protocol.SECRET_WORDS):
            raise ParameterError(
                f"Parameter name '{name}' looks like a secret; parameters are saved in the signed record, "
                f"so secrets never go there. Put the password in ~/.pgpass or PGPASSWORD, or the URL in the "
                f"environment variable the target's url_env names."
            )
        if name not in known:
            raise ParameterError(
                f"Runbook '{info.name}' has no parameter '{name}'; its parameters are: "
                f"{', '.join(known) or '(none)'}. Run 'dbrunbook list' to see their types and defaults."
            )
        if isinstance(value, str) and mask_secrets(value) != value:
            raise ParameterError(
                f"The value of parameter '{name}' holds a password ({mask_secrets(value)}); parameters are "
                f"saved in the signed record. Put the password in ~/.pgpass or PGPASSWORD and pass the name "
                f"of a target from dbrunbook.toml instead."
            )
    values: dict[str, object] = {}
    for param in info.operator_parameters:
        values[param.name] = _convert(info, param, raw[param.name]) if param.name in raw else param.default
    return values
