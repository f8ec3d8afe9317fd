"""The emulated substrate's timing model: hand-computed durations, seeded draws."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inferplane.config.schema import EmulatedPhysics
from substrate_adapters.physics import (
    PhysicsDraws,
    PhysicsModel,
    decode_interval_s,
    decode_share,
    first_token_delay_s,
    outbound_delay_s,
    prefill_slots,
    service_time_s,
    stream_decode_rate,
)


def physics(**overrides: object) -> PhysicsModel:
    """ttft 100 ms, rtt 40 ms, prefill 1000 tok/s, decode 50 tok/s, 3x slower at a full batch
    of 4."""
    fields: dict[str, object] = dict(
        ttft_ms=100.0,
        network_rtt_ms=40.0,
        prefill_tokens_per_s=1000.0,
        decode_tokens_per_s=50.0,
        decode_slowdown_at_full_batch=3.0,
        max_concurrency=4,
    )
    fields.update(overrides)
    return PhysicsModel.from_config(EmulatedPhysics.model_validate(fields))


def test_from_config_converts_milliseconds_and_keeps_the_rest():
    model = PhysicsModel.from_config(
        EmulatedPhysics(
            ttft_ms=250.0,
            network_rtt_ms=90.0,
            prefill_tokens_per_s=8000.0,
            decode_tokens_per_s=90.0,
            decode_slowdown_at_full_batch=2.0,
            max_concurrency=128,
            jitter_ratio=0.15,
            failure_rate=0.01,
            slowdown_factor=1.5,
            seed=7,
            prefill_concurrency=1,
            decode_share_during_prefill=0.25,
        )
    )
    assert model == PhysicsModel(
        ttft_s=0.25,
        network_rtt_s=0.09,
        prefill_tokens_per_s=8000.0,
        decode_tokens_per_s=90.0,
        decode_slowdown_at_full_batch=2.0,
        max_concurrency=128,
        jitter_ratio=0.15,
        failure_rate=0.01,
        slowdown_factor=1.5,
        seed=7,
        prefill_concurrency=1,
        decode_share_during_prefill=0.25,
    )


@pytest.mark.parametrize(
    ("slowdown", "input_tokens", "outbound", "first_token"),
    [
        # rtt/2 = 0.02; first token = 0.02 + 0.1 + input / 1000
        (1.0, 0, 0.02, 0.12),
        (1.0, 500, 0.02, 0.62),
        (2.0, 500, 0.04, 1.24),
        (1.0, 2000, 0.02, 2.12),
    ],
)
def test_first_token_delay_is_half_rtt_plus_ttft_plus_prefill(
    slowdown, input_tokens, outbound, first_token
):
    model = physics(slowdown_factor=slowdown)
    assert outbound_delay_s(model) == pytest.approx(outbound)
    assert first_token_delay_s(model, input_tokens) == pytest.approx(first_token)


@pytest.mark.parametrize(
    ("running", "rate", "interval"),
    [
        # rate = 50 / (1 + (3 - 1) * min(1, running / 4))
        (0, 50.0, 0.02),
        (1, 50.0 / 1.5, 0.03),
        (2, 25.0, 0.04),
        (4, 50.0 / 3.0, 0.06),
        (10, 50.0 / 3.0, 0.06),  # beyond the slots: no slower than a full batch
    ],
)
def test_decode_slows_with_the_batch_up_to_the_full_batch_factor(running, rate, interval):
    model = physics()
    assert stream_decode_rate(model, running) == pytest.approx(rate)
    assert decode_interval_s(model, running) == pytest.approx(interval)


def test_slowdown_multiplies_the_decode_interval_not_the_rate():
    model = physics(slowdown_factor=2.5)
    assert stream_decode_rate(model, 2) == pytest.approx(25.0)
    assert decode_interval_s(model, 2) == pytest.approx(0.1)


def test_service_time_is_first_token_plus_the_remaining_intervals():
    # 0.62 + 9 * 0.04
    assert service_time_s(physics(), 500, 10, 2) == pytest.approx(0.98)
    # one token: only the first-token delay
    assert service_time_s(physics(), 500, 1, 2) == pytest.approx(0.62)


def test_with_slowdown_and_with_failure_rate_change_one_field():
    base = physics(seed=5)
    slowed = base.with_slowdown(3.0)
    assert slowed.slowdown_factor == 3.0 and slowed.seed == 5 and slowed.ttft_s == base.ttft_s
    assert base.slowdown_factor == 1.0
    assert base.with_failure_rate(0.5).failure_rate == 0.5


@pytest.mark.parametrize(
    "bad",
    [
        dict(slowdown_factor=0.5),
        dict(failure_rate=1.5),
        dict(jitter_ratio=-0.1),
        dict(max_concurrency=0),
        dict(decode_slowdown_at_full_batch=0.9),
        dict(decode_tokens_per_s=0.0),
        dict(prefill_concurrency=0),
        dict(decode_share_during_prefill=1.1),
        dict(decode_share_during_prefill=-0.1),
    ],
)
def test_invalid_physics_is_refused_when_built(bad):
    fields = dict(
        ttft_s=0.1,
        network_rtt_s=0.0,
        prefill_tokens_per_s=1000.0,
        decode_tokens_per_s=50.0,
        decode_slowdown_at_full_batch=1.0,
        max_concurrency=4,
        jitter_ratio=0.0,
        failure_rate=0.0,
    )
    fields.update(bad)
    with pytest.raises(ValueError):
        PhysicsModel(**fields)


@given(
    slowdown=st.floats(1.0, 10.0),
    full=st.floats(1.0, 8.0),
    cap=st.integers(1, 64),
    running=st.integers(0, 200),
)
def test_decode_interval_stays_between_idle_and_full_batch(slowdown, full, cap, running):
    model = physics(
        slowdown_factor=slowdown, decode_slowdown_at_full_batch=full, max_concurrency=cap
    )
    interval = decode_interval_s(model, running)
    idle = slowdown / 50.0
    assert idle * (1 - 1e-12) <= interval <= idle * full * (1 + 1e-12)
    assert decode_interval_s(model, running + 1) >= interval * (1 - 1e-12)


# ------------------------------------------------------------------------------------------------
# Seeded draws


def test_same_seed_same_sequence_of_calls_gives_the_same_draws():
    def sequence(seed: int) -> list[float]:
        draws = PhysicsDraws(seed)
        out: list[float] = []
        for i in range(200):
            out.append(draws.jitter(0.2) if i % 3 else float(draws.fails(0.3)))
        return out

    assert sequence(11) == sequence(11)
    assert sequence(11) != sequence(12)


def test_every_call_consumes_one_draw_whatever_its_argument():
    a, b = PhysicsDraws(3), PhysicsDraws(3)
    a.jitter(0.0)
    a.fails(0.0)
    b.jitter(0.5)
    b.fails(1.0)
    assert a.jitter(0.3) == b.jitter(0.3)


def test_jitter_zero_is_exactly_one():
    draws = PhysicsDraws(0)
    assert {draws.jitter(0.0) for _ in range(100)} == {1.0}


@pytest.mark.parametrize("ratio", [0.02, 0.15, 1.0])
def test_jitter_is_uniform_over_the_whole_band(ratio):
    draws = PhysicsDraws(42)
    values = [draws.jitter(ratio) for _ in range(10_000)]
    assert all(1 - ratio <= v <= 1 + ratio for v in values)
    # The whole band is used (a one-sided or narrower draw fails here) and centred on 1.
    assert min(values) < 1 - 0.95 * ratio
    assert max(values) > 1 + 0.95 * ratio
    assert sum(values) / len(values) == pytest.approx(1.0, abs=0.02 * ratio)
    below = sum(1 for v in values if v < 1 - ratio / 2)
    assert below / len(values) == pytest.approx(0.25, abs=0.02)


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5, 0.9])
def test_failure_rate_matches_over_10k_draws(rate):
    draws = PhysicsDraws(1234)
    n = 10_000
    failures = sum(draws.fails(rate) for _ in range(n))
    sigma = math.sqrt(rate * (1 - rate) / n)
    assert abs(failures / n - rate) < 4 * sigma + 1e-9


def test_failure_rate_zero_never_fails_and_one_always_fails():
    draws = PhysicsDraws(9)
    assert not any(draws.fails(0.0) for _ in range(5000))
    assert all(draws.fails(1.0) for _ in range(5000))


def test_decode_share_applies_only_while_something_prefills():
    model = PhysicsModel(ttft_s=0.1, network_rtt_s=0.0, prefill_tokens_per_s=1000.0, decode_tokens_per_s=50.0,
                         decode_slowdown_at_full_batch=1.0, max_concurrency=8, jitter_ratio=0.0, failure_rate=0.0,
                         prefill_concurrency=2, decode_share_during_prefill=0.3)
    assert (decode_share(model, 0), decode_share(model, 1), decode_share(model, 2)) == (1.0, 0.3, 0.3)
    assert prefill_slots(model) == 2
    assert prefill_slots(replace(model, prefill_concurrency=None)) == 8
