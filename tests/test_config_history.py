"""The config history (issue #19 item 4, file level): every `build` and `deploy` of a fleet file and
its model files appends who, when, each file's SHA-256 and what changed; `inferplane history` reads it."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import yaml

from inferplane.cli.main import main
from inferplane.config import history
from inferplane.config.model_files import merge_files
from inferplane.telemetry.audit import audit_files

ROOT = Path(__file__).resolve().parents[1]
TEAMS = ROOT / "configs" / "teams"


def team_files(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """The configs/teams example with its audit directory under tmp_path."""
    audit = tmp_path / "audit"
    fleet = tmp_path / "fleet.yaml"
    doc = yaml.safe_load((TEAMS / "fleet.yaml").read_text())
    doc["telemetry"] = {"audit_dir": str(audit)}
    fleet.write_text(yaml.safe_dump(doc, sort_keys=False))
    chat, agents = tmp_path / "chat.models.yaml", tmp_path / "agents.models.yaml"
    chat.write_text((TEAMS / "chat.models.yaml").read_text())
    agents.write_text((TEAMS / "agents.models.yaml").read_text())
    return fleet, chat, agents, audit


def test_records_diff_models_against_the_previous_record(tmp_path: Path):
    fleet, chat, agents, _ = team_files(tmp_path)
    path = tmp_path / "h.jsonl"
    at = datetime(2026, 12, 2, 5, 0, tzinfo=timezone.utc)
    first = merge_files(fleet, [chat])
    r1 = history.append(path, first.config, first.text, "build", by="alice", now=at)
    assert r1["diff"]["models"] == {"added": ["smollm2-135m-instruct"], "removed": [], "changed": []}
    assert (r1["by"], r1["at"], r1["action"]) == ("alice", "2026-12-02T05:00:00+00:00", "build")
    assert [f["sha256"] for f in r1["files"]] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in (fleet, chat)]
    assert r1["config_sha256"] == hashlib.sha256(first.text.encode()).hexdigest()

    both = merge_files(fleet, [chat, agents])
    r2 = history.append(path, both.config, both.text, "build", by="bob", now=at)
    assert r2["diff"]["models"] == {"added": ["llama-3.1-8b-instant"], "removed": [], "changed": []}
    assert r2["diff"]["files"] == {"added": [str(agents)], "removed": [], "changed": []}
    assert not any(r2["diff"]["substrates"].values())  # a model added changes no substrate's own declaration

    agents.write_text(agents.read_text().replace("131072", "65536"))  # a context window shrinks
    resized = merge_files(fleet, [chat, agents])
    r3 = history.append(path, resized.config, resized.text, "deploy", by="bob", now=at)
    assert r3["diff"]["models"] == {"added": [], "removed": [], "changed": ["llama-3.1-8b-instant"]}
    assert r3["diff"]["files"]["changed"] == [str(agents)]

    r4 = history.append(path, first.config, first.text, "build", by="carol", now=at)
    assert r4["diff"]["models"] == {"added": [], "removed": ["llama-3.1-8b-instant"], "changed": []}
    assert [r["by"] for r in history.read_history(path)] == ["alice", "bob", "bob", "carol"]


def test_a_pool_brought_or_retuned_is_a_changed_substrate(tmp_path: Path):
    fleet, chat, agents, _ = team_files(tmp_path)
    pool = (ROOT / "tests" / "test_model_files.py").read_text().split('POOL = """', 1)[1].split('"""', 1)[0]
    path = tmp_path / "h.jsonl"
    base = merge_files(fleet, [chat, agents])
    history.append(path, base.config, base.text, "build")
    chat.write_text(chat.read_text() + pool)
    with_pool = merge_files(fleet, [chat, agents])
    rec = history.append(path, with_pool.config, with_pool.text, "build")
    assert rec["diff"]["substrates"] == {"added": ["chat-pool"], "removed": [], "changed": []}
    assert rec["diff"]["models"]["changed"] == ["smollm2-135m-instruct"]  # it now also runs on the pool
    chat.write_text(chat.read_text().replace("decode_tokens_per_s: 30}", "decode_tokens_per_s: 40}"))
    retuned = merge_files(fleet, [chat, agents])
    rec = history.append(path, retuned.config, retuned.text, "build")
    assert rec["diff"]["substrates"] == {"added": [], "removed": [], "changed": ["chat-pool"]}
    assert not any(rec["diff"]["models"].values())


def test_build_and_deploy_append_next_to_the_audit_log_and_history_reads_it(tmp_path: Path, capsys, monkeypatch):
    from deployments import runtime

    fleet, chat, agents, audit = team_files(tmp_path)
    out = tmp_path / "serve.yaml"
    assert main(["build", str(fleet), str(chat), str(agents), "-o", str(out), "--by", "alice"]) == 0
    assert f"recorded in {audit / 'config-history.jsonl'}: models +llama-3.1-8b-instant" in capsys.readouterr().out
    monkeypatch.setattr(runtime, "connect", lambda address: None)
    monkeypatch.setattr(runtime, "deploy", lambda *a, **kw: None)
    monkeypatch.setenv("USER", "bob")
    assert main(["deploy", str(fleet), str(chat), "--address", "auto"]) == 0
    capsys.readouterr()
    assert main(["history", str(fleet)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == f"{audit / 'config-history.jsonl'}: 2 records"
    assert "alice  build " in table[3] and "bob    deploy auto inferplane" in table[4]
    assert "models -llama-3.1-8b-instant" in table[4]
    assert main(["history", str(fleet), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["action"] for r in records] == ["build", "deploy auto inferplane"]
    # The history file sits in the audit directory without becoming part of the audit dataset.
    assert audit_files(audit) == []


def test_a_single_file_is_its_own_source_and_history_can_be_skipped(tmp_path: Path, capsys):
    local = ROOT / "configs" / "local.yaml"
    path = tmp_path / "h.jsonl"
    assert main(["build", str(local), "-o", str(tmp_path / "s.yaml"), "--history-file", str(path)]) == 0
    (rec,) = history.read_history(path)
    assert rec["files"] == [{"path": str(local), "sha256": hashlib.sha256(local.read_bytes()).hexdigest(),
                             "kind": "fleet"}]
    assert main(["build", str(local), "-o", str(tmp_path / "s.yaml"), "--history-file", str(path), "--no-history"]) == 0
    assert len(history.read_history(path)) == 1


def test_an_unwritable_history_is_said_not_fatal(tmp_path: Path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = main(["build", str(ROOT / "configs" / "local.yaml"), "-o", str(tmp_path / "s.yaml"),
                 "--history-file", str(blocker / "h.jsonl")])
    assert code == 0 and (tmp_path / "s.yaml").exists()
    assert "warning: the config history was not written" in capsys.readouterr().err
