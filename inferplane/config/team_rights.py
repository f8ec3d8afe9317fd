"""A team's rights (the fleet file's ``teams:``) applied to one of its model files.

Each problem is located in the model file (its ``loc``) and names the rule it broke: the team's grant
as the fleet file spells it (``teams[0].primary``), what the grant allows, and what the file asked for.
Pure: the fleet is the validated, merged config; nothing is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from inferplane.config.errors import ConfigProblem, Loc
from inferplane.config.schema import InferplaneConfig, Model, Substrate, SubstrateGrant, VllmSubstrate
from inferplane.config.sizing import replica_counts
from inferplane.jurisdiction import JurisdictionCatalog, UnknownJurisdiction, is_within


def _set(items: Iterable[str]) -> str:
    items = sorted(set(items))
    return "{" + ", ".join(items) + "}" if items else "{}"


def _grant_text(grant: SubstrateGrant) -> str:
    parts = []
    if grant.substrates:
        parts.append(f"substrates {_set(grant.substrates)}")
    if grant.classes:
        parts.append(f"substrates of class {_set(c.value for c in grant.classes)}")
    return " or ".join(parts) or "no substrates"


def _grants(grant: SubstrateGrant, s: Substrate) -> bool:
    return s.name in grant.substrates or s.substrate_class in grant.classes


def check_team_file(cfg: InferplaneConfig, team_index: int, models: list[Model], serving: dict[str, list[str]],
                    pools: list[Substrate], pools_before: int) -> list[ConfigProblem]:
    """The problems of one model file of team ``cfg.teams[team_index]``.

    ``serving``: model name -> the substrates this file puts it on (``serving:`` keys and own pools);
    ``pools``: the file's own substrates; ``pools_before``: the team's pools in earlier model files."""
    team = cfg.teams[team_index]
    rule = f"teams[{team_index}]"
    problems: list[ConfigProblem] = []
    add: Callable[[Loc, str], None] = lambda loc, msg: problems.append(ConfigProblem(loc, msg))  # noqa: E731
    catalog = JurisdictionCatalog(cfg.jurisdiction_groups)
    try:
        allowed = catalog.expand_all(team.jurisdictions)
    except UnknownJurisdiction:
        allowed = frozenset()  # the fleet's own problem, reported there
    where = _set(team.jurisdictions)
    substrates = {s.name: s for s in cfg.substrates}
    own = {p.name for p in pools}

    def within(s: Substrate) -> bool:
        try:
            return is_within(catalog.expand(s.jurisdiction), allowed)
        except UnknownJurisdiction:
            return False

    def use(loc: Loc, name: str, *, as_primary: bool) -> None:
        s = substrates.get(name)
        if s is None:
            return  # no such substrate: the references check says so
        what = f"`{name}` is {s.substrate_class.value} in {s.jurisdiction}"
        if name not in own:
            grants = [team.primary] if as_primary else [team.primary, team.spillover]
            if not any(_grants(g, s) for g in grants):
                if as_primary:
                    add(loc, f"team `{team.name}` may have as primary {_grant_text(team.primary)}; {what} "
                             f"({rule}.primary)")
                else:
                    add(loc, f"team `{team.name}` may use {_grant_text(team.primary)} "
                             f"({rule}.primary), and for spillover {_grant_text(team.spillover)} "
                             f"({rule}.spillover); {what}")
                return
        if not within(s):
            add(loc, f"team `{team.name}` may use substrates in {where}; {what} ({rule}.jurisdictions)")

    for j, m in enumerate(models):
        use(("models", j, "primary_substrate"), m.primary_substrate, as_primary=True)
        for k, name in enumerate(m.spillover_substrates or []):
            use(("models", j, "spillover_substrates", k), name, as_primary=False)
        for k, v in enumerate(m.versions or ()):
            # A version's own substrates are held to the same grants (inherited ones are checked above).
            if v.primary_substrate is not None:
                use(("models", j, "versions", k, "primary_substrate"), v.primary_substrate, as_primary=True)
            for i, name in enumerate(v.spillover_substrates or []):
                use(("models", j, "versions", k, "spillover_substrates", i), name, as_primary=False)
    for name, served in serving.items():
        if name in own:
            continue  # a pool's own checks below
        for model in served:
            m = next((m for m in models if m.name == model), None)
            primaries = {m.primary_substrate, *(p for _, p, _ in m.version_routes())} if m is not None else set()
            if name not in primaries:
                use(("serving", name), name, as_primary=False)
                break

    grant = team.pools
    for p, pool in enumerate(pools):
        loc: Loc = ("pools", p)
        if grant is None:
            add(loc, f"team `{team.name}` may not bring its own pools ({rule}.pools is not set)")
            continue
        if pools_before + p + 1 > grant.max_pools:
            add(loc, f"team `{team.name}` may bring {grant.max_pools} pool{'s' if grant.max_pools != 1 else ''}; "
                     f"`{pool.name}` would be its pool number {pools_before + p + 1} ({rule}.pools.max_pools)")
        if pool.kind not in grant.kinds:
            add((*loc, "kind"), f"team `{team.name}` may bring pools of kind {_set(k.value for k in grant.kinds)}; "
                                f"`{pool.name}` is {pool.kind.value} ({rule}.pools.kinds)")
        if pool.substrate_class not in grant.classes:
            add((*loc, "class"), f"team `{team.name}` may bring pools of class "
                                 f"{_set(c.value for c in grant.classes)}; `{pool.name}` is "
                                 f"{pool.substrate_class.value} ({rule}.pools.classes)")
        if not within(pool):
            add((*loc, "jurisdiction"), f"team `{team.name}` may use substrates in {where}; `{pool.name}` is in "
                                        f"{pool.jurisdiction} ({rule}.jurisdictions)")
        if isinstance(pool, VllmSubstrate) and pool.vllm.engine.tensor_parallel_size > grant.max_gpus_per_replica:
            add((*loc, "vllm", "engine", "tensor_parallel_size"),
                f"team `{team.name}` may use at most {grant.max_gpus_per_replica} GPU(s) per replica; `{pool.name}` "
                f"asks for {pool.vllm.engine.tensor_parallel_size} ({rule}.pools.max_gpus_per_replica)")
        most = replica_counts(pool.settings.replicas).maximum
        if most > grant.max_replicas:
            add((*loc, pool.kind.value, "replicas"),
                f"team `{team.name}` may run at most {grant.max_replicas} replicas per pool; `{pool.name}` may "
                f"run {most} ({rule}.pools.max_replicas)")
    return problems
