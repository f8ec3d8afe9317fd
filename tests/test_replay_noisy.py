"""Noisy neighbours in the replay: the per-tenant report (tokens served against shares, Jain's
index, goodput, time held) on hand-made outcomes whose answers are known; the noisy-neighbour
scenario, and the same replay without its noisy tenant."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from inferplane.config import ConfigError
from inferplane.jurisdiction import is_within
from inferplane.replay.outcome import RequestOutcome
from inferplane.replay.report import jain_index, run_report
from inferplane.replay.runner import ReplayOptions, prepare, replay
from inferplane.replay.scenario import load_scenario
from inferplane.replay.simulator import SimulationResult
from tests.builders import build_doc
from tests.test_replay_simulator import req


def test_jain_index_by_hand():
    assert jain_index([3.0, 3.0, 3.0]) == pytest.approx(1.0)
    assert jain_index([7.0, 0.0, 0.0, 0.0]) == pytest.approx(1 / 4)
    assert jain_index([1.0, 2.0]) == pytest.approx(9 / 10)  # (1 + 2)^2 / (2 * (1 + 4))
    assert jain_index([]) is None and jain_index([0.0, 0.0]) is None


def outcome(index: int, tenant: str, *, met: bool = True, status: str = "completed", ttft_s: float = 0.5,
            held_s: float = 0.0) -> RequestOutcome:
    done = status == "completed"
    return RequestOutcome(
        index=index, tenant=tenant, sla_class="interactive", arrival_s=float(index), status=status,
        substrate="pool", tried=("pool",) if done else (), ttft_s=ttft_s if done else None,
        e2e_s=ttft_s + 1.0 if done else None, met_sla=met and done, cost_usd=0.0, spillover=False,
        spillover_logged=False, sovereignty_violation=False, cross_region=False,
        rejection=None if done else "capacity", held_s=held_s)


def result_of(outcomes: list[RequestOutcome], span_s: float = 10.0) -> SimulationResult:
    return SimulationResult(router="r", outcomes=tuple(outcomes), substrates=("pool",), slots=(4,), span_s=span_s,
                            end_s=span_s, load=(), busy_slot_s=(0.0,), events_run=0, wall_s=1.0)


def test_tokens_in_proportion_to_shares_give_one_and_one_tenant_with_everything_gives_one_over_n():
    # a (share 2) is served 2 x 110 tokens, b (share 1) 1 x 110: tokens / share equal, J = 1.
    requests = [req(0, 0.0, 100, 10, tenant="a"), req(1, 1.0, 100, 10, tenant="a"), req(2, 2.0, 100, 10, tenant="b")]
    shares = {"a": 2.0, "b": 1.0, "idle": 5.0}
    report = run_report(result_of([outcome(0, "a"), outcome(1, "a"), outcome(2, "b")]), 0.0, requests, shares)
    assert report["jain_fairness_over_shares"] == pytest.approx(1.0)
    a, b = report["tenants"]["a"], report["tenants"]["b"]
    assert (a["tokens_served"], b["tokens_served"]) == (220, 110)
    assert (a["served_fraction"], b["served_fraction"]) == pytest.approx((2 / 3, 1 / 3))
    # `idle` sent nothing: it is not in the table, and its share does not count in the fractions.
    assert set(report["tenants"]) == {"a", "b"}
    assert (a["share"], a["share_fraction"], b["share_fraction"]) == pytest.approx((2.0, 2 / 3, 1 / 3))
    # b refused: a got every token; over the two tenants that sent traffic J = 1/2.
    report = run_report(result_of([outcome(0, "a"), outcome(1, "a"), outcome(2, "b", status="rejected")]), 0.0,
                        requests, shares)
    assert report["jain_fairness_over_shares"] == pytest.approx(1 / 2)
    assert report["tenants"]["b"]["tokens_served"] == 0 and report["tenants"]["b"]["tokens_offered"] == 110
    assert report["tenants"]["b"]["offered_fraction"] == pytest.approx(1 / 3)


def test_unequal_service_by_hand():
    # a (share 1) served 300 tokens, b (share 1) 100: x = (300, 100), J = 400^2 / (2 * 100,000) = 0.8.
    requests = [req(0, 0.0, 250, 50, tenant="a"), req(1, 1.0, 90, 10, tenant="b")]
    report = run_report(result_of([outcome(0, "a"), outcome(1, "b")]), 0.0, requests, {})
    assert report["jain_fairness_over_shares"] == pytest.approx(0.8)
    assert report["tenants"]["a"]["share_fraction"] == pytest.approx(0.5)  # no share given: 1 each


def test_goodput_deadlines_met_ttft_and_time_held_per_tenant():
    # Over a 10 s span, tenant a: 4 requests of 100 + 10 tokens; two met their deadlines (0.2 req/s,
    # 22 tok/s), one completed late (served, not goodput), one refused. Held 0, 2, 4 and 6 s.
    requests = [req(i, float(i), 100, 10, tenant="a") for i in range(4)]
    outcomes = [outcome(0, "a", ttft_s=0.1), outcome(1, "a", ttft_s=0.3, held_s=2.0),
                outcome(2, "a", met=False, ttft_s=9.0, held_s=4.0), outcome(3, "a", status="rejected", held_s=6.0)]
    report = run_report(result_of(outcomes), 0.0, requests, {"a": 1.0})
    a = report["tenants"]["a"]
    assert (a["requests"], a["met_sla"], a["sla_attainment"]) == (4, 2, 0.5)
    assert a["ttft_p99_s"] == 9.0  # over completed requests; nearest rank
    assert (a["tokens_offered"], a["tokens_served"]) == (440, 330)
    assert (a["goodput_rps"], a["goodput_tokens_per_s"]) == pytest.approx((0.2, 22.0))
    assert (a["held_requests"], a["held_mean_s"], a["held_p99_s"]) == (3, pytest.approx(3.0), 6.0)
    assert (report["goodput_rps"], report["goodput_tokens_per_s"]) == pytest.approx((0.2, 22.0))
    assert report["jain_fairness_over_shares"] == pytest.approx(1.0)  # one tenant: J = 1 by definition
    # Without the workload, token counts are unknown rather than invented.
    bare = run_report(result_of(outcomes), 0.0)
    assert bare["tenants"]["a"]["tokens_served"] is None and bare["jain_fairness_over_shares"] is None
    assert bare["tenants"]["a"]["met_sla"] == 2


# -- the noisy-neighbour scenario and the same replay without the noisy tenant --------------------

ROOT = Path(__file__).resolve().parents[1]
NOISY = ROOT / "configs" / "scenarios" / "noisy-neighbour.yaml"
AZURE_CONV = str(ROOT.parent / "shared" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv")
QUIET = ("eu-retail", "ch-bank")


def test_the_scenario_is_what_its_header_says():
    scenario = load_scenario(NOISY)
    built = scenario.built
    assert "policy" not in yaml.safe_load((NOISY.parent / "noisy-neighbour.fleet.yaml").read_text(encoding="utf-8"))
    assert built.policy.policy_hash == build_doc({**built.config.model_dump(mode="json", by_alias=True,
                                                                             exclude_unset=True)}).policy.policy_hash
    tenants = {t.tenant: t for t in scenario.workload.tenants}
    assert set(tenants) == {"global-app", *QUIET}
    noisy = tenants["global-app"]
    assert noisy.bursts and all(b.rate_multiplier >= 3 for b in noisy.bursts)
    assert not tenants["eu-retail"].bursts and not tenants["ch-bank"].bursts
    policy = built.policy
    assert {c: s.priority for c, s in policy.sla_classes.items()} == {"interactive": 80, "batch": 20}
    assert all(t.share > 0 for t in policy.tenants.values()) and len({t.share for t in policy.tenants.values()}) > 1
    # The Swiss tenant may use one substrate, the smallest, which the global tenant may use too.
    fleet = built.fleet
    inside = {name: [s.name for s in fleet.substrates if is_within(s.countries, t.allowed_countries)]
              for name, t in policy.tenants.items()}
    assert inside["ch-bank"] == ["sovereign-zrh"] and "sovereign-zrh" in inside["global-app"]
    assert fleet.substrate("sovereign-zrh").max_concurrent == min(s.max_concurrent for s in fleet.substrates)
    # Quotas on the contended tiers: the GPU pools and the sovereign pool.
    quotas = {q[0] for t in policy.tenants.values() for q in t.quotas}
    assert quotas == {"gpu_cluster", "sovereign_onprem"}


def test_overlapping_bursts_are_a_config_error_naming_the_place(tmp_path):
    doc = yaml.safe_load(NOISY.read_text(encoding="utf-8"))
    doc["config"] = str(NOISY.parent / doc["config"])
    doc["workload"]["tenants"][0]["bursts"].append({"start_s": 1000, "duration_s": 60, "rate_multiplier": 2})
    path = tmp_path / "overlap.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    (problem,) = err.value.problems
    assert problem.loc == ("workload", "tenants", 0, "bursts") and "overlap at 1000 s" in problem.message


def test_without_the_noisy_tenant_every_other_request_is_the_same():
    options = ReplayOptions(scenario=str(NOISY), trace=AZURE_CONV, limit=6000, bound=False)
    full = prepare(options).requests
    quiet = prepare(replace(options, without_tenants=("global-app",))).requests
    assert {r.tenant for r in quiet} == set(QUIET)
    assert [replace(r, index=0) for r in quiet] == [replace(r, index=0) for r in full if r.tenant != "global-app"]
    # The slice reaches into the first burst: global-app sends extra copies there, the others none.
    assert any(r.burst_copy for r in full) and {r.tenant for r in full if r.burst_copy} == {"global-app"}
    with pytest.raises(ValueError, match="not a tenant of the config"):
        prepare(replace(options, without_tenants=("nobody",)))


def quiet_attainment(report: dict) -> dict[str, float]:
    return {t: report["runs"][0]["tenants"][t]["sla_attainment"] for t in QUIET}


def test_the_noisy_tenant_hurts_the_quiet_ones_under_a_gateway_that_does_not_arbitrate():
    # The first 7,000 rows (~1,270 s) include the first burst (900-1,200 s). A FIFO gateway serves
    # whoever comes first: the quiet tenants meet fewer deadlines with the noisy one than without it.
    options = ReplayOptions(scenario=str(NOISY), trace=AZURE_CONV, limit=7000, routers=("fifo_queue",), bound=False)
    with_noisy, _ = replay(options)
    without, _ = replay(replace(options, without_tenants=("global-app",)))
    assert without["workload"]["without_tenants"] == ["global-app"]
    assert set(without["runs"][0]["tenants"]) == set(QUIET)
    hurt, alone = quiet_attainment(with_noisy), quiet_attainment(without)
    assert hurt["eu-retail"] < alone["eu-retail"] - 0.01, (hurt, alone)


def test_the_plane_keeps_the_quiet_tenants_within_a_point_of_a_run_without_the_noisy_one():
    """The whole trace, both of global-app's bursts, the default policy: with the hold queue,
    priorities, fair shares and the quiet tenants' guarantees, eu-retail and ch-bank meet their
    deadlines within one point of what they meet when global-app sends nothing at all."""
    options = ReplayOptions(scenario=str(NOISY), trace=AZURE_CONV, routers=("inferplane",), bound=False)
    with_noisy, _ = replay(options)
    without, _ = replay(replace(options, without_tenants=("global-app",)))
    hurt, alone = quiet_attainment(with_noisy), quiet_attainment(without)
    for tenant in QUIET:
        assert hurt[tenant] >= alone[tenant] - 0.01, (tenant, hurt, alone)
    assert with_noisy["runs"][0]["sovereignty_violations"] == 0


def test_lent_guarantees_are_reclaimed_in_the_replay(tmp_path):
    """With the guarantees lendable, the quiet tenants' requests reclaim lent slots: they wait
    past their give-up time while they reclaim (a regression: their timer was scheduled in the
    simulator's past and stopped the replay), and the replay settles every request."""
    fleet = NOISY.with_name("noisy-neighbour.fleet.yaml").read_text()
    lent = fleet.replace("guaranteed_slots: 20}", "guaranteed_slots: 20, lendable_slots: 20}").replace(
        "guaranteed_slots: 6}", "guaranteed_slots: 6, lendable_slots: 6}")
    assert lent.count("lendable_slots") == 2
    (tmp_path / "noisy-neighbour.fleet.yaml").write_text(lent)
    (tmp_path / NOISY.name).write_text(NOISY.read_text())
    options = ReplayOptions(scenario=str(tmp_path / NOISY.name), trace=AZURE_CONV, limit=7000,
                            routers=("inferplane",), bound=False)
    report, results = replay(options)
    assert len(results[0].outcomes) == report["trace"]["requests"]
    assert report["runs"][0]["sovereignty_violations"] == 0
