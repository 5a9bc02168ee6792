"""The house rules of lib/dbrunbook, checked on its source: layers import downward only, private names stay home.

DESIGN.md draws the layers. A module may import its own layer and the layers below it, lazily inside a
function too (a lazy import is still a dependency). Leaves that every layer shows or masks with (the one table
helper, the one secret masker, URLs) sit in the bottom layer; they must import only the bottom layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "lib" / "dbrunbook"

#: Bottom to top; a name is a module or a package (dotted, below ``dbrunbook``), the longest match wins.
LAYERS = [
    {"errors", "protocol", "config", "config_model", "config_tables", "config_schema", "postgres.urls",
     "postgres.masking", "views.tables", "views.summaries", "views.report_style"},
    {"postgres"},
    {"chain"},
    {"views.pictures", "views.figures", "views.plots", "views.revision_graph", "views.backfill_plots"},  # charts
    {"records"},
    {"safety"},
    {"procedures"},
    {"execution"},
    {"views", "cli", "cli_output", "cli_run", "cli_records", "demo", "pytest_plugin", "airflow", ""},  # pages
]


def _layer(module: str) -> int:
    name = module.removeprefix("dbrunbook").removeprefix(".")
    best, rank = -1, len(LAYERS) - 1
    for i, layer in enumerate(LAYERS):
        for key in layer:
            if (name == key or name.startswith(key + ".") or key == "") and len(key) > best:
                best, rank = len(key), i
    return rank


def _modules():
    for path in sorted(LIB.rglob("*.py")):
        rel = path.relative_to(LIB.parent).with_suffix("")
        yield ".".join(rel.parts).removesuffix(".__init__"), path


def _imports(module: str, path: Path):
    """(imported module, names, line) for every import of dbrunbook in the file, outside TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for n in ast.walk(node)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base == "dbrunbook" or base.startswith("dbrunbook."):
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    target = sub if (LIB.parent / (sub.replace(".", "/") + ".py")).exists() or \
                        (LIB.parent / sub.replace(".", "/")).is_dir() else base
                    yield target, alias.name, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("dbrunbook"):
                    yield alias.name, "", node.lineno


def test_every_import_goes_down_or_sideways():
    upward = []
    for module, path in _modules():
        for target, _name, line in _imports(module, path):
            if _layer(target) > _layer(module):
                upward.append(f"{path.relative_to(ROOT)}:{line}: {module} (layer {_layer(module)}) imports "
                              f"{target} (layer {_layer(target)})")
    assert upward == []


def test_no_private_name_is_imported_from_another_module():
    private = []
    for module, path in _modules():
        bound = {}  # names this file binds to other dbrunbook modules
        for target, name, line in _imports(module, path):
            if name.startswith("_") and name != "__all__" and target != module:
                private.append(f"{path.relative_to(ROOT)}:{line}: {name} from {target}")
            if target.endswith("." + name) or target == f"dbrunbook.{name}":
                bound[name] = target
        for node in ast.walk(ast.parse(path.read_text())):
            for alias in getattr(node, "names", []) if isinstance(node, (ast.Import, ast.ImportFrom)) else []:
                if alias.asname and alias.name in bound:
                    bound[alias.asname] = bound[alias.name]
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                private.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert private == []


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for _, p in _modules() if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
