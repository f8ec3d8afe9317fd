"""The least cost across chunks for several attainments of one programme (one per router of a
cell, ``runner._floor``): the prices solved for one attainment are kept and serve the next, and a
floor found that way is still never above the chunked programme's exact least cost (one LP),
below it by at most the gap it reports, and the same as a fresh programme's within their gaps."""

from __future__ import annotations

import pytest

from inferplane.replay import bound as B
from tests.test_replay_bound_chunks import (
    _exact_chunked_least_usage,
    _mixed_fleet,
    _physics,
    _random_requests,
)

FRACTIONS = (1.0, 0.97, 0.9, 0.75, 0.5, 0.93)
"""The bound's own attainment first, then routers' in no particular order (as a cell's runs come)."""


def _programme(seed: int):
    built = _mixed_fleet()
    requests = _random_requests(seed, 600, 400.0)
    span = requests[-1].arrival_s - requests[0].arrival_s
    return B.build_programme(built, _physics(built), requests, span_s=span, chunk_s=60.0)


@pytest.mark.parametrize("seed", [1, 3])
def test_floors_that_reuse_other_attainments_prices_stay_below_the_exact_least_cost_and_match_fresh_ones(seed):
    shared = _programme(seed)
    top = B.max_met(shared) * (1.0 - 2 * B.TIE)  # the chunks' max is reported up to TIE above the exact one
    assert len(shared.chunks) > 4
    for fraction in FRACTIONS:
        met = fraction * top
        floor = B.least_cost_usd(shared, met)
        gap = shared.memo["cost_gap"]
        exact = shared.fixed_cost_usd + _exact_chunked_least_usage(shared, met)
        assert floor <= exact + 1e-7, fraction
        assert exact - floor <= gap + 1e-7, fraction
        assert exact - floor <= B.COST_GAP * exact + 1e-7, fraction
        fresh = _programme(seed)
        assert B.least_cost_usd(fresh, met) == pytest.approx(floor, abs=gap + fresh.memo["cost_gap"] + 1e-7)


def test_an_attainment_asked_again_solves_no_price_lp_and_gives_the_same_floor():
    programme = _programme(2)
    top = B.max_met(programme)
    first = B.least_cost_usd(programme, 0.9 * top)
    solved = programme.memo.get("price_lps", 0)
    assert solved > 0  # the comparison means something: the first one did solve some
    assert B.least_cost_usd(programme, 0.9 * top) == first
    assert programme.memo.get("price_lps", 0) == solved


def test_the_envelopes_least_at_a_price_is_below_every_line_and_reached_at_a_vertex():
    lines = {(1.0, -2.0), (3.0, -10.0), (0.5, -0.5)}
    # env(mu) = max(0, 0.5 mu - 0.5, mu - 2, 3 mu - 10) on [0, 6]
    def env(mu):
        return max(0.0, *(b + s * mu for s, b in lines))
    for price in (0.0, 0.7, 1.0, 2.0, 3.5):
        brute = min(env(i / 100.0) - price * i / 100.0 for i in range(601))
        assert B._envelope_min(lines, price, 6.0) == pytest.approx(brute, abs=1e-9), price


def test_the_hull_drops_points_a_cheaper_point_to_their_right_serves_and_keeps_the_chords_convex():
    # (1, 5): the point at 2 costs less and serves 1 too; (2, 3) lies above the chord from (0, 0)
    # to (3, 4). The last point always stays (the chords reach the largest mu known)
    assert B._hull({1.0: 5.0, 2.0: 3.0, 3.0: 4.0, 4.0: 10.0}) == [(0.0, 0.0), (3.0, 4.0), (4.0, 10.0)]
    # a max point dearer than a price LP's point past it (the tie-broken max LP is only near-cheapest):
    # no chord of negative slope, so no negative price is asked for
    chords = B._chords({10.0: 2.0, 10.5: 1.0})
    assert chords == [(0.0, 10.5, pytest.approx(1.0 / 10.5), 0.0)]
    assert B._hull({2.0: 0.0, 5.0: 1.0}) == [(0.0, 0.0), (2.0, 0.0), (5.0, 1.0)]  # the free pairs' flat start
