"""``Finding``: one problem lint found, with its category and level, and the categories in display order.

Every rule source (squawk, dbrunbook's SQL rules, the revision-file checks, the heads check) ends in this one
value object, told apart by ``source``: the lint report, the ``allow`` list and lint.json all read it.
"""

from __future__ import annotations

from dataclasses import dataclass

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
