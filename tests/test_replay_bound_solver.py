"""Which HiGHS method solves the bound's LPs (``bound.lp_method``: dual simplex for small chunks,
interior point for large ones) changes their speed, never what is read from them: the max
attainment is the same to LP tolerance, every line drawn from a method's duals lies below the
chunk's least cost at its price (and close to it, or the refinement would stall), and the floors
stay below the chunked programme's exact least cost within the gap they report."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import linprog

from inferplane.replay import bound as B
from tests.test_replay_bound_chunks import (
    _exact_chunked_least_usage,
    _mixed_fleet,
    _physics,
    _random_requests,
)

SIMPLEX, INTERIOR = math.inf, 0
"""``IPM_FROM_NONZEROS`` that sends every LP to dual simplex, or every LP to interior point."""


def _programme(seed: int, chunk_s: float):
    built = _mixed_fleet()
    requests = _random_requests(seed, 600, 400.0)
    span = requests[-1].arrival_s - requests[0].arrival_s
    return B.build_programme(built, _physics(built), requests, span_s=span, chunk_s=chunk_s)


def test_the_method_follows_the_rows_non_zeros():
    programme = _programme(1, 60.0)
    a, _ = B.chunk_lp(programme, programme.chunks[0])
    assert 0 < a.nnz < B.IPM_FROM_NONZEROS  # the suite's small chunks, and these tests' by default
    assert B.lp_method(a) == "highs-ds"
    big = type("Rows", (), {"nnz": B.IPM_FROM_NONZEROS})()
    assert B.lp_method(big) == "highs-ipm"


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("chunk_s", [60.0, math.inf])
def test_the_bound_and_its_floors_are_the_same_whichever_method_solves_the_lps(monkeypatch, seed, chunk_s):
    results = {}
    for name, threshold in (("simplex", SIMPLEX), ("interior", INTERIOR)):
        monkeypatch.setattr(B, "IPM_FROM_NONZEROS", threshold)
        programme = _programme(seed, chunk_s)
        top = B.max_met(programme)
        assert 0.3 * programme.requests < top < programme.requests - 1  # capacity binds
        floors = []
        for fraction in (1.0, 0.9, 0.6):
            met = fraction * top * (1.0 - 2 * B.TIE)
            floor = B.least_cost_usd(programme, met)
            gap = programme.memo["cost_gap"]
            exact = programme.fixed_cost_usd + _exact_chunked_least_usage(programme, met)
            assert floor <= exact + 1e-7, (name, fraction)  # still a lower bound
            assert exact - floor <= gap + 1e-7, (name, fraction)
            assert exact - floor <= B.COST_GAP * exact + 1e-7, (name, fraction)
            floors.append((floor, gap))
        results[name] = (top, floors)
    (top_s, floors_s), (top_i, floors_i) = results["simplex"], results["interior"]
    assert top_s == pytest.approx(top_i, rel=1e-6)
    for (fs, gs), (fi, gi) in zip(floors_s, floors_i):
        assert fs == pytest.approx(fi, abs=gs + gi + 1e-7)


@pytest.mark.parametrize("threshold", [SIMPLEX, INTERIOR])
def test_every_line_from_a_methods_duals_lies_below_the_chunks_least_cost_at_its_price(monkeypatch, threshold):
    monkeypatch.setattr(B, "IPM_FROM_NONZEROS", threshold)
    programme = _programme(3, 60.0)
    assert len(programme.chunks) > 4
    for chunk in programme.chunks:
        a, b = B.chunk_lp(programme, chunk)
        cost = programme.usage_cost[chunk.cols]
        for price in (0.0, 0.5 * float(cost.mean()), 2.0 * float(cost.max()) + 1e-9):
            mu, usage, floor = B._at_price(programme, chunk, price)
            # the least (cost - price) . x, solved apart with the other method
            other = "highs-ipm" if B.lp_method(a) == "highs-ds" else "highs-ds"
            exact = linprog(cost - price, A_ub=a, b_ub=b, bounds=(0.0, 1.0), method=other)
            assert exact.status == 0
            scale = 1.0 + abs(exact.fun)
            assert floor <= exact.fun + 1e-9 * scale, price
            assert floor >= exact.fun - 1e-6 * scale, price  # tight, or the refinement could not close the gap
            # its solution is a feasible point at that value
            assert usage - price * mu == pytest.approx(exact.fun, abs=1e-6 * scale)
            assert 0.0 <= mu <= np.unique(programme.request_of[chunk.cols]).size + 1e-6
