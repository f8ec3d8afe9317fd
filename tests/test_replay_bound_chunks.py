"""The bound in chunks of arrival time (``bound`` module docstring): a relaxation of the whole
programme, so its max attainment is never below the whole one's and equal with one chunk; its
least cost is never above the whole one's at the same attainment, and within ``COST_GAP`` below the
chunked programme's exact least cost (solved here as one LP: the chunks' blocks stacked with the
one row that couples them)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy.optimize import linprog
from scipy.sparse import block_diag, csr_matrix, vstack

from inferplane.replay import bound as B
from inferplane.replay.substrate_physics import physics_for
from tests.builders import fleet, substrate
from tests.test_replay_simulator import req


def _physics(built):
    return tuple(physics_for(s, i, jitter_ratio=0.0, seed=0) for i, s in enumerate(built.config.substrates))


def _one_slot():
    # one slot; each request holds it 10 s (ttft 10 s, one output token, no rtt, no prefill)
    pool = (substrate("pool").kind("vllm").cls("gpu_cluster").capacity(1)
            .latency(base_ttft_ms=10_000, rtt_ms=0, prefill=1e9, decode=50))
    return fleet(pool).sla("interactive", ttft_ms=16_000, e2e_ms=16_000).build()


def test_a_window_straddling_the_chunk_boundary_is_counted_in_both_chunks_by_hand():
    # 24 requests, one every 5 s over 120 s, each needing the one slot for 10 s by 16 s after it
    # arrives. Whole (loose rows): each minute's 12 must run inside its 76 s (7.6 each), and all
    # 24 inside [0, 136] s: 13.6. In 60 s chunks the 2-minute block is dropped and the 16 s from
    # 60 to 76 s count for both minutes: 7.6 + 7.6 = 15.2. One 120 s chunk is the whole: 13.6.
    built = _one_slot()
    requests = tuple(req(i, 5.0 * i, 0, 1) for i in range(24))

    def met(chunk_s):
        programme = B.build_programme(built, _physics(built), requests, span_s=115.0, chunk_s=chunk_s,
                                      first_token_rows=False)
        return B.max_met(programme), len(programme.chunks)

    assert met(math.inf) == (pytest.approx(13.6), 1)
    assert met(60.0) == (pytest.approx(15.2), 2)
    assert met(120.0) == (pytest.approx(13.6), 1)
    # the tight rows too: looser in chunks, never tighter
    whole = B.max_met(B.build_programme(built, _physics(built), requests, span_s=115.0, chunk_s=math.inf))
    chunked = B.max_met(B.build_programme(built, _physics(built), requests, span_s=115.0, chunk_s=60.0))
    assert whole <= 13.6 + 1e-6 and chunked >= whole - 1e-6


def _mixed_fleet():
    """A reserved pool (no usage cost), a small sovereign pool and a priced, rate-limited API."""
    pool = (substrate("pool").kind("vllm").cls("gpu_cluster").jurisdiction("DE").capacity(3)
            .latency(base_ttft_ms=300, rtt_ms=0, prefill=8000, decode=40, slowdown=2.0).cost(gpu_hour=2.0, gpus=2))
    sov = (substrate("sov").kind("openai_compatible").cls("sovereign_onprem").jurisdiction("DE")
           .capacity(2).latency(base_ttft_ms=150, rtt_ms=3, prefill=6000, decode=35, slowdown=1.5)
           .cost(input_per_1m=0.2, output_per_1m=0.3))
    api = (substrate("api").kind("openai_compatible").cls("provider_api").tier("burst").jurisdiction("US")
           .capacity(4, rpm=40).latency(base_ttft_ms=200, rtt_ms=90, prefill=20000, decode=150)
           .cost(input_per_1m=0.6, output_per_1m=0.8))
    return (fleet(pool, sov, api).model("m", primary="pool")
            .sla("interactive", ttft_ms=1500, e2e_ms=20_000).sla("batch", ttft_ms=30_000, e2e_ms=120_000)
            .tenant("eu", allowed=["EU"], allowed_sla=["interactive", "batch"])
            .tenant("world", allowed_sla=["interactive", "batch"]).build())


def _random_requests(seed: int, n: int, span_s: float):
    rng = random.Random(seed)
    arrivals = sorted(rng.uniform(0.0, span_s) for _ in range(n))
    # bursts: a third of the requests land within a few seconds of another one
    arrivals = sorted(a if rng.random() > 0.33 else arrivals[rng.randrange(n)] + rng.uniform(0, 3) for a in arrivals)
    return tuple(req(i, a, rng.randint(50, 3000), rng.randint(1, 400), tenant=rng.choice(("eu", "world")),
                     sla="interactive" if rng.random() < 0.75 else "batch") for i, a in enumerate(arrivals))


def _exact_chunked_least_usage(programme, met: float) -> float:
    """The chunked programme's least usage cost at sum x >= target, as one LP."""
    parts = [B.chunk_lp(programme, c) for c in programme.chunks]
    a = block_diag([p[0] for p in parts], format="csr")
    cols = np.concatenate([c.cols for c in programme.chunks])
    a = vstack([a, csr_matrix(-np.ones((1, a.shape[1])))]).tocsr()
    b = np.concatenate([p[1] for p in parts] + [np.array([-(met * (1.0 - 1e-7) - 1e-6)])])
    res = linprog(programme.usage_cost[cols], A_ub=a, b_ub=b, bounds=(0.0, 1.0), method="highs")
    assert res.status == 0
    return float(res.fun)


@pytest.mark.parametrize("seed", [1, 2])
def test_chunks_relax_the_whole_programme_and_their_cost_floor_stays_below_it(seed):
    built = _mixed_fleet()
    requests = _random_requests(seed, 600, 400.0)
    span = requests[-1].arrival_s - requests[0].arrival_s
    whole = B.build_programme(built, _physics(built), requests, span_s=span, chunk_s=math.inf)
    top = B.max_met(whole)
    assert len(whole.chunks) == 1
    assert 0.3 * len(requests) < top < len(requests) - 5  # capacity binds: the comparison means something
    for chunk_s in (60.0, 240.0):
        chunked = B.build_programme(built, _physics(built), requests, span_s=span, chunk_s=chunk_s)
        assert len(chunked.chunks) > 1
        assert chunked.pairs == whole.pairs
        assert B.max_met(chunked) >= top - 1e-6, chunk_s
        for fraction in (0.5, 0.9, 1.0):
            met = fraction * top
            floor = B.least_cost_usd(chunked, met)
            assert floor <= B.least_cost_usd(whole, met) + 1e-9, (chunk_s, fraction)
            # never above the chunked programme's exact least cost, below it by at most the gap it
            # reports, and that within COST_GAP of the total
            exact = chunked.fixed_cost_usd + _exact_chunked_least_usage(chunked, met)
            assert floor <= exact + 1e-7
            assert chunked.memo["cost_gap"] >= exact - floor - 1e-7
            assert exact - floor <= B.COST_GAP * exact + 1e-7
    # a chunk as long as the trace is the whole programme, row for row
    one = B.build_programme(built, _physics(built), requests, span_s=span, chunk_s=4096.0)
    assert len(one.chunks) == 1
    bound_one, bound_whole = B.solve_bound(one), B.solve_bound(whole)
    assert bound_one.met == pytest.approx(bound_whole.met, abs=1e-6)
    assert bound_one.constraints == bound_whole.constraints
    assert bound_one.cost_usd == pytest.approx(bound_whole.cost_usd, rel=1e-9)


def test_the_default_chunk_holds_about_chunk_requests(monkeypatch):
    built = _mixed_fleet()
    requests = _random_requests(4, 300, 900.0)  # 20 requests per 60 s window
    span = requests[-1].arrival_s - requests[0].arrival_s
    monkeypatch.setattr(B, "CHUNK_REQUESTS", 90)
    programme = B.build_programme(built, _physics(built), requests, span_s=span)
    assert programme.chunk_windows == 4  # 4 windows hold 80 on average, 8 would hold 160
    assert len(programme.chunks) == 4
    whole = B.build_programme(built, _physics(built), requests, span_s=span, chunk_s=math.inf)
    bound = B.solve_bound(programme)
    assert bound.chunks == 4 and bound.met >= B.max_met(whole) - 1e-6
    assert bound.to_dict()["chunk_s"] == 240.0
