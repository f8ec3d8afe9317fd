"""The Prometheus rules shipped in configs/prometheus/: promtool accepts them, their unit tests pass,
and every alert has a test in which it fires (and every recording rule one that checks its value).

promtool comes with Debian's ``prometheus`` package, which ``.ci/run`` installs: a missing promtool
fails here rather than skipping, so CI cannot pass without the rules having been checked.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES_DIR = Path(__file__).resolve().parents[1] / "configs" / "prometheus"
RULE_FILES = sorted(RULES_DIR.glob("*.rules.yml"))
TEST_FILES = sorted((RULES_DIR / "tests").glob("*.yaml"))
PROMTOOL_TIMEOUT_S = 300


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install Debian's prometheus package (apt-get install prometheus), "
                    "as .ci/run does")
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT_S,
                          cwd=RULES_DIR, check=False)


def rules(kind: str) -> dict[str, dict]:
    """Every rule of the rule files that is a ``kind`` ("alert" or "record"), by name."""
    out: dict[str, dict] = {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                if kind in rule:
                    assert rule[kind] not in out, f"{rule[kind]} defined twice"
                    out[rule[kind]] = rule
    return out


def unit_tests() -> list[dict]:
    return [t for path in TEST_FILES for t in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]]


def test_the_rule_and_test_files_exist() -> None:
    assert {p.name for p in RULE_FILES} == {"recording.rules.yml", "alerts.rules.yml"}
    assert TEST_FILES


def test_promtool_checks_the_rules() -> None:
    done = run_promtool("check", "rules", *map(str, RULE_FILES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(RULE_FILES), done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = run_promtool("test", "rules", *map(str, TEST_FILES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(TEST_FILES), done.stdout


def test_every_unit_test_file_fixes_the_group_order_recording_rules_first() -> None:
    """Without ``group_eval_order`` promtool evaluates rule groups in Go map order, so an alert that
    reads a recording rule sometimes sees last minute's value: the suite failed about 1 run in 20."""
    groups = [g["name"] for path in RULE_FILES
              for g in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]]
    recording = [g["name"] for g in yaml.safe_load((RULES_DIR / "recording.rules.yml").read_text(
        encoding="utf-8"))["groups"]]
    for path in TEST_FILES:
        order = yaml.safe_load(path.read_text(encoding="utf-8")).get("group_eval_order")
        assert order is not None, f"{path.name} has no group_eval_order"
        assert sorted(order) == sorted(groups), f"{path.name}: group_eval_order must list every group"
        assert order[:len(recording)] == recording, f"{path.name}: recording groups must come first"


def test_every_alert_has_a_unit_test_that_fires_it_and_one_where_it_must_not() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for group in unit_tests():
        for case in group.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else silent).add(case["alertname"])
    alerts = set(rules("alert"))
    assert alerts - fired == set(), "alerts no unit test fires"
    # "Must not fire" is either an evaluation expecting no alert, or a firing test whose input also
    # holds series that must stay silent (the expected list is exact, so they are checked too).
    assert fired - alerts == set() and silent - alerts == set(), "tests of alerts that do not exist"


def test_every_recording_rule_has_a_unit_test_of_its_value() -> None:
    tested = {case["expr"] for group in unit_tests() for case in group.get("promql_expr_test", [])
              if case.get("exp_samples")}
    assert set(rules("record")) - tested == set()


@pytest.mark.parametrize("name", sorted(rules("alert")))
def test_every_alert_has_a_severity_and_runbook_text(name: str) -> None:
    rule = rules("alert")[name]
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    assert rule["annotations"]["summary"].strip()
    # The description is the runbook: what it means and what to do, more than a restated summary.
    assert len(rule["annotations"]["description"].split()) >= 30, name
