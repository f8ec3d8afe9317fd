"""`inferplane models apply/list/delete` on their pure parts: which files a running plane runs after
an apply or a delete, what changed, what `list` shows, every audit row's model file hash, and the
placement state a config change keeps (``FleetState.reconfigured``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferplane.config.errors import ConfigError
from inferplane.config.model_files import SourceText, merge_files
from inferplane.config.model_set import (
    RunningFile,
    changes,
    describe,
    files_of,
    merge,
    model_file_hashes,
    running_models,
    with_applied,
    without_model,
)
from inferplane.fleet_state import FleetState, Outcome, SubstrateReport
from inferplane.health import BreakerSettings
from inferplane.placement.signals import CircuitState
from tests.builders import fleet, substrate

TEAMS = Path(__file__).parent / "integration" / "teams"


def _running(*names: str) -> list[RunningFile]:
    return files_of(merge_files(TEAMS / "fleet.yaml", [TEAMS / n for n in names]))


def _file(name: str, as_name: str | None = None) -> SourceText:
    return SourceText(str(TEAMS / (as_name or name)), (TEAMS / name).read_text())


def test_an_applied_file_is_added_and_one_of_the_same_name_replaces_it():
    running = _running("chat.models.yaml")
    before = merge(running).config
    added = with_applied(running, [_file("chat-b.models.yaml")])
    assert [f.name for f in added] == ["fleet.yaml", "chat.models.yaml", "chat-b.models.yaml"]
    after = merge(added).config
    assert describe(changes(before, after)) == "models +chat-b"  # serving entries are the model's
    moved = with_applied(added, [_file("chat.moved.models.yaml", as_name="chat.models.yaml")])
    assert [f.name for f in moved] == ["fleet.yaml", "chat.models.yaml", "chat-b.models.yaml"]
    diff = changes(after, merge(moved).config)
    assert diff["models"] == {"added": [], "removed": [], "changed": ["chat-a"]}
    assert diff["substrates"]["added"] == ["chat-pool-emulated"]
    # The model file hash of each model is its own file's.
    hashes = model_file_hashes(merge(moved).config)
    assert hashes == {"chat-a": moved[1].sha256, "chat-b": moved[2].sha256}
    assert "platform-echo" not in hashes  # the fleet file's own model has none


def test_a_file_outside_its_teams_rights_is_refused_naming_the_rule():
    running = _running("chat.models.yaml")
    with pytest.raises(ConfigError) as err:
        merge(with_applied(running, [_file("chat-c.outside.models.yaml")]))
    assert "teams[0].primary" in err.value.render()


def test_only_model_files_are_applied_and_never_over_another_teams_file():
    running = _running("chat.models.yaml")
    with pytest.raises(ConfigError, match="only model files"):
        with_applied(running, [_file("fleet.yaml")])
    other = SourceText(str(TEAMS / "chat.models.yaml"),
                       (TEAMS / "chat.models.yaml").read_text().replace("team: chat", "team: agents"))
    with pytest.raises(ConfigError, match="team `agents` cannot replace it"):
        with_applied(running, [other])


def test_delete_removes_the_model_its_serving_entries_and_its_pool():
    running = with_applied(_running("chat.models.yaml", "chat-b.models.yaml"),
                           [_file("chat.moved.models.yaml", as_name="chat.models.yaml")])
    cfg = merge(running).config
    after, left = without_model(running, cfg, "chat", team="chat")  # by its alias
    assert left is None  # the file had only that model: it goes
    new = merge(after).config
    assert [m.name for m in new.models] == ["platform-echo", "chat-b"]
    assert "chat-pool-emulated" not in {s.name for s in new.substrates}
    assert all(e.name != "chat-a" for s in new.substrates for e in s.models)
    assert changes(cfg, new)["models"]["removed"] == ["chat-a"]


def test_delete_keeps_the_files_other_models():
    two = SourceText(str(TEAMS / "chat.models.yaml"), (TEAMS / "chat.models.yaml").read_text().replace(
        "models:\n", "models:\n  - {name: chat-z, primary_substrate: gpu-pool-emulated}\n", 1).replace(
        "gpu-pool-emulated: [{name: chat-a, context_window_tokens: 8192}]",
        "gpu-pool-emulated: [{name: chat-a, context_window_tokens: 8192}, {name: chat-z, context_window_tokens: 4096}]"))
    running = files_of(merge_files(TEAMS / "fleet.yaml", [TEAMS / "chat.models.yaml"]))
    running = with_applied(running, [two])
    cfg = merge(running).config
    after, left = without_model(running, cfg, "chat-z")
    assert left is not None and "name: chat-z" not in left.text and left.sha256 != running[1].sha256
    new = merge(after).config
    assert [m.name for m in new.models] == ["platform-echo", "chat-a"]
    assert model_file_hashes(new) == {"chat-a": left.sha256}


def test_delete_refuses_an_unknown_model_a_fleet_model_and_another_teams():
    running = _running("chat.models.yaml")
    cfg = merge(running).config
    with pytest.raises(ValueError, match="no model `nope` in the running plane; it runs: chat-a, platform-echo"):
        without_model(running, cfg, "nope")
    with pytest.raises(ValueError, match="declared in the fleet file"):
        without_model(running, cfg, "platform-echo")
    with pytest.raises(ValueError, match="belongs to team `chat`.*team `agents` may not delete it"):
        without_model(running, cfg, "chat-a", team="agents")


def test_list_shows_each_model_with_its_team_substrates_and_file():
    running = _running("chat.models.yaml", "chat-b.models.yaml")
    rows = {r["name"]: r for r in running_models(merge(running).config)}
    assert rows["chat-a"]["aliases"] == ["chat"] and rows["chat-a"]["team"] == "chat"
    assert rows["chat-a"]["serving"] == ["gpu-pool-emulated", "sovereign-de-emulated"]
    assert rows["chat-b"]["sha256"] == running[2].sha256 and rows["chat-b"]["file"].endswith("chat-b.models.yaml")
    assert rows["platform-echo"]["team"] is None and rows["platform-echo"]["file"].endswith("fleet.yaml")


def test_every_record_and_audit_row_carries_its_models_file_hash(tmp_path):
    """The ledger stamps each record with the hash of the model file its model came from; the
    journal line and the audit row (one builder) carry it; a model of the fleet file has none."""
    from inferplane.fleet_state import PublishedSnapshot
    from inferplane.plane.attempts import AttemptLoop
    from inferplane.plane.ledger import RequestLedger
    from inferplane.plane.state import ReplicaState
    from inferplane.telemetry.audit import AuditLog, read_audit
    from inferplane.telemetry.journal import Journal, read_segment
    from inferplane.telemetry.metrics import MetricsOutbox
    from tests.builders import NOW, request, signals

    built = (fleet(substrate("p").cls("gpu_cluster").jurisdiction("DE").capacity(4).serves("m").serves("f"))
             .model("m", primary="p").model("f", primary="p").build())
    state = ReplicaState(built.fleet, built.policy)
    state.publish(PublishedSnapshot(1, NOW, built.policy.policy_hash,
                                    tuple(signals(now=NOW) for _ in built.fleet.substrates)), state.take_report(NOW))
    journal = Journal(tmp_path, "ingress-test", fleet=built.fleet, policy=built.policy)
    audit = AuditLog(tmp_path, "ingress-test", flush_interval_s=3600, on_written=journal.written)
    ledger = RequestLedger("ingress-test", None, built.fleet, built.policy, state, journal, audit, MetricsOutbox(),
                           model_files={"m": "ab" * 32})
    for rid, model in (("r-m", "m"), ("r-f", "f"), ("r-unknown", "nope")):
        req = ledger.open(rid, NOW)
        req.tenant, req.model, req.sla_class, req.input_tokens = "t", model, "interactive", 10
        if model != "nope":
            req.attempts = AttemptLoop(state, request(request_id=rid, model=model, now=NOW))
            req.attempts.start()
        req.close(200 if model != "nope" else 404, None if model != "nope" else "model_not_found", NOW + 1.0,
                  first_token_s=NOW + 0.5, output_tokens=3)
    lines = {r.request_id: r.model_file_sha256 for seg in journal.segments() for r in read_segment(seg).records}
    assert lines == {"r-m": "ab" * 32, "r-f": None, "r-unknown": None}
    ledger.drain()
    audit.flush()
    rows = {r["request_id"]: r["model_file_sha256"] for r in read_audit(tmp_path).to_pylist()}
    assert rows == lines
    audit.close()
    journal.close()


def test_a_reconfigured_state_keeps_what_it_knew_of_the_substrates_that_remain():
    b1 = fleet(substrate("p"), substrate("q")).build()
    b2 = fleet(substrate("p"), substrate("n")).build()
    state = FleetState(b1.fleet, b1.policy.policy_hash, 2.0,
                       BreakerSettings(consecutive_failures=2, open_cooldown_s=60.0, probe_successes=1))
    state.report_substrate("p", "r1", SubstrateReport(in_flight=1), 100.0)
    state.report_substrate("q", "r1", SubstrateReport(in_flight=0), 100.0)
    state.report_ingress("i1", {"p": 3, "q": 1}, [Outcome("p", False, None, None, 100.0),
                                                    Outcome("p", False, None, None, 100.1)], 100.1)
    v1 = state.snapshot(100.1).version
    new = state.reconfigured(b2.fleet, b2.policy.policy_hash, 2.0,
                             BreakerSettings(consecutive_failures=2, open_cooldown_s=60.0, probe_successes=1))
    snap = new.snapshot(100.2)
    assert snap.version > v1 and snap.policy_hash == b2.policy.policy_hash
    p, n = snap.signals
    assert p.in_flight.value == 3.0  # the replica's report and the ingress's count survive
    assert p.circuit is CircuitState.OPEN  # and so does the breaker the failures opened
    assert n.in_flight is None  # a new substrate is not eligible until it reports
    with pytest.raises(KeyError):
        new.report_substrate("q", "r1", SubstrateReport(in_flight=0), 100.3)  # a removed one is gone


def test_serve_restarts_only_the_deployments_a_change_touches():
    """Each deployment's version is a digest of what its replicas are built from (Serve would give
    every deployment a random one per ``serve.run``, restarting all): adding model B on the
    sovereign pool changes that pool's and the ingress's versions, never the others'."""
    from pydantic import TypeAdapter

    from deployments.app import build_app
    from inferplane.config.schema import Substrate, TopologyPolicy

    def versions(files: list[RunningFile]) -> dict[str, str]:
        app = build_app(merge(files).text)
        handles = app._bound_deployment.init_args[2]
        out = {name: h._bound_deployment._version for name, h in handles.items()}
        out["ingress"] = app._bound_deployment._version
        spec, topology, _ = next(iter(handles.values()))._bound_deployment.init_args
        TypeAdapter(Substrate).validate_python(spec)  # what a substrate replica is built from
        TopologyPolicy.model_validate(topology)
        return out

    running = _running("chat.models.yaml")
    before = versions(running)
    assert versions(running) == before  # the same config: nothing restarts
    after = versions(with_applied(running, [_file("chat-b.models.yaml")]))
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"sovereign-de-emulated", "ingress"}
