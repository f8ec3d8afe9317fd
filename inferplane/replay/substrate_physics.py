"""The physics each substrate runs on in a replay: a ``substrate_adapters.physics.PhysicsModel``.

The simulator uses the emulated substrate's timing model itself (shared code: the same
``first_token_delay_s``, ``decode_interval_s``, ``PhysicsDraws``), so what the simulator does
to one request is what an emulated substrate would do to it.

``emulated``           ``PhysicsModel.from_config(emulated.physics)``, with the slots of all its
                       replicas pooled at full scale (``inferplane.config.sizing``):
                       ``max_concurrency = physics.max_concurrency * max replicas``
                       (and ``prefill_concurrency``, when set, likewise)
                       (each replica has its own FIFO in the plane; pooling assumes Serve spreads
                       load evenly, which keeps the batch fraction running / slots the same).
``vllm``,              derived from what the config declares about the substrate, the same numbers
``openai_compatible``  the placement engine predicts with:

                           ttft_s                        = latency.base_ttft_ms / 1000
                           network_rtt_s                 = latency.network_rtt_ms / 1000
                           prefill_tokens_per_s          = latency.prefill_tokens_per_s
                           decode_tokens_per_s           = latency.decode_tokens_per_s
                           decode_slowdown_at_full_batch = latency.decode_slowdown_at_full_batch
                           max_concurrency               = capacity.max_concurrent_requests
                           prefill_concurrency           = latency.prefill_concurrency
                           decode_share_during_prefill   = latency.decode_share_during_prefill
                           jitter_ratio                  = simulation.jitter_ratio (scenario)
                           failure_rate                  = 0 (faults come from events)

                       so a replay of such a substrate is exactly as fast as the plane believes
                       it is, up to jitter; a scenario that wants the truth to differ from the
                       belief says so in ``simulation.physics``.

Prefix caches (``prefix_cache_for``): what the config declares (``SubstrateSpec.prefix_cache``),
unless ``simulation.physics`` gives ``kv_cache_tokens_per_replica``: then each replica really has
that many tokens (as many replicas as the config builds caches for), while the plane keeps
believing the config.

Physics the plane has to learn (``simulation.mismatch``, ``MismatchSpec``): each substrate's
prefill time, decode time and first-token start-up are multiplied by factors drawn once per
substrate in [1 - ratio, 1 + ratio] (``mismatched``), and over the replay its durations drift
slowly (a sine between 1 and 1 + drift_ratio, the substrate's own period and phase) with
occasional brown-outs (x brownout_factor for brownout_s), both as ``slowdown`` events
(``mismatch_events``; one substrate's events never overlap, so each one's end restores the
next). The draws are seeded with the mismatch's seed and the substrate's name, so a substrate
keeps its truth when others are added to the fleet. Placement sees none of it: the plane's router
predicts from the config's declared profile and learns only from outcomes; the bound is solved
on the true physics (the slowdowns only lengthen durations, so it stays an upper bound).

Overrides from ``simulation.physics`` replace fields last (milliseconds become seconds), after the
mismatch. Each substrate's jitter draws are seeded with ``seed * 1000003 + its index in the fleet``.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

from inferplane.config.schema import EmulatedSubstrate, OpenAICompatibleSubstrate, Substrate
from inferplane.config.sizing import replica_counts, substrate_sizing
from inferplane.placement.fleet import PrefixCacheSpec
from inferplane.replay.scenario import Event, EventKind, MismatchSpec, PhysicsOverride
from substrate_adapters.physics import PhysicsModel


def physics_for(substrate: Substrate, index: int, *, jitter_ratio: float, seed: int,
                override: PhysicsOverride | None = None, mismatch: MismatchSpec | None = None) -> PhysicsModel:
    """The physics of ``substrate`` (the ``index``-th of its fleet) in a replay seeded ``seed``;
    with ``mismatch``, drawn around it (``mismatched``, seeded with the mismatch's seed or ``seed``)."""
    own_seed = seed * 1000003 + index
    if isinstance(substrate, EmulatedSubstrate):
        model = PhysicsModel.from_config(substrate.emulated.physics)
        replicas = replica_counts(substrate.emulated.replicas)
        lanes = model.prefill_concurrency
        model = replace(model, max_concurrency=replicas.pooled(model.max_concurrency),
                        prefill_concurrency=None if lanes is None else replicas.pooled(lanes), seed=own_seed)
    else:
        lat = substrate.latency
        model = PhysicsModel(
            ttft_s=lat.base_ttft_ms / 1000.0,
            network_rtt_s=lat.network_rtt_ms / 1000.0,
            prefill_tokens_per_s=lat.prefill_tokens_per_s,
            decode_tokens_per_s=lat.decode_tokens_per_s,
            decode_slowdown_at_full_batch=lat.decode_slowdown_at_full_batch,
            max_concurrency=substrate.capacity.max_concurrent_requests,
            prefill_concurrency=lat.prefill_concurrency,
            decode_share_during_prefill=lat.decode_share_during_prefill,
            jitter_ratio=jitter_ratio,
            failure_rate=0.0,
            seed=own_seed,
        )
    if mismatch is not None:
        model = mismatched(model, substrate.name, mismatch, seed if mismatch.seed is None else mismatch.seed)
    if override is None:
        return model
    changes = override.model_dump(exclude_none=True)
    changes.pop("kv_cache_tokens_per_replica", None)  # the prefix caches' truth: ``prefix_cache_for``
    changes.pop("replica_start_s", None)  # the replicas' truth: ``runner.prepare``, ``SimSubstrate.make_elastic``
    for ms_field in ("ttft_ms", "network_rtt_ms"):
        if ms_field in changes:
            changes[ms_field.replace("_ms", "_s")] = changes.pop(ms_field) / 1000.0
    return replace(model, **changes)


def prefix_cache_for(substrate: Substrate, declared: PrefixCacheSpec | None,
                     override: PhysicsOverride | None = None) -> PrefixCacheSpec | None:
    """The prefix caches ``substrate`` really has in a replay (module docstring)."""
    tokens = None if override is None else override.kv_cache_tokens_per_replica
    if tokens is None:
        return declared
    replicas = 1 if isinstance(substrate, OpenAICompatibleSubstrate) else substrate_sizing(substrate).replicas.maximum
    return PrefixCacheSpec(replicas, tokens)


def mismatch_factors(name: str, spec: MismatchSpec, seed: int) -> tuple[float, float, float]:
    """Substrate ``name``'s true / declared prefill time, decode time and first-token start-up."""
    rng = random.Random(f"mismatch:{seed}:{name}")
    return (1.0 + rng.uniform(-spec.ratio, spec.ratio), 1.0 + rng.uniform(-spec.ratio, spec.ratio),
            1.0 + rng.uniform(-spec.ratio, spec.ratio))


def mismatched(model: PhysicsModel, name: str, spec: MismatchSpec, seed: int) -> PhysicsModel:
    """``model`` with substrate ``name``'s drawn factors (``mismatch_factors``) applied."""
    prefill, decode, start = mismatch_factors(name, spec, seed)
    return replace(model, prefill_tokens_per_s=model.prefill_tokens_per_s / prefill,
                   decode_tokens_per_s=model.decode_tokens_per_s / decode, ttft_s=model.ttft_s * start)


def mismatch_events(names: tuple[str, ...], spec: MismatchSpec, seed: int, span_s: float) -> tuple[Event, ...]:
    """Each substrate's slow drift and brown-outs over [0, ``span_s``) as ``slowdown`` events, one
    substrate's never overlapping (module docstring); seeded per substrate name."""
    steps = max(1, math.ceil(span_s / spec.step_s))
    brownout_steps = max(1, math.ceil(spec.brownout_s / spec.step_s))
    p_start = min(1.0, spec.brownouts_per_hour * spec.step_s / 3600.0)
    events: list[Event] = []
    for name in names:
        rng = random.Random(f"mismatch-events:{seed}:{name}")
        period = spec.drift_period_s * rng.uniform(0.5, 1.5)
        phase = rng.uniform(0.0, 2.0 * math.pi)
        brown_until = 0
        factors = []
        for k in range(steps):
            drift = 1.0 + spec.drift_ratio * 0.5 * (1.0 - math.cos(2.0 * math.pi * k * spec.step_s / period + phase))
            if k >= brown_until and rng.random() < p_start:
                brown_until = k + brownout_steps
            factors.append(round(drift * (spec.brownout_factor if k < brown_until else 1.0), 2))
        k = 0
        while k < steps:
            end = k
            while end + 1 < steps and factors[end + 1] == factors[k]:
                end += 1
            if factors[k] > 1.0:
                events.append(Event(EventKind.SLOWDOWN, name, k * spec.step_s, (end + 1 - k) * spec.step_s,
                                    factors[k]))
            k = end + 1
    return tuple(events)
