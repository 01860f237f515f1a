"""Every PromQL expression jimbus's operators run, and the metric names in them:
the rules of deploy/prometheus/jimbus-rules.yml and the queries of the Grafana
dashboard deploy/grafana/jimbus.json (targets and template variables, with
Grafana's variables replaced by values Prometheus accepts)."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import promql_parser
import yaml

from support import DEPLOY

RULES = DEPLOY / "prometheus" / "jimbus-rules.yml"
DASHBOARD = DEPLOY / "grafana" / "jimbus.json"

# Grafana's built-in and dashboard variables, as a query would see them.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$job": ".*",
    "$instance": ".*",
}
# Series Prometheus makes itself, which no exporter exports.
SYNTHETIC = {"up"}


@dataclass(frozen=True)
class Expression:
    where: str
    promql: str


def rules() -> dict:
    return yaml.safe_load(RULES.read_text())


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def rule_expressions() -> list[Expression]:
    found = []
    for group in rules()["groups"]:
        for rule in group["rules"]:
            name = rule.get("record") or rule.get("alert")
            found.append(Expression(f"{RULES.name}: {group['name']}/{name}", rule["expr"]))
    return found


def recorded_names() -> set[str]:
    return {rule["record"] for group in rules()["groups"] for rule in group["rules"] if "record" in rule}


def substitute(query: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        query = query.replace(variable, value)
    if "$" in query:
        raise ValueError(f"an unknown Grafana variable in {query!r}")
    return query


def dashboard_expressions() -> list[Expression]:
    found = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            where = f"{DASHBOARD.name}: panel {panel['title']!r} target {target['refId']}"
            found.append(Expression(where, substitute(target["expr"])))
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        # label_values(SELECTOR, label) is Grafana's, not PromQL: its selector is.
        match = re.fullmatch(r"label_values\((.*),\s*\w+\)", query.strip())
        selector = match.group(1) if match else query
        found.append(Expression(f"{DASHBOARD.name}: variable ${variable['name']}", substitute(selector)))
    return found


def all_expressions() -> list[Expression]:
    return rule_expressions() + dashboard_expressions()


def _children(node) -> list:
    children = []
    for attribute in ("lhs", "rhs", "expr", "param", "vector_selector"):
        child = getattr(node, attribute, None)
        if child is not None and not isinstance(child, (str, int, float)):
            children.append(child)
    children.extend(getattr(node, "args", None) or [])
    return children


def selectors(promql: str) -> list:
    """Every vector selector of an expression."""
    found, pending = [], [promql_parser.parse(promql)]
    while pending:
        node = pending.pop()
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)
        pending.extend(_children(node))
    return found


def metric_name(selector) -> str:
    if selector.name:
        return selector.name
    for matcher in selector.matchers.matchers:
        if matcher.name == "__name__":
            return matcher.value
    raise ValueError(f"a selector without a metric name: {selector}")


def bucket_bounds_used(selector) -> set[str]:
    return {m.value for m in selector.matchers.matchers if m.name == "le" and m.op == promql_parser.MatchOp.Equal}


def promtool_check(expressions: list[Expression], promtool: str) -> dict[str, str]:
    """Checks each expression as promtool checks a rule file: one recording rule
    per expression. Returns {where: promtool's complaint} for those it rejects."""

    def check(batch: list[Expression]) -> subprocess.CompletedProcess:
        rule_file = {"groups": [{"name": "check", "rules": [
            {"record": f"check:expression_{i}", "expr": e.promql} for i, e in enumerate(batch)]}]}
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
            yaml.safe_dump(rule_file, f)
        try:
            return subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True, timeout=60)
        finally:
            Path(f.name).unlink()

    if check(expressions).returncode == 0:
        return {}
    # Name the culprits: promtool reports a file, not which rule of it.
    rejected = {}
    for expression in expressions:
        result = check([expression])
        if result.returncode != 0:
            rejected[expression.where] = (result.stdout + result.stderr).strip()
    return rejected
