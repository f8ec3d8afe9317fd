"""The models of a running plane, as files: what ``inferplane models apply``, ``list`` and ``delete`` work on.

A running plane's placement actor keeps the files its config was merged from (the fleet file first,
then the teams' model files, each with its path, kind, team and text: ``PlacementActor.config``).
Applying model files replaces the running file of the same name (a team's file is replaced only by
the same team's) or adds them; deleting a model removes it from its file (its serving entries and a
pool serving only it go with it; a file left without models goes). Either way the result is merged
and validated as ``inferplane validate`` would (``model_files.merge_texts``: the team's rights are
checked there), so a refused change never reaches the plane. Pure: no Ray, no I/O.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath

import yaml

from inferplane.config.errors import ConfigError, ConfigProblem
from inferplane.config.history import fingerprints
from inferplane.config.loader import parse_yaml
from inferplane.config.model_files import MODEL_FILE_KIND, MergedConfig, SourceText, merge_texts
from inferplane.config.schema import InferplaneConfig


@dataclass(frozen=True, slots=True)
class RunningFile:
    """One file of the running config."""

    path: str
    kind: str
    """``fleet`` or ``models``."""
    text: str
    team: str | None = None

    @property
    def name(self) -> str:
        """What identifies it among the running files: its file name (paths differ between machines)."""
        return PurePath(self.path).name

    @property
    def sha256(self) -> str:
        return SourceText(self.path, self.text).sha256

    def as_dict(self) -> dict:
        return {"path": self.path, "kind": self.kind, "team": self.team, "text": self.text}

    @staticmethod
    def of(d: Mapping) -> RunningFile:
        return RunningFile(d["path"], d["kind"], d["text"], d.get("team"))


def files_of(merged: MergedConfig) -> list[RunningFile]:
    """The files a merged config came from, as the running plane keeps them."""
    teams = [s.team for s in merged.config.sources] or [None]
    return [RunningFile(f.path, "fleet" if i == 0 else MODEL_FILE_KIND, f.text, teams[i] if i < len(teams) else None)
            for i, f in enumerate(merged.files)]


def model_file_hashes(cfg: InferplaneConfig) -> dict[str, str]:
    """Canonical model -> SHA-256 of the model file that declared it (models of the fleet file have none)."""
    return {name: s.sha256 for s in cfg.sources if s.kind == MODEL_FILE_KIND for name in (s.models or ())}


def merge(files: Sequence[RunningFile]) -> MergedConfig:
    """The running files merged and validated (``ConfigError`` naming the file, line and rule)."""
    fleet, *models = files
    return merge_texts(SourceText(fleet.path, fleet.text), [SourceText(f.path, f.text) for f in models])


def _team_of(f: SourceText) -> str | None:
    doc, _ = parse_yaml(f.text, f.path)
    team = doc.get("team")
    return team if isinstance(team, str) else None


def with_applied(running: Sequence[RunningFile], applied: Sequence[SourceText]) -> list[RunningFile]:
    """``running`` with ``applied`` model files: each replaces the running file of the same name, or
    is added after them. A file of one team never replaces another team's (``ConfigError``); the
    fleet file is the platform's and is not applied here. Validation is ``merge``'s."""
    out = list(running)
    for f in applied:
        doc, root = parse_yaml(f.text, f.path)
        if doc.get("kind") != MODEL_FILE_KIND:
            raise ConfigError(f.path, [ConfigProblem(("kind",), "only model files (`kind: models`) are applied to a "
                                                     "running plane; the fleet file is the platform's: `inferplane "
                                                     "deploy` ships it")])
        new = RunningFile(f.path, MODEL_FILE_KIND, f.text, _team_of(f))
        at = next((i for i, r in enumerate(out) if r.name == new.name), None)
        if at is None:
            out.append(new)
            continue
        old = out[at]
        if old.kind != MODEL_FILE_KIND or old.team != new.team:
            running_as = "the fleet file" if old.kind != MODEL_FILE_KIND else f"team `{old.team}`'s model file"
            raise ConfigError(f.path, [ConfigProblem(("team",), f"`{new.name}` is running as {running_as}; team "
                                                     f"`{new.team}` cannot replace it: rename the file")])
        out[at] = new
    return out


def without_model(running: Sequence[RunningFile], cfg: InferplaneConfig, name: str,
                  team: str | None = None) -> tuple[list[RunningFile], RunningFile | None]:
    """``running`` without model ``name`` (a name or an alias), and the file it left (None: the file
    went with it). Refused (``ValueError``) when the plane does not run it, when the fleet file
    declares it (the platform's), or when ``team`` is given and the model is another team's."""
    canonical = next((m.name for m in cfg.models if name == m.name or name in m.aliases), None)

    def names_it(entry) -> bool:  # a model, serving or pool entry of the model
        return isinstance(entry, dict) and entry.get("name") == canonical

    if canonical is None:
        raise ValueError(f"no model `{name}` in the running plane; it runs: "
                         f"{', '.join(sorted(m.name for m in cfg.models)) or '(none)'}")
    at = None
    for i, f in enumerate(running):
        if f.kind != MODEL_FILE_KIND:
            continue
        doc, _ = parse_yaml(f.text, f.path)
        if any(map(names_it, doc.get("models") or ())):
            at, found = i, doc
            break
    if at is None:
        raise ValueError(f"model `{canonical}` is declared in the fleet file (the platform's), not in a team's "
                         "model file: `inferplane deploy` changes it")
    f = running[at]
    if team is not None and f.team != team:
        raise ValueError(f"model `{canonical}` belongs to team `{f.team}` ({f.path}); team `{team}` may not delete it")
    doc = copy.deepcopy(found)
    doc["models"] = [m for m in doc["models"] if not names_it(m)]
    serving = {}
    for substrate, entries in (doc.get("serving") or {}).items():
        kept = [e for e in entries or () if not names_it(e)]
        if kept:
            serving[substrate] = kept
    if "serving" in doc:
        doc["serving"] = serving
    pools = []
    for pool in doc.get("pools") or ():
        served = [e for e in pool.get("models") or () if not names_it(e)]
        if served:
            pools.append({**pool, "models": served})
    if "pools" in doc:
        doc["pools"] = pools
    out = list(running)
    if not doc["models"]:
        del out[at]
        return out, None
    text = (f"# `inferplane models delete {canonical}` removed it from this file.\n"
            + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    out[at] = RunningFile(f.path, f.kind, text, f.team)
    return out, out[at]


def changes(before: InferplaneConfig, after: InferplaneConfig) -> dict[str, dict[str, list[str]]]:
    """Models and substrates added, removed and changed (``history.fingerprints``: a model's
    serving entries are part of it)."""
    out = {}
    for kind, old, new in zip(("models", "substrates"), fingerprints(before), fingerprints(after)):
        out[kind] = {"added": sorted(set(new) - set(old)), "removed": sorted(set(old) - set(new)),
                     "changed": sorted(n for n in set(old) & set(new) if old[n] != new[n])}
    return out


def describe(diff: Mapping[str, Mapping[str, list[str]]]) -> str:
    """``models +b ~a; substrates +pool`` (``unchanged`` when nothing is)."""
    parts = []
    for kind in ("models", "substrates"):
        d = diff[kind]
        marks = [*(f"+{n}" for n in d["added"]), *(f"~{n}" for n in d["changed"]), *(f"-{n}" for n in d["removed"])]
        if marks:
            parts.append(f"{kind} {' '.join(marks)}")
    return "; ".join(parts) or "unchanged"


def running_models(cfg: InferplaneConfig) -> list[dict]:
    """One row per model of the running config: name, aliases, team (None: the fleet file's),
    primary and spillover substrates, the substrates serving it, and its file and the file's SHA-256."""
    files = {name: s for s in cfg.sources if s.kind == MODEL_FILE_KIND for name in (s.models or ())}
    fleet = next((s for s in cfg.sources if s.kind == "fleet"), None)
    rows = []
    for m in cfg.models:
        source = files.get(m.name, fleet)
        rows.append({"name": m.name, "aliases": list(m.aliases),
                     "team": None if source is None else source.team,
                     "primary": m.primary_substrate, "spillover": list(m.spillover_substrates or ()),
                     "serving": [s.name for s in cfg.substrates if any(e.name == m.name for e in s.models)],
                     "file": None if source is None else source.path,
                     "sha256": None if source is None else source.sha256})
    return rows
