"""`inferplane models apply/list/delete` on a running plane (emulated substrates, real Ray Serve).

While a load runs against team chat's model A (`chat-a`, on the platform's GPU pool), the team
applies a model file adding model B on a substrate that already runs (the sovereign pool), then a
new version of A's file moving A (and its alias `chat`) to a pool of the team's own. Every request
of the load is answered (0 failed), B is in `/v1/models` within seconds, and there is exactly one
placement actor, the same process, before and after. Serve restarts only the deployments whose
config changed: the GPU pool and the provider API keep their replicas. A file reaching outside the
team's rights is refused naming the rule, and nothing in the running plane changes. Every audit
row carries the hash of the model file that governed its model. The time from `models apply` to
the first answer of the new model is printed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import ray

from inferplane.cli.main import main
from tests.integration.conftest import GLOBAL_KEY, free_port, poll

pytestmark = pytest.mark.integration

TEAMS = Path(__file__).parent / "teams"
APP = "inferplane-teams"
AUTH = {"Authorization": f"Bearer {GLOBAL_KEY}"}


def _ask(url: str, model: str, client: httpx.Client | None = None) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Say something short."}], "max_tokens": 8}
    return (client or httpx).post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)


def _answers(url: str, model: str, substrate: str | None = None) -> bool | None:
    """True when ``model`` is answered (on ``substrate``, when given); None otherwise (for ``poll``)."""
    try:
        r = _ask(url, model)
    except httpx.HTTPError:
        return None
    ok = r.status_code == 200 and (substrate is None or r.headers.get("x-inferplane-substrate") == substrate)
    return True if ok else None


def _models(url: str) -> set[str]:
    return {m["id"] for m in httpx.get(f"{url}/v1/models", headers=AUTH, timeout=10).json()["data"]}


def _placement_actors() -> list[str]:
    from deployments.placement_actor import NAMESPACE

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == NAMESPACE and a["name"].startswith("inferplane-placement-"))


def _replicas() -> dict[str, set[str]]:
    from deployments.placement_actor import _serve_details

    app = _serve_details().applications[APP]
    return {name: {r.replica_id for r in dep.replicas} for name, dep in app.deployments.items()}


def _policy_hash() -> str:
    from deployments.placement_actor import current_actor

    return ray.get(current_actor(APP).config.remote(), timeout=10)["policy_hash"]


class Load:
    """``workers`` clients asking for ``model`` back to back until stopped; every status kept."""

    def __init__(self, url: str, model: str, workers: int = 3) -> None:
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(url, model), daemon=True) for _ in range(workers)]
        for t in self._threads:
            t.start()

    def _run(self, url: str, model: str) -> None:
        with httpx.Client() as client:
            while not self._stop.is_set():
                try:
                    r = _ask(url, model, client)
                    self.statuses.append(r.status_code)
                    if r.status_code != 200:
                        self.errors.append(r.text[:300])
                except httpx.HTTPError as exc:
                    self.statuses.append(-1)
                    self.errors.append(repr(exc))

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=90)


@pytest.fixture(scope="module")
def teams_plane(ray_cluster, tmp_path_factory):
    from ray import serve

    from deployments import runtime
    from deployments.placement_actor import remove_actors
    from inferplane.config import history
    from inferplane.config.model_files import merge_files
    from inferplane.config.model_set import files_of

    work = tmp_path_factory.mktemp("teams")
    audit = work / "audit"
    (work / "fleet.yaml").write_text((TEAMS / "fleet.yaml").read_text().rstrip() + (
        f"\ntelemetry: {{audit_dir: {audit}, metrics_port: {free_port()}, audit_flush_interval_ms: 500}}\n"))
    shutil.copy(TEAMS / "chat.models.yaml", work / "chat.models.yaml")
    merged = merge_files(work / "fleet.yaml", [work / "chat.models.yaml"])
    port = free_port()
    runtime.deploy(merged.text, APP, "127.0.0.1", port, files=[f.as_dict() for f in files_of(merged)])
    history.append(work / "config-history.jsonl", merged.config, merged.text, "deploy", by="platform")
    url = f"http://127.0.0.1:{port}"
    runtime.wait_ready(url, timeout_s=120)
    yield url, work, audit
    serve.delete(APP)
    remove_actors(APP)


def test_models_apply_list_delete_on_a_running_plane(teams_plane, capsys):
    url, work, audit = teams_plane
    history = work / "config-history.jsonl"
    hist = ["--app-name", APP, "--history-file", str(history), "--by", "chat-team"]
    assert _ask(url, "chat-a").status_code == 200
    actors, pid = _placement_actors(), _actor_pid()
    assert actors == [f"inferplane-placement-{APP}"]
    replicas = _replicas()
    load = Load(url, "chat-a")
    try:
        # 1. Model B on a substrate that already runs.
        t0 = time.monotonic()
        assert main(["models", "apply", str(TEAMS / "chat-b.models.yaml"), *hist]) == 0
        first = poll(lambda: _answers(url, "chat-b"), 60, 0.1)
        took = time.monotonic() - t0
        assert first, "model B never answered"
        assert "chat-b" in _models(url)
        listed = time.monotonic() - t0
        after_b = _replicas()
        # Only the sovereign pool serves something new: the GPU pool (under load) and the API keep their replicas.
        assert after_b["gpu-pool-emulated"] == replicas["gpu-pool-emulated"]
        assert after_b["provider-api-emulated"] == replicas["provider-api-emulated"]

        # 2. A (and its alias) moves to a pool of the team's own: the same file name replaces the running file.
        (work / "v2").mkdir()
        moved = work / "v2" / "chat.models.yaml"
        shutil.copy(TEAMS / "chat.moved.models.yaml", moved)
        assert main(["models", "apply", str(moved), *hist]) == 0
        on_pool = poll(lambda: _answers(url, "chat", "chat-pool-emulated"), 60, 0.2)
        assert on_pool, "the alias never reached the team's new pool"
        assert _replicas()["provider-api-emulated"] == replicas["provider-api-emulated"]
        assert _replicas()["gpu-pool-emulated"] == replicas["gpu-pool-emulated"]

        # 3. Outside the team's rights: refused naming the rule; nothing changes.
        before_hash, before_models = _policy_hash(), _models(url)
        capsys.readouterr()
        assert main(["models", "apply", str(TEAMS / "chat-c.outside.models.yaml"), *hist]) == 1
        refusal = capsys.readouterr().err
        assert "teams[0].primary" in refusal and "provider-api-emulated" in refusal, refusal
        assert main(["models", "delete", "chat-b", "--team", "agents", *hist]) == 1
        assert "belongs to team `chat`" in capsys.readouterr().err
        assert (_policy_hash(), _models(url)) == (before_hash, before_models)
    finally:
        load.stop()
    with capsys.disabled():
        print(f"\nmodels apply -> first answer from the new model: {took:.1f}s (in /v1/models at {listed:.1f}s); "
              f"load on chat-a during the two applies and two refusals: {len(load.statuses)} requests, "
              f"{len(load.errors)} failed")
    assert load.statuses and not load.errors, load.errors[:5]
    assert _placement_actors() == actors and _actor_pid() == pid

    # models list: each model with its team and file.
    capsys.readouterr()
    assert main(["models", "list", "--app-name", APP, "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    sha = {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in
           (("chat-a", moved), ("chat-b", TEAMS / "chat-b.models.yaml"))}
    assert rows["chat-a"]["primary"] == "chat-pool-emulated" and rows["chat-a"]["sha256"] == sha["chat-a"]
    assert rows["chat-b"]["team"] == "chat" and rows["chat-b"]["sha256"] == sha["chat-b"]

    # Every audit row names the model file that governed it; the apply history has both applies.
    from inferplane.telemetry.audit import read_audit

    def audit_rows():
        got = [r for r in read_audit(audit).to_pylist() if r["model"] in ("chat-a", "chat-b")]
        return got if any(r["model_file_sha256"] == sha["chat-a"] for r in got) else None
    got = poll(audit_rows, 30)
    assert got
    v1 = hashlib.sha256((TEAMS / "chat.models.yaml").read_bytes()).hexdigest()
    assert {r["model_file_sha256"] for r in got if r["model"] == "chat-a"} == {v1, sha["chat-a"]}
    assert {r["model_file_sha256"] for r in got if r["model"] == "chat-b"} == {sha["chat-b"]}
    records = [json.loads(line) for line in history.read_text().splitlines()]
    assert [r["by"] for r in records] == ["platform", "chat-team", "chat-team"]  # the refusals left none
    assert records[1]["diff"]["models"] == {"added": ["chat-b"], "removed": [], "changed": []}
    assert records[2]["diff"]["substrates"]["added"] == ["chat-pool-emulated"]
    assert records[2]["diff"]["models"]["changed"] == ["chat-a"]

    # models delete: B goes.
    assert main(["models", "delete", "chat-b", "--team", "chat", *hist]) == 0
    assert poll(lambda: True if "chat-b" not in _models(url) else None, 30)
    assert _placement_actors() == actors and _actor_pid() == pid


def _actor_pid() -> int:
    from deployments.placement_actor import current_actor

    return ray.get(current_actor(APP).pid.remote(), timeout=10)
