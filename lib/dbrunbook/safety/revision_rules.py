"""The revision-file checks (Python's ast): empty or raising downgrade, online-only calls, autocommit blocks.

The one place that reads revision files: the deploy lint (``revision_file_findings``) and review
(``authoring.lint_python``, which adds its own review-only rules and levels) both call ``revision_issues``.
``heads_finding`` is the one check on the chain's shape, unmerged branches.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dbrunbook.safety.findings import Finding

_ONLINE_ONLY_CALLS = {"get_bind": "op.get_bind()", "inspect": "sa.inspect()", "reflect": "MetaData.reflect()",
                      "from_engine": "Inspector.from_engine()", "fetchall": ".fetchall()",
                      "fetchone": ".fetchone()", "scalar": ".scalar()", "scalar_one": ".scalar_one()",
                      "first": ".first()"}
_CALL_WORDS = ("autoload_with", "autocommit_block", *_ONLINE_ONLY_CALLS)
#: The rules ``revision_issues`` reports, each with its deploy-lint level and category.
REVISION_RULES = {
    "empty-downgrade": ("warning", "rollback"),
    "irreversible-downgrade": ("info", "rollback"),
    "online-only-call": ("warning", "preview"),
    "autocommit-block": ("warning", "deploy risk"),
}


@dataclass(frozen=True)
class RevisionIssue:
    """A finding of the revision-file rules before it becomes a deploy-lint or review finding."""

    rule: str  # a key of REVISION_RULES
    line: int | None  # 1-based; None when the issue is a missing function
    why: str
    instead: str

    @property
    def level(self) -> str:
        return REVISION_RULES[self.rule][0]

    @property
    def category(self) -> str:
        return REVISION_RULES[self.rule][1]


def _is_trivial(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Pass) or (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))


def _checks_offline_mode(tree: ast.Module) -> bool:
    """True when the revision asks whether it runs offline (``context.is_offline_mode()``, ``.as_sql``)."""
    return any((isinstance(n, ast.Attribute) and n.attr in ("is_offline_mode", "as_sql")) or
               (isinstance(n, ast.Name) and n.id == "is_offline_mode") for n in ast.walk(tree))


def revision_issues(source: str, *, filename: str = "<revision>", with_downgrade: bool = False,
                    trust_offline_guard: bool = False) -> list[RevisionIssue]:
    """The ast checks of one revision's source: empty or raising downgrade, online-only calls, autocommit_block.

    The deploy lint asks "is the previewed upgrade what will run", so by default downgrade() is not read and
    a revision that checks offline mode still has its online-only calls reported (the preview shows the
    offline branch). Review asks "does it render offline, both ways": ``with_downgrade`` also reads
    downgrade() (the rollback preview renders it offline) and ``trust_offline_guard`` accepts a revision
    that checks offline mode before reaching for the connection.

    Raises:
        SyntaxError: the source is not Python.
    """
    tree = ast.parse(source, filename=filename)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    out = _downgrade_issues(functions.get("upgrade"), functions.get("downgrade"))
    # A call or keyword the walk looks for is spelled in the source: without any of those words there is
    # nothing to find (most revisions of a long chain), and the walk of every node is skipped.
    if any(word in source for word in _CALL_WORDS):
        out += _call_issues(tree, with_downgrade=with_downgrade, trust_offline_guard=trust_offline_guard)
    return out


def _downgrade_issues(up: ast.FunctionDef | None, down: ast.FunctionDef | None) -> list[RevisionIssue]:
    """``empty-downgrade`` or ``irreversible-downgrade`` of a revision whose upgrade does something."""
    out: list[RevisionIssue] = []
    # A revision whose upgrade does nothing (a merge point, a marker) rightly has nothing to undo.
    if up is None or all(_is_trivial(s) for s in up.body):
        pass
    elif down is None:
        out.append(RevisionIssue("empty-downgrade", None, "the revision has no downgrade(): it cannot be rolled "
                                 "back", "write downgrade() so that it reverts upgrade()"))
    elif all(_is_trivial(s) for s in down.body):
        out.append(RevisionIssue(
            "empty-downgrade", down.lineno,
            "downgrade() does nothing: 'alembic downgrade' would move the version pointer back and leave the "
            "schema as it is, so the database then lies about its revision",
            "write downgrade() so that it reverts upgrade(), or raise NotImplementedError to say it cannot"))
    elif any(isinstance(s, ast.Raise) for s in down.body):
        out.append(RevisionIssue("irreversible-downgrade", down.lineno,
                                 "downgrade() raises: this revision cannot be rolled back, only restored from a "
                                 "backup", "take a backup before applying it"))
    return out


def _call_issues(tree: ast.Module, *, with_downgrade: bool, trust_offline_guard: bool) -> list[RevisionIssue]:
    """``autocommit-block`` and ``online-only-call``: the calls of the revision's module (downgrade() if asked)."""
    out: list[RevisionIssue] = []
    tops = [top for top in tree.body if with_downgrade or not (isinstance(top, ast.FunctionDef) and
                                                                top.name == "downgrade")]
    online: list[tuple[ast.AST, str]] = []
    for node in (n for top in tops for n in ast.walk(top)):
        if isinstance(node, ast.keyword) and node.arg == "autoload_with":
            online.append((node.value, "table reflection (autoload_with)"))
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name == "autocommit_block":
            out.append(RevisionIssue(
                "autocommit-block", node.lineno,
                "autocommit_block() commits Alembic's transaction mid-revision: if a later statement fails, what "
                "ran before stays and the version table does not say so",
                "keep the autocommit block alone in its own revision, with IF NOT EXISTS / IF EXISTS"))
        elif name in _ONLINE_ONLY_CALLS and (name != "inspect" or _inspects_connection(node)) and \
                (name not in {"scalar", "first"} or _on_execute(func)):
            online.append((node, _ONLINE_ONLY_CALLS[name]))
    if online and not (trust_offline_guard and _checks_offline_mode(tree)):
        calls = ", ".join(dict.fromkeys(what for _, what in online))
        first = min((n for n, _ in online), key=lambda n: getattr(n, "lineno", 0))
        out.append(RevisionIssue(
            "online-only-call", getattr(first, "lineno", None),
            f"{calls} need(s) a live connection: in offline mode (the reviewed preview) the revision fails or "
            f"takes another branch, so the preview is not what will run",
            "express the change as SQL the preview can show (op.execute with literal SQL), or keep the "
            "data-dependent part out of the migration"))
    return out


def revision_file_findings(path: Path, *, migration_set: str, revision: str) -> list[Finding]:
    """The deploy lint's findings on one revision file (``revision_issues`` on its upgrade)."""
    path = Path(path)
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    out = []
    for issue in revision_issues(source, filename=str(path)):
        where = f"{path.name}:{issue.line}: {lines[issue.line - 1].strip()}" if issue.line else f"{path.name}: "
        out.append(Finding(issue.rule, issue.level, issue.category, migration_set, revision, where, issue.why,
                           issue.instead, "dbrunbook"))
    return out


def _inspects_connection(node: ast.Call) -> bool:
    func = node.func
    owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
    return owner in ("sa", "sqlalchemy", "") or isinstance(func, ast.Name)


def _on_execute(func: ast.expr) -> bool:
    value = func.value if isinstance(func, ast.Attribute) else None
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "execute"


def heads_finding(migration_set: str, heads: Iterable[str], *, protected: bool) -> Finding | None:
    """``multiple-heads`` when a migration set has unmerged branches."""
    heads = sorted(heads)
    if len(heads) < 2:
        return None
    return Finding("multiple-heads", "error" if protected else "warning", "deploy risk", migration_set,
                   ",".join(heads), f"heads: {', '.join(heads)}",
                   f"{len(heads)} heads: the branches were never merged, so their order on this database is "
                   f"Alembic's choice and 'alembic upgrade head' fails",
                   "alembic merge -m 'merge' " + " ".join(heads), "dbrunbook")
