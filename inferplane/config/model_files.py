"""Model files: an ML team's models, merged into the platform's fleet file as one config.

The fleet file is today's config (substrates, tenants, SLA classes, policy) with a ``teams:`` section
saying what each team may deploy where (``schema.Team``). A model file belongs to one team::

    kind: models                # the marker: a fleet file has no `kind`
    schema_version: 1
    team: chat                  # one of the fleet's `teams`
    models:                     # as the fleet's `models:`
      - {name: smollm2-135m-instruct, aliases: [smollm2], primary_substrate: local-vllm}
    serving:                    # fleet substrates that run them, each model with its context window
      local-vllm:
        - {name: smollm2-135m-instruct, context_window_tokens: 4096}
    pools: []                   # substrates the team brings itself (its own vLLM pools), in the
                                # fleet's substrate format, serving only this file's models

Merging appends a file's models to the fleet's ``models``, its ``serving`` entries to the named fleet
substrates' ``models``, and its pools to ``substrates``; the result is validated as one config, and
every problem is reported in the file (and line) it comes from. A file that reaches outside its
team's rights is refused naming the rule (``team_rights``); a model name, alias or pool name used in
two files is refused naming both. The merged config is shipped as one text (``MergedConfig.text``),
which records the files it came from and their SHA-256 (``InferplaneConfig.sources``).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inferplane.config.errors import ConfigError, ConfigProblem, Loc
from inferplane.config.loader import line_of, parse_config, parse_yaml, read_text, shape_problems
from inferplane.config.references import check_references
from inferplane.config.schema import ConfigSource, InferplaneConfig, Model, Name, ServedModel, Substrate
from inferplane.config.team_rights import check_team_file

MODEL_FILE_KIND = "models"


class ModelFile(BaseModel):
    """One team's model file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["models"] = Field(description="`models`: marks a team's model file (a fleet file has no `kind`).")
    schema_version: Literal[1] = Field(description="Version of this schema; currently 1.")
    team: Name = Field(description="The team the file belongs to: one of the fleet file's `teams`.")
    models: Annotated[list[Model], Field(min_length=1)] = Field(
        description="The team's models, as the fleet file's `models:` declares them.")
    serving: dict[Name, Annotated[list[ServedModel], Field(min_length=1)]] = Field(
        default_factory=dict,
        description="Fleet substrate -> this file's models it serves, each with its context window (and "
        "upstream name), as a substrate's `models:` lists them.")
    pools: list[Substrate] = Field(
        default_factory=list,
        description="Substrates the team brings (its own vLLM pool), in the fleet's substrate format; "
        "each serves only this file's models, within the team's `pools` grant.")


@dataclass(frozen=True, slots=True)
class SourceText:
    """A file's path (as given) and its text."""

    path: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class MergedConfig:
    """The config of a fleet file and its model files, and the one text that is shipped."""

    config: InferplaneConfig
    text: str
    """A single config file (``parse_config`` loads it to ``config``), recording its sources."""
    files: tuple[SourceText, ...]
    """The fleet file first, then the model files, in the order given."""


def merge_files(fleet: str | Path, model_files: Sequence[str | Path]) -> MergedConfig:
    return merge_texts(SourceText(str(fleet), read_text(fleet)),
                       [SourceText(str(p), read_text(p)) for p in model_files])


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where a part of the merged document came from: ``merged`` (a loc prefix) is ``loc`` in file ``file``."""

    merged: Loc
    file: int
    loc: Loc
    entry: bool = False
    """A serving entry: its ``name`` is the key it is listed under."""


def merge_texts(fleet: SourceText, model_files: Sequence[SourceText]) -> MergedConfig:
    files = (fleet, *model_files)
    fleet_doc, fleet_root = parse_yaml(fleet.text, fleet.path)
    if fleet_doc.get("kind") == MODEL_FILE_KIND:
        raise ConfigError(fleet.path, [ConfigProblem(("kind",), "this is a model file; give the fleet file first, "
                                                     "then the model files", line_of(fleet_root, ("kind",)))])
    roots: list[yaml.Node | None] = [fleet_root]
    parsed: list[tuple[dict, ModelFile | None]] = []
    problems: list[ConfigProblem] = []
    for k, f in enumerate(model_files, start=1):
        doc, root = parse_yaml(f.text, f.path)
        roots.append(root)
        if "kind" not in doc:
            problems.append(ConfigProblem(("kind",), "required: `kind: models` marks a team's model file (the "
                                          "fleet file comes first, once)", line_of(root, ()), f.path))
            parsed.append((doc, None))
            continue
        try:
            parsed.append((doc, ModelFile.model_validate(doc)))
        except ValidationError as exc:
            problems += [_at(p, k, f.path, root) for p in shape_problems(exc, root, ModelFile)]
            parsed.append((doc, None))
    if problems:
        raise ConfigError(fleet.path, problems)

    problems += _names(fleet_doc, fleet.path, fleet_root, [(f, mf, root) for f, (_, mf), root
                                                           in zip(model_files, parsed, roots[1:])])
    if problems:
        raise ConfigError(fleet.path, problems)

    merged, origins = _merged_document(fleet_doc, [(doc, mf) for doc, mf in parsed])

    def locate(p: ConfigProblem) -> ConfigProblem:
        origin = max((o for o in origins if p.loc[:len(o.merged)] == o.merged), key=lambda o: len(o.merged),
                     default=None)
        if origin is None:
            return ConfigProblem(p.loc, p.message, line_of(fleet_root, p.loc), fleet.path)
        rest = p.loc[len(origin.merged):]
        if origin.entry and rest[:1] == ("name",):
            rest = ()
        loc = (*origin.loc, *rest)
        return ConfigProblem(loc, p.message, line_of(roots[origin.file], loc), files[origin.file].path)

    try:
        cfg = InferplaneConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(fleet.path, [locate(p) for p in shape_problems(exc, None, InferplaneConfig)]) from None

    problems = [locate(p) for p in check_references(cfg)]
    teams = {t.name: i for i, t in enumerate(cfg.teams)}
    pools_so_far: dict[str, int] = {}
    for k, (f, (_, mf)) in enumerate(zip(model_files, parsed), start=1):
        assert mf is not None  # noqa: S101 - refused above otherwise
        if mf.team not in teams:
            problems.append(ConfigProblem(("team",), f"no team `{mf.team}` in the fleet file's teams "
                                          f"{_set(teams)} (teams)", line_of(roots[k], ("team",)), f.path))
            continue
        serving: dict[str, list[str]] = {name: [e.name for e in entries] for name, entries in mf.serving.items()}
        for pool in mf.pools:
            serving[pool.name] = [e.name for e in pool.models]
        found = check_team_file(cfg, teams[mf.team], mf.models, serving, mf.pools, pools_so_far.get(mf.team, 0))
        problems += [ConfigProblem(p.loc, p.message, line_of(roots[k], p.loc), f.path) for p in found]
        pools_so_far[mf.team] = pools_so_far.get(mf.team, 0) + len(mf.pools)
    if problems:
        raise ConfigError(fleet.path, problems)

    sources = [ConfigSource(path=fleet.path, sha256=fleet.sha256, kind="fleet")] + [
        ConfigSource(path=f.path, sha256=f.sha256, kind="models", team=mf.team, models=[m.name for m in mf.models])
        for f, (_, mf) in zip(model_files, parsed) if mf is not None]
    text = _render(merged, sources)
    return MergedConfig(parse_config(text, source="<merged config>"), text, files)


def _at(p: ConfigProblem, k: int, path: str, root: yaml.Node | None) -> ConfigProblem:
    return ConfigProblem(p.loc, p.message, p.line if p.line is not None else line_of(root, p.loc), path)


def _set(names: Any) -> str:
    names = sorted(set(names))
    return "{" + ", ".join(names) + "}" if names else "(none)"


def _names(fleet_doc: dict, fleet_path: str, fleet_root: yaml.Node | None,
           model_files: list[tuple[SourceText, ModelFile | None, yaml.Node | None]]) -> list[ConfigProblem]:
    """Names that must be unique across files, and what a file's serving entries may name."""
    problems: list[ConfigProblem] = []
    public: dict[str, tuple[str, str, Loc]] = {}  # name or alias -> (model, file, loc)
    substrates: dict[str, tuple[str, Loc]] = {}

    def where(path: str, loc: Loc) -> str:
        from inferplane.config.errors import format_loc

        return f"{path} ({format_loc(loc)})"

    for i, m in enumerate(_dicts(fleet_doc.get("models"))):
        for j, name in enumerate([m.get("name"), *(m.get("aliases") or [])]):
            if isinstance(name, str):
                public.setdefault(name, (str(m.get("name")), fleet_path, ("models", i)))
    fleet_substrates = set()
    for i, s in enumerate(_dicts(fleet_doc.get("substrates"))):
        if isinstance(s.get("name"), str):
            substrates.setdefault(s["name"], (fleet_path, ("substrates", i)))
            fleet_substrates.add(s["name"])

    for f, mf, root in model_files:
        assert mf is not None  # noqa: S101 - refused before
        add = lambda loc, msg: problems.append(ConfigProblem(loc, msg, line_of(root, loc), f.path))  # noqa: E731
        own_models = {m.name for m in mf.models}
        for i, m in enumerate(mf.models):
            for j, name in enumerate([m.name, *m.aliases]):
                loc = ("models", i, "name") if j == 0 else ("models", i, "aliases", j - 1)
                if name in public and public[name][0] != m.name:
                    model, path, at = public[name]
                    add(loc, f"`{name}` already names model `{model}` in {where(path, at)}")
                elif name in public and j == 0:
                    _, path, at = public[name]
                    add(loc, f"model `{name}` is already declared in {where(path, at)}")
                public.setdefault(name, (m.name, f.path, ("models", i)))
        pools = {p.name for p in mf.pools}
        for i, pool in enumerate(mf.pools):
            if pool.name in substrates:
                path, at = substrates[pool.name]
                add(("pools", i, "name"), f"substrate name `{pool.name}` is already used in {where(path, at)}")
            substrates.setdefault(pool.name, (f.path, ("pools", i)))
            for j, served in enumerate(pool.models):
                if served.name not in own_models:
                    add(("pools", i, "models", j, "name"), f"`{served.name}` is not a model of this file "
                        f"{_set(own_models)}: a team's pool serves only its own models")
        for name, entries in mf.serving.items():
            if name in pools:
                add(("serving", name), f"`{name}` is this file's own pool: list its models under the pool's `models`")
                continue
            if name not in fleet_substrates:
                add(("serving", name), f"no substrate `{name}` in the fleet file; substrates: {_set(fleet_substrates)}")
            for j, served in enumerate(entries):
                if served.name not in own_models:
                    add(("serving", name, j, "name"), f"`{served.name}` is not a model of this file "
                        f"{_set(own_models)}: a team serves only its own models")
    return problems


def _dicts(items: Any) -> list[dict]:
    return [x for x in items if isinstance(x, dict)] if isinstance(items, list) else []


def _merged_document(fleet_doc: dict, model_files: list[tuple[dict, ModelFile | None]]) -> tuple[dict, list[_Origin]]:
    """The fleet document with every model file's models, serving entries and pools added (their raw
    text, so what a file left unset stays unset), and where each added part came from."""
    merged = copy.deepcopy(fleet_doc)
    origins: list[_Origin] = []
    models = merged.setdefault("models", [])
    substrates = merged.setdefault("substrates", [])
    if not isinstance(models, list) or not isinstance(substrates, list):
        return merged, origins  # the fleet's own shape problem
    by_name = {s.get("name"): i for i, s in enumerate(substrates) if isinstance(s, dict)}
    for k, (doc, mf) in enumerate(model_files, start=1):
        for j, m in enumerate(doc.get("models") or []):
            origins.append(_Origin(("models", len(models)), k, ("models", j)))
            models.append(copy.deepcopy(m))
        for name, entries in (doc.get("serving") or {}).items():
            i = by_name.get(name)
            if i is None:
                continue
            served = substrates[i].setdefault("models", [])
            if not isinstance(served, list):
                continue
            for e, entry in enumerate(entries):
                origins.append(_Origin(("substrates", i, "models", len(served)), k, ("serving", name, e), entry=True))
                served.append(copy.deepcopy(entry))
        for p, pool in enumerate(doc.get("pools") or []):
            origins.append(_Origin(("substrates", len(substrates)), k, ("pools", p)))
            substrates.append(copy.deepcopy(pool))
    return merged, origins


def _render(merged: dict, sources: list[ConfigSource]) -> str:
    doc = {**merged, "sources": [s.model_dump(mode="json", exclude_none=True) for s in sources]}
    head = ("# Merged by inferplane from the files under `sources` (fleet file first): edit those, not this.\n")
    return head + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
