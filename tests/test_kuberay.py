"""`inferplane build CONFIG --kuberay`: the RayService manifest, checked against KubeRay's CRD
schema (``tests/data/kuberay``) and against what the fleet needs. No cluster here: nothing is applied."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from inferplane.cli.deploy import kuberay_manifest, serve_config
from inferplane.cli.main import main
from inferplane.config import kuberay, load_config, parse_config
from inferplane.config.schema import OpenAICompatibleSubstrate, VllmSubstrate

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [str(ROOT / "configs" / "local.yaml"), str(ROOT / "configs" / "enterprise.example.yaml")]
ENTERPRISE = CONFIGS[1]
SCHEMA = json.loads((ROOT / "tests" / "data" / "kuberay" / "rayservice-v1.openapi.json").read_text())


def strict(schema):
    """The CRD schema refusing fields it does not declare, as ``kubectl apply`` does (its default
    ``--validate=strict``; the API server would otherwise drop them silently)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


VALIDATOR = jsonschema.Draft7Validator(strict(SCHEMA))


def rayservice(docs: list[dict]) -> dict:
    (rs,) = [d for d in docs if d["kind"] == "RayService"]
    return rs


def schema_errors(doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(doc)]


@pytest.fixture(scope="module", params=CONFIGS, ids=["local", "enterprise"])
def built(request):
    path = request.param
    return path, load_config(path), kuberay_manifest(path, "inferplane")


def test_the_rayservice_is_valid_against_kuberays_crd_schema(built):
    _, _, docs = built
    rs = rayservice(docs)
    assert (rs["apiVersion"], rs["kind"]) == ("ray.io/v1", "RayService")
    assert schema_errors(rs) == []


@pytest.mark.parametrize("mutate, where", [
    (lambda rs: rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(replicas="two"), "replicas"),
    (lambda rs: rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(gpus=4), "gpus"),
    (lambda rs: rs["spec"]["rayClusterConfig"].pop("headGroupSpec"), "headGroupSpec"),
    (lambda rs: rs["spec"].update(serveConfigV2={"applications": []}), "serveConfigV2"),
    (lambda rs: rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
     .update(resources={"limits": {"nvidia.com/gpu": "four"}}), "nvidia.com/gpu"),
])
def test_a_manifest_made_invalid_fails_the_schema_check(mutate, where):
    rs = copy.deepcopy(rayservice(kuberay_manifest(ENTERPRISE, "inferplane")))
    assert schema_errors(rs) == []
    mutate(rs)
    errors = schema_errors(rs)
    assert errors and any(where in e for e in errors), errors


def test_the_embedded_serve_config_is_inferplane_builds_own(built):
    """One source: the plain `build` output at the cluster's config path and with GPUs, differing
    only where the manifest must: the proxy's address in a pod, and replicas pinned to labels."""
    path, cfg, docs = built
    from ray.serve.schema import ServeDeploySchema

    embedded = yaml.safe_load(rayservice(docs)["spec"]["serveConfigV2"])
    ServeDeploySchema(**embedded)
    plain = serve_config(path, "inferplane", gpu=True)
    assert embedded["http_options"] == {**plain["http_options"], "host": "0.0.0.0"}
    (app,), (plain_app,) = embedded["applications"], plain["applications"]
    assert app["args"] == {**plain_app["args"], "config": kuberay.CONFIG_MOUNT_PATH}
    assert {k: v for k, v in app.items() if k not in ("args", "deployments")} == \
        {k: v for k, v in plain_app.items() if k not in ("args", "deployments")}
    assert [d["name"] for d in app["deployments"]] == [s.name for s in cfg.substrates]
    for d, p in zip(app["deployments"], plain_app["deployments"], strict=True):
        options = dict(d["ray_actor_options"])
        options.pop("label_selector")
        assert options == {k: v for k, v in p["ray_actor_options"].items() if k != "label_selector"}
        assert {k: v for k, v in d.items() if k != "ray_actor_options"} == \
            {k: v for k, v in p.items() if k != "ray_actor_options"}


def test_every_substrate_is_pinned_to_a_worker_group_of_its_jurisdiction(built):
    _, cfg, docs = built
    rs = rayservice(docs)
    cluster = rs["spec"]["rayClusterConfig"]
    groups = cluster["workerGroupSpecs"]
    head_labels = cluster["headGroupSpec"].get("labels", {})
    t = cfg.policy.topology
    (app,) = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]
    by_name = {s.name: s for s in cfg.substrates}
    for d in app["deployments"]:
        s = by_name[d["name"]]
        selector = d["ray_actor_options"]["label_selector"]
        assert selector == {t.zone_label: s.topology.zone, t.jurisdiction_label: s.jurisdiction}
        matching = [g for g in groups if selector.items() <= g["labels"].items()]
        assert len(matching) == 1, (s.name, selector)
        (g,) = matching
        assert g["labels"] == {t.region_label: s.topology.region, t.zone_label: s.topology.zone,
                               t.jurisdiction_label: s.jurisdiction}
        assert g["template"]["spec"]["nodeSelector"] == {kuberay.DEFAULT_NODE_JURISDICTION_LABEL: s.jurisdiction}
        assert s.name in g["template"]["metadata"]["annotations"]["inferplane.io/substrates"].split(",")
        assert not selector.items() <= head_labels.items()  # no replica can start on the head
    # what KubeRay checks beyond the schema: group names are DNS labels, unique; no labels in rayStartParams
    names = [g["groupName"] for g in groups]
    assert len(set(names)) == len(names) and all(kuberay._DNS_LABEL.match(n) for n in names)
    assert all("labels" not in g["rayStartParams"] for g in [*groups, cluster["headGroupSpec"]])


def _gpus(container: dict) -> tuple[str | None, str | None]:
    r = container["resources"]
    return r["requests"].get("nvidia.com/gpu"), r["limits"].get("nvidia.com/gpu")


def test_vllm_replicas_get_their_gpus_and_nothing_else_does(built):
    _, cfg, docs = built
    rs = rayservice(docs)
    groups = {g["groupName"]: g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    (app,) = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]
    deployments = {d["name"]: d for d in app["deployments"]}
    hosted = {s: name for name, g in groups.items()
              for s in g["template"]["metadata"]["annotations"]["inferplane.io/substrates"].split(",")}
    assert any(isinstance(s, VllmSubstrate) for s in cfg.substrates)
    for s in cfg.substrates:
        g = groups[hosted[s.name]]
        (container,) = g["template"]["spec"]["containers"]
        if isinstance(s, VllmSubstrate):
            tp = s.vllm.engine.tensor_parallel_size
            assert deployments[s.name]["ray_actor_options"]["num_gpus"] == tp
            assert _gpus(container) == (str(tp), str(tp))  # one replica per pod
            assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
            scaling = s.vllm.replicas.autoscaling
            low, high = (scaling.min_replicas, scaling.max_replicas) if scaling else (s.vllm.replicas.num_replicas,) * 2
            assert g["minReplicas"] <= low and g["maxReplicas"] >= high
        else:
            assert "num_gpus" not in deployments[s.name]["ray_actor_options"]
            assert _gpus(container) == (None, None)
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert _gpus(head) == (None, None)
    autoscaled = any(g["minReplicas"] != g["maxReplicas"] for g in groups.values())
    assert rs["spec"]["rayClusterConfig"].get("enableInTreeAutoscaling", False) is autoscaled


def test_provider_keys_come_from_a_secret_and_never_appear(tmp_path, monkeypatch, capsys):
    cfg = load_config(ENTERPRISE)
    envs = {s.openai_compatible.api_key_env: s.name for s in cfg.substrates
            if isinstance(s, OpenAICompatibleSubstrate) and s.openai_compatible.api_key_env}
    assert envs
    planted = {env: f"sk-planted-{i}-9f2c7e1b4d" for i, env in enumerate(envs)}
    for env, value in planted.items():
        monkeypatch.setenv(env, value)
    out = tmp_path / "rayservice.yaml"
    assert main(["build", ENTERPRISE, "--kuberay", "-o", str(out), "--secret-name", "llm-keys",
                 "--history-file", str(tmp_path / "history.jsonl")]) == 0
    assert "kubectl apply -f" in capsys.readouterr().out
    text = out.read_text()
    assert not [v for v in planted.values() if v in text]
    docs = list(yaml.safe_load_all(text))
    cluster = rayservice(docs)["spec"]["rayClusterConfig"]
    assert "env" not in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    seen = {}
    for g in cluster["workerGroupSpecs"]:
        (container,) = g["template"]["spec"]["containers"]
        hosted = set(g["template"]["metadata"]["annotations"]["inferplane.io/substrates"].split(","))
        for e in container.get("env", []):
            assert set(e) == {"name", "valueFrom"}  # never a `value`
            assert e["valueFrom"] == {"secretKeyRef": {"name": "llm-keys", "key": e["name"]}}
            assert envs[e["name"]] in hosted  # a key reaches only the pods of the substrate using it
            seen[e["name"]] = g["groupName"]
    assert set(seen) == set(envs)


def test_the_manifest_round_trips_through_yaml_and_carries_the_config(tmp_path, capsys):
    out = tmp_path / "rayservice.yaml"
    assert main(["build", ENTERPRISE, "--kuberay", "-o", str(out), "--image", "registry.example/inferplane:1.0",
                 "--ray-version", "2.60.0", "--history-file", str(tmp_path / "history.jsonl")]) == 0
    assert "does not contain inferplane" not in capsys.readouterr().out  # the note is for the default image
    docs = list(yaml.safe_load_all(out.read_text()))
    assert docs == kuberay_manifest(ENTERPRISE, "inferplane", image="registry.example/inferplane:1.0")
    config_map, rs = docs
    assert config_map["kind"] == "ConfigMap"
    assert parse_config(config_map["data"]["config.yaml"], source="<cm>") == load_config(ENTERPRISE)
    cluster = rs["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for p in pods:
        spec = p["template"]["spec"]
        (container,) = spec["containers"]
        assert container["image"] == "registry.example/inferplane:1.0"
        assert {"name": "inferplane-config", "configMap": {"name": config_map["metadata"]["name"]}} in spec["volumes"]
        assert any(kuberay.CONFIG_MOUNT_PATH.startswith(m["mountPath"]) for m in container["volumeMounts"])
        assert {"name": "serve", "containerPort": load_config(ENTERPRISE).ingress.port} in container["ports"]
    assert cluster["rayVersion"] == "2.60.0"


def test_a_substrate_in_a_jurisdiction_group_is_refused_with_the_reason(tmp_path, capsys):
    text = Path(ENTERPRISE).read_text()
    assert load_config(ENTERPRISE).substrates[0].name == "gpu-fra"
    path = tmp_path / "eu.yaml"
    path.write_text(text.replace("jurisdiction: DE", "jurisdiction: EU", 1))  # gpu-fra's
    load_config(str(path))  # valid as a config: only its nodes cannot be labelled
    assert main(["build", str(path), "--kuberay", "-o", str(tmp_path / "out.yaml")]) == 1
    err = capsys.readouterr().err
    assert "gpu-fra" in err and "`EU`" in err and not (tmp_path / "out.yaml").exists()


@pytest.mark.parametrize("pin", [False, True])
def test_a_serve_config_states_the_replica_options_the_app_sets(tmp_path, pin):
    """A Serve config's ``ray_actor_options`` replace the code's as a whole: `build` writes the ones
    the app builder would set (no cluster: the application is only bound)."""
    from deployments.app import build_app

    text = Path(ENTERPRISE).read_text()
    if pin:
        text = text.replace("\npolicy:\n", "\npolicy:\n  topology: {pin_replicas_to_labels: true}\n", 1)
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert load_config(str(path)).policy.topology.pin_replicas_to_labels is pin
    (app,) = serve_config(str(path), "inferplane", gpu=True)["applications"]
    handles = build_app(text, gpu=True)._bound_deployment.init_args[2]
    for d in app["deployments"]:
        assert d["ray_actor_options"] == handles[d["name"]]._bound_deployment.ray_actor_options
        assert ("label_selector" in d["ray_actor_options"]) is pin
