"""The calibration fits (``inferplane calibrate``) on points made from known models."""

from __future__ import annotations

import pytest

from inferplane.benchmarks.calibrate import (
    decode_share_from,
    fit_decode,
    fit_prefill,
    least_squares,
    prefill_lanes,
)
from substrate_adapters.physics import PhysicsModel, stream_decode_rate


def test_least_squares_recovers_a_line_and_honours_weights():
    assert least_squares([0, 1, 2], [1, 3, 5]) == pytest.approx((1.0, 2.0))
    # An outlier with (almost) no weight does not move the line.
    a, b = least_squares([0, 1, 2, 3], [1, 3, 5, 100], [1, 1, 1, 1e-12])
    assert (a, b) == pytest.approx((1.0, 2.0), rel=1e-6)
    with pytest.raises(ValueError):
        least_squares([1, 1], [2, 3])


def test_prefill_fit_recovers_base_and_rate_of_a_linear_engine():
    points = [(n, 0.04 + n / 1500) for n in (32, 512, 1024, 2048) for _ in range(3)]
    base, rate = fit_prefill(points)
    assert base == pytest.approx(0.04)
    assert rate == pytest.approx(1500)


def test_prefill_fit_weights_relative_error_so_short_prompts_stay_accurate():
    # Superlinear prefill (attention): the longest prompt is 30 % over the line through the others.
    points = [(32, 0.05), (512, 0.05 + 512 / 400), (1024, 0.05 + 1024 / 400), (2048, 1.3 * (0.05 + 2048 / 400))]
    base, rate = fit_prefill(points)
    a, b = least_squares([n for n, _ in points], [t for _, t in points])

    def worst(predict) -> float:
        return max(abs(predict(n) / t - 1) for n, t in points)

    assert worst(lambda n: base + n / rate) < 0.5 * worst(lambda n: a + b * n)
    assert a < 0 <= base  # unweighted, the line would promise a negative start-up time


def test_prefill_fit_refuses_a_flat_profile():
    with pytest.raises(ValueError, match="does not grow"):
        fit_prefill([(32, 0.5), (2048, 0.4)])


def test_decode_fit_inverts_the_physics_batch_model():
    truth = PhysicsModel(ttft_s=0.0, network_rtt_s=0.0, prefill_tokens_per_s=1000, decode_tokens_per_s=20,
                         decode_slowdown_at_full_batch=1.6, max_concurrency=16, jitter_ratio=0, failure_rate=0)
    points = [(k, stream_decode_rate(truth, k)) for k in (1, 2, 4, 8, 16)]
    rate, slowdown = fit_decode(points, 16)
    assert rate == pytest.approx(20)
    assert slowdown == pytest.approx(1.6)


def test_decode_fit_never_reports_a_speed_up_from_batching():
    rate, slowdown = fit_decode([(1, 10.0), (16, 12.0)], 16)
    assert slowdown == 1.0
    assert rate > 0


@pytest.mark.parametrize(("ratio", "lanes"), [(1.05, None), (1.49, None), (1.5, 1), (2.1, 1)])
def test_prefill_lanes_from_the_pair_ratio(ratio, lanes):
    assert prefill_lanes(ratio) == lanes


@pytest.mark.parametrize(("lost", "prefill", "share"), [(0.0, 2.0, 1.0), (2.0, 2.0, 0.0), (0.5, 2.0, 0.75),
                                                        (3.0, 2.0, 0.0), (1.0, 0.0, 1.0)])
def test_decode_share_is_what_the_streams_kept_of_the_prefill_time(lost, prefill, share):
    assert decode_share_from(lost, prefill) == pytest.approx(share)
