"""A real Prometheus (Debian's `prometheus`) on loopback, configured from
deploy/prometheus/prometheus.yml with its jimbus target moved to a real jimbus
under a short load, and with jimbus-rules.yml loaded: `up` is 1, the ingest
rate recording rule returns a non-zero rate, and every rule evaluates without
an error on the real series."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.parse

import pytest
import yaml

from support import DEPLOY, Jimbus, free_port, http, post_game, tool, wait_until

INTERVAL = "1s"


def loopback_config(jimbus_address: str) -> dict:
    """deploy/prometheus/prometheus.yml with its jimbus targets on loopback, the
    other jobs dropped, the rule files made absolute and short intervals."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=INTERVAL, evaluation_interval=INTERVAL, scrape_timeout=INTERVAL)
    config["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in config["rule_files"]]
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "jimbus"]
    assert len(jobs) == 1, "prometheus.yml has no 'jimbus' job"
    jobs[0].pop("dns_sd_configs", None)
    jobs[0]["static_configs"] = [{"targets": [jimbus_address]}]
    config["scrape_configs"] = jobs
    return config


class Prometheus:
    def __init__(self, config_file, storage):
        self.port = free_port()
        self.log = open(storage.parent / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [tool("prometheus", "PROMETHEUS"), f"--config.file={config_file}", f"--storage.tsdb.path={storage}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until("Prometheus /-/ready", lambda: self.process.poll() is None
                   and http("GET", f"{self.url}/-/ready")[0] == 200, timeout=60)

    def api(self, path: str, **params) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = http("GET", f"{self.url}/api/v1/{path}{query}")
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", answer
        return answer["data"]

    def value(self, promql: str) -> float | None:
        result = self.api("query", query=promql)["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture
def loaded_jimbus(tmp_path):
    """A jimbus taking a hand every 50 ms from another thread until the test ends."""
    server = Jimbus(tmp_path / "data", "--shards", "2")
    stop = threading.Event()
    failures: list[BaseException] = []

    def load() -> None:
        hand = 0
        try:
            while not stop.is_set():
                post_game(server, f"prom-{hand % 3}", hand)
                hand += 1
                stop.wait(0.05)  # the load's pace, not a synchronisation
        except BaseException as e:  # reported by the test
            failures.append(e)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    yield server, failures
    stop.set()
    loader.join(timeout=30)
    server.stop()


def test_prometheus_scrapes_jimbus_and_evaluates_the_rules(loaded_jimbus, tmp_path):
    server, failures = loaded_jimbus
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(loopback_config(server.http), sort_keys=False))
    checked = subprocess.run([tool("promtool", "PROMTOOL"), "check", "config", str(config_file)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (tmp_path / "tsdb").mkdir()
    prometheus = Prometheus(config_file, tmp_path / "tsdb")
    try:
        wait_until("up{job='jimbus'} == 1", lambda: prometheus.value('up{job="jimbus"}') == 1.0, timeout=60)
        rate = wait_until("a non-zero jimbus:ingest_events:rate1m",
                          lambda: prometheus.value('jimbus:ingest_events:rate1m{job="jimbus"}'), timeout=90)
        assert rate > 0
        assert not failures, failures

        def evaluated_rules() -> list[dict] | None:
            rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
            return rules if all(r["health"] != "unknown" for r in rules) else None

        rules = wait_until("every rule evaluated once", evaluated_rules, timeout=60)
        assert len(rules) == sum(len(g["rules"]) for g in
                                 yaml.safe_load((DEPLOY / "prometheus" / "jimbus-rules.yml").read_text())["groups"])
        broken = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
        assert not broken, broken
        # Healthy load: the availability SLI is 0 (once its group has seen two
        # scrapes) and no alert fires.
        sli = 'jimbus:ingest_availability:error_ratio_rate5m{job="jimbus"}'
        (ratio,) = wait_until(f"a value of {sli}", lambda: (lambda v: v is not None and (v,))(prometheus.value(sli)))
        assert ratio == 0.0
        firing = [a for a in prometheus.api("alerts")["alerts"] if a["state"] == "firing"]
        assert not firing, firing
    finally:
        prometheus.stop()
