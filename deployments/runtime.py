"""Starting, deploying and stopping the plane on Ray: what `inferplane run` and `deploy` do.

Ray picks the machine's external address for its node unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``
is 0 before ``ray`` is imported (measured with Ray 2.60): ``loopback_environment()`` sets it, so
a local plane stays on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import time

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def loopback_environment() -> None:
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_ray(*, dashboard: bool = True) -> None:
    loopback_environment()
    import ray

    # address="local": always a new cluster of our own, never one that happens to be running here.
    ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1", logging_level="WARNING",
             log_to_driver=False)


def connect(address: str, timeout_s: float = 30.0) -> None:
    """Connect to an existing cluster; fail instead of retrying forever on a dead address."""
    import concurrent.futures

    import ray

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(ray.init, address=address, logging_level="WARNING")
        try:
            future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            raise ConnectionError(f"no Ray cluster answered at {address} within {timeout_s:.0f}s") from None


def deploy(config_text: str, app_name: str, host: str, port: int, *, gpu: bool | None = None,
           proxy_location: str = "EveryNode", files: list[dict] | None = None, start_proxy: bool = True) -> None:
    """Deploy the app: apply the config to its placement actor (creating it, or keeping its state:
    ``placement_actor.apply_config``), then hand Serve the application, which restarts only the
    deployments the config changed (``deployments.app``). ``gpu=None`` asks Ray for GPUs for vLLM
    substrates exactly when the cluster has any (then each replica gets ``tensor_parallel_size`` of
    them). ``files``: the files the config was merged from (``inferplane models list`` reads them).
    ``start_proxy=False``: the application runs already (``models apply``); its proxy stays as it is."""
    import ray
    from ray import serve

    from deployments.app import build_app
    from deployments.placement_actor import apply_config
    from inferplane.config import parse_config
    from inferplane.config.sizing import external_scaling

    if gpu is None:
        gpu = ray.cluster_resources().get("GPU", 0) > 0

    scaled_externally, _ = external_scaling(parse_config(config_text, source="<config>"))
    apply_config(app_name, config_text, files)
    if start_proxy:
        serve.start(http_options={"host": host, "port": port}, proxy_location=proxy_location)
    serve.run(build_app(config_text, app_name, gpu=gpu), name=app_name, route_prefix="/", blocking=False,
              external_scaler_enabled=scaled_externally)


def wait_ready(url: str, timeout_s: float = 300.0) -> float:
    """Poll ``/healthz`` until the ingress has a fresh snapshot; returns seconds waited."""
    import httpx

    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout_s:
        try:
            r = httpx.get(f"{url}/healthz", timeout=2.0)
            if r.status_code == 200:
                return time.monotonic() - t0
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    raise TimeoutError(f"the plane was not ready after {timeout_s:.0f}s (last: {last})")


def teardown(app_name: str) -> None:
    """Delete the app and its placement actor, then leave Ray."""
    import ray
    from ray import serve

    from deployments.placement_actor import remove_actors

    try:
        serve.delete(app_name)
        serve.shutdown()
    finally:
        remove_actors(app_name)
        ray.shutdown()
