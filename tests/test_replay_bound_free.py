"""The bound's least cost without its LP where free hardware suffices (``bound.free_met``): equal
to the least-cost LP it skips, and the LP still solved where free hardware does not suffice."""

from __future__ import annotations

import pytest

from inferplane.replay import bound as B
from inferplane.replay.substrate_physics import physics_for
from tests.builders import fleet, substrate
from tests.test_replay_simulator import req


def _programme(requests: int):
    # one small reserved pool (no usage cost) and a priced API in the same jurisdiction
    pool = (substrate("pool").kind("vllm").cls("gpu_cluster").jurisdiction("DE").capacity(1)
            .latency(base_ttft_ms=500, rtt_ms=0, prefill=1e9, decode=50).cost(gpu_hour=2.0, gpus=1))
    api = (substrate("api").kind("openai_compatible").cls("provider_api").tier("burst").jurisdiction("DE")
           .capacity(8).latency(base_ttft_ms=200, rtt_ms=0, prefill=20000, decode=150)
           .cost(input_per_1m=0.6, output_per_1m=0.8))
    built = fleet(pool, api).model("m", primary="pool").sla("interactive", ttft_ms=1000, e2e_ms=60_000).build()
    physics = tuple(physics_for(s, i, jitter_ratio=0.0, seed=0) for i, s in enumerate(built.config.substrates))
    return B.build_programme(built, physics, tuple(req(i, 0.0, 100, 20) for i in range(requests)), span_s=1.0)


def _lp_least_cost(programme, met: float) -> float:
    (chunk,) = programme.chunks  # one chunk: the whole programme
    a, b = B._with_sum_row(*B.chunk_lp(programme, chunk), met * (1.0 - 1e-7) - 1e-6)
    return programme.fixed_cost_usd + float(B._linprog(programme.usage_cost[chunk.cols], a, b).fun)


def test_free_hardware_meeting_the_target_is_the_least_cost_exactly():
    programme = _programme(10)
    met = B.max_met(programme)
    assert met == pytest.approx(10)  # the API takes what the one-slot pool cannot start within 1 s
    assert programme.usage_cost.min() == 0.0 < programme.usage_cost.max()
    free = B.free_met(programme, 1.0)
    assert 1.0 < free < met - 1.0  # the one-slot pool cannot start them all within 1 s
    for m in (1.0, free / 2, free):  # free hardware suffices: the fixed cost, as the LP finds it
        assert B.least_cost_usd(programme, m) == programme.fixed_cost_usd
        assert _lp_least_cost(programme, m) == pytest.approx(programme.fixed_cost_usd, abs=1e-9)
    for m in (free + 1.0, met):  # beyond it the API is paid for: the LP is solved
        assert B.least_cost_usd(programme, m) == pytest.approx(_lp_least_cost(programme, m), rel=1e-9)
        assert B.least_cost_usd(programme, m) > programme.fixed_cost_usd
