"""Every PromQL expression of the rules and the dashboard parses (promtool), and
every metric it names is exported by a real jimbus after a short load: on the
embedded log, and on JetStream for the backend's own metrics. A dashboard must
never chart a metric that does not exist."""

from __future__ import annotations

import re

import pytest

from support import (Jimbus, Nats, Tail, bucket_bounds, durable_subscribe, exported_names, post_game,
                      short_load, tool, wait_until)
from expressions import (SYNTHETIC, all_expressions, bucket_bounds_used, dashboard, dashboard_expressions,
                         metric_name, promtool_check, recorded_names, rule_expressions, selectors)


def sample(text: str, name: str, missing: float | None = None, **labels: str) -> float:
    """The sum of every sample of `name` whose labels include `labels`; `missing`
    when there is none (or a failed assertion, when `missing` is None)."""
    total, found = 0.0, False
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name)] not in "{ ":
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total, found = total + float(value), True
    if not found and missing is not None:
        return missing
    assert found, f"{name}{labels or ''} is not exported"
    return total


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """/metrics of jimbus on its embedded log after a live subscriber, a durable
    consumer and the short load."""
    data = tmp_path_factory.mktemp("embedded")
    server = Jimbus(data / "data", "--shards", "2")
    tail = Tail(server)
    try:
        # One subscription task per shard once `tail` is subscribed: from then on it is live.
        wait_until("the tail subscriber", lambda: sample(server.metrics(), "jimbus_subscriptions", 0) >= 2)
        short_load(server)
        wait_until("the tail subscriber's deliveries", lambda: len(tail.lines) >= 30)
        assert durable_subscribe(server.grpc, "trainer", wanted=3) == 3
        expected = ("jimbus_delivery_lag_seconds_count", "jimbus_consumer_oldest_unacked_age_seconds",
                    "jimbus_aggregate_cascade_triggers_count", "jimbus_data_dir_free_bytes")

        def settled(text: str) -> bool:
            # A hand is counted when its 100 ms window closes, after its answer
            # and its raw deliveries: wait for all four hands' triggers, not
            # only the first window's.
            return (all(n in exported_names(text) for n in expected)
                    and sample(text, "jimbus_aggregate_cascade_triggers_sum") >= 20)

        yield wait_until("the load's metrics and its four hands", lambda: (lambda t: settled(t) and t)(server.metrics()))
    finally:
        tail.stop()
        server.stop()


@pytest.fixture(scope="module")
def jetstream(tmp_path_factory):
    """/metrics of jimbus on a JetStream nats-server after a short load and a subscriber."""
    data = tmp_path_factory.mktemp("jetstream")
    nats = Nats(data / "nats")
    server = None
    tail = None
    try:
        server = Jimbus(data / "data", "--shards", "1", "--bus", nats.url)
        tail = Tail(server)
        wait_until("the tail subscriber", lambda: sample(server.metrics(), "jimbus_subscriptions", 0) >= 1)
        post_game(server, "obs-js", 0)
        assert durable_subscribe(server.grpc, "trainer-js", wanted=3) == 3
        expected = ("jimbus_bus_available", "jimbus_delivery_lag_seconds_count")
        yield wait_until("JetStream availability, a delivery and the consumer's backlog", lambda: (
            lambda t: all(n in exported_names(t) for n in expected)
            and sample(t, "jimbus_consumer_backlog_records", 0, consumer="trainer-js") > 0 and t)(server.metrics()))
    finally:
        if tail:
            tail.stop()
        if server:
            server.stop()
        nats.stop()


def test_every_expression_parses():
    expressions = all_expressions()
    assert len(rule_expressions()) >= 40 and len(dashboard_expressions()) >= 40, "the rules or dashboard lost queries"
    rejected = promtool_check(expressions, tool("promtool", "PROMTOOL"))
    assert not rejected, "promtool rejects:\n" + "\n".join(f"{w}: {why}" for w, why in rejected.items())


def test_the_parse_check_rejects_a_broken_expression():
    from expressions import Expression

    broken = [Expression("broken", "sum(rate(jimbus_events_accepted_total[5m])"),
              Expression("fine", "sum(rate(jimbus_events_accepted_total[5m]))")]
    assert list(promtool_check(broken, tool("promtool", "PROMTOOL"))) == ["broken"]


def test_every_metric_named_is_exported(embedded, jetstream):
    exported = exported_names(embedded) | exported_names(jetstream)
    recorded = recorded_names()
    missing = []
    for expression in all_expressions():
        for selector in selectors(expression.promql):
            name = metric_name(selector)
            known = name in recorded if ":" in name else (name in exported or name in SYNTHETIC)
            if not known:
                missing.append(f"{expression.where}: {name}")
    assert not missing, "named but not exported by jimbus (nor recorded by a rule):\n" + "\n".join(missing)


def test_the_check_notices_a_metric_that_does_not_exist(embedded):
    (selector,) = selectors('rate(jimbus_no_such_metric_total{job="jimbus"}[5m])')
    assert metric_name(selector) not in exported_names(embedded)


def test_every_bucket_bound_named_is_exported(embedded):
    missing = []
    for expression in all_expressions():
        for selector in selectors(expression.promql):
            name = metric_name(selector)
            for bound in bucket_bounds_used(selector):
                if bound not in bucket_bounds(embedded, name.removesuffix("_bucket")):
                    missing.append(f"{expression.where}: {name}{{le={bound!r}}}")
    assert not missing, "bucket bounds that jimbus does not export:\n" + "\n".join(missing)


def test_the_load_moved_what_the_dashboard_charts(embedded):
    """Not only registered: the load's answers, deliveries, commits and hands were counted."""
    assert sample(embedded, "jimbus_ingest_requests_total", status="200") >= 7
    assert sample(embedded, "jimbus_ingest_requests_total", status="400") == 1
    assert sample(embedded, "jimbus_ingest_ack_seconds_count") >= 7
    assert sample(embedded, "jimbus_events_duplicate_total") == 9
    assert sample(embedded, "jimbus_deadletter_total") >= 2, "the rejected event and the malformed body"
    assert sample(embedded, "jimbus_log_fsync_seconds_count") >= 1
    assert sample(embedded, "jimbus_log_commit_bytes_sum") > 0
    assert sample(embedded, "jimbus_delivery_lag_seconds_count") >= 1
    assert sample(embedded, "jimbus_aggregate_cascade_triggers_sum") >= 20, "four hands of five triggers"
    assert sample(embedded, "jimbus_aggregate_window_events_count") >= 4
    assert sample(embedded, "jimbus_consumer_backlog_records", consumer="trainer") >= 30
    assert sample(embedded, "jimbus_data_dir_size_bytes") >= sample(embedded, "jimbus_data_dir_free_bytes") > 0
    assert sample(embedded, "jimbus_shard_queue_capacity") == 4096
    assert sample(embedded, "jimbus_process_start_time_seconds") > 1.7e9


def test_the_dashboard_charts_what_the_issue_asks_for():
    charted = {metric_name(s) for e in dashboard_expressions() for s in selectors(e.promql)}
    wanted = {
        "ingest rate and answers by status": {"jimbus_events_accepted_total", "jimbus_ingest_requests_total"},
        "ack latency percentiles": {"jimbus_ingest_ack_seconds_bucket"},
        "fsync and commit sizes": {"jimbus_log_fsync_seconds_bucket", "jimbus_log_commit_records_bucket",
                                   "jimbus_log_commit_bytes_sum"},
        "per-shard queue depth and adaptive batch size": {"jimbus_shard_queue_depth", "jimbus_shard_batch_target"},
        "memory budget": {"jimbus_budget_used_bytes", "jimbus_budget_limit_bytes"},
        "subscribers and their lag": {"jimbus_subscriptions", "jimbus_delivery_lag_seconds_bucket",
                                      "jimbus_consumer_oldest_unacked_age_seconds"},
        "aggregation windows and cascade sizes": {"jimbus_aggregate_window_events_bucket",
                                                  "jimbus_aggregate_cascade_triggers_bucket"},
        "dedup hits and dead letters": {"jimbus_events_duplicate_total", "jimbus_deadletter_total"},
    }
    missing = {topic: names - charted for topic, names in wanted.items() if names - charted}
    assert not missing, missing


def test_the_dashboard_is_well_formed():
    board = dashboard()
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"panel {panel['title']!r} overlaps another"
                cells.add((x, y))
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval", "__interval", "__range"}
            assert used <= variables, (panel["title"], used)


def test_jetstream_exports_its_backend_metrics(jetstream):
    assert sample(jetstream, "jimbus_bus_available") == 1
    assert sample(jetstream, "jimbus_bus_publish_failures_total") == 0
    assert sample(jetstream, "jimbus_ingest_requests_total", status="200") >= 1
    assert sample(jetstream, "jimbus_delivery_lag_seconds_count") >= 1, "tail's deliveries"
    assert sample(jetstream, "jimbus_consumer_backlog_records", consumer="trainer-js") >= 3, "3 unacked deliveries"
    assert sample(jetstream, "jimbus_consumer_oldest_unacked_age_seconds", consumer="trainer-js") >= 0
    assert "jimbus_log_commit_failures_total" not in exported_names(jetstream), "no embedded log on JetStream"
