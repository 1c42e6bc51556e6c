"""docs/reasons.md lists every reason a user can see, and every finding code.

Collected, not listed by hand:

- the installer's reasons: every module-level CamelCase ``str`` constant of
  ``lorafleet_serving.installer.errors`` (the words of the install report);
- the reasons the operator writes (conditions, Events, local mode's ``state.json``): a walk of
  the syntax trees (``ast``) of ``operator/lorafleet_operator/**/*.py`` for each way the code
  passes one: ``reason=...``
  keywords and assignments, ``"reason": ...`` dict entries, ``(cond.X, True|False, reason,
  message)`` condition tuples (and ``set_condition`` positional arguments), the first argument
  of ``failed`` (:func:`lorafleet_operator.status_update.failed`), ``ready, reason, message = ...`` tuple assignments, ``return False,
  reason, message`` (:func:`lorafleet_operator.rayservice.rayservice_readiness`), and local
  mode's ``DeployFailed(reason, ...)`` / ``InstallFailed(key, reason, ...)``;
- finding codes: ``_finding(level, code, ...)`` and ``"code": ...`` in the installer package.

No cluster, no model: a plain unit test.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "reasons.md"
OPERATOR_SRC = REPO / "operator" / "lorafleet_operator"
INSTALLER_SRC = REPO / "serving" / "lorafleet_serving" / "installer"

#: A CamelCase word: a capital first, letters and digits, at least one lower-case letter
#: ("Timeout", "NotABaseModel"; not "RUNNING" nor "DEPLOY_FAILED").
CAMEL = re.compile(r"[A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*")
#: Condition types, where a condition tuple names its type with a literal.
CONDITION_TYPES = {"Installed", "Serving", "Ready", "Degraded", "Deleting"}

FINDING_PATTERNS = [
    re.compile(r'\b_finding\(\s*"(?:info|warning)"\s*,\s*"(\w+)"'),
    re.compile(r'"code"\s*:\s*"(\w+)"'),
]


def camel_literals(node: ast.AST | None) -> set[str]:
    """CamelCase string constants anywhere in an expression (``a if b else "X"``, ``x or
    "Y"``), not inside f-strings or calls' other arguments."""
    if node is None:
        return set()
    return {
        n.value
        for n in ast.walk(node)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and CAMEL.fullmatch(n.value)
    }


def _is_condition_type(node: ast.AST) -> bool:
    """``cond.READY`` and friends, or a condition type written as a literal."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return node.value.id == "cond" and node.attr.isupper()
    return isinstance(node, ast.Constant) and node.value in CONDITION_TYPES


def _after_condition(items: list[ast.expr]) -> set[str]:
    """In ``(..., cond.X, True|False, reason, message)``: the reason's literals."""
    found: set[str] = set()
    for i in range(len(items) - 2):
        status = items[i + 1]
        if (
            _is_condition_type(items[i])
            and isinstance(status, ast.Constant)
            and status.value in (True, False, "True", "False", "Unknown")
        ):
            found |= camel_literals(items[i + 2])
    return found


def reasons_in_source(text: str) -> set[str]:
    """Every reason literal the code passes in ``text`` (see the module doc), found by
    walking its syntax tree."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "reason":
                    found |= camel_literals(kw.value)
            found |= _after_condition(node.args)
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            position = {"fail": 0, "failed": 0, "DeployFailed": 0, "InstallFailed": 1}.get(name)
            if position is not None and len(node.args) > position:
                found |= camel_literals(node.args[position])
        elif isinstance(node, ast.Tuple):
            found |= _after_condition(node.elts)
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "reason":
                    found |= camel_literals(value)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id == "reason":
                    found |= camel_literals(node.value)
                elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    for t, v in zip(target.elts, node.value.elts, strict=False):
                        if isinstance(t, ast.Name) and t.id == "reason":
                            found |= camel_literals(v)
        elif isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple):
            elts = node.value.elts  # rayservice_readiness: return False, "Reason", message
            if len(elts) >= 2 and isinstance(elts[0], ast.Constant) and elts[0].value is False:
                found |= camel_literals(elts[1])
    return found


def operator_reasons() -> set[str]:
    found: set[str] = set()
    for path in sorted(OPERATOR_SRC.rglob("*.py")):
        found |= reasons_in_source(path.read_text())
    return found


def installer_reasons() -> set[str]:
    errors = importlib.import_module("lorafleet_serving.installer.errors")
    return {
        value
        for name, value in vars(errors).items()
        if name.isupper() and isinstance(value, str) and CAMEL.fullmatch(value)
    }


def finding_codes() -> set[str]:
    found: set[str] = set()
    for path in sorted(INSTALLER_SRC.rglob("*.py")):
        text = path.read_text()
        for pattern in FINDING_PATTERNS:
            found |= set(pattern.findall(text))
    return found


def doc_tables() -> dict[str, list[list[str]]]:
    """The doc's tables by their first header cell (``Reason``, ``Code``): rows of cells."""
    tables: dict[str, list[list[str]]] = {}
    rows: list[list[str]] | None = None
    for line in DOC.read_text().splitlines():
        if not line.startswith("|"):
            rows = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if rows is None:
            rows = tables.setdefault(cells[0], [])
            rows.append(cells)  # the header, checked for its width below
        elif not set(line) <= set("|-: "):
            rows.append(cells)
    return tables


def first_column(header: str) -> list[str]:
    tables = doc_tables()
    assert header in tables, f"docs/reasons.md has no table whose first column is {header!r}"
    head, *rows = tables[header]
    names = []
    for cells in rows:
        assert len(cells) == len(head), f"row has {len(cells)} cells, not {len(head)}: {cells}"
        m = re.fullmatch(r"`(\w+)`", cells[0])
        assert m, f"first cell is not one `Name`: {cells[0]!r}"
        names.append(m[1])
    return names


@pytest.fixture(scope="module")
def documented() -> set[str]:
    names = first_column("Reason")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"listed twice in docs/reasons.md: {duplicates}"
    return set(names)


def test_the_reason_table_has_the_expected_columns() -> None:
    head = doc_tables()["Reason"][0]
    assert head == ["Reason", "Where it appears", "What it means", "What to do"]


def test_installer_reasons_are_collected() -> None:
    reasons = installer_reasons()
    errors = importlib.import_module("lorafleet_serving.installer.errors")
    assert len(reasons) >= 20
    assert reasons >= errors.FAILURE_REASONS
    assert {"UnsupportedAdapter", "SourceNotFound", "Timeout", "Installed", "Removed"} <= reasons


def test_operator_reasons_are_collected() -> None:
    reasons = operator_reasons()
    # One name per way a reason is passed, so a scan that misses one fails here.
    assert {
        "ServeNotAnswering",  # ready, reason, message = False, "ServeNotAnswering", ...
        "ApplicationFailed",  # same, tuple assignment
        "RayPodsNotRunning",  # reason, message = "RayPodsNotRunning", problems
        "BaseModelNotReady",  # (cond.INSTALLED, False, "BaseModelNotReady", why)
        "ServeAnswering",  # "ServeAnswering" if ... else "RayServiceReady"
        "RayServiceReady",
        "ReadyTimeout",  # condition tuple over several lines
        "InvalidSpec",  # failed("InvalidSpec", ...)
        "VolumeNotFound",  # failed(\n "VolumeNotFound", ...)
        "InstallFailed",  # reason = report.reason if report else "InstallFailed"
        "Forbidden",  # reason = "Forbidden" if ... else "KubernetesApiError"
        "KubernetesApiError",
        "DeletionTimeout",  # kopf.warn(body, reason="DeletionTimeout", ...)
        "RayServiceMissing",  # return False, "RayServiceMissing", ...
        "ApplicationNotRunning",  # return (\n False,\n "ApplicationNotRunning", ...)
        "NotReady",  # return False, ready_cond.get("reason") or "NotReady", ...
        "InstallInterrupted",  # record.update(..., reason="InstallInterrupted")
        "DeployTimeout",  # DeployFailed(\n "DeployTimeout", ...)
        "InternalError",  # InstallFailed(obj.key, "InternalError", ...)
    } <= reasons
    # Kubernetes' own words, quoted only inside RayPodsNotRunning's message.
    assert not {"ImagePullBackOff", "CrashLoopBackOff", "Unschedulable"} & reasons
    # Reasons of a ready RayService are never written (the operator writes its own).
    assert "Running" not in reasons


def test_every_installer_reason_is_in_the_table(documented: set[str]) -> None:
    missing = sorted(installer_reasons() - documented)
    assert not missing, f"installer reasons missing from docs/reasons.md: {missing}"


def test_every_operator_reason_is_in_the_table(documented: set[str]) -> None:
    missing = sorted(operator_reasons() - documented)
    assert not missing, f"operator reasons missing from docs/reasons.md: {missing}"


def test_the_table_lists_no_reason_nobody_writes(documented: set[str]) -> None:
    stale = sorted(documented - installer_reasons() - operator_reasons())
    assert not stale, f"docs/reasons.md lists reasons no code writes: {stale}"


def test_every_finding_code_is_in_the_findings_table() -> None:
    codes = finding_codes()
    assert {"PickleLeftOut", "NoTokenizer", "BaseMismatch", "ConvertedToSafetensors"} <= codes
    listed = first_column("Code")
    missing = sorted(codes - set(listed))
    assert not missing, f"finding codes missing from docs/reasons.md: {missing}"
    stale = sorted(set(listed) - codes)
    assert not stale, f"docs/reasons.md lists finding codes no code writes: {stale}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('kopf.warn(body, reason="CleanupFailed", message="x, y")', {"CleanupFailed"}),
        ("ctx.event(reason=str(phase))", set()),
        ('(cond.SERVING,\n  False,\n  "Pending",\n  f"Not {x}")', {"Pending"}),
        ('cond.set_condition(c, cond.READY, True, "Fine", "m")', {"Fine"}),
        ('self.fail(reason, f"{message} [Detail]")', set()),
        ('failed(\n    "Gone", f"{x}", installJob=job)', {"Gone"}),
        ('ok, reason, message = True, "Good", "Bad"', {"Good"}),
        ('{"reason": report.get("reason") or "Fallback"}', {"Fallback"}),
        ("return False, 'Missing', msg", {"Missing"}),
        ('InstallFailed(obj.key, "Interrupted", m, log)', {"Interrupted"}),
        ('f"see {Other}"', set()),
    ],
)
def test_the_scan(source: str, expected: set[str]) -> None:
    assert reasons_in_source(source) == expected
