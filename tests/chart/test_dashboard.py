"""The Grafana dashboard (charts/lorafleet/dashboards/lorafleet.json) queries only what exists.

Every metric name in every panel query and template-variable query must be a series the
serving app exports (:data:`lorafleet_serving.server.metrics.EXPORTED`, histograms as
``_bucket``/``_count``/``_sum``) or the operator exports (the ``prometheus_client`` objects of
:mod:`lorafleet_operator.metrics`); every label a query matches on or aggregates by must be one
that metric carries. The names and labels are read from the code, not repeated here.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.chart.helm import CHART

DASHBOARD = CHART / "dashboards" / "lorafleet.json"

#: Labels Ray Serve adds to every metric recorded through ``ray.serve.metrics``.
SERVE_TAGS = frozenset({"application", "deployment", "replica"})
#: Labels Prometheus adds to every scraped series (the target's).
TARGET_LABELS = frozenset({"namespace", "pod", "container", "endpoint", "instance", "job"})
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")

#: PromQL functions and aggregation operators a query may call.
PROMQL_FUNCTIONS = frozenset(
    """
    abs absent absent_over_time acos acosh asin asinh atan atanh avg avg_over_time bottomk
    ceil changes clamp clamp_max clamp_min cos cosh count count_over_time count_values
    day_of_month day_of_week day_of_year days_in_month deg delta deriv
    double_exponential_smoothing end exp floor group histogram_avg histogram_count
    histogram_fraction histogram_quantile histogram_stddev histogram_stdvar histogram_sum
    holt_winters hour idelta increase irate label_join label_replace last_over_time limitk
    limit_ratio ln log10 log2 mad_over_time max max_over_time min min_over_time minute month
    pi predict_linear present_over_time quantile quantile_over_time rad rate resets round
    scalar sgn sin sinh sort sort_by_label sort_by_label_desc sort_desc sqrt start stddev
    stddev_over_time stdvar stdvar_over_time sum sum_over_time tan tanh time timestamp topk
    vector year
    """.split()  # noqa: SIM905 (a word list reads better than a hundred quoted names)
)
#: PromQL keywords (operators, modifiers, literals) that look like identifiers.
PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"bool", "offset", "atan2", "inf", "nan"}
)

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
#: An identifier (not part of a number, a ``$variable`` or a longer name), and whether a
#: call's ``(`` follows it.
_IDENT = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?")
_SELECTOR = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)\s*\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_BY = re.compile(r"\bby\s*\(([^()]*)\)\s*\(")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.*?)\s*,\s*([A-Za-z_]\w*)\s*\)\s*$", re.DOTALL)


# ------------------------------------------------------------------------- what exists


def serving_series() -> dict[str, frozenset[str]]:
    """Series the serving app exports, as scraped from Ray, with their labels.

    The instruments are made by :class:`ServingMetrics` itself through a recording factory,
    so the kinds and tag keys are the code's; Ray scrapes ``<name>`` as ``ray_<name>``, a
    counter with ``_total`` appended and a histogram as its three series.
    """
    from lorafleet_serving.server import metrics

    made: list[tuple[str, str, tuple[str, ...]]] = []

    def recorder(kind: str) -> Any:
        def make(name: str, description: str = "", *args: Any, **kwargs: Any) -> Any:
            made.append((kind, name, tuple(kwargs.get("tag_keys") or ())))
            return metrics._Discarded()

        return make

    class Recording:
        Counter = staticmethod(recorder("counter"))
        Histogram = staticmethod(recorder("histogram"))
        Gauge = staticmethod(recorder("gauge"))

    metrics.ServingMetrics(Recording(), registered=lambda _name: True)
    exported: set[str] = set()
    series: dict[str, frozenset[str]] = {}
    for kind, name, tags in made:
        scraped = f"ray_{name}_total" if kind == "counter" else f"ray_{name}"
        exported.add(scraped)
        labels = frozenset(tags) | SERVE_TAGS | TARGET_LABELS
        if kind == "histogram":
            for suffix in HISTOGRAM_SUFFIXES:
                series[scraped + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
        else:
            series[scraped] = labels
    # The dashboard's documented contract is EXPORTED: it must name exactly these.
    assert exported == set(metrics.EXPORTED), (
        f"EXPORTED differs from ServingMetrics' instruments: {exported ^ set(metrics.EXPORTED)}"
    )
    return series


def operator_series() -> dict[str, frozenset[str]]:
    """Series the operator exports (its ``prometheus_client`` objects), with their labels."""
    from lorafleet_operator import metrics
    from prometheus_client.metrics import MetricWrapperBase

    series: dict[str, frozenset[str]] = {}
    for obj in vars(metrics).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        # The label names of a labelled wrapper (prometheus_client has no public reader).
        labels = frozenset(obj._labelnames) | TARGET_LABELS
        for family in obj.collect():
            if family.type == "counter":
                series[family.name + "_total"] = labels
            elif family.type == "histogram":
                for suffix in HISTOGRAM_SUFFIXES:
                    series[family.name + suffix] = labels | (
                        {"le"} if suffix == "_bucket" else set()
                    )
            else:
                series[family.name] = labels
    return series


@pytest.fixture(scope="module")
def known() -> dict[str, frozenset[str]]:
    serving, operator = serving_series(), operator_series()
    assert serving and operator
    assert not serving.keys() & operator.keys()
    return {**serving, **operator}


# ------------------------------------------------------------------------- the checker


@dataclass
class Problems:
    """What is wrong with the queries: unknown metrics, unknown functions, unknown labels."""

    metrics: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.metrics or self.functions or self.labels)


def metric_names(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and the called functions of a PromQL expression.

    Strings, label matchers, range/subquery brackets and label lists (``by (...)``,
    ``on (...)``, ...) are removed first; what remains is numbers, operators, keywords,
    function calls (an identifier followed by ``(``) and metric names.
    """
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _LABEL_LIST.sub("", text)
    names: set[str] = set()
    calls: set[str] = set()
    for match in _IDENT.finditer(text):
        ident, call = match.group(1), match.group(2)
        if call:
            calls.add(ident)
        elif ident.lower() not in PROMQL_KEYWORDS:
            names.add(ident)
    return names, calls


def _balanced(text: str, open_at: int) -> str:
    """The text inside the parenthesis opening at ``open_at``."""
    depth = 0
    for i in range(open_at, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_at + 1 : i]
    raise ValueError(f"unbalanced parentheses in {text!r}")


def check_expr(expr: str, known: Mapping[str, frozenset[str]]) -> Problems:
    """Check one PromQL expression against the known series and their labels."""
    problems = Problems()
    names, calls = metric_names(expr)
    problems.metrics |= names - known.keys()
    problems.functions |= calls - PROMQL_FUNCTIONS
    no_strings = _STRING.sub('""', expr)
    for match in _SELECTOR.finditer(no_strings):
        name, matchers = match.group(1), match.group(2)
        if name in known:
            for label in _MATCHER_LABEL.findall(matchers):
                if label not in known[name]:
                    problems.labels.add(f"{name}{{{label}}}")
    for match in _BY.finditer(no_strings):
        inner = _balanced(no_strings, match.end() - 1)
        used = metric_names(inner)[0] & known.keys()
        for label in (s.strip() for s in match.group(1).split(",")):
            for name in used:
                if label and label not in known[name]:
                    problems.labels.add(f"by ({label}) over {name}")
    return problems


def queries(dashboard: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query template variable."""

    def panels(items: list[Any]) -> Iterator[Mapping[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        values = _LABEL_VALUES.match(query)
        assert values, f"variable {var['name']}: not label_values(<selector>, <label>): {query}"
        selector, label = values.groups()
        yield f"variable {var['name']}", selector
        yield f"variable {var['name']} label", f"sum by ({label}) ({selector})"


def check_dashboard(dashboard: Mapping[str, Any], known: Mapping[str, frozenset[str]]) -> dict:
    """Problems by query location (empty: every query uses only what exists)."""
    found = {}
    for where, expr in queries(dashboard):
        problems = check_expr(expr, known)
        if problems:
            found[where] = problems
    return found


# ------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_every_query_uses_exported_metrics_and_their_labels(
    dashboard: dict[str, Any], known: dict[str, frozenset[str]]
) -> None:
    assert check_dashboard(dashboard, known) == {}


def test_every_exported_metric_is_charted(
    dashboard: dict[str, Any], known: dict[str, frozenset[str]]
) -> None:
    used: set[str] = set()
    for _where, expr in queries(dashboard):
        used |= metric_names(expr)[0]
    bases = {re.sub(r"_(bucket|count|sum)$", "", name) for name in used}
    from lorafleet_serving.server.metrics import EXPORTED

    missing = set(EXPORTED) - bases
    missing |= {n for n in operator_series() if not n.endswith(("_count", "_sum"))} - used
    assert not missing, f"not on the dashboard: {sorted(missing)}"


def test_the_checker_catches_a_misspelled_metric_function_or_label(
    dashboard: dict[str, Any], known: dict[str, frozenset[str]]
) -> None:
    good = 'sum by (adapter) (rate(ray_lorafleet_requests_total{status=~"5xx"}[5m]))'
    assert not check_expr(good, known)
    assert check_expr(good.replace("requests_total", "request_total"), known).metrics == {
        "ray_lorafleet_request_total"
    }
    # A histogram is scraped as its three series, never under its own name.
    bare = "rate(ray_lorafleet_adapter_load_seconds[5m])"
    assert check_expr(bare, known).metrics == {"ray_lorafleet_adapter_load_seconds"}
    assert check_expr("sum(rate(lorafleet_reconcile_total[5m]))", known).metrics == {
        "lorafleet_reconcile_total"
    }
    assert check_expr("histgram_quantile(0.9, x_bucket)", known).functions == {"histgram_quantile"}
    # step_rows has no adapter label: by (adapter) over it would chart one empty series.
    assert check_expr(
        "sum by (adapter) (rate(ray_lorafleet_step_rows_count[5m]))", known
    ).labels == {"by (adapter) over ray_lorafleet_step_rows_count"}
    assert check_expr('ray_lorafleet_tensor_bytes{adapter="a"}', known).labels == {
        "ray_lorafleet_tensor_bytes{adapter}"
    }
    # ... and in the real dashboard: one misspelled name is reported where it is.
    broken = copy.deepcopy(dashboard)
    target = next(
        t
        for p in broken["panels"]
        for t in p.get("targets", [])
        if "ray_lorafleet_time_to_first_token_seconds_bucket" in t["expr"]
    )
    target["expr"] = target["expr"].replace("time_to_first_token", "time_to_first_tokens")
    found = check_dashboard(broken, known)
    assert [p.metrics for p in found.values()] == [
        {"ray_lorafleet_time_to_first_tokens_seconds_bucket"}
    ]
    broken["templating"]["list"][1]["query"]["query"] = "label_values(ray_lorafleet_req, app)"
    assert "variable application" in check_dashboard(broken, known)


def test_dashboard_shape(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "lorafleet" and dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["application"]["query"]["query"] == (
        "label_values(ray_lorafleet_requests_total, application)"
    )
    assert "adapter" in variables
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    # Every serving selector is limited to the chosen applications; brackets pair up.
    pairs = {")": "(", "}": "{", "]": "["}
    for where, expr in queries(dashboard):
        stack: list[str] = []
        for char in _STRING.sub('""', expr):
            if char in "({[":
                stack.append(char)
            elif char in pairs:
                assert stack and stack.pop() == pairs[char], f"{where}: unpaired {char}"
        assert not stack, f"{where}: unclosed {stack}"
        if where.startswith("variable application"):
            continue
        for match in _SELECTOR.finditer(expr):
            if match.group(1).startswith("ray_"):
                assert 'application=~"$application"' in match.group(2), where
        assert not re.search(r"\bray_lorafleet_\w+(?!\s*\{)\b", _STRING.sub("", expr)), where
