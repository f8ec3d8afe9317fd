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

Overrides from ``simulation.physics`` replace fields last (milliseconds become seconds). Each
substrate's draws are seeded with ``seed * 1000003 + its index in the fleet``.
"""

from __future__ import annotations

from dataclasses import replace

from inferplane.config.schema import EmulatedSubstrate, OpenAICompatibleSubstrate, Substrate
from inferplane.config.sizing import replica_counts, substrate_sizing
from inferplane.placement.fleet import PrefixCacheSpec
from inferplane.replay.scenario import PhysicsOverride
from substrate_adapters.physics import PhysicsModel


def physics_for(substrate: Substrate, index: int, *, jitter_ratio: float, seed: int,
                override: PhysicsOverride | None = None) -> PhysicsModel:
    """The physics of ``substrate`` (the ``index``-th of its fleet) in a replay seeded ``seed``."""
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
    if override is None:
        return model
    changes = override.model_dump(exclude_none=True)
    changes.pop("kv_cache_tokens_per_replica", None)  # the prefix caches' truth: ``prefix_cache_for``
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
