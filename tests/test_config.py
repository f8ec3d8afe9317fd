"""Config loading: the shipped configs are valid, and every kind of mistake is reported with the
exact path inside the document, the YAML line, and what would be valid.

Each mistake is made by editing one small valid YAML document (``BASE``) in memory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from inferplane.config import ConfigError, load_and_build, load_config, parse_config
from inferplane.config.errors import format_loc
from inferplane.config.schema import (
    EmulatedSubstrate,
    InferplaneConfig,
    OpenAICompatibleSubstrate,
    SubstrateKind,
    VllmSubstrate,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [ROOT / "configs" / "local.yaml", ROOT / "configs" / "enterprise.example.yaml"]

BASE = """\
schema_version: 1
jurisdiction_groups:
  EU: [DE, FR, IE]
  NORDICS: [NO, SE, DK]
sla_classes:
  - {name: interactive, ttft_deadline_ms: 1500, e2e_deadline_ms: 20000}
substrates:
  - name: gpu-de
    class: gpu_cluster
    kind: vllm
    models:
      - {name: m, context_window_tokens: 4096}
    topology: {region: eu-central, zone: eu-central-1a}
    jurisdiction: DE
    capacity: {tier: reserved, max_concurrent_requests: 16}
    latency: {base_ttft_ms: 40, prefill_tokens_per_s: 1500, decode_tokens_per_s: 35}
    vllm:
      engine: {model_path: /models/m, max_model_len: 4096}
  - name: api-us
    class: provider_api
    kind: openai_compatible
    models:
      - {name: m, context_window_tokens: 8192}
    topology: {region: us-east, zone: us-east-1a}
    jurisdiction: US
    capacity: {tier: burst, max_concurrent_requests: 64}
    latency: {base_ttft_ms: 250, prefill_tokens_per_s: 8000, decode_tokens_per_s: 90}
    openai_compatible: {base_url: "https://api.example.com/v1", api_key_env: API_US_KEY}
  - name: onprem-eu
    class: sovereign_onprem
    kind: emulated
    models:
      - {name: m, context_window_tokens: 4096}
    topology: {region: eu-west, zone: eu-west-1a}
    jurisdiction: EU
    capacity: {tier: reserved, max_concurrent_requests: 4}
    cost: {usd_per_1m_input_tokens: 0.1, usd_per_1m_output_tokens: 0.2}
    latency: {base_ttft_ms: 120, prefill_tokens_per_s: 900, decode_tokens_per_s: 25}
    emulated:
      emulates: sovereign pool
      physics: {ttft_ms: 120, prefill_tokens_per_s: 900, decode_tokens_per_s: 25, max_concurrency: 4}
models:
  - name: m
    aliases: [m-alias]
    primary_substrate: gpu-de
tenants:
  - name: acme
    api_keys_sha256: ["2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"]
    allowed_jurisdictions: [EU]
    default_sla_class: interactive
"""

SECOND_MODEL = """\
models:
  - name: m
    aliases: [m-alias]
    primary_substrate: gpu-de
  - name: m2
    primary_substrate: api-us
"""


def edit(*replacements: tuple[str, str], text: str = BASE) -> str:
    """``text`` with each ``old`` (which must occur exactly once) replaced by ``new``."""
    for old, new in replacements:
        assert text.count(old) == 1, f"not exactly one {old!r} in the document"
        text = text.replace(old, new)
    return text


def line_of(text: str, needle: str, nth: int | None = None) -> int:
    """The 1-based line containing ``needle``: the only one, or the ``nth`` (from 0) of several."""
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    if nth is None:
        assert len(hits) == 1, f"{needle!r} is on lines {hits}"
        return hits[0]
    return hits[nth]


def problems_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="fleet.yaml")
    return info.value


def test_base_document_is_valid() -> None:
    cfg = parse_config(BASE)
    assert [s.name for s in cfg.substrates] == ["gpu-de", "api-us", "onprem-eu"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_validate_and_build(path: Path) -> None:
    built = load_and_build(path)
    cfg = built.config
    assert built.fleet.substrates and len(built.fleet.substrates) == len(cfg.substrates)
    assert set(built.policy.tenants) == {t.name for t in cfg.tenants}
    assert sum(w.weight for w in built.policy.weights) == pytest.approx(1.0)
    for m in cfg.models:
        route = built.fleet.resolve_model(m.name)
        assert route is not None and route.primary == m.primary_substrate
        for alias in m.aliases:
            assert built.fleet.resolve_model(alias) is route


def test_each_kind_is_its_own_variant_with_its_settings_block() -> None:
    gpu, api, onprem = parse_config(BASE).substrates
    assert isinstance(gpu, VllmSubstrate) and gpu.kind is SubstrateKind.VLLM
    assert isinstance(api, OpenAICompatibleSubstrate) and api.kind is SubstrateKind.OPENAI_COMPATIBLE
    assert isinstance(onprem, EmulatedSubstrate) and onprem.kind is SubstrateKind.EMULATED
    assert gpu.settings is gpu.vllm and gpu.settings.engine.max_model_len == 4096
    assert api.settings is api.openai_compatible and api.settings.api_key_env == "API_US_KEY"
    assert onprem.settings is onprem.emulated and onprem.settings.emulates == "sovereign pool"
    assert all(s.settings.replicas.num_replicas == 1 for s in (gpu, api, onprem))


def test_a_substrate_round_trips_through_its_dump() -> None:
    cfg = parse_config(BASE)
    again = InferplaneConfig.model_validate(cfg.model_dump(by_alias=True))
    assert again == cfg
    assert [type(s) for s in again.substrates] == [VllmSubstrate, OpenAICompatibleSubstrate, EmulatedSubstrate]


def test_local_config_is_the_documented_demo() -> None:
    built = load_and_build(SHIPPED[0])
    subs = {s.name: s for s in built.fleet.substrates}
    assert subs["local-vllm"].kind == "vllm" and not subs["local-vllm"].emulated
    assert subs["local-vllm"].required_signals == ("in_flight", "kv_cache_usage")
    assert all(s.emulated for n, s in subs.items() if n != "local-vllm")
    assert all(s.display_name.endswith("emulated") for s in subs.values() if s.emulated)
    assert "US" not in built.policy.tenants["eu-bank"].allowed_countries
    assert "DE" in built.policy.tenants["eu-bank"].allowed_countries
    assert built.fleet.resolve_model("smollm2").name == "smollm2-135m-instruct"


def test_enterprise_groups_and_tenants() -> None:
    built = load_and_build(SHIPPED[1])
    research = built.policy.tenants["research-batch"]
    assert {"NO", "IS", "LI", "US", "CA", "DE"} <= research.allowed_countries
    assert "JP" not in research.allowed_countries
    assert research.allowed_models == frozenset({"llama-3.1-8b-instruct"})
    assert built.policy.spill_classes("llama-3.1-8b-instruct") == frozenset(
        {"gpu_cluster", "inference_silicon", "provider_api", "sovereign_onprem"})
    assert "giant_context" in built.policy.spill_classes("llama-3.1-70b-instruct")


# -- One mistake at a time ------------------------------------------------------------------------

MISTAKES = [
    pytest.param(
        edit(("cost: {usd_per_1m_input_tokens: 0.1,", "cost: {usd_per_1m_input_tokenz: 0.1,")),
        "substrates[2].cost.usd_per_1m_input_tokenz",
        ["unknown key `usd_per_1m_input_tokenz`",
         ("valid keys: egress_usd_per_gb, gpus_per_replica, usd_per_1m_input_tokens, "
          "usd_per_1m_output_tokens, usd_per_gpu_hour")],
        "usd_per_1m_input_tokenz", id="unknown-key"),
    pytest.param(
        edit(("    kind: vllm\n", "    kind: vllm\n    zone: eu-central-1a\n")),
        "substrates[0].zone",
        ["unknown key `zone`",
         "valid keys: capacity, class, cost, jurisdiction, kind, latency, models, name, topology, vllm"],
        "    zone: eu-central-1a", id="unknown-key-lists-aliases"),
    pytest.param(
        BASE + "polcy: {}\n", "polcy",
        ["unknown key `polcy`",
         ("valid keys: ingress, jurisdiction_groups, models, policy, schema_version, sla_classes, "
          "sources, substrates, teams, telemetry, tenants")], "polcy", id="unknown-top-level-key"),
    pytest.param(
        edit(("{base_ttft_ms: 250, prefill_tokens_per_s: 8000, decode_tokens_per_s: 90}",
              "{base_ttft_ms: 250, decode_tokens_per_s: 90}")),
        "substrates[1].latency.prefill_tokens_per_s", ["required"], "base_ttft_ms: 250",
        id="missing-field"),
    pytest.param(
        edit(("usd_per_1m_input_tokens: 0.1", "usd_per_1m_input_tokens: -0.1")),
        "substrates[2].cost.usd_per_1m_input_tokens",
        ["greater than or equal to 0", "(got -0.1)", "expected: Price of one million input tokens"],
        "usd_per_1m_input_tokens", id="negative-price"),
    pytest.param(
        edit(("max_concurrent_requests: 64", "max_concurrent_requests: lots")),
        "substrates[1].capacity.max_concurrent_requests", ["valid integer", "(got 'lots')"],
        "max_concurrent_requests: lots", id="wrong-type"),
    pytest.param(
        edit(("class: provider_api", "class: provider")),
        "substrates[1].class",
        ["'gpu_cluster', 'inference_silicon', 'giant_context', 'provider_api' or 'sovereign_onprem'",
         "(got 'provider')"], "class: provider", id="bad-substrate-class"),
    pytest.param(
        edit(("kind: openai_compatible", "kind: emulated")),
        "substrates[1]", ["kind `emulated` needs a `emulated` settings block"], "- name: api-us",
        id="kind-without-its-block"),
    pytest.param(
        edit(("    openai_compatible: {base_url:",
              "    vllm: {engine: {model_path: /m, max_model_len: 8192}}\n    openai_compatible: {base_url:")),
        "substrates[1]", ["kind `openai_compatible` takes only a `openai_compatible` block; remove `vllm`"],
        "- name: api-us", id="kind-with-another-block"),
    pytest.param(
        edit(("kind: vllm", "kind: vlm")),
        "substrates[0].kind", ["Input should be 'vllm', 'openai_compatible' or 'emulated'", "(got 'vlm')"],
        "kind: vlm", id="unknown-kind"),
    pytest.param(
        edit(("    kind: vllm\n", "")),
        "substrates[0].kind", ["required: 'vllm', 'openai_compatible' or 'emulated'"], "- name: gpu-de",
        id="missing-kind"),
    pytest.param(
        edit(("max_model_len: 4096}", "max_model_len: 0}")),
        "substrates[0].vllm.engine.max_model_len",
        ["greater than 0", "(got 0)", "expected: Maximum input + output tokens per sequence"],
        "max_model_len: 0", id="invalid-value-inside-the-kinds-block"),
    pytest.param(
        edit(("api_key_env: API_US_KEY}", "api_key_env: API_US_KEY, timeout_s: 3}")),
        "substrates[1].openai_compatible.timeout_s",
        ["unknown key `timeout_s`",
         "valid keys: api_key_env, base_url, connect_timeout_s, replicas, request_timeout_s"],
        "timeout_s: 3", id="unknown-key-inside-the-kinds-block"),
    pytest.param(
        edit(("      - {name: m, context_window_tokens: 4096}\n    topology: {region: eu-central",
              "      - {name: m, context_window_tokens: 4096}\n      - {name: m, context_window_tokens: 2048}\n"
              "    topology: {region: eu-central")),
        "substrates[0].models", ["model listed twice: m"], ("{name: m, context_window_tokens: 4096}", 0),
        id="model-served-twice"),
    pytest.param(
        edit(("- name: api-us", "- name: gpu-de")),
        "substrates[1].name", ["`gpu-de` is already used by substrates[0]"], ("- name: gpu-de", 1),
        id="duplicate-substrate-name"),
    pytest.param(
        edit(("primary_substrate: gpu-de", "primary_substrate: gpu-fr")),
        "models[0].primary_substrate", ["no substrate named `gpu-fr`; substrates: {api-us, gpu-de, onprem-eu}"],
        "primary_substrate: gpu-fr", id="unknown-primary"),
    pytest.param(
        edit(("models:\n  - name: m\n    aliases: [m-alias]\n    primary_substrate: gpu-de\n",
              SECOND_MODEL.replace("primary_substrate: api-us", "primary_substrate: gpu-de")),
             ("{name: m, context_window_tokens: 8192}",
              "{name: m, context_window_tokens: 8192}\n      - {name: m2, context_window_tokens: 8192}")),
        "models[1].primary_substrate", ["substrate `gpu-de` does not serve `m2`; substrates that do: {api-us}"],
        ("primary_substrate: gpu-de", 1), id="primary-does-not-serve-model"),
    pytest.param(
        edit(("primary_substrate: gpu-de", "primary_substrate: gpu-de\n    spillover_substrates: [api-us, nowhere]")),
        "models[0].spillover_substrates[1]", ["no substrate named `nowhere`"], "spillover_substrates",
        id="unknown-spillover-substrate"),
    pytest.param(
        edit(("allowed_jurisdictions: [EU]", "allowed_jurisdictions: [EUROPE]")),
        "tenants[0].allowed_jurisdictions[0]",
        [("`EUROPE` is neither an ISO 3166-1 alpha-2 country code nor a group defined under "
          "jurisdiction_groups {EU, NORDICS}")], "allowed_jurisdictions", id="undefined-group-on-tenant"),
    pytest.param(
        edit(("jurisdiction: EU", "jurisdiction: EUROPE")),
        "substrates[2].jurisdiction", ["`EUROPE` is neither"], "jurisdiction: EUROPE",
        id="undefined-group-on-substrate"),
    pytest.param(
        edit(("jurisdiction: US", 'jurisdiction: "*"')),
        "substrates[1].jurisdiction", ["`*` is for tenants only"], 'jurisdiction: "*"', id="wildcard-on-substrate"),
    pytest.param(
        edit(("  EU: [DE, FR, IE]", "  EU: [DE, FR, IE]\n  DE: [DE]")),
        "jurisdiction_groups.DE", ["`DE` is a country code; give the group another name"], "  DE: [DE]",
        id="group-named-like-a-country"),
    pytest.param(
        edit(("NORDICS: [NO, SE, DK]", "NORDICS: [NO, SE, XX]")),
        "jurisdiction_groups.NORDICS[2]", ["`XX` is not an ISO 3166-1 alpha-2 country code"], "NORDICS",
        id="group-member-not-a-country"),
    pytest.param(
        edit(("default_sla_class: interactive", "default_sla_class: gold")),
        "tenants[0].default_sla_class", ["no SLA class `gold`; classes: {interactive}"], "default_sla_class",
        id="unknown-default-sla-class"),
    pytest.param(
        edit(("models:\n  - name: m\n    aliases: [m-alias]\n    primary_substrate: gpu-de\n",
              SECOND_MODEL.replace("  - name: m2\n", "  - name: m2\n    aliases: [m-alias]\n")),
             ("{name: m, context_window_tokens: 8192}",
              "{name: m, context_window_tokens: 8192}\n      - {name: m2, context_window_tokens: 8192}")),
        "models[1].aliases[0]", ["`m-alias` already names model `m`"], ("aliases: [m-alias]", 1),
        id="alias-collides-with-alias"),
    pytest.param(
        edit(("models:\n  - name: m\n    aliases: [m-alias]\n    primary_substrate: gpu-de\n",
              SECOND_MODEL.replace("  - name: m2\n", "  - name: m2\n    aliases: [m]\n")),
             ("{name: m, context_window_tokens: 8192}",
              "{name: m, context_window_tokens: 8192}\n      - {name: m2, context_window_tokens: 8192}")),
        "models[1].aliases[0]", ["`m` already names model `m`"], "aliases: [m]",
        id="alias-collides-with-model-name"),
    pytest.param(
        edit(("{name: m, context_window_tokens: 4096}\n    topology: {region: eu-central",
              "{name: m, context_window_tokens: 8192}\n    topology: {region: eu-central")),
        "substrates[0].models[0].context_window_tokens",
        ["8192 exceeds the engine's max_model_len 4096; use at most 4096"], ("context_window_tokens: 8192", 0),
        id="window-above-max-model-len"),
    pytest.param(
        edit(("ttft_deadline_ms: 1500", "ttft_deadline_ms: 25000")),
        "sla_classes[0]", ["ttft_deadline_ms must not exceed e2e_deadline_ms"], "ttft_deadline_ms",
        id="ttft-deadline-after-e2e"),
    pytest.param(
        edit(("    kind: vllm\n", "    kind: vllm\n    models: []\n"),
             ("    models:\n      - {name: m, context_window_tokens: 4096}\n    topology: {region: eu-central",
              "    topology: {region: eu-central")),
        "substrates[0].models", ["at least 1"], "models: []", id="empty-list"),
    pytest.param(
        edit(("    default_sla_class: interactive\n",
              "    default_sla_class: interactive\n    quotas:\n"
              "      - {substrate_class: gpu_cluster, guaranteed_slots: 8, max_slots: 4}\n")),
        "tenants[0].quotas[0]", ["guaranteed_slots must not exceed max_slots"], "guaranteed_slots: 8",
        id="quota-guarantee-over-cap"),
    pytest.param(
        edit(("    default_sla_class: interactive\n",
              "    default_sla_class: interactive\n    quotas:\n"
              "      - {substrate_class: giant_context, guaranteed_slots: 1}\n")),
        "tenants[0].quotas[0].substrate_class",
        ["no substrate of class `giant_context`; classes in the fleet: {gpu_cluster, provider_api, sovereign_onprem}"],
        "substrate_class: giant_context", id="quota-on-a-missing-tier"),
    pytest.param(
        edit(("    default_sla_class: interactive\n",
              "    default_sla_class: interactive\n    quotas:\n"
              "      - {substrate_class: sovereign_onprem, guaranteed_slots: 5}\n")),
        "tenants[0].quotas[0].guaranteed_slots",
        ["tenants are guaranteed 5 slots of `sovereign_onprem`, which has 4; guarantee at most 4 in all"],
        "guaranteed_slots: 5", id="quota-guarantees-over-the-tier"),
    pytest.param(
        edit(("    default_sla_class: interactive\n", "    default_sla_class: interactive\n    share: 0\n")),
        "tenants[0].share", ["greater than 0"], "share: 0", id="share-not-positive"),
]


@pytest.mark.parametrize(("text", "path", "fragments", "line"), MISTAKES)
def test_mistake_names_path_line_and_what_is_valid(text: str, path: str, fragments: list[str],
                                                    line: str | tuple[str, int]) -> None:
    """``line`` is text on the line the problem must point at (or (text, which occurrence))."""
    err = problems_of(text)
    assert [p.path for p in err.problems] == [path]
    problem = err.problems[0]
    for fragment in fragments:
        assert fragment in problem.message
    expected_line = line_of(text, *line) if isinstance(line, tuple) else line_of(text, line)
    assert problem.line == expected_line
    assert f"fleet.yaml:{expected_line}: {path}: " in str(err)


def test_every_reference_problem_is_reported_in_one_pass() -> None:
    err = problems_of(edit(("primary_substrate: gpu-de", "primary_substrate: gpu-fr"),
                           ("default_sla_class: interactive", "default_sla_class: gold"),
                           ("allowed_jurisdictions: [EU]", "allowed_jurisdictions: [EUROPE, DE]")))
    assert [p.path for p in err.problems] == [
        "models[0].primary_substrate", "tenants[0].allowed_jurisdictions[0]", "tenants[0].default_sla_class",
    ]
    assert str(err).startswith("fleet.yaml: 3 problems\n")


def test_every_shape_problem_is_reported_in_one_pass() -> None:
    err = problems_of(edit(("usd_per_1m_input_tokens: 0.1", "usd_per_1m_input_tokens: -0.1"),
                           ("class: provider_api", "class: provider")))
    assert sorted(p.path for p in err.problems) == ["substrates[1].class", "substrates[2].cost.usd_per_1m_input_tokens"]


# -- Secrets ------------------------------------------------------------------------------------

PLAINTEXT = "sk-live-Sup3rS3cretKey-0042"


@pytest.mark.parametrize(
    ("secret", "yaml_value", "fragment"),
    [
        pytest.param(PLAINTEXT, f'["{PLAINTEXT}"]', "not a SHA-256 hex digest", id="in-the-list"),
        pytest.param(PLAINTEXT, PLAINTEXT, "valid list", id="instead-of-the-list"),
        pytest.param("A" * 64, f'["{"A" * 64}"]', "64 lower-case hex characters", id="upper-case-hex"),
    ],
)
def test_plaintext_api_key_is_rejected_and_never_echoed(secret: str, yaml_value: str, fragment: str) -> None:
    text = edit(('["2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"]', yaml_value))
    err = problems_of(text)
    assert [p.path for p in err.problems] == ["tenants[0].api_keys_sha256"]
    assert err.problems[0].line == line_of(text, "api_keys_sha256")
    assert fragment in err.problems[0].message
    assert secret not in str(err)


def test_provider_key_pasted_as_env_var_name_is_not_echoed() -> None:
    text = edit(("api_key_env: API_US_KEY", f"api_key_env: {PLAINTEXT}"))
    err = problems_of(text)
    assert [p.path for p in err.problems] == ["substrates[1].openai_compatible.api_key_env"]
    assert PLAINTEXT not in str(err)


# -- YAML ---------------------------------------------------------------------------------------


def test_yaml_syntax_error_has_its_line() -> None:
    text = edit(("  - name: m\n    aliases: [m-alias]", "  - name: m\n   aliases: [m-alias]"))
    err = problems_of(text)
    assert len(err.problems) == 1
    problem = err.problems[0]
    assert problem.path == "(top level)" and problem.message.startswith("not valid YAML: ")
    assert problem.line == line_of(text, "   aliases: [m-alias]")


def test_unclosed_flow_sequence_has_its_line() -> None:
    text = edit(("allowed_jurisdictions: [EU]", "allowed_jurisdictions: [EU"))
    err = problems_of(text)
    assert err.problems[0].message.startswith("not valid YAML")
    assert err.problems[0].line is not None and err.problems[0].line >= line_of(text, "allowed_jurisdictions")


def test_top_level_must_be_a_mapping() -> None:
    err = problems_of("- a\n- b\n")
    assert [(p.path, p.message) for p in err.problems] == [("(top level)", "the top level must be a mapping of sections")]


def test_norway_stays_a_country_code() -> None:
    """YAML 1.1 reads NO (and yes/on/off) as booleans; the loader must keep them strings."""
    text = edit(("jurisdiction: US", "jurisdiction: NO"),
                ("allowed_jurisdictions: [EU]", "allowed_jurisdictions: [NORDICS, NO, EU]"))
    cfg = parse_config(text)
    assert cfg.jurisdiction_groups["NORDICS"] == ["NO", "SE", "DK"]
    assert cfg.substrates[1].jurisdiction == "NO"
    assert cfg.tenants[0].allowed_jurisdictions == ["NORDICS", "NO", "EU"]


def test_real_booleans_still_parse() -> None:
    text = edit(("engine: {model_path: /models/m, max_model_len: 4096}",
                 "engine: {model_path: /models/m, max_model_len: 4096, enforce_eager: false}"))
    assert parse_config(text).substrates[0].vllm.engine.enforce_eager is False


def test_yaml_parsing_does_not_change_safe_loader() -> None:
    import yaml

    assert yaml.safe_load("x: NO") == {"x": False}


# -- Files --------------------------------------------------------------------------------------


def test_load_config_of_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    err = info.value
    assert err.source == str(missing)
    assert [(p.path, p.message, p.line) for p in err.problems] == [("(top level)", "file not found", None)]
    assert str(err) == f"{missing}: 1 problem\n  {missing}: (top level): file not found"


def test_format_loc() -> None:
    assert format_loc(("substrates", 2, "cost", "usd_per_1m_input_tokens")) == "substrates[2].cost.usd_per_1m_input_tokens"
    assert format_loc(()) == "(top level)"
    assert format_loc(("models", 0, "aliases", 1)) == "models[0].aliases[1]"


def test_shares_quotas_and_queue_reach_the_policy() -> None:
    text = edit(("    default_sla_class: interactive\n",
                 "    default_sla_class: interactive\n    share: 3\n    quotas:\n"
                 "      - {substrate_class: gpu_cluster, guaranteed_slots: 4, max_slots: 12}\n"
                 "      - {substrate_class: provider_api, max_slots: 2}\n"))
    text += "policy:\n  queue: {hold: false, max_waiting_requests: 7}\n"
    from inferplane.config import build

    policy = build(parse_config(text, source="fleet.yaml")).policy
    acme = policy.tenants["acme"]
    assert acme.share == 3.0
    assert acme.quotas == (("gpu_cluster", 4, 12, 0), ("provider_api", 0, 2, 0))
    assert (policy.queue.hold, policy.queue.max_waiting, policy.queue.output_token_weight) == (False, 7, 2.0)
