"""Replica counts, slots and the owned-hardware cost of a slot, derived once (``config.sizing``)."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from inferplane.config.schema import Replicas, Substrate
from inferplane.config.sizing import ReplicaCounts, replica_counts, substrate_sizing
from tests.builders import substrate

AUTOSCALING = {"min_replicas": 0, "max_replicas": 4, "target_ongoing_requests": 2.0}


@pytest.mark.parametrize(
    ("block", "initial", "minimum", "maximum", "serving_at_start"),
    [
        pytest.param({}, 1, 1, 1, 1, id="default"),
        pytest.param({"num_replicas": 3}, 3, 3, 3, 3, id="fixed"),
        pytest.param({"num_replicas": None}, 1, 1, 1, 1, id="null-count-means-one"),
        pytest.param({"autoscaling": {**AUTOSCALING, "min_replicas": 2}}, 2, 2, 4, 2, id="autoscaling"),
        pytest.param({"autoscaling": AUTOSCALING}, 0, 0, 4, 1, id="scale-to-zero-serves-with-one"),
    ],
)
def test_replica_counts(block: dict, initial: int, minimum: int, maximum: int, serving_at_start: int) -> None:
    counts = replica_counts(Replicas.model_validate(block))
    assert (counts.initial, counts.minimum, counts.maximum) == (initial, minimum, maximum)
    assert counts.serving_at_start == serving_at_start


def test_serve_options_of_a_fixed_count_and_of_autoscaling() -> None:
    assert replica_counts(Replicas(num_replicas=3)).serve_options() == {"num_replicas": 3}
    scaled = replica_counts(Replicas.model_validate({"autoscaling": AUTOSCALING}))
    assert scaled.serve_options() == {"autoscaling_config": {
        "min_replicas": 0, "max_replicas": 4, "target_ongoing_requests": 2.0,
        "upscale_delay_s": 3.0, "downscale_delay_s": 60.0}}
    # the plane scales it: Serve starts the replicas that serve the first request, never 0
    assert scaled.serve_options(plane_scaled=True) == {"num_replicas": 1}


@pytest.mark.parametrize(("total", "maximum", "share"), [(16, 1, 16), (16, 4, 4), (17, 4, 5), (1, 4, 1)])
def test_share_rounds_up_over_full_scale(total: int, maximum: int, share: int) -> None:
    counts = ReplicaCounts(initial=1, minimum=1, maximum=maximum, target_ongoing_requests=None)
    assert counts.share(total) == share
    assert counts.pooled(share) >= total


def _substrate(kind: str, replicas: dict, *, gpu_hour: float = 0.0, gpus: int = 0, slots: int = 8) -> Substrate:
    doc = substrate("s").kind(kind).capacity(slots).cost(gpu_hour=gpu_hour, gpus=gpus).obj()
    doc[kind]["replicas"] = replicas
    return TypeAdapter(Substrate).validate_python(doc)


@pytest.mark.parametrize("kind", ["vllm", "openai_compatible", "emulated"])
def test_every_kind_is_sized_from_its_own_block(kind: str) -> None:
    sizing = substrate_sizing(_substrate(kind, {"num_replicas": 2}))
    assert sizing.replicas.maximum == 2 and sizing.slots == 8


def test_owned_hardware_is_paid_for_the_most_replicas() -> None:
    # $3.60 per GPU-hour x 2 GPUs x 4 replicas (max, not min 1) = $0.008 per second over 8 slots.
    scaled = {"autoscaling": {**AUTOSCALING, "min_replicas": 1}}
    sizing = substrate_sizing(_substrate("vllm", scaled, gpu_hour=3.6, gpus=2))
    assert sizing.owned_usd_per_slot_second == pytest.approx(0.001, rel=1e-12)


def test_no_owned_hardware_costs_nothing_per_slot() -> None:
    assert substrate_sizing(_substrate("openai_compatible", {"num_replicas": 3})).owned_usd_per_slot_second == 0.0
