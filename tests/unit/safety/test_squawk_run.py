"""squawk started ahead of the rest of a lint (``SquawkRun``): its findings in order, its files removed,
a broken squawk named, a lint that fails before reading it leaving nothing running or behind; and lint.json,
the file those findings end in; and review's own squawk call, which says when squawk failed."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import threading
from pathlib import Path

import pytest

from dbrunbook.errors import ConfigError
from dbrunbook.safety import squawk_rules
from dbrunbook.safety.squawk_rules import SquawkRun

CLEAN = "CREATE TABLE t (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY);"
BLOCKING = "CREATE INDEX ix_t_name ON t (name);"


def test_findings_come_back_per_text_in_order():
    run = SquawkRun([BLOCKING, CLEAN, BLOCKING])
    results = run.results()
    assert [[i["rule_name"] for i in r if i["rule_name"] == "require-concurrent-index-creation"]
            for r in results] == [["require-concurrent-index-creation"], [],
                                  ["require-concurrent-index-creation"]]
    assert SquawkRun([]).results() == []


def test_no_file_is_left_behind():
    read, stopped = SquawkRun([BLOCKING] * 20), SquawkRun([BLOCKING] * 20)
    folders = [Path(read._folder.name), Path(stopped._folder.name)]
    assert all(f.is_dir() and len(list(f.glob("*.sql"))) == 20 for f in folders)
    read.results()
    stopped.stop()
    assert stopped._process.returncode is not None  # ended, not left running
    assert not any(f.exists() for f in folders)


BROKEN = [  # (the fake squawk's body, what the error quotes)
    ("print('segfault in the parser', file=sys.stderr); sys.exit(3)", (3, "segfault in the parser")),
    ("sys.exit(1)", (1, "no output")),  # crashed before printing: not "no findings"
    ("print('[]'); sys.exit(101)", (101, "[]")),  # a panic after the list
    ("print('{\"not\": \"a list\"}')", (0, '{"not": "a list"}')),
]


def _fake_squawk(folder: Path, body: str) -> Path:
    fake = folder / "squawk"
    fake.write_text(f"#!{sys.executable}\nimport sys\n{body}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return fake


@pytest.mark.parametrize(("body", "said"), BROKEN)
def test_a_squawk_that_fails_is_named_not_read_as_clean(tmp_path, monkeypatch, body, said):
    fake = _fake_squawk(tmp_path, body)
    monkeypatch.setattr(squawk_rules, "squawk_binary", lambda: fake)
    with pytest.raises(ConfigError) as err:
        SquawkRun([BLOCKING]).results()
    assert f"squawk did not return JSON (exit {said[0]}): {said[1]}. Run {fake} --version" in str(err.value)


@pytest.mark.parametrize(("body", "said"), BROKEN)
def test_review_says_when_squawk_failed_rather_than_pass_the_sql_unlinted(tmp_path, monkeypatch, body, said):
    from dbrunbook.procedures import revision_lint

    assert "squawk:require-concurrent-index-creation" in {f.rule for f in revision_lint._squawk(BLOCKING, "a1")}
    fake = _fake_squawk(tmp_path, body)
    monkeypatch.setattr(revision_lint, "squawk_binary", lambda: fake)
    [finding] = revision_lint._squawk(BLOCKING, "a1")
    assert (finding.rule, finding.level) == ("squawk-failed", "warning")
    assert f"squawk exited {said[0]} ({said[1]}): the SQL was not linted" in finding.message


def test_lint_json_reads_back_whole_with_a_statement_a_line_and_each_rule_said_once():
    from dbrunbook.safety.findings import findings_json, read_findings

    head = {"target": "prod", "protected": True, "allow": ["ban-drop-column@a1"], "unused_allow": [],
            "omitted_timeouts": 2, "stopped": False}
    place = {"migration_set": "main", "revision": "a1", "statement": "ALTER TABLE t DROP COLUMN note"}
    squawk = {"category": "destructive", "level": "warning", "source": "squawk", "instead": "keep it"}
    findings = [
        {**place, **squawk, "rule": "ban-drop-column", "why": 'drops "note" — data', "allowed": True},
        {**place, "revision": "a2", **squawk, "rule": "ban-drop-column", "why": "drops b", "allowed": False},
        {**place, "category": "style", "level": "info", "source": "dbrunbook", "instead": "", "why": "x",
         "rule": "x", "allowed": False},
    ]
    for listed in (findings, []):
        text = findings_json(head, listed)
        saved = json.loads(text)
        assert {k: saved[k] for k in head} == head
        key = lambda f: json.dumps(f, sort_keys=True)  # noqa: E731
        assert sorted(map(key, read_findings(saved))) == sorted(map(key, listed))
        assert sum(line.lstrip().startswith('{"found"') for line in text.splitlines()) == len(
            {(f["revision"], f["statement"]) for f in listed})
    text = findings_json(head, findings)
    # what both findings of a rule share is said once; what differs (why) stays with each finding
    assert json.loads(text)["rules"]["ban-drop-column"] == squawk and text.count("keep it") == 1
    assert json.loads(text)["findings"][0]["found"] == [
        {"allowed": True, "rule": "ban-drop-column", "why": 'drops "note" — data'}, "x"]  # x: nothing its own


class _Stopped(BaseException):
    """What an operator's interrupt raises in a kernel (a BaseException, as KeyboardInterrupt is)."""


def test_an_interrupted_lint_ends_squawk_and_leaves_nothing(tmp_path, monkeypatch):
    fake = tmp_path / "squawk"
    fake.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(squawk_rules, "squawk_binary", lambda: fake)

    def stop(signum, frame):
        raise _Stopped

    previous = signal.signal(signal.SIGUSR1, stop)
    try:
        run = SquawkRun([BLOCKING])
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        with pytest.raises(_Stopped):
            run.results()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert run._process.returncode is not None  # killed, not left sleeping
    assert not Path(run._folder.name).exists()
