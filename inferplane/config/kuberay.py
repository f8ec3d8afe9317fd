"""A KubeRay ``RayService`` (``ray.io/v1``) for a config: ``inferplane build CONFIG --kuberay``.

The manifest is two documents: a ConfigMap holding the config file, and the RayService whose
``serveConfigV2`` is the Serve config ``inferplane build`` writes (``cli.deploy.serve_config``,
passed in here, never rebuilt), and whose Ray cluster is derived from the fleet:

- one worker group per distinct (country, region, zone, GPUs per replica) of the substrates. Its
  Ray node labels (the group's ``labels``; KubeRay refuses ``rayStartParams['labels']``) are the
  config's region, zone and jurisdiction labels, and the Serve config pins each substrate's
  replicas to its zone and country (``label_selector``), so a replica starts only in its group.
  The pods' ``nodeSelector`` puts the group on Kubernetes nodes of its country.
- a vLLM substrate's group has one pod per replica, each requesting the replica's
  ``tensor_parallel_size`` GPUs (``nvidia.com/gpu``; KubeRay passes the count to ``ray start``),
  between the replicas' minimum and maximum; KubeRay's autoscaler adds pods when Serve autoscales.
  Emulated and provider-API substrates hold no CPU or GPU in Ray (``num_cpus: 0``): one pod per
  group carries all their replicas.
- a provider API's key reaches only its group's pods, from a Kubernetes Secret
  (``valueFrom.secretKeyRef``), under the key named by its ``api_key_env``: never a value here.
- the head runs the ingress, the placement actor and the dashboard; it has no jurisdiction label,
  so no substrate replica can start there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

from inferplane.config.replica_options import node_country
from inferplane.config.schema import InferplaneConfig, OpenAICompatibleSubstrate, VllmSubstrate
from inferplane.config.sizing import replica_counts

DEFAULT_RAY_VERSION = "2.60.0"
DEFAULT_IMAGE = f"rayproject/ray:{DEFAULT_RAY_VERSION}-py311"
"""Ray's image: it must be extended with inferplane (``pip install`` it) before it can serve."""
DEFAULT_SECRET = "inferplane-provider-keys"
DEFAULT_NODE_JURISDICTION_LABEL = "inferplane.io/jurisdiction"
CONFIG_MOUNT_DIR = "/etc/inferplane"
CONFIG_MOUNT_PATH = f"{CONFIG_MOUNT_DIR}/config.yaml"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    """What the manifest takes beyond the config: names, the image and pod sizes."""

    name: str = "inferplane"
    image: str | None = None
    """Default ``rayproject/ray:{ray_version}-py311``."""
    ray_version: str = DEFAULT_RAY_VERSION
    secret_name: str = DEFAULT_SECRET
    node_jurisdiction_label: str = DEFAULT_NODE_JURISDICTION_LABEL
    head_cpu: str = "2"
    head_memory: str = "8Gi"
    gpu_worker_cpu: str = "8"
    gpu_worker_memory: str = "48Gi"
    cpu_worker_cpu: str = "1"
    cpu_worker_memory: str = "2Gi"


@dataclass(frozen=True, slots=True)
class WorkerGroup:
    """Pods of one country, region and zone with one GPU count, and the substrates they run."""

    name: str
    country: str
    region: str
    zone: str
    gpus_per_pod: int
    substrates: tuple[str, ...]
    replicas: int
    min_replicas: int
    max_replicas: int
    secret_envs: tuple[str, ...]


def worker_groups(cfg: InferplaneConfig) -> list[WorkerGroup]:
    """The worker groups of the fleet, in the order of their first substrate."""
    keyed: dict[tuple[str, str, str, int], list] = {}
    for s in cfg.substrates:
        gpus = s.vllm.engine.tensor_parallel_size if isinstance(s, VllmSubstrate) else 0
        keyed.setdefault((node_country(cfg, s), s.topology.region, s.topology.zone, gpus), []).append(s)
    groups, names = [], set()
    for (country, region, zone, gpus), members in keyed.items():
        for value in (country, region, zone):
            if len(value) > 63 or not _LABEL_VALUE.match(value):
                raise ValueError(f"`{value}` is not a valid Kubernetes label value, needed as a node label")
        name = _group_name(f"{country}-{zone}-{f'gpu{gpus}' if gpus else 'cpu'}".lower(), names)
        if gpus:  # one pod per replica, as many as the replicas may be
            counts = [replica_counts(s.settings.replicas) for s in members]
            sizes = (sum(c.initial for c in counts), sum(c.minimum for c in counts), sum(c.maximum for c in counts))
        else:  # replicas hold no CPU or GPU in Ray: one pod runs them all
            sizes = (1, 1, 1)
        envs = tuple(dict.fromkeys(s.openai_compatible.api_key_env for s in members
                                   if isinstance(s, OpenAICompatibleSubstrate) and s.openai_compatible.api_key_env))
        groups.append(WorkerGroup(name, country, region, zone, gpus, tuple(s.name for s in members), *sizes, envs))
    return groups


def _group_name(raw: str, taken: set[str]) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", raw).strip("-")[:55].strip("-")
    base, i = name, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


def manifest(cfg: InferplaneConfig, config_text: str, serve_config: dict, options: ClusterOptions) -> list[dict]:
    """The ConfigMap and the RayService, as documents for ``yaml.safe_dump_all``."""
    if len(options.name) > 47 or not _DNS_LABEL.match(options.name) or options.name[0].isdigit():
        # KubeRay names its clusters and services after the RayService, with suffixes.
        raise ValueError(f"`{options.name}` cannot name a RayService: lower-case letters, digits and '-', "
                         "starting with a letter, at most 47")
    t = cfg.policy.topology
    config_map = f"{options.name}-config"
    image = options.image or f"rayproject/ray:{options.ray_version}-py311"
    groups = worker_groups(cfg)
    port = cfg.ingress.port
    volume = {"name": "inferplane-config", "configMap": {"name": config_map}}
    mount = {"name": "inferplane-config", "mountPath": CONFIG_MOUNT_DIR, "readOnly": True}

    def resources(cpu: str, memory: str, gpus: int = 0) -> dict:
        amounts = {"cpu": cpu, "memory": memory, **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
        return {"requests": dict(amounts), "limits": dict(amounts)}

    head_labels = {}
    if cfg.ingress.topology is not None:
        head_labels = {t.region_label: cfg.ingress.topology.region, t.zone_label: cfg.ingress.topology.zone}
    head = {
        "rayStartParams": {"dashboard-host": "0.0.0.0"},
        **({"labels": head_labels} if head_labels else {}),
        "template": {"spec": {
            "containers": [{
                "name": "ray-head",
                "image": image,
                "ports": [{"name": "gcs-server", "containerPort": 6379},
                          {"name": "dashboard", "containerPort": 8265},
                          {"name": "client", "containerPort": 10001},
                          {"name": "serve", "containerPort": port}],
                "resources": resources(options.head_cpu, options.head_memory),
                "volumeMounts": [mount],
            }],
            "volumes": [volume],
        }},
    }
    workers = []
    for g in groups:
        container = {
            "name": "ray-worker",
            "image": image,
            "ports": [{"name": "serve", "containerPort": port}],
            "resources": resources(options.gpu_worker_cpu if g.gpus_per_pod else options.cpu_worker_cpu,
                                   options.gpu_worker_memory if g.gpus_per_pod else options.cpu_worker_memory,
                                   g.gpus_per_pod),
            "volumeMounts": [mount],
        }
        if g.secret_envs:
            container["env"] = [{"name": env, "valueFrom": {"secretKeyRef": {"name": options.secret_name, "key": env}}}
                                for env in g.secret_envs]
        pod: dict = {"nodeSelector": {options.node_jurisdiction_label: g.country},
                     "containers": [container], "volumes": [volume]}
        if g.gpus_per_pod:
            pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
            # vLLM's workers share tensors through /dev/shm, which a container's default 64 MiB starves.
            pod["volumes"] = [volume, {"name": "dshm", "emptyDir": {"medium": "Memory"}}]
            container["volumeMounts"] = [mount, {"name": "dshm", "mountPath": "/dev/shm"}]
        workers.append({
            "groupName": g.name,
            "replicas": g.replicas,
            "minReplicas": g.min_replicas,
            "maxReplicas": g.max_replicas,
            "rayStartParams": {},
            "labels": {t.region_label: g.region, t.zone_label: g.zone, t.jurisdiction_label: g.country},
            "template": {"metadata": {"annotations": {"inferplane.io/substrates": ",".join(g.substrates)}},
                         "spec": pod},
        })
    autoscaled = any(g.min_replicas != g.max_replicas for g in groups)
    cluster: dict = {"rayVersion": options.ray_version}
    if autoscaled:
        cluster["enableInTreeAutoscaling"] = True
    cluster |= {"headGroupSpec": head, "workerGroupSpecs": workers}
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": config_map},
         "data": {"config.yaml": config_text}},
        {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": options.name},
         "spec": {"serveConfigV2": yaml.safe_dump(serve_config, sort_keys=False), "rayClusterConfig": cluster}},
    ]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the config file, the Serve config) as ``|`` blocks, readable in the file;
    a dict used twice (the config volume) written out twice, not as a YAML alias."""

    def ignore_aliases(self, data) -> bool:
        return True


_Dumper.add_representer(str, lambda d, v: d.represent_scalar(
    "tag:yaml.org,2002:str", v, style="|" if "\n" in v else None))


def dump(docs: list[dict]) -> str:
    """The documents as one YAML stream for ``kubectl apply -f``."""
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False)
