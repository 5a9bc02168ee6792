"""Canonical JSON and the sha256 digests a record is made of: files, statements and notebook cells.

A signature is over bytes, so the same statement must always serialize to the same bytes; a verifier that finds
a notebook changed after signing should name the cells that changed, so each cell's content has its own digest.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime
from pathlib import Path
from typing import Any

from dbrunbook.protocol import STATEMENT_FILE
from dbrunbook.records.runs import as_utc

__all__ = ["canonical_json", "cell_digests", "cell_title", "sha256_file", "statement_sha256"]


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return as_utc(value).isoformat() if value.tzinfo else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "as_dict"):
        return value.as_dict()
    raise TypeError(f"{type(value).__name__} cannot go in a record: {value!r}")


def canonical_json(obj: Any) -> bytes:
    """Serialize deterministically: sorted keys, no insignificant blanks, UTF-8, one trailing newline.

    The same statement always gives the same bytes, so the signature and ``statement_sha256`` are stable.
    NaN and infinities are refused (they are not JSON).
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                      default=_json_default)
    return (text + "\n").encode("utf-8")


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks (dumps and notebooks can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def statement_sha256(run_dir: Path) -> str:
    """sha256 of the run directory's statement.json: what the ledger row stores."""
    return sha256_file(Path(run_dir) / STATEMENT_FILE)


def _joined(value: Any) -> Any:
    # nbformat stores multi-line strings either as one string or as a list of lines; both mean the same.
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "".join(value)
    return value


def _normal_outputs(outputs: list) -> list:
    normal = []
    for output in outputs or []:
        output = dict(output)
        if "text" in output:
            output["text"] = _joined(output["text"])
        if isinstance(output.get("data"), dict):
            output["data"] = {mime: _joined(v) for mime, v in output["data"].items()}
        normal.append(output)
    return normal


def cell_digests(nb_bytes: bytes) -> list[dict]:
    """Digest each cell of a notebook: ``[{"index", "cell_type", "id", "sha256"}]``.

    The digest covers the cell's source and outputs (canonical JSON, multi-line strings joined), not
    execution counts or metadata, so a verifier can name which cells' content changed after signing.
    """
    notebook = json.loads(nb_bytes)
    digests = []
    for index, cell in enumerate(notebook.get("cells", [])):
        content = {"source": _joined(cell.get("source", "")),
                   "outputs": _normal_outputs(cell.get("outputs", []))}
        digests.append({
            "index": index,
            "cell_type": cell.get("cell_type"),
            "id": cell.get("id"),
            "sha256": hashlib.sha256(canonical_json(content)).hexdigest(),
        })
    return digests


def cell_title(cell: dict) -> str:
    """A cell's first heading (markdown) or first non-blank line, to name it in a message."""
    lines = [ln.strip() for ln in str(_joined(cell.get("source", ""))).splitlines() if ln.strip()]
    headings = [ln for ln in lines if ln.startswith("#")] if cell.get("cell_type") == "markdown" else []
    title = (headings or lines or ["(empty cell)"])[0]
    return title if len(title) <= 70 else title[:67] + "..."
