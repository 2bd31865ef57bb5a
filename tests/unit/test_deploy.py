"""deploy/: the Prometheus alert rules and the Grafana dashboard use only metrics, labels and
label values that relay really exposes (read from a rendered registry, not from a list kept
here), so renaming a metric or an outcome fails this test until deploy/ follows."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from relay.events import STATUSES
from relay.metrics import (
    CALLBACK_OUTCOMES,
    DELIVERY_OUTCOMES,
    QUEUE_STATES,
    Metrics,
    QueueReading,
)
from relay.store.base import QueueStats

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# Added by Prometheus to every series it scrapes.
TARGET_LABELS = {"job", "instance"}
_SELECTOR = re.compile(r"\b(relay_[a-z0-9_]+)\b\s*(?:\{([^}]*)\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


@dataclass
class CountingStore:
    conflict_retries: int = 0


@dataclass(frozen=True)
class Exposed:
    """Every series name relay renders, its label names, and the closed label value sets."""

    labels: dict[str, set[str]]
    values: dict[tuple[str, str], set[str]]


@pytest.fixture(scope="module")
def exposed() -> Exposed:
    metrics = Metrics()
    metrics.watch_store(CountingStore())
    # One of everything, so every labelled family renders samples.
    metrics.callback("goapi", "accepted", 0.01)
    metrics.attempt("down", "webhook", "delivered", 0.1)
    metrics.task("goapi", "flux", "failed")
    metrics.rules.loaded("0123abcd", 1.0)
    reading = QueueReading(QueueStats({("down", "pending"): 1}, 5.0), 10.0, ("down",))
    text = metrics.render(reading).decode()
    labels: dict[str, set[str]] = {}
    seen: dict[tuple[str, str], set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
            for key, val in sample.labels.items():
                seen.setdefault((sample.name, key), set()).add(val)
    values = {
        ("relay_callbacks_total", "outcome"): set(CALLBACK_OUTCOMES),
        ("relay_deliveries_total", "outcome"): set(DELIVERY_OUTCOMES),
        ("relay_queue_depth", "state"): set(QUEUE_STATES),
        ("relay_task_outcomes_total", "status"): set(STATUSES),
        # Both series exist from the start: the rendered values are the whole set.
        ("relay_rules_reloads_total", "outcome"): seen[("relay_rules_reloads_total", "outcome")],
    }
    return Exposed(labels, values)


def problems(expr: str, exposed: Exposed) -> Iterator[str]:
    """What in one PromQL expression names no metric, label or value relay has."""
    used: set[str] = set()
    for name, matchers in _SELECTOR.findall(expr):
        if name not in exposed.labels:
            yield f"no metric {name}"
            continue
        used |= exposed.labels[name]
        for label, op, val in _MATCHER.findall(matchers):
            if label not in exposed.labels[name] | TARGET_LABELS:
                yield f"{name} has no label {label}"
            known = exposed.values.get((name, label))
            if known is None:
                continue
            if op in ("=", "!=") and val not in known:
                yield f"{name}{{{label}}} is never {val!r}"
            if op in ("=~", "!~") and not any(re.fullmatch(val, k) for k in known):
                yield f"{name}{{{label}=~{val!r}}} matches no value"
    if not used and not _SELECTOR.search(expr):
        yield "uses no relay metric"
    for group in _GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in group.split(","))):
            if label not in used | TARGET_LABELS:
                yield f"groups by {label}, a label none of its metrics has"


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    data = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    found = [
        (panel["title"], target["expr"])
        for panel in data["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in data["templating"]["list"]:
        if variable["type"] == "query":
            found.append((f"${variable['name']}", variable["definition"]))
    return found


def test_the_alert_rules_are_a_prometheus_rule_file() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == {
        "RelayDeliveriesDead",
        "RelayDeadDeliveriesPiling",
        "RelayQueueBehind",
        "RelayRefusalSpike",
        "RelayStoreUnavailable",
        "RelayRulesReloadFailed",
    }
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description"} <= set(rule["annotations"])
        if "for" in rule:
            assert re.fullmatch(r"\d+[smhd]", rule["for"]), rule["alert"]


def test_every_alert_uses_only_what_relay_exposes(exposed: Exposed) -> None:
    found = {rule["alert"]: list(problems(rule["expr"], exposed)) for rule in alert_rules()}
    assert {alert: p for alert, p in found.items() if p} == {}


def test_every_dashboard_query_uses_only_what_relay_exposes(exposed: Exposed) -> None:
    found = {title: list(problems(expr, exposed)) for title, expr in dashboard_exprs()}
    assert {title: p for title, p in found.items() if p} == {}


def test_the_dashboard_shows_what_an_operator_watches() -> None:
    data = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    ids = [panel["id"] for panel in data["panels"]]
    assert len(ids) == len(set(ids))
    queries = " ".join(expr for _, expr in dashboard_exprs())
    for series in (
        "relay_callbacks_total",
        "relay_ingest_seconds_bucket",
        "relay_deliveries_total",
        "relay_delivery_attempt_seconds_bucket",
        "relay_task_outcomes_total",
        "relay_queue_depth",
        "relay_queue_oldest_due_age_seconds",
    ):
        assert series in queries, series


def test_the_checker_catches_a_renamed_metric_label_or_value(exposed: Exposed) -> None:
    # The check itself can fail: each of these is a mistake it must report.
    assert list(problems('rate(relay_callback_total{outcome="accepted"}[5m])', exposed))
    assert list(problems('rate(relay_callbacks_total{reason="accepted"}[5m])', exposed))
    assert list(problems('rate(relay_callbacks_total{outcome="refused"}[5m])', exposed))
    assert list(problems('relay_queue_depth{state=~"queued|waiting"}', exposed))
    assert list(problems("sum by (route) (relay_queue_depth)", exposed))
    assert not list(problems('sum by (state) (relay_queue_depth{state="dead"})', exposed))
