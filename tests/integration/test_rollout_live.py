"""A canary through the real Serve ingress (#19 item 3), every substrate emulated: a model with two
versions at 50/50, v2 on a pool of its own that knows the model by another upstream name. Each answer
says its version, ran where that version is served (the upstream name the ingress sent is the
version's: the emulated substrate refuses any other), and its audit row records the version and the
split."""

from __future__ import annotations

import httpx
import pytest
import yaml

from tests.integration.conftest import EMULATED_CONFIG, GLOBAL_KEY, _deploy, poll

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m-instruct"
CANARY = "canary-emulated"
UPSTREAM_V2 = "smollm2-135m-instruct-v2"


def _canary_config() -> str:
    doc = yaml.safe_load(EMULATED_CONFIG.read_text())
    for s in doc["substrates"]:
        for m in s["models"]:
            if m["name"] == MODEL:
                m["version"] = "v1"
    pool = {k: v for k, v in doc["substrates"][0].items() if k != "models"}
    pool.update(name=CANARY, models=[{"name": MODEL, "version": "v2", "upstream_name": UPSTREAM_V2,
                                      "context_window_tokens": 4096}])
    pool["topology"] = dict(pool["topology"], zone="eu-central-1c")
    doc["substrates"].append(pool)
    model = next(m for m in doc["models"] if m["name"] == MODEL)
    model["versions"] = [{"name": "v1", "weight": 50},
                         {"name": "v2", "weight": 50, "primary_substrate": CANARY, "spillover_substrates": []}]
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.fixture(scope="module")
def canary_plane(ray_cluster):
    plane, teardown = _deploy(_canary_config(), "inferplane-rollout", 120)
    yield plane
    teardown()


def test_each_answer_runs_on_its_versions_substrates_and_its_row_records_the_version(canary_plane):
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    answers = {}
    with httpx.Client(timeout=30) as client:
        for _ in range(40):
            r = client.post(f"{canary_plane.url}/v1/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {GLOBAL_KEY}"})
            assert r.status_code == 200, r.text
            assert r.json()["model"] == MODEL  # the public name, whatever the version's upstream name
            version, substrate = r.headers["x-inferplane-model-version"], r.headers["x-inferplane-substrate"]
            assert (version == "v2") == (substrate == CANARY), (version, substrate)
            answers[r.headers["x-inferplane-request-id"]] = version
    assert set(answers.values()) == {"v1", "v2"}  # 50/50 over 40: both (all one way: 2 in 10^12)

    from inferplane.telemetry.audit import read_audit

    def rows():
        found = {r["request_id"]: r for r in read_audit(canary_plane.audit_dir).to_pylist()}
        return found if set(answers) <= set(found) else None

    found = poll(rows, 30)
    assert found is not None, "audit rows did not appear"
    for rid, version in answers.items():
        assert found[rid]["model_version"] == version
        assert found[rid]["rollout"] == "v1=50,v2=50"
