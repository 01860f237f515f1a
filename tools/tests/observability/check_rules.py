"""The alert rules and their runbooks belong together: every alert has a
runbook_url naming its file in docs/runbooks/, every runbook there belongs to
an alert, and each says what the alert means, how to confirm it with a
command, and what to do. (promtool check/test rules run in the suite script.)"""

from __future__ import annotations

import re

from support import ROOT
from expressions import rules

RUNBOOKS = ROOT / "docs" / "runbooks"
SECTIONS = ("## What it means", "## Confirm", "## What to do")


def alerts() -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for group in rules()["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                found.setdefault(rule["alert"], []).append(rule)
    return found


def test_the_issue_s_alerts_exist():
    names = set(alerts())
    wanted = {
        "JimbusIngestAvailabilityBurn", "JimbusAckLatencyBurn", "JimbusDeliveryLagBurn",
        "JimbusConsumerBacklogAgeBurn", "JimbusDataDirSpaceLow", "JimbusFsyncSlow", "JimbusMemoryBudgetExhausted",
        "JimbusShardQueueSaturated", "JimbusDeadLetterRateHigh", "JimbusJetStreamErrors", "JimbusRestarting",
    }
    assert wanted <= names, wanted - names


def test_slo_alerts_page_fast_and_ticket_slow():
    for name in ("JimbusIngestAvailabilityBurn", "JimbusAckLatencyBurn", "JimbusDeliveryLagBurn",
                 "JimbusConsumerBacklogAgeBurn"):
        severities = sorted(r["labels"]["severity"] for r in alerts()[name])
        assert severities == ["page", "ticket"], name
        for rule in alerts()[name]:
            windows = set(re.findall(r"error_ratio_rate(\w+)", rule["expr"]))
            expected = {"1h", "5m", "6h", "30m"} if rule["labels"]["severity"] == "page" else {"1d", "2h", "3d", "6h"}
            assert windows == expected, (name, windows)


def test_every_alert_has_its_runbook():
    for name, group in alerts().items():
        for rule in group:
            assert rule["labels"].get("severity") in ("page", "ticket"), name
            annotations = rule["annotations"]
            assert annotations.get("summary") and annotations.get("description"), name
            assert annotations.get("runbook_url") == f"docs/runbooks/{name}.md", name
        runbook = ROOT / f"docs/runbooks/{name}.md"
        assert runbook.is_file(), f"{name}: {runbook} is missing"
        text = runbook.read_text()
        assert text.startswith(f"# {name}\n"), f"{runbook.name} must start with '# {name}'"
        for section in SECTIONS:
            assert section in text, f"{runbook.name} lacks '{section}'"
        confirm = text.split("## Confirm", 1)[1].split("## What to do", 1)[0]
        assert "```sh" in confirm, f"{runbook.name}: 'Confirm' gives no command"


def test_every_runbook_belongs_to_an_alert():
    names = set(alerts())
    orphans = [p.name for p in RUNBOOKS.glob("*.md") if p.stem not in names and p.name != "README.md"]
    assert not orphans, orphans


def test_the_runbook_index_lists_every_alert():
    index = (RUNBOOKS / "README.md").read_text()
    missing = [name for name in alerts() if f"({name}.md)" not in index]
    assert not missing, missing
