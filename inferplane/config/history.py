"""Config history: every `build` or `deploy` of a fleet file and its model files, one JSON line each.

The history lives next to the audit log: ``<telemetry.audit_dir>/config-history.jsonl`` (the audit
dataset reads only its date partitions, so the file is no part of it). A record says who (``--by``
or ``$USER``), when, what was done, each file's path, kind, team and SHA-256, the shipped text's
SHA-256 and policy hash, a fingerprint per model and per substrate, and what changed against the
previous record: files, models and substrates added, removed or changed. A model's fingerprint covers
its declaration and every serving entry (context window, upstream name) on every substrate; a
substrate's covers the rest of its declaration (a team's own pool included), so a model moved or
resized shows as a changed model, and an engine changed as a changed substrate.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from inferplane.config.loader import parse_yaml, read_text
from inferplane.config.schema import InferplaneConfig, Telemetry

HISTORY_FILE = "config-history.jsonl"


def history_path(telemetry: Telemetry) -> Path:
    return Path(telemetry.audit_dir).expanduser() / HISTORY_FILE


def history_path_of_fleet(fleet: str | Path) -> Path:
    """Where a fleet file's history is: only its ``telemetry`` section is read (a fleet with teams is
    not a whole config without its model files)."""
    document, _ = parse_yaml(read_text(fleet), str(fleet))
    return history_path(Telemetry.model_validate(document.get("telemetry") or {}))


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def fingerprints(cfg: InferplaneConfig) -> tuple[dict[str, str], dict[str, str]]:
    """(model name -> fingerprint, substrate name -> fingerprint)."""
    serving: dict[str, dict] = {}
    for s in cfg.substrates:
        for served in s.models:
            serving.setdefault(served.name, {})[s.name] = served.model_dump(mode="json")
    models = {m.name: _digest([m.model_dump(mode="json"), serving.get(m.name, {})]) for m in cfg.models}
    substrates = {s.name: _digest(s.model_dump(mode="json", by_alias=True, exclude={"models"})) for s in cfg.substrates}
    return models, substrates


def _diff(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, list[str]]:
    return {"added": sorted(set(after) - set(before)), "removed": sorted(set(before) - set(after)),
            "changed": sorted(n for n in set(before) & set(after) if before[n] != after[n])}


def record(cfg: InferplaneConfig, text: str, action: str, *, by: str | None = None,
           previous: Mapping | None = None, now: datetime | None = None) -> dict:
    """The history record of shipping ``text`` (whose config is ``cfg``), diffed against ``previous``."""
    from inferplane.config.build import policy_hash

    models, substrates = fingerprints(cfg)
    files = [s.model_dump(mode="json", exclude_none=True) for s in cfg.sources]
    before = previous or {}
    before_files = {f["path"]: f["sha256"] for f in before.get("files", [])}
    return {
        "at": (now or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        "by": by or os.environ.get("USER") or getpass.getuser(),
        "action": action,
        "files": files,
        "config_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "policy_hash": policy_hash(cfg),
        "models": models,
        "substrates": substrates,
        "diff": {
            "files": _diff(before_files, {f["path"]: f["sha256"] for f in files}),
            "models": _diff(before.get("models", {}), models),
            "substrates": _diff(before.get("substrates", {}), substrates),
        },
    }


def read_history(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def append(path: Path, cfg: InferplaneConfig, text: str, action: str, *, by: str | None = None,
           now: datetime | None = None) -> dict:
    """Record shipping ``text`` at the end of the history at ``path``; returns the record."""
    records = read_history(path)
    rec = record(cfg, text, action, by=by, previous=records[-1] if records else None, now=now)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(rec, sort_keys=False) + "\n")
    return rec


def summary(rec: Mapping) -> str:
    """``+b ~a -c`` for the models (and substrates, when any changed) of a record's diff."""
    def part(d: Mapping[str, list[str]]) -> str:
        marks = [*(f"+{n}" for n in d["added"]), *(f"~{n}" for n in d["changed"]), *(f"-{n}" for n in d["removed"])]
        return " ".join(marks) or "unchanged"

    out = f"models {part(rec['diff']['models'])}"
    subs = rec["diff"]["substrates"]
    if any(subs.values()):
        out += f"; substrates {part(subs)}"
    return out
