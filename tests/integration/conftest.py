"""A real local Ray and a real Serve application, shared by the integration tests.

Everything stays on loopback (Ray's node address included, see deployments.runtime) and the
cluster is this session's own: started here, shut down here, never `ray stop`.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from dataclasses import dataclass
from pathlib import Path

import pytest

from deployments.runtime import free_loopback_port as free_port

EU_KEY = "sk-inferplane-demo-eu"
GLOBAL_KEY = "sk-inferplane-demo-global"
EMULATED_CONFIG = Path(__file__).parent / "emulated.yaml"
LOCAL_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "local.yaml"


@dataclass
class Plane:
    url: str
    app_name: str
    config_text: str
    audit_dir: str = ""
    metrics_url: str = ""

    def substrate(self, name: str):
        from ray import serve

        return serve.get_deployment_handle(name, app_name=self.app_name)


def poll(read, timeout_s: float, interval_s: float = 0.5):
    """``read()`` until it returns something other than None, for at most ``timeout_s``; its last
    result (None when it never had one)."""
    import time

    deadline = time.monotonic() + timeout_s
    value = read()
    while value is None and time.monotonic() < deadline:
        time.sleep(interval_s)
        value = read()
    return value


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def _deploy(config_text: str, app_name: str, ready_timeout_s: float, proxy_location: str = "EveryNode"):
    """Deploy ``config_text`` on a free loopback port; returns (Plane, teardown)."""
    from ray import serve

    from deployments import runtime

    import tempfile

    port = free_port()
    audit_dir = tempfile.mkdtemp(prefix=f"{app_name}-audit-")
    metrics_port = free_port()
    # Each plane under test writes its own audit set and serves metrics on its own port.
    text = config_text.rstrip() + (f"\ntelemetry: {{audit_dir: {audit_dir}, metrics_port: {metrics_port}, "
                                   "audit_flush_interval_ms: 500}\n")
    runtime.deploy(text, app_name, "127.0.0.1", port, proxy_location=proxy_location)
    url = f"http://127.0.0.1:{port}"
    runtime.wait_ready(url, timeout_s=ready_timeout_s)

    def teardown() -> None:
        from deployments.placement_actor import remove_actors

        serve.delete(app_name)
        serve.shutdown()
        remove_actors(app_name)

    return Plane(url=url, app_name=app_name, config_text=text, audit_dir=audit_dir,
                 metrics_url=f"http://127.0.0.1:{metrics_port}/metrics"), teardown


@pytest.fixture(scope="module")
def emulated_plane(ray_cluster):
    plane, teardown = _deploy(EMULATED_CONFIG.read_text(), "inferplane-test", 120)
    yield plane
    teardown()


def deploy_local_vllm(app_name: str):
    """The embedded default config (its vLLM engine's model prepared first) as ``app_name``;
    returns (Plane, teardown)."""
    from inferplane.cli.models import prepare_config_models

    prepare_config_models(str(LOCAL_CONFIG))
    return _deploy(LOCAL_CONFIG.read_text(), app_name, 300)
