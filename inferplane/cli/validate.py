"""`inferplane validate CONFIG [MODEL_FILE...]`: both loading phases; exit 0 and a one-line summary, or
the problems (file, line, path, what is valid) and exit 1. With model files (`kind: models`), CONFIG is
the platform's fleet file and each model file is checked against its team's rights there."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from inferplane.config import build, load_config
from inferplane.config.schema import InferplaneConfig, PrefixCacheAffinityRequestRouter, SubstrateGrant, VllmSubstrate
from inferplane.config.sizing import external_scaling


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a config file", description=__doc__)
    p.add_argument("config", help="path to a YAML config (the fleet file, when model files follow)")
    p.add_argument("model_files", nargs="*", metavar="MODEL_FILE", help="teams' model files (`kind: models`)")
    p.set_defaults(func=cmd)


def summary(path: str, model_files: Sequence[str] = ()) -> str:
    from inferplane.api.tokens import TokenCounter

    built = build(load_config(path, model_files))
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
        + "".join(f"\n  {line}" for line in team_lines(cfg))
    )


def team_lines(cfg: InferplaneConfig) -> list[str]:
    """Each team, and what each model file brought (from the merged config's ``sources``)."""
    lines = [f"team {t.name}: " + ", ".join(
        f"{k} {v}" for k, v in (("primary", _grant(t.primary)), ("spillover", _grant(t.spillover)),
                                ("in", "{" + ", ".join(t.jurisdictions) + "}"),
                                ("own pools", "none" if t.pools is None else f"up to {t.pools.max_pools}")) if v)
        for t in cfg.teams]
    lines += [f"model file {s.path} (team {s.team}, sha256 {s.sha256[:12]})" for s in cfg.sources if s.kind == "models"]
    return lines


def _grant(grant: SubstrateGrant) -> str:
    return ", ".join([*grant.substrates, *(f"class {c.value}" for c in grant.classes)])


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
    print(summary(args.config, args.model_files))
    return 0
