"""Topology from Ray node labels on a three-node cluster on this machine (`ray.cluster_utils`):
placement prefers the ingress's zone, and a replica on a node outside a tenant's jurisdiction is
never used for that tenant, whatever its substrate declares."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import httpx
import pytest
import ray

from tests.integration.conftest import EU_KEY, GLOBAL_KEY, _deploy

pytestmark = pytest.mark.integration

CONFIG = Path(__file__).parent / "multinode.yaml"
NODES = [
    {"region": "eu-central", "zone": "eu-central-1a", "jurisdiction": "DE"},
    {"region": "eu-central", "zone": "eu-central-1b", "jurisdiction": "DE"},
    {"region": "us-east", "zone": "us-east-1a", "jurisdiction": "US"},
]


@pytest.fixture(scope="module")
def labelled_plane(tmp_path_factory):
    from ray.cluster_utils import Cluster

    os.makedirs(os.path.join(os.environ.get("RAY_TMPDIR", "/tmp"), "ray"), exist_ok=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "labels": NODES[0]})
    for labels in NODES[1:]:
        cluster.add_node(num_cpus=1, labels=labels)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    try:
        plane, teardown = _deploy(CONFIG.read_text(), "inferplane-multinode", 180, proxy_location="HeadOnly")
        yield plane
        teardown()
    finally:
        ray.shutdown()
        cluster.shutdown()


def _status(plane) -> dict:
    from deployments.placement_actor import NAMESPACE, actor_name

    actor = ray.get_actor(actor_name(plane.app_name), namespace=NAMESPACE)
    return ray.get(actor.status.remote())


def _where(plane, key: str, n: int) -> Counter:
    out = Counter()
    for _ in range(n):
        r = httpx.post(f"{plane.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
                       timeout=30)
        out[r.headers.get("x-inferplane-substrate", f"status {r.status_code}")] += 1
    return out


def test_replicas_report_their_nodes_and_the_mismatch(labelled_plane):
    status = _status(labelled_plane)
    by_name = {s["name"]: s for s in status["substrates"]}
    for name, zone in [("eu-a-emulated", "eu-central-1a"), ("eu-b-emulated", "eu-central-1b"),
                       ("us-emulated", "us-east-1a"), ("misplaced-emulated", "us-east-1a")]:
        replicas = by_name[name]["replicas"]
        assert replicas and all(r["zone"] == zone for r in replicas), (name, replicas)
    assert by_name["misplaced-emulated"]["node_jurisdiction_mismatch"] == ["US"]
    assert by_name["eu-a-emulated"]["node_jurisdiction_mismatch"] == []
    assert {i["zone"] for i in status["ingress"]} == {"eu-central-1a"}


def test_placement_prefers_the_ingress_zone(labelled_plane):
    assert _where(labelled_plane, GLOBAL_KEY, 10) == Counter({"eu-a-emulated": 10})


def test_eu_tenant_never_reaches_a_replica_on_a_us_node(labelled_plane):
    # With everything healthy, and then with every correctly placed DE substrate down, so that the
    # misplaced one (declared DE, running on a US node) is the only DE-declared substrate left.
    seen = _where(labelled_plane, EU_KEY, 10)
    assert "misplaced-emulated" not in seen and "us-emulated" not in seen
    for name in ("eu-a-emulated", "eu-b-emulated"):
        labelled_plane.substrate(name).inject.remote(outage=True).result(timeout_s=10)
    try:
        seen = _where(labelled_plane, EU_KEY, 5)
        # The misplaced substrate claims DE, but its replica runs on a US node: refused, not used.
        assert set(seen) <= {"status 503", "status 403"}, seen
        assert _where(labelled_plane, GLOBAL_KEY, 3).keys() <= {"misplaced-emulated", "us-emulated"}
    finally:
        for name in ("eu-a-emulated", "eu-b-emulated"):
            labelled_plane.substrate(name).inject.remote(outage=False).result(timeout_s=10)
