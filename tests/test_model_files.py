"""Model files (`kind: models`) merged into a fleet file with `teams:`: the merge, every refusal rule
(with the file, line and rule it names), backward compatibility, and the CLI's validate/build/deploy
on the example in configs/teams/."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from inferplane.cli.deploy import kuberay_manifest, serve_config
from inferplane.cli.main import main
from inferplane.config import ConfigError, build, load_config, parse_config
from inferplane.config.model_files import SourceText, merge_files, merge_texts

ROOT = Path(__file__).resolve().parents[1]
TEAMS = ROOT / "configs" / "teams"
FLEET = TEAMS / "fleet.yaml"
CHAT = TEAMS / "chat.models.yaml"
AGENTS = TEAMS / "agents.models.yaml"
LOCAL = ROOT / "configs" / "local.yaml"
EXISTING = [LOCAL, ROOT / "configs" / "enterprise.example.yaml"]

POOL = """
pools:
  - name: chat-pool
    class: gpu_cluster
    kind: emulated
    models: [{name: smollm2-135m-instruct, context_window_tokens: 2048}]
    topology: {region: eu-central, zone: eu-central-1c}
    jurisdiction: FR
    capacity: {tier: reserved, max_concurrent_requests: 4}
    latency: {base_ttft_ms: 10, prefill_tokens_per_s: 1000, decode_tokens_per_s: 30}
    emulated:
      emulates: the chat team's own small pool
      physics: {ttft_ms: 10, prefill_tokens_per_s: 1000, decode_tokens_per_s: 30, max_concurrency: 4}
      replicas: {num_replicas: 2}
"""
VLLM_POOL = """
pools:
  - name: chat-vllm
    class: gpu_cluster
    kind: vllm
    models: [{name: smollm2-135m-instruct, context_window_tokens: 2048}]
    topology: {region: eu-central, zone: eu-central-1c}
    jurisdiction: FR
    capacity: {tier: reserved, max_concurrent_requests: 4}
    latency: {base_ttft_ms: 10, prefill_tokens_per_s: 1000, decode_tokens_per_s: 30}
    vllm:
      engine: {model_path: builtin:smollm2-135m-instruct, max_model_len: 2048, tensor_parallel_size: 1}
      replicas: {num_replicas: 1}
"""


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def merge(fleet: str | None = None, *files: str):
    """Merge texts named fleet.yaml, chat.yaml, agents.yaml (or file2.yaml...) like files on disk."""
    names = ["chat.yaml", "agents.yaml"] + [f"file{i}.yaml" for i in range(2, len(files))]
    return merge_texts(SourceText("fleet.yaml", fleet if fleet is not None else text(FLEET)),
                       [SourceText(n, t) for n, t in zip(names, files)])


def refused(fleet: str | None, *files: str) -> ConfigError:
    with pytest.raises(ConfigError) as exc:
        merge(fleet, *files)
    return exc.value


def line_of(source: str, needle: str, nth: int = 0) -> int:
    lines = [i + 1 for i, line in enumerate(source.splitlines()) if needle in line]
    return lines[nth]


def dump_without_teams(cfg) -> dict:
    out = cfg.model_dump(mode="json", by_alias=True)
    out.pop("teams", None)
    return out


# --------------------------------------------------------------------------------------------
# The merge


def test_the_example_split_merges_to_the_local_config():
    merged = merge_files(FLEET, [CHAT, AGENTS])
    assert dump_without_teams(merged.config) == dump_without_teams(load_config(LOCAL))
    assert [t.name for t in merged.config.teams] == ["chat", "agents"]
    # What is shipped is one text, which loads to the same config and records its sources.
    assert parse_config(merged.text) == merged.config
    assert [(s.path, s.kind, s.team) for s in merged.config.sources] == [
        (str(FLEET), "fleet", None), (str(CHAT), "models", "chat"), (str(AGENTS), "models", "agents")]
    assert [s.sha256 for s in merged.config.sources] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in (FLEET, CHAT, AGENTS)]


def test_load_config_takes_model_files_and_keeps_its_one_argument_form():
    assert load_config(FLEET, [CHAT, AGENTS]) == merge_files(FLEET, [CHAT, AGENTS]).config
    assert load_config(LOCAL) == load_config(LOCAL, [])


def test_model_file_order_decides_only_the_order_of_models():
    ab = merge_files(FLEET, [CHAT, AGENTS]).config
    ba = merge_files(FLEET, [AGENTS, CHAT]).config
    assert [m.name for m in ab.models] == ["smollm2-135m-instruct", "llama-3.1-8b-instant"]
    assert [m.name for m in ba.models] == ["llama-3.1-8b-instant", "smollm2-135m-instruct"]
    assert {m.name: m for m in ab.models} == {m.name: m for m in ba.models}


@pytest.mark.parametrize("path", EXISTING, ids=lambda p: p.name)
def test_existing_configs_load_as_before(path: Path):
    # No teams and no sources: neither appears in the dump, so the policy hash is the one the config
    # had before model files existed (checked against the previous commit when this was written).
    cfg = load_config(path)
    assert cfg.teams == [] and cfg.sources == []
    dump = cfg.model_dump(mode="json", by_alias=True)
    assert "teams" not in dump and "sources" not in dump
    assert cfg == parse_config(text(path)) == load_config(path, model_files=())
    # And a config that does have teams keeps them in its dump (and so in its hash).
    assert "teams" in merge_files(FLEET, [CHAT, AGENTS]).config.model_dump(mode="json")


def test_sources_are_provenance_not_content():
    merged = merge_files(FLEET, [CHAT, AGENTS])
    single = merged.config.model_copy(update={"sources": []})
    assert build(merged.config).policy.policy_hash == build(single).policy.policy_hash


def equivalent_single_file(tmp_path: Path) -> Path:
    """configs/local.yaml with the fleet file's `teams:`: what the example's files say, in one file."""
    doc = yaml.safe_load(text(LOCAL))
    doc["teams"] = yaml.safe_load(text(FLEET))["teams"]
    out = tmp_path / "single.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return out


def test_build_with_model_files_equals_build_of_the_equivalent_single_file(tmp_path: Path):
    single = equivalent_single_file(tmp_path)
    merged = merge_files(FLEET, [CHAT, AGENTS])
    assert load_config(single) == merged.config.model_copy(update={"sources": []})
    assert build(load_config(single)).policy.policy_hash == build(merged.config).policy.policy_hash
    from_files = serve_config(str(FLEET), "inferplane", False, model_files=[str(CHAT), str(AGENTS)],
                              cluster_config_path="/cluster/config.yaml")
    from_single = serve_config(str(single), "inferplane", False, cluster_config_path="/cluster/config.yaml")
    assert from_files == from_single
    k_files = kuberay_manifest(str(FLEET), "inferplane", model_files=[str(CHAT), str(AGENTS)])
    k_single = kuberay_manifest(str(single), "inferplane")
    (cm_files,) = [d for d in k_files if d["kind"] == "ConfigMap"]
    (cm_single,) = [d for d in k_single if d["kind"] == "ConfigMap"]
    assert [d for d in k_files if d["kind"] != "ConfigMap"] == [d for d in k_single if d["kind"] != "ConfigMap"]
    # The ConfigMap ships the merged text: the same config, plus where it came from.
    (shipped,) = cm_files["data"].values()
    assert shipped == merged.text
    (single_text,) = cm_single["data"].values()
    assert parse_config(shipped).model_copy(update={"sources": []}) == parse_config(single_text)


def test_a_model_may_bring_its_own_pool_within_its_teams_grant():
    chat = text(CHAT) + POOL
    merged = merge(None, chat, text(AGENTS))
    pool = next(s for s in merged.config.substrates if s.name == "chat-pool")
    assert [m.name for m in pool.models] == ["smollm2-135m-instruct"]
    built = build(merged.config)
    route = built.fleet.resolve_model("smollm2")
    assert "chat-pool" in {built.fleet.substrates[i].name for i in route.substrate_indices}
    vllm = merge(None, text(CHAT) + VLLM_POOL, text(AGENTS)).config
    assert any(s.name == "chat-vllm" and s.kind.value == "vllm" for s in vllm.substrates)


# --------------------------------------------------------------------------------------------
# Refusals: each names the file, line, path and the rule broken


def only_problem(err: ConfigError):
    assert len(err.problems) == 1, err.render()
    return err.problems[0]


def test_a_primary_outside_the_teams_grant_is_refused_naming_the_rule():
    chat = text(CHAT).replace("primary_substrate: local-vllm", "primary_substrate: groq-class-emulated")
    p = only_problem(refused(None, chat, text(AGENTS)))
    assert (p.source, p.path, p.line) == ("chat.yaml", "models[0].primary_substrate",
                                          line_of(chat, "primary_substrate: groq"))
    assert p.message == ("team `chat` may have as primary substrates of class {gpu_cluster, sovereign_onprem}; "
                         "`groq-class-emulated` is inference_silicon in US (teams[0].primary)")


def test_serving_on_a_substrate_outside_both_grants_is_refused():
    agents = text(AGENTS).replace(
        "serving:\n", "serving:\n  provider-api-emulated:\n    - {name: llama-3.1-8b-instant, context_window_tokens: 8192}\n")
    p = only_problem(refused(None, text(CHAT), agents))
    assert (p.source, p.path, p.line) == ("agents.yaml", "serving.provider-api-emulated",  # its entries' line
                                          line_of(agents, "context_window_tokens: 8192"))
    assert "(teams[1].primary)" in p.message and "(teams[1].spillover)" in p.message
    assert "`provider-api-emulated` is provider_api in US" in p.message


def test_an_explicit_spillover_outside_the_grants_is_refused():
    agents = text(AGENTS).replace("primary_substrate: groq-class-emulated",
                                  "primary_substrate: groq-class-emulated\n    spillover_substrates: [local-vllm]")
    err = refused(None, text(CHAT), agents)
    # Two rules broken, both said: the rights, and that local-vllm does not serve the model.
    found = [p for p in err.problems if p.path == "models[0].spillover_substrates[0]"]
    assert {(p.source, p.line) for p in found} == {("agents.yaml", line_of(agents, "spillover_substrates"))}
    assert sorted(p.message for p in found) == [
        "substrate `local-vllm` does not serve `llama-3.1-8b-instant`; substrates that do: {groq-class-emulated}",
        "team `agents` may use substrates {groq-class-emulated} (teams[1].primary), and for spillover no "
        "substrates (teams[1].spillover); `local-vllm` is gpu_cluster in DE"]


def test_a_substrate_outside_the_teams_jurisdictions_is_refused():
    fleet = text(FLEET).replace("jurisdictions: [EU, US]", "jurisdictions: [EU]")
    err = refused(fleet, text(CHAT), text(AGENTS))
    found = {(p.source, p.path): p.message for p in err.problems}
    assert set(found) == {("chat.yaml", "serving.groq-class-emulated"), ("chat.yaml", "serving.provider-api-emulated")}
    assert found[("chat.yaml", "serving.groq-class-emulated")] == (
        "team `chat` may use substrates in {EU}; `groq-class-emulated` is inference_silicon in US "
        "(teams[0].jurisdictions)")


def test_a_model_file_for_an_undeclared_team_is_refused():
    agents = text(AGENTS).replace("team: agents", "team: search")
    p = only_problem(refused(None, text(CHAT), agents))
    assert (p.source, p.path, p.line) == ("agents.yaml", "team", line_of(agents, "team: search"))
    assert p.message == "no team `search` in the fleet file's teams {agents, chat} (teams)"


@pytest.mark.parametrize(("edit", "path", "fragment"), [
    (lambda t: t.replace("{name: llama-3.1-8b-instant, context_window_tokens: 131072}",
                         "{name: smollm2-135m-instruct, context_window_tokens: 131072}"),
     "serving.groq-class-emulated[0].name", "`smollm2-135m-instruct` is not a model of this file"),
    (lambda t: t.replace("  groq-class-emulated:\n", "  nowhere:\n"),
     "serving.nowhere", "no substrate `nowhere` in the fleet file"),
    (lambda t: t.replace("  - name: llama-3.1-8b-instant\n", "  - name: llama-3.1-8b-instant\n    aliases: [smollm2]\n"),
     "models[0].aliases[0]", "`smollm2` already names model `smollm2-135m-instruct` in chat.yaml (models[0])"),
    (lambda t: t.replace("name: llama-3.1-8b-instant\n    primary", "name: smollm2-135m-instruct\n    primary")
               .replace("{name: llama-3.1-8b-instant,", "{name: smollm2-135m-instruct,"),
     "models[0].name", "model `smollm2-135m-instruct` is already declared in chat.yaml (models[0])"),
], ids=["serves-another-files-model", "unknown-substrate", "alias-taken-in-another-file", "model-in-two-files"])
def test_names_across_files(edit, path, fragment):
    agents = edit(text(AGENTS))
    err = refused(None, text(CHAT), agents)
    p = next(p for p in err.problems if p.path == path)
    assert p.source == "agents.yaml" and fragment in p.message


def test_a_pool_named_like_a_fleet_substrate_names_the_fleet_file():
    chat = text(CHAT) + POOL.replace("name: chat-pool", "name: local-vllm")
    p = next(p for p in refused(None, chat, text(AGENTS)).problems if p.path == "pools[0].name")
    assert p.source == "chat.yaml" and p.line == line_of(chat, "- name: local-vllm")
    assert p.message == "substrate name `local-vllm` is already used in fleet.yaml (substrates[0])"


@pytest.mark.parametrize(("edit", "path", "rule"), [
    (lambda p: p.replace("class: gpu_cluster", "class: provider_api"), "pools[0].class", "teams[0].pools.classes"),
    (lambda p: p.replace("jurisdiction: FR", "jurisdiction: JP"), "pools[0].jurisdiction", "teams[0].jurisdictions"),
    (lambda p: p.replace("num_replicas: 2", "num_replicas: 3"), "pools[0].emulated.replicas",
     "teams[0].pools.max_replicas"),
], ids=["class", "jurisdiction", "replicas"])
def test_a_pool_outside_the_pool_grant_is_refused(edit, path, rule):
    chat = text(CHAT) + edit(POOL)
    p = only_problem(refused(None, chat, text(AGENTS)))
    assert (p.source, p.path) == ("chat.yaml", path) and p.message.endswith(f"({rule})")


def test_engine_limits_bound_a_vllm_pool():
    chat = text(CHAT) + VLLM_POOL.replace("tensor_parallel_size: 1", "tensor_parallel_size: 2")
    p = only_problem(refused(None, chat, text(AGENTS)))
    assert (p.path, p.line) == ("pools[0].vllm.engine.tensor_parallel_size", line_of(chat, "tensor_parallel_size"))
    assert p.message == ("team `chat` may use at most 1 GPU(s) per replica; `chat-vllm` asks for 2 "
                         "(teams[0].pools.max_gpus_per_replica)")
    kinds = text(FLEET).replace("kinds: [vllm, emulated]", "kinds: [vllm]")
    p = only_problem(refused(kinds, text(CHAT) + POOL, text(AGENTS)))
    assert p.path == "pools[0].kind" and p.message.endswith("(teams[0].pools.kinds)")


def test_a_team_without_a_pool_grant_brings_none_and_counts_pools_over_its_files():
    agents = text(AGENTS) + POOL.replace("smollm2-135m-instruct", "llama-3.1-8b-instant")
    p = only_problem(refused(None, text(CHAT), agents))
    assert p.path == "pools[0]" and p.message == "team `agents` may not bring its own pools (teams[1].pools is not set)"
    second = ("kind: models\nschema_version: 1\nteam: chat\nmodels:\n"
              "  - {name: chat-2, primary_substrate: chat-pool-2}\n"
              + POOL.replace("chat-pool", "chat-pool-2").replace("smollm2-135m-instruct", "chat-2"))
    p = only_problem(refused(None, text(CHAT) + POOL, text(AGENTS), second))
    assert (p.source, p.path) == ("file2.yaml", "pools[0]")
    assert p.message.endswith("would be its pool number 2 (teams[0].pools.max_pools)")


def test_a_merged_problem_points_at_the_model_files_line():
    chat = text(CHAT).replace("context_window_tokens: 4096}\n  groq", "context_window_tokens: 9999}\n  groq")
    p = only_problem(refused(None, chat, text(AGENTS)))
    assert (p.source, p.path, p.line) == ("chat.yaml", "serving.local-vllm[0].context_window_tokens",
                                          line_of(chat, "9999"))
    assert p.message == "9999 exceeds the engine's max_model_len 4096; use at most 4096"


def test_shape_problems_of_a_model_file_carry_its_line():
    chat = text(CHAT).replace("    aliases: [smollm2]\n", "    aliases: [smollm2]\n    context_window: 4096\n")
    p = only_problem(refused(None, chat, text(AGENTS)))
    assert (p.source, p.path, p.line) == ("chat.yaml", "models[0].context_window", line_of(chat, "context_window:"))
    assert p.message.startswith("unknown key `context_window`; valid keys: aliases, name, primary_substrate")


def test_the_two_kinds_of_file_are_not_confused():
    p = only_problem(refused(text(CHAT), text(AGENTS)))
    assert (p.path, p.message) == ("kind", "this is a model file; give the fleet file first, then the model files")
    p = only_problem(refused(None, text(FLEET)))
    assert p.source == "chat.yaml" and p.message.startswith("required: `kind: models`")


def test_a_fleet_with_teams_alone_says_where_its_models_come_from():
    with pytest.raises(ConfigError) as exc:
        load_config(FLEET)
    assert {p.path for p in exc.value.problems} == {"models", *(f"substrates[{i}].models" for i in range(4))}
    assert all("from the teams' model files" in p.message for p in exc.value.problems)


def test_a_grant_naming_a_missing_substrate_is_the_fleets_problem():
    fleet = text(FLEET).replace("primary: {substrates: [groq-class-emulated]}", "primary: {substrates: [groq-us]}")
    err = refused(fleet, text(CHAT), text(AGENTS))
    p = next(p for p in err.problems if p.path == "teams[1].primary.substrates[0]")
    assert p.source == "fleet.yaml" and p.line == line_of(fleet, "groq-us")
    assert p.message.startswith("no substrate named `groq-us`")


# --------------------------------------------------------------------------------------------
# The CLI


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_takes_model_files(capsys):
    code, out, err = run(capsys, "validate", str(FLEET), str(CHAT), str(AGENTS))
    assert code == 0 and err == ""
    assert out.startswith(f"{FLEET}: valid · 4 substrates (3 emulated; ")
    assert "team chat: primary class gpu_cluster, class sovereign_onprem, spillover class inference_silicon" in out
    assert f"model file {CHAT} (team chat, sha256 {hashlib.sha256(CHAT.read_bytes()).hexdigest()[:12]})" in out


def test_validate_refuses_a_file_outside_its_rights_naming_file_line_and_rule(capsys, tmp_path: Path):
    bad = tmp_path / "agents.models.yaml"
    bad.write_text(text(AGENTS).replace("groq-class-emulated", "provider-api-emulated"), encoding="utf-8")
    code, out, err = run(capsys, "validate", str(FLEET), str(CHAT), str(bad))
    assert code == 1 and out == ""
    line = line_of(bad.read_text(), "primary_substrate")
    assert f"{bad}:{line}: models[0].primary_substrate: team `agents` may have as primary substrates " \
           "{groq-class-emulated}; `provider-api-emulated` is provider_api in US (teams[1].primary)" in err


def test_build_writes_the_merged_config_beside_the_serve_config(capsys, tmp_path: Path):
    out_path = tmp_path / "serve.yaml"
    code, out, _ = run(capsys, "build", str(FLEET), str(CHAT), str(AGENTS), "-o", str(out_path), "--no-history")
    assert code == 0
    merged_path = tmp_path / "serve.config.yaml"
    assert merged_path.read_text() == merge_files(FLEET, [CHAT, AGENTS]).text
    doc = yaml.safe_load(out_path.read_text())
    assert doc["applications"][0]["args"]["config"] == str(merged_path.resolve())
    # The Serve config is the one of the equivalent single file but for where it reads the config.
    single = equivalent_single_file(tmp_path)
    code, _, _ = run(capsys, "build", str(single), "-o", str(tmp_path / "single-serve.yaml"), "--no-history")
    single_doc = yaml.safe_load((tmp_path / "single-serve.yaml").read_text())
    assert single_doc["applications"][0]["args"]["config"] == str(single.resolve())
    single_doc["applications"][0]["args"]["config"] = str(merged_path.resolve())
    assert single_doc == doc


def test_build_kuberay_ships_the_merged_config(capsys, tmp_path: Path):
    out_path = tmp_path / "rayservice.yaml"
    code, _, _ = run(capsys, "build", str(FLEET), str(CHAT), str(AGENTS), "--kuberay", "-o", str(out_path),
                          "--no-history")
    assert code == 0
    (cm,) = [d for d in yaml.safe_load_all(out_path.read_text()) if d and d["kind"] == "ConfigMap"]
    (shipped,) = cm["data"].values()
    assert shipped == merge_files(FLEET, [CHAT, AGENTS]).text


def test_deploy_hands_the_merged_text_to_the_app(capsys, monkeypatch):
    from deployments import runtime

    calls = []
    monkeypatch.setattr(runtime, "connect", lambda address: calls.append(("connect", address)))
    monkeypatch.setattr(runtime, "deploy", lambda *a, **kw: calls.append(("deploy", *a)))
    code, out, _ = run(capsys, "deploy", str(FLEET), str(CHAT), str(AGENTS), "--address", "ray://head:10001",
                          "--no-history")
    assert code == 0
    assert calls[0] == ("connect", "ray://head:10001")
    assert calls[1][1] == merge_files(FLEET, [CHAT, AGENTS]).text
    assert calls[1][2:] == ("inferplane", "127.0.0.1", 8000)


def test_deploy_refuses_before_connecting(capsys, monkeypatch, tmp_path: Path):
    from deployments import runtime

    calls = []
    monkeypatch.setattr(runtime, "connect", lambda address: calls.append(address))
    bad = tmp_path / "chat.models.yaml"
    bad.write_text(text(CHAT).replace("team: chat", "team: nobody"), encoding="utf-8")
    code, _, err = run(capsys, "deploy", str(FLEET), str(bad), str(AGENTS), "--address", "auto",
                         "--no-history")
    assert code == 1 and calls == [] and "no team `nobody`" in err
