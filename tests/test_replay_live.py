"""The live replay's client side without a plane: target checks, keys, outcome mapping, prompts
and the fidelity comparison on hand-made measurements."""

from __future__ import annotations


import pytest

from inferplane.config import build, load_config
from inferplane.replay.fidelity import compare, measured_shapes
from inferplane.replay.live import (
    LiveError,
    LiveRequest,
    LiveRun,
    _outcome,
    check_keys,
    check_target,
    parse_api_keys,
)
from inferplane.replay.prompts import prompt_text
from inferplane.replay.simulator import SimulationResult
from inferplane.replay.outcome import RequestOutcome
from inferplane.replay.workload import ReplayRequest
from tests.integration.conftest import EMULATED_CONFIG, EU_KEY, GLOBAL_KEY

BUILT = build(load_config(EMULATED_CONFIG))


def _req(i: int, tenant: str = "global-app", sla: str = "interactive", arrival: float = 0.0) -> ReplayRequest:
    return ReplayRequest(index=i, request_id=f"replay-{i}", trace_index=i, copy=0, arrival_s=arrival,
                         tenant=tenant, sla_class=sla, model="smollm2-135m-instruct", input_tokens=100,
                         output_tokens=8, max_tokens=8)


def _live(req: ReplayRequest, **kw) -> LiveRequest:
    base = {"request": req, "sent_s": req.arrival_s, "status": 200, "error_code": None,
            "substrate": "local-gpu-emulated", "spillover_header": False, "attempts": 1, "ttft_s": 0.1,
            "e2e_s": 0.5, "prompt_tokens": 120, "completion_tokens": 8, "prompt_words": 70}
    base.update(kw)
    return LiveRequest(**base)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://localhost:8000/", "http://[::1]:9000"])
def test_loopback_targets_are_accepted(url):
    assert check_target(url, allow_remote=False) == url.rstrip("/")


@pytest.mark.parametrize("url", ["http://10.1.2.3:8000", "http://192.168.0.1"])
def test_remote_targets_need_allow_remote(url):
    with pytest.raises(LiveError, match="not loopback"):
        check_target(url, allow_remote=False)
    assert check_target(url, allow_remote=True) == url


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://127.0.0.1", "http://"])
def test_a_target_must_be_an_http_url(url):
    with pytest.raises(LiveError, match="http"):
        check_target(url, allow_remote=True)


def test_keys_come_from_the_environment_and_the_command_line_which_wins():
    keys = parse_api_keys(["eu-bank=from-cli"], "eu-bank=from-env, global-app=g")
    assert keys == {"eu-bank": "from-cli", "global-app": "g"}
    with pytest.raises(LiveError, match="TENANT=KEY"):
        parse_api_keys(["eu-bank"], None)


def test_every_tenant_of_the_workload_needs_its_own_configured_key():
    requests = (_req(0, "eu-bank"), _req(1, "global-app"))
    check_keys(BUILT, requests, {"eu-bank": EU_KEY, "global-app": GLOBAL_KEY})
    with pytest.raises(LiveError, match="no API key for tenant `global-app`"):
        check_keys(BUILT, requests, {"eu-bank": EU_KEY})
    with pytest.raises(LiveError, match="not one of its configured keys"):
        check_keys(BUILT, requests, {"eu-bank": GLOBAL_KEY, "global-app": GLOBAL_KEY})


def test_prompts_are_fixed_by_their_key_and_differ_from_the_start():
    a, b = prompt_text("replay-1", 200), prompt_text("replay-2", 200)
    assert a == prompt_text("replay-1", 200)
    assert len(a.split()) == 200
    assert a.split()[:4] != b.split()[:4]
    assert len(a) == 4 * 200 - 1  # three letters and a space: the plane's estimate is one token a word


def test_an_answer_from_outside_the_tenants_jurisdictions_is_a_violation():
    ok = _outcome(BUILT, _live(_req(0, "eu-bank"), substrate="sovereign-de-emulated", spillover_header=True))
    bad = _outcome(BUILT, _live(_req(1, "eu-bank"), substrate="groq-class-emulated", spillover_header=True))
    assert ok.status == "completed" and not ok.sovereignty_violation
    assert ok.spillover and ok.spillover_logged
    assert bad.sovereignty_violation and bad.cross_region


def test_status_codes_map_to_rejected_and_failed():
    refused = _outcome(BUILT, _live(_req(0), status=429, error_code="capacity_exhausted", substrate=None,
                                    ttft_s=None, e2e_s=None))
    broken = _outcome(BUILT, _live(_req(1), status=200, error_code="substrate_failed", e2e_s=None))
    timeout = _outcome(BUILT, _live(_req(2), status=None, error_code="client_timeout", substrate=None,
                                    ttft_s=None, e2e_s=None))
    assert (refused.status, refused.rejection) == ("rejected", "capacity_exhausted")
    assert (broken.status, broken.rejection) == ("failed", "substrate_failed")
    assert (timeout.status, timeout.rejection) == ("failed", "client_timeout")
    assert not any(o.met_sla for o in (refused, broken, timeout))


def test_sla_is_met_only_within_both_deadlines():
    interactive = BUILT.policy.sla_classes["interactive"]
    late = _outcome(BUILT, _live(_req(0), ttft_s=interactive.ttft_deadline_s + 0.01, e2e_s=10.0))
    on_time = _outcome(BUILT, _live(_req(1), ttft_s=0.2, e2e_s=1.0))
    assert not late.met_sla and on_time.met_sla


def _sim_outcome(req: ReplayRequest, ttft: float, e2e: float) -> RequestOutcome:
    return RequestOutcome(index=req.index, tenant=req.tenant, sla_class=req.sla_class, arrival_s=req.arrival_s,
                          status="completed", substrate="local-gpu-emulated", tried=("local-gpu-emulated",),
                          ttft_s=ttft, e2e_s=e2e, met_sla=True, cost_usd=0.0, spillover=False,
                          spillover_logged=False, sovereignty_violation=False, cross_region=False)


def _result(outcomes) -> SimulationResult:
    return SimulationResult(router="x", outcomes=tuple(outcomes), substrates=(), slots=(), span_s=0, end_s=0,
                            load=(), busy_slot_s=(), events_run=0, wall_s=1)


def test_measured_shapes_take_send_times_and_usage_sizes():
    reqs = [_req(0, arrival=10.0), _req(1, arrival=11.0), _req(2, arrival=12.0)]
    measured = [_live(reqs[0], sent_s=0.0), _live(reqs[1], sent_s=1.5, prompt_tokens=300, completion_tokens=3),
                _live(reqs[2], sent_s=2.0, status=429, e2e_s=None, prompt_tokens=None, completion_tokens=None)]
    shapes = measured_shapes(LiveRun(_result([]), tuple(measured), 0, 0.0))
    assert [s.arrival_s for s in shapes] == [10.0, 11.5, 12.0]
    assert (shapes[1].input_tokens, shapes[1].output_tokens) == (300, 3)
    assert (shapes[2].input_tokens, shapes[2].output_tokens) == (100, 8)  # not served: as planned


def test_fidelity_ratios_are_over_requests_completed_in_both_runs():
    reqs = [_req(i, arrival=float(i)) for i in range(4)]
    measured = [_live(r, ttft_s=1.0, e2e_s=2.0 + i, completion_tokens=8) for i, r in enumerate(reqs[:3])]
    measured.append(_live(reqs[3], status=503, e2e_s=None, ttft_s=None))
    run = LiveRun(_result([]), tuple(measured), 0, 0.0)
    shapes = measured_shapes(run)
    sim = [_sim_outcome(shapes[i], 0.5, 1.0 + i) for i in range(3)]
    sim.append(_sim_outcome(shapes[3], 0.5, 1.0)._replace(status="rejected"))
    out = compare(run, _result(sim), shapes)
    assert out["requests_compared"] == 3
    ttft = out["metrics"]["ttft_p50"]
    assert (ttft["simulated_s"], ttft["measured_s"], ttft["simulated_over_measured"]) == (0.5, 1.0, 0.5)
    e2e = out["metrics"]["e2e_p90"]
    assert (e2e["simulated_s"], e2e["measured_s"]) == (3.0, 4.0)
    per_token = out["metrics"]["per_token_p50"]
    assert per_token["measured_s"] == pytest.approx(2.0 / 7) and per_token["simulated_s"] == pytest.approx(1.5 / 7)
