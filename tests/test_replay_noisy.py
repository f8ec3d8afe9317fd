"""Noisy neighbours in the replay: the per-tenant report (tokens served against shares, Jain's
index, goodput, time held) on hand-made outcomes whose answers are known."""

from __future__ import annotations

import pytest

from inferplane.replay.outcome import RequestOutcome
from inferplane.replay.report import jain_index, run_report
from inferplane.replay.simulator import SimulationResult
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
