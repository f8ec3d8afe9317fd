"""Checks that need the whole document: names unique, cross-references resolve.

Each check appends a ``ConfigProblem`` naming the path of the offending value and what would be
valid. The checks never stop at the first problem: a user fixes a config in one pass.
"""

from __future__ import annotations

from collections.abc import Iterable

from inferplane.config.errors import ConfigProblem
from inferplane.config.schema import InferplaneConfig, VllmSubstrate
from inferplane.config.sizing import substrate_sizing
from inferplane.jurisdiction import ANY_JURISDICTION, ISO_COUNTRY_CODES


def _choices(names: Iterable[str]) -> str:
    names = sorted(set(names))
    return "{" + ", ".join(names) + "}" if names else "(none defined)"


def check_references(cfg: InferplaneConfig) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    add = lambda loc, msg: problems.append(ConfigProblem(loc, msg))  # noqa: E731

    # Unique names.
    for section, items in (
        ("substrates", cfg.substrates),
        ("models", cfg.models),
        ("tenants", cfg.tenants),
        ("sla_classes", cfg.sla_classes),
        ("teams", cfg.teams),
    ):
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            if item.name in seen:
                add((section, i, "name"), f"`{item.name}` is already used by {section}[{seen[item.name]}]")
            else:
                seen[item.name] = i

    # Jurisdiction groups: must not shadow a country code.
    groups = cfg.jurisdiction_groups
    for name, members in groups.items():
        if name in ISO_COUNTRY_CODES:
            add(("jurisdiction_groups", name), f"`{name}` is a country code; give the group another name")
        for j, member in enumerate(members):
            if member not in ISO_COUNTRY_CODES:
                add(("jurisdiction_groups", name, j), f"`{member}` is not an ISO 3166-1 alpha-2 country code")

    def check_jurisdiction(loc: tuple, token: str, *, allow_any: bool) -> None:
        if token == ANY_JURISDICTION and allow_any:
            return
        if token in groups or token in ISO_COUNTRY_CODES:
            return
        add(
            loc,
            f"`{token}` is neither an ISO 3166-1 alpha-2 country code nor a group defined under "
            f"jurisdiction_groups {_choices(groups)}",
        )

    substrates = {s.name: s for s in cfg.substrates}
    for i, s in enumerate(cfg.substrates):
        check_jurisdiction(("substrates", i, "jurisdiction"), s.jurisdiction, allow_any=False)
        if isinstance(s, VllmSubstrate):
            limit = s.vllm.engine.max_model_len
            for j, m in enumerate(s.models):
                if m.context_window_tokens > limit:
                    add(
                        ("substrates", i, "models", j, "context_window_tokens"),
                        f"{m.context_window_tokens} exceeds the engine's max_model_len {limit}; "
                        f"use at most {limit}",
                    )

    # Models: aliases unique across all names; primary and spillover substrates exist and serve it.
    public: dict[str, str] = {}
    for i, m in enumerate(cfg.models):
        for j, name in enumerate([m.name, *m.aliases]):
            loc = ("models", i, "name") if j == 0 else ("models", i, "aliases", j - 1)
            if name in public and public[name] != m.name:
                add(loc, f"`{name}` already names model `{public[name]}`")
            public.setdefault(name, m.name)
    declared = {m.name for m in cfg.models}
    versions = {m.name: [v.name for v in m.versions] for m in cfg.models if m.versions}
    serving: dict[str, set[str]] = {}
    serving_version: dict[tuple[str, str], set[str]] = {}
    for s in cfg.substrates:
        for served in s.models:
            serving.setdefault(served.name, set()).add(s.name)
            if served.version is not None:
                serving_version.setdefault((served.name, served.version), set()).add(s.name)
    for i, s in enumerate(cfg.substrates):
        for j, served in enumerate(s.models):
            if served.name not in declared:
                add(
                    ("substrates", i, "models", j, "name"),
                    f"model `{served.name}` is not declared under models {_choices(declared)}",
                )
            elif served.name in versions and served.version is None:
                add(("substrates", i, "models", j, "version"),
                    f"model `{served.name}` has versions {_choices(versions[served.name])}: say which one this "
                    "substrate serves (`version:`; one entry per version it serves)")
            elif served.version is not None and served.version not in versions.get(served.name, ()):
                add(("substrates", i, "models", j, "version"),
                    f"model `{served.name}` has no version `{served.version}`; its versions: "
                    f"{_choices(versions.get(served.name, ()))}")
    for i, m in enumerate(cfg.models):
        servers = serving.get(m.name, set())
        if m.primary_substrate not in substrates:
            add(
                ("models", i, "primary_substrate"),
                f"no substrate named `{m.primary_substrate}`; substrates: {_choices(substrates)}",
            )
        elif m.primary_substrate not in servers:
            add(
                ("models", i, "primary_substrate"),
                f"substrate `{m.primary_substrate}` does not serve `{m.name}`; substrates that do: "
                f"{_choices(servers)}",
            )
        for j, name in enumerate(m.spillover_substrates or []):
            if name not in substrates:
                add(("models", i, "spillover_substrates", j), f"no substrate named `{name}`; substrates: {_choices(substrates)}")
            elif name not in servers:
                add(
                    ("models", i, "spillover_substrates", j),
                    f"substrate `{name}` does not serve `{m.name}`; substrates that do: {_choices(servers)}",
                )
        for k, (v, primary, spillover) in enumerate(m.version_routes()):
            # Each version runs only where a substrate serves that version (its own weights).
            at = ("models", i, "versions", k)
            by = serving_version.get((m.name, v.name), set())
            what = f"`{m.name}` version `{v.name}`"
            if v.primary_substrate is not None and primary not in substrates:
                add((*at, "primary_substrate"), f"no substrate named `{primary}`; substrates: {_choices(substrates)}")
            elif primary in substrates and primary not in by:
                add((*at, "primary_substrate") if v.primary_substrate is not None else (*at, "name"),
                    f"substrate `{primary}` does not serve {what}"
                    + ("" if v.primary_substrate is not None else " (the model's primary_substrate, which the "
                       "version inherits)") + f"; substrates that do: {_choices(by)}")
            if "spillover_substrates" in v.model_fields_set:
                for j, name in enumerate(spillover or []):
                    if name not in substrates:
                        add((*at, "spillover_substrates", j),
                            f"no substrate named `{name}`; substrates: {_choices(substrates)}")
                    elif name not in by:
                        add((*at, "spillover_substrates", j),
                            f"substrate `{name}` does not serve {what}; substrates that do: {_choices(by)}")

    # Tenants.
    sla = {c.name for c in cfg.sla_classes}
    key_owner: dict[str, str] = {}
    for i, t in enumerate(cfg.tenants):
        for j, token in enumerate(t.allowed_jurisdictions):
            check_jurisdiction(("tenants", i, "allowed_jurisdictions", j), token, allow_any=True)
        if t.default_sla_class not in sla:
            add(("tenants", i, "default_sla_class"), f"no SLA class `{t.default_sla_class}`; classes: {_choices(sla)}")
        for j, c in enumerate(t.allowed_sla_classes or []):
            if c not in sla:
                add(("tenants", i, "allowed_sla_classes", j), f"no SLA class `{c}`; classes: {_choices(sla)}")
        for j, name in enumerate(t.allowed_models or []):
            if name not in public:
                add(("tenants", i, "allowed_models", j), f"no model or alias `{name}`; models: {_choices(declared)}")
        for j, digest in enumerate(t.api_keys_sha256):
            if digest in key_owner and key_owner[digest] != t.name:
                add(("tenants", i, "api_keys_sha256", j), f"the same key is already given to tenant `{key_owner[digest]}`")
            key_owner.setdefault(digest, t.name)

    # Quotas: on a tier that exists, and the guarantees of a tier fit in its slots.
    slots_by_class: dict[str, int] = {}
    for s in cfg.substrates:
        slots_by_class[s.substrate_class.value] = slots_by_class.get(s.substrate_class.value, 0) + \
            substrate_sizing(s).slots
    guaranteed: dict[str, int] = {}
    for i, t in enumerate(cfg.tenants):
        for j, q in enumerate(t.quotas):
            tier = q.substrate_class.value
            if tier not in slots_by_class:
                add(("tenants", i, "quotas", j, "substrate_class"),
                    f"no substrate of class `{tier}`; classes in the fleet: {_choices(slots_by_class)}")
            guaranteed[tier] = guaranteed.get(tier, 0) + q.guaranteed_slots
    for tier, total in guaranteed.items():
        if tier in slots_by_class and total > slots_by_class[tier]:
            i, j = next((i, j) for i, t in enumerate(cfg.tenants) for j, q in enumerate(t.quotas)
                        if q.substrate_class.value == tier and q.guaranteed_slots)
            add(("tenants", i, "quotas", j, "guaranteed_slots"),
                f"tenants are guaranteed {total} slots of `{tier}`, which has {slots_by_class[tier]}; "
                f"guarantee at most {slots_by_class[tier]} in all")

    # Teams: their grants name substrates that exist and jurisdictions that mean something.
    for i, team in enumerate(cfg.teams):
        for j, token in enumerate(team.jurisdictions):
            check_jurisdiction(("teams", i, "jurisdictions", j), token, allow_any=True)
        for grant in ("primary", "spillover"):
            for j, name in enumerate(getattr(team, grant).substrates):
                if name not in substrates:
                    add(("teams", i, grant, "substrates", j), f"no substrate named `{name}`; substrates: {_choices(substrates)}")

    for name in cfg.policy.spillover.per_model:
        if name not in declared:
            add(("policy", "spillover", "per_model", name), f"no model `{name}`; models: {_choices(declared)}")

    return problems
