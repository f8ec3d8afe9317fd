"""Rollout (#19 item 3): a model with two versions and weights (a canary), the version chosen per
request from its id before placement, placed on that version's substrates under every rule, recorded
in the decision, `explain`, the audit row, the journal and a metric; shifted and rolled back by a new
file; bad version blocks and versions outside a team's rights refused with file, line and rule.

The fleet is configs/teams/fleet.yaml with the chat team's canary file
(configs/teams/chat.canary.models.yaml): v1 on local-vllm (may spill), v2 on the team's emulated pool
(never spills)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from inferplane.cli.explain import render
from inferplane.config import ConfigError, build
from inferplane.config.model_files import SourceText, merge_texts
from inferplane.placement import place
from inferplane.placement.fleet import Rollout, RolloutVersion
from inferplane.plane.record import RequestRecord
from inferplane.telemetry.audit import AUDIT_SCHEMA, audit_row, decision_from_record, recorded_decision
from inferplane.telemetry.journal import record_from_line, record_line
from inferplane.telemetry.metrics import LabelVocabulary, MetricsDelta
from tests.builders import NOW, request, signals, snapshot

ROOT = Path(__file__).resolve().parents[1]
TEAMS = ROOT / "configs" / "teams"
FLEET = (TEAMS / "fleet.yaml").read_text()
CANARY = (TEAMS / "chat.canary.models.yaml").read_text()
PLAIN = (TEAMS / "chat.models.yaml").read_text()
AGENTS = (TEAMS / "agents.models.yaml").read_text()
MODEL = "smollm2-135m-instruct"
V1 = "{name: v1, weight: 90}"
V2 = "{name: v2, weight: 10, primary_substrate: chat-canary-emulated, spillover_substrates: []}"


def merged(chat: str = CANARY):
    return merge_texts(SourceText("fleet.yaml", FLEET),
                       [SourceText("chat.canary.models.yaml", chat), SourceText("agents.models.yaml", AGENTS)])


def built(chat: str = CANARY):
    return build(merged(chat).config)


def weights(v1: int, v2: int) -> str:
    """The canary file with the versions' weights set to ``v1`` and ``v2``."""
    text = CANARY.replace(V1, f"{{name: v1, weight: {v1}}}")
    return text.replace(V2, V2.replace("weight: 10", f"weight: {v2}"))


def decide(b, request_id: str, **kw):
    req = request(request_id=request_id, tenant="global-app", model="smollm2", input_tokens=200,
                  max_output_tokens=50, **kw)
    return place(req, kw.pop("snap", None) or snapshot(b), b.policy)


def split(b, n: int = 1000, snap=None) -> Counter:
    snap = snap or snapshot(b)
    out: Counter = Counter()
    for i in range(n):
        d = place(request(request_id=f"req-{i:06d}", tenant="global-app", model="smollm2", input_tokens=200,
                          max_output_tokens=50), snap, b.policy)
        out[(d.model_version, d.substrate)] += 1
    return out


def refused(chat: str) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        merged(chat)
    return exc.value


def line_of(source: str, needle: str) -> int:
    return next(i + 1 for i, line in enumerate(source.splitlines()) if needle in line)


# -- the split --------------------------------------------------------------------------------


def test_a_90_10_split_over_1000_placements_is_within_3_points_and_each_version_runs_on_its_own_substrates():
    counts = split(built())
    v2 = sum(n for (version, _), n in counts.items() if version == "v2")
    assert abs(v2 / 1000 - 0.10) <= 0.03, counts
    # Every placement got a version and ran where that version is served: v1 on local-vllm (idle, its
    # primary), v2 on the canary pool; never one on the other's substrates.
    assert set(counts) == {("v1", "local-vllm"), ("v2", "chat-canary-emulated")}


def test_the_same_request_id_always_gets_the_same_version_on_every_attempt_and_replica():
    b = built()
    # Another replica's snapshot (another version, v1's primary busy) decides the version alike.
    busy = snapshot(b, {"local-vllm": signals(in_flight=16, queued=16, kv=0.9)}, version=7)
    for i in range(200):
        rid = f"req-{i}"
        first = decide(b, rid)
        again = place(request(request_id=rid, tenant="global-app", model="smollm2-135m-instruct", input_tokens=200,
                              max_output_tokens=50), busy, b.policy)
        assert first.model_version == again.model_version
        retry = request(request_id=rid, tenant="global-app", model="smollm2", input_tokens=200,
                        max_output_tokens=50).retry_excluding(first.substrate, NOW + 1.0)
        third = place(retry, snapshot(b, now=NOW + 1.0), b.policy)
        assert third.attempt == 2 and third.model_version == first.model_version


def test_a_version_that_may_not_spill_is_refused_rather_than_placed_on_the_other_versions_substrates():
    b = built()
    full = snapshot(b, {"chat-canary-emulated": signals(in_flight=16, queued=0)})
    rid = next(f"req-{i}" for i in range(1000) if decide(b, f"req-{i}").model_version == "v2")
    d = place(request(request_id=rid, tenant="global-app", model="smollm2", input_tokens=200, max_output_tokens=50),
              full, b.policy)
    assert not d.placed and d.http_status == 429
    assert d.model_version == "v2" and d.rollout == "v1=90,v2=10"
    assert [c.name for c in d.candidates] == ["chat-canary-emulated"]  # v1's substrates are no candidates


def test_each_version_keeps_the_hard_rules_an_eu_tenant_never_spills_v1_to_the_us():
    b = built()
    busy = snapshot(b, {"local-vllm": signals(in_flight=16, queued=16, kv=0.9)})
    for i in range(300):
        d = place(request(request_id=f"req-{i}", tenant="eu-bank", model="smollm2", input_tokens=200,
                          max_output_tokens=50), busy, b.policy)
        if d.model_version == "v1":
            assert d.substrate == "sovereign-de-emulated" and d.spillover
        else:
            assert d.substrate == "chat-canary-emulated" and not d.spillover


def test_raising_the_canarys_weight_only_moves_requests_towards_it():
    at10, at30 = built(weights(90, 10)), built(weights(70, 30))
    moved = Counter()
    for i in range(1000):
        a, b = decide(at10, f"req-{i}").model_version, decide(at30, f"req-{i}").model_version
        moved[(a, b)] += 1
    assert moved[("v2", "v1")] == 0  # nobody on the canary at 10 % leaves it at 30 %
    assert abs((moved[("v2", "v2")] + moved[("v1", "v2")]) / 1000 - 0.30) <= 0.03


def test_rollback_sends_all_traffic_to_the_first_version():
    # 100/0 keeps v2 declared (its pool stays up) but gives it nothing.
    assert split(built(weights(100, 0))) == Counter({("v1", "local-vllm"): 1000})
    # One version only: v2's serving entries and pool go with it.
    one = (CANARY.split("pools:")[0].replace(V1, "{name: v1, weight: 100}")
           .replace(f"      - {V2}\n", ""))
    b = built(one)
    assert [v.name for v in b.fleet.rollouts[MODEL].versions] == ["v1"]
    assert split(b, 300) == Counter({("v1", "local-vllm"): 300})
    # The file without versions: no version recorded, the model's own route.
    d = decide(built(PLAIN), "req-1")
    assert d.substrate == "local-vllm" and d.model_version is None and d.rollout is None


def test_rollout_pick_is_a_pure_function_of_the_request_id_with_buckets_in_the_versions_order():
    r = Rollout.of("m", [("a", 25, None), ("b", 75, None)])  # type: ignore[list-item]
    assert r.split == "a=25,b=75"
    assert [v.upper_bucket for v in r.versions] == [25, 100]
    assert all(r.pick(f"x{i}") == r.pick(f"x{i}") for i in range(100))
    assert isinstance(r.pick("x"), RolloutVersion)
    share = sum(r.pick(f"id-{i}").name == "a" for i in range(4000)) / 4000
    assert abs(share - 0.25) <= 0.03


# -- recorded -----------------------------------------------------------------------------------


def _record(d, b) -> RequestRecord:
    return RequestRecord(
        request_id=d.request_id, ingress_id="ingress-test", ingress_region="eu-central", received_at_s=NOW,
        finished_at_s=NOW + 1.0, tenant=d.tenant, model="smollm2", sla_class=d.sla_class, streamed=False,
        decision=d, snapshot_age_s=0.0, status_code=200 if d.placed else d.http_status,
        error_code=None if d.placed else d.rejection_code.value, ttft_s=0.2 if d.placed else None,
        e2e_s=0.9 if d.placed else None, input_tokens=200, output_tokens=50 if d.placed else None, cost=None,
        config_hash=b.policy.policy_hash)


def test_the_decision_the_audit_row_and_the_journal_carry_the_version_and_the_split():
    b = built()
    d2 = next(d for d in (decide(b, f"req-{i}") for i in range(100)) if d.model_version == "v2")
    assert d2.rollout == "v1=90,v2=10" and d2.version_weight_pct == 10
    assert d2.to_dict()["model_version"] == "v2" and d2.to_dict()["rollout"] == "v1=90,v2=10"
    row = audit_row(_record(d2, b), b.fleet, b.policy)
    assert {"model_version", "rollout"} <= set(AUDIT_SCHEMA.names)
    assert row["model_version"] == "v2" and row["rollout"] == "v1=90,v2=10" and row["model"] == MODEL
    assert row["substrate"] == "chat-canary-emulated" and row["emulated"] is True
    assert decision_from_record(json.loads(row["decision_json"])) == d2
    assert record_from_line(json.loads(record_line(_record(d2, b)))).decision == d2
    # A model without versions writes nulls.
    plain = build(merge_texts(SourceText("fleet.yaml", FLEET), [SourceText("chat.yaml", PLAIN)]).config)
    d = decide(plain, "req-1")
    row = audit_row(_record(d, plain), plain.fleet, plain.policy)
    assert row["model_version"] is None and row["rollout"] is None


def test_explain_shows_the_version_and_the_split():
    b = built()
    d = next(d for d in (decide(b, f"req-{i}") for i in range(100)) if d.model_version == "v2")
    text = render(d, b.fleet, "signals: idle")
    assert "version=v2 (10 % of v1=90,v2=10)" in text.splitlines()[0]
    assert recorded_decision(d, b.fleet)["model_version"] == "v2"


def test_the_metric_counts_finished_requests_per_version_and_outcome():
    b = built()
    delta = MetricsDelta(LabelVocabulary.of(b.fleet, b.policy))
    full = snapshot(b, {"chat-canary-emulated": signals(in_flight=16, queued=0)})
    for i in range(200):
        d = place(request(request_id=f"req-{i}", tenant="global-app", model="smollm2", input_tokens=200,
                          max_output_tokens=50), full, b.policy)
        delta.record_request(_record(d, b))
    series = delta.counters["model_version_requests"]
    assert set(series) == {(MODEL, "v1", "ok"), (MODEL, "v2", "refused")}
    assert sum(series.values()) == 200


def test_models_lists_a_model_with_versions():
    from inferplane.placement.plan import models_for

    b = built()
    assert MODEL in models_for(b.policy, b.fleet, "eu-bank")


# -- refused files ------------------------------------------------------------------------------


@pytest.mark.parametrize("versions, message", [
    ("[{name: v1, weight: 90}, {name: v2, weight: 20, primary_substrate: chat-canary-emulated}]",
     "must sum to 100, got 90 + 20 = 110"),
    ("[{name: v1, weight: 90}, {name: v1, weight: 10}]", "version name used twice: v1"),
    ("[{name: v1, weight: 50}, {name: v2, weight: 30}, {name: v3, weight: 20}]", "give 1 to 2 versions"),
    ("[{name: v1, weight: 110}, {name: v2, weight: -10}]", "less than or equal to 100"),
    ("[]", "give 1 to 2 versions"),
    ("[{name: v1, weight: 90}, {name: v2, weight: 10, primary: chat-canary-emulated}]", "unknown key `primary`"),
])
def test_bad_version_blocks_are_refused_with_file_line_and_path(versions, message):
    text = CANARY.replace(f"    versions:\n      - {V1}\n      - {V2}\n", f"    versions: {versions}\n")
    assert text != CANARY
    err = refused(text)
    problem = next(p for p in err.problems if message in p.message)
    assert problem.source == "chat.canary.models.yaml"
    assert problem.loc[:3] == ("models", 0, "versions")
    assert problem.line == line_of(text, "versions:")


def test_serving_entries_must_name_a_version_of_a_model_with_versions_and_only_one_it_has():
    no_version = CANARY.replace("- {name: smollm2-135m-instruct, version: v1, context_window_tokens: 8192}",
                                "- {name: smollm2-135m-instruct, context_window_tokens: 8192}", 1)
    err = refused(no_version)
    p = next(p for p in err.problems if "say which one this substrate serves" in p.message)
    assert p.source == "chat.canary.models.yaml" and p.loc == ("serving", "groq-class-emulated", 0, "version")

    unknown = CANARY.replace("version: v2, context_window_tokens", "version: v3, context_window_tokens")
    err = refused(unknown)
    p = next(p for p in err.problems if "has no version `v3`" in p.message)
    assert p.loc == ("pools", 0, "models", 0, "version") and p.line == line_of(unknown, "version: v3")


def test_a_versions_primary_must_serve_that_version():
    text = CANARY.replace(V2, V2.replace("chat-canary-emulated", "groq-class-emulated"))
    err = refused(text)
    p = next(p for p in err.problems if "does not serve `smollm2-135m-instruct` version `v2`" in p.message)
    assert p.loc == ("models", 0, "versions", 1, "primary_substrate")
    assert p.source == "chat.canary.models.yaml" and p.line == line_of(text, "{name: v2")
    assert "chat-canary-emulated" in p.message  # the substrate that does


def test_a_version_on_a_substrate_outside_the_teams_rights_is_refused_naming_the_rule():
    # agents may use the Groq-class API only (teams[1].primary): a canary on the provider API is refused.
    agents = AGENTS.replace(
        "    primary_substrate: groq-class-emulated\n",
        "    primary_substrate: groq-class-emulated\n    versions:\n      - {name: v1, weight: 90}\n"
        "      - {name: v2, weight: 10, primary_substrate: provider-api-emulated}\n",
    ).replace("    - {name: llama-3.1-8b-instant, context_window_tokens: 131072}",
              "    - {name: llama-3.1-8b-instant, version: v1, context_window_tokens: 131072}\n"
              "  provider-api-emulated:\n"
              "    - {name: llama-3.1-8b-instant, version: v2, context_window_tokens: 131072}")
    with pytest.raises(ConfigError) as exc:
        merge_texts(SourceText("fleet.yaml", FLEET), [SourceText("chat.yaml", PLAIN),
                                                      SourceText("agents.models.yaml", agents)])
    p = next(p for p in exc.value.problems if p.loc == ("models", 0, "versions", 1, "primary_substrate"))
    assert p.source == "agents.models.yaml" and p.line == line_of(agents, "{name: v2")
    assert "(teams[1].primary)" in p.message and "provider-api-emulated" in p.message


def test_a_versions_spillover_outside_the_teams_jurisdictions_is_refused_naming_the_rule():
    fleet = FLEET.replace("    jurisdictions: [EU, US]\n    primary: {classes: [gpu_cluster, sovereign_onprem]}",
                          "    jurisdictions: [EU]\n    primary: {classes: [gpu_cluster, sovereign_onprem]}")
    assert fleet != FLEET
    chat = CANARY.replace("spillover_substrates: []", "spillover_substrates: [groq-class-emulated]").replace(
        "  groq-class-emulated:\n    - {name: smollm2-135m-instruct, version: v1, context_window_tokens: 8192}",
        "  groq-class-emulated:\n    - {name: smollm2-135m-instruct, version: v2, context_window_tokens: 8192}")
    with pytest.raises(ConfigError) as exc:
        merge_texts(SourceText("fleet.yaml", fleet), [SourceText("chat.yaml", chat)])
    p = next(p for p in exc.value.problems if p.loc == ("models", 0, "versions", 1, "spillover_substrates", 0))
    assert "(teams[0].jurisdictions)" in p.message and "groq-class-emulated" in p.message


def test_a_fleet_file_declares_versions_alike_and_the_uncompiled_path_decides_the_same():
    import dataclasses

    from tests.builders import build_doc, fleet, substrate

    doc = fleet(substrate("old").serves("m"), substrate("new").serves("m"), substrate("api").serves("m")).doc()
    for s, version in zip(doc["substrates"], ("v1", "v2", "v1")):
        s["models"][0]["version"] = version
    doc["models"] = [{"name": "m", "primary_substrate": "old",
                      "versions": [{"name": "v1", "weight": 80}, {"name": "v2", "weight": 20, "primary_substrate": "new"}]}]
    b = build_doc(doc)
    bare = dataclasses.replace(b.policy)  # no compiled plan: place() works the route out per request
    snap = snapshot(b)
    got = Counter()
    for i in range(500):
        req = request(request_id=f"r{i}")
        d = place(req, snap, b.policy)
        assert d == place(req, snap, bare)
        got[(d.model_version, d.substrate)] += 1
        assert {c.name for c in d.candidates} == ({"old", "api"} if d.model_version == "v1" else {"new"})
    assert set(got) == {("v1", "old"), ("v2", "new")}
    assert abs(got[("v2", "new")] / 500 - 0.20) <= 0.05
