"""`inferplane validate CONFIG`: both loading phases; exit 0 and a one-line summary, or the
problems (file, line, path, what is valid) and exit 1."""

from __future__ import annotations

import argparse

from inferplane.config import build, load_config
from inferplane.config.schema import PrefixCacheAffinityRequestRouter, VllmSubstrate
from inferplane.config.sizing import external_scaling


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a config file", description=__doc__)
    p.add_argument("config", help="path to a YAML config")
    p.set_defaults(func=cmd)


def summary(path: str) -> str:
    from inferplane.api.tokens import TokenCounter

    built = build(load_config(path))
    cfg = built.config
    emulated = sum(1 for s in built.fleet.substrates if s.emulated)
    classes = sorted({s.substrate_class for s in built.fleet.substrates})
    tokenizers = TokenCounter.from_config(cfg).sources
    return (
        f"{path}: valid · {len(cfg.substrates)} substrates ({emulated} emulated; "
        f"{', '.join(classes)}), {len(cfg.models)} models, {len(cfg.tenants)} tenants, "
        f"{len(cfg.sla_classes)} SLA classes · policy {built.policy.policy_hash}"
        + "".join(f"\n  model {model}: prompt tokens counted by {source}" for model, source in tokenizers.items())
        + "".join(f"\n  substrate {s.name}: {_replica_routing(s)}" for s in cfg.substrates if isinstance(s, VllmSubstrate))
        + f"\n  scaling: {external_scaling(cfg)[1]}"
    )


def _replica_routing(s: VllmSubstrate) -> str:
    """How a vLLM substrate's requests are spread over its replicas."""
    from inferplane.config.sizing import replica_counts

    counts = replica_counts(s.vllm.replicas)
    replicas = (f"{counts.initial} replica{'' if counts.initial == 1 else 's'}" if counts.minimum == counts.maximum
                else f"{counts.minimum}-{counts.maximum} replicas")
    router = s.vllm.request_router
    if not isinstance(router, PrefixCacheAffinityRequestRouter):
        return f"{replicas}, Serve's default router (power of two choices)"
    settings = [f"match_rate_threshold {router.match_rate_threshold:g}",
                "imbalanced_threshold " + ("never" if router.imbalanced_threshold is None
                                           else f"{router.imbalanced_threshold:g}"),
                "no eviction" if router.eviction is None else
                f"eviction above {router.eviction.threshold_chars} chars to {router.eviction.target_chars}"]
    return f"{replicas}, prefix-cache affinity router ({', '.join(settings)})"


def cmd(args: argparse.Namespace) -> int:
    print(summary(args.config))
    return 0
