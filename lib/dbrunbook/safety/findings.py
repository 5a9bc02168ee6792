"""``Finding``: one problem lint found, with its category and level, and the categories in display order.

Every rule source (squawk, dbrunbook's SQL rules, the revision-file checks, the heads check) ends in this one
value object, told apart by ``source``: the lint report, the ``allow`` list and lint.json all read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbrunbook.protocol import artifact_json

CATEGORIES = ("deploy risk", "destructive", "rollback", "preview", "compatibility", "style")
LEVELS = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    """One problem lint found: which rule, how bad, in which revision, and what to do instead."""

    rule: str
    level: str  # error | warning | info
    category: str
    migration_set: str
    revision: str
    statement: str
    why: str
    instead: str
    source: str  # squawk | dbrunbook

    def as_dict(self) -> dict[str, str]:
        """The fields by name. Every field is a string: no ``dataclasses.asdict`` deep copy (2,000 findings of
        a 1,000-revision preview are read three times: the table, its HTML, lint.json)."""
        return dict(vars(self))  # a plain frozen dataclass: its __dict__ holds the fields, in their order

    def matches(self, entry: str) -> bool:
        """True when an ``allow`` entry (``rule`` or ``rule@revision``) covers this finding."""
        rule, _, revision = entry.partition("@")
        return rule == self.rule and (not revision or revision == self.revision)


#: The fields of a finding that lint.json says once per rule when every finding of that rule shares them.
_RULE_FIELDS = ("category", "level", "source", "why", "instead")
_PLACE_FIELDS = ("migration_set", "revision", "statement")


def findings_json(head: dict, findings: list[dict]) -> str:
    """lint.json: ``head``'s keys, ``rules`` (what every finding of a rule shares, said once) and ``findings``,
    one line per statement with what was found in it: ``found`` lists each finding as its rule's name when it
    was not allowed and has nothing of its own, else as ``rule``, ``allowed`` and what differs from the rule's
    entry. ``read_findings`` gives the findings back whole.

    A finding each with its rule's text was 790 KB for the 2,000 findings of 1,000 trivial revisions (two
    squawk rules a CREATE TABLE, the same two sentences 1,000 times); this is 200 KB.
    """
    rules: dict[str, dict] = {}
    for f in findings:
        shared = rules.setdefault(f["rule"], {k: f[k] for k in _RULE_FIELDS if k in f})
        for k in [k for k in shared if shared[k] != f.get(k)]:
            del shared[k]
    places: dict[tuple, list] = {}
    for f in findings:
        own = {k: v for k, v in f.items() if k not in _PLACE_FIELDS and k not in rules[f["rule"]]}
        plain = own == {"rule": f["rule"], "allowed": False}
        places.setdefault(tuple(f.get(k, "") for k in _PLACE_FIELDS), []).append(f["rule"] if plain else own)
    listed = [{**dict(zip(_PLACE_FIELDS, place, strict=True)), "found": found} for place, found in places.items()]
    return artifact_json({**head, "rules": rules, "findings": listed}, depth=2)


def read_findings(saved: dict) -> list[dict]:
    """lint.json's findings, one dict each with every field (``findings_json``'s layout undone), the findings
    of one statement together, statements in the order they were first found."""
    rules = saved.get("rules", {})
    out = []
    for place in saved["findings"]:
        for f in place["found"]:
            own = {"rule": f, "allowed": False} if isinstance(f, str) else f
            out.append({**rules.get(own["rule"], {}), **{k: place[k] for k in _PLACE_FIELDS}, **own})
    return out
