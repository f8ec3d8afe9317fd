"""The chaos suite: faults, load, bad input and secrets against a real plane on a local Ray.

One Ray for the whole package (started here, shut down when the package's last test is done, never
`ray stop`), one fake OpenAI-compatible provider on loopback, and one chaos plane
(``chaos.yaml``) that the modules break and watch recover in turn. Modules that need another
config deploy it as a second Serve application beside the plane, under its own route prefix.

Every scenario records what it saw in ``REPORT``; ``pytest_terminal_summary`` prints the table at
the end of the run (``pytest -m chaos``).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.chaos.fake_provider import FakeProvider

# Loopback Ray, no auth token, no usage stats: set on import by the integration conftest.
from tests.integration.conftest import Plane, _deploy, free_port

HERE = Path(__file__).parent
CHAOS_CONFIG = HERE / "chaos.yaml"
APP_NAME = "inferplane-chaos"
PROVIDER_KEY_ENV = "INFERPLANE_CHAOS_PROVIDER_KEY"
# A planted secret: it must reach the fake provider's Authorization header and nothing else.
PROVIDER_KEY = "sk-chaos-planted-provider-secret-7f3a9c51e0"


# -- the reliability report ------------------------------------------------------------------------

@dataclass
class ScenarioFigures:
    scenario: str
    sent: int = 0
    answered: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    recovery_s: float | None = None
    recovery_what: str = ""
    boundary_violations: int = 0
    audit_missing: int | None = None
    note: str = ""

    def add_replies(self, replies) -> ScenarioFigures:
        for r in replies:
            self.sent += 1
            if r.answered:
                self.answered += 1
            elif r.lost:
                self.lost += 1
            else:
                self.errors[r.outcome] += 1
        return self


class ReliabilityReport:
    def __init__(self) -> None:
        self.started_at = time.monotonic()
        self.rows: dict[str, ScenarioFigures] = {}

    def scenario(self, name: str) -> ScenarioFigures:
        """The figures of one scenario (created on first use, in run order)."""
        return self.rows.setdefault(name, ScenarioFigures(name))

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_at

    def render(self) -> str:
        head = ("scenario", "sent", "answered", "errors by code", "lost", "recovery", "boundary viol.",
                "no audit row")
        lines = []
        for f in self.rows.values():
            errors = ", ".join(f"{k}={v}" for k, v in sorted(f.errors.items())) or "-"
            rec = "-" if f.recovery_s is None else f"{f.recovery_s:.1f}s {f.recovery_what}".strip()
            lines.append((f.scenario, str(f.sent), str(f.answered), errors, str(f.lost), rec,
                          str(f.boundary_violations), "-" if f.audit_missing is None else str(f.audit_missing)))
        widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(head)]
        out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)),
               "  ".join("-" * w for w in widths)]
        out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in lines]
        notes = [f"  {f.scenario}: {f.note}" for f in self.rows.values() if f.note]
        if notes:
            out += ["", "notes:", *notes]
        return "\n".join(out)


REPORT = ReliabilityReport()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if REPORT.rows:
        terminalreporter.section("inferplane reliability report (tests/chaos)")
        terminalreporter.write_line(REPORT.render())


@pytest.fixture(scope="session")
def report() -> ReliabilityReport:
    return REPORT


# -- jurisdiction checks ---------------------------------------------------------------------------

class Boundaries:
    """Which substrate a tenant may execute on, from the deployed config (containment, as the
    plane defines it: every country a substrate may run in is allowed to the tenant)."""

    def __init__(self, config_text: str) -> None:
        from inferplane.config import parse_config
        from inferplane.jurisdiction import ANY_JURISDICTION, JurisdictionCatalog

        cfg = parse_config(config_text, source="<chaos>")
        catalog = JurisdictionCatalog(cfg.jurisdiction_groups)
        self.jurisdiction = {s.name: s.jurisdiction for s in cfg.substrates}
        self._countries = {s.name: catalog.expand(s.jurisdiction) for s in cfg.substrates}
        self._allowed = {}
        for t in cfg.tenants:
            if ANY_JURISDICTION in t.allowed_jurisdictions:
                self._allowed[t.name] = None
            else:
                self._allowed[t.name] = frozenset().union(*(catalog.expand(j) for j in t.allowed_jurisdictions))

    def allowed(self, tenant: str, substrate: str) -> bool:
        countries = self._countries.get(substrate)
        if countries is None:
            return False  # a substrate the config does not know is never allowed
        allowed = self._allowed[tenant]
        return allowed is None or countries <= allowed

    def violations(self, replies=(), rows=()) -> list[str]:
        """Replies whose ``x-inferplane-substrate`` header, and audit rows whose substrate, lie
        outside the tenant's jurisdictions."""
        out = []
        for r in replies:
            if r.substrate and not self.allowed(r.ask.tenant, r.substrate):
                out.append(f"reply {r.placement_id}: {r.ask.tenant} on {r.substrate}")
        for row in rows:
            if row["substrate"] and row["tenant"] and not self.allowed(row["tenant"], row["substrate"]):
                out.append(f"row {row['placement_id']}: {row['tenant']} on {row['substrate']}")
        return out


# -- Ray, the fake provider, the planes ------------------------------------------------------------

@pytest.fixture(scope="package")
def chaos_ray():
    import ray

    # Inherited by this Ray's workers: the only place the provider key is given to the plane.
    os.environ[PROVIDER_KEY_ENV] = PROVIDER_KEY
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="package")
def fake_provider():
    provider = FakeProvider(PROVIDER_KEY).start()
    yield provider
    provider.stop()


@dataclass
class ChaosPlane(Plane):
    boundaries: Boundaries | None = None
    bound_s: float = 0.0
    """The policy's snapshot staleness bound, seconds."""

    def replicas(self, deployment: str) -> list[str]:
        """Names of the deployment's live Serve replica actors (namespace ``serve``)."""
        import ray

        prefix = f"SERVE_REPLICA::{self.app_name}#{deployment}#"
        return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                      if a["name"].startswith(prefix))

    def actor(self):
        import ray

        from deployments.placement_actor import NAMESPACE, actor_name

        return ray.get_actor(actor_name(self.app_name), namespace=NAMESPACE)

    def status(self, timeout_s: float = 20.0) -> dict:
        import ray

        return ray.get(self.actor().status.remote(), timeout=timeout_s)

    def circuit(self, substrate: str) -> str:
        return next(s for s in self.status()["substrates"] if s["name"] == substrate)["circuit"]["state"]

    def rows(self) -> list[dict]:
        from inferplane.telemetry.audit import read_audit

        return read_audit(self.audit_dir).to_pylist()


def chaos_config_text(provider_port: int) -> str:
    return CHAOS_CONFIG.read_text().replace("__PROVIDER_PORT__", str(provider_port))


def _chaos_plane(plane: Plane) -> ChaosPlane:
    from inferplane.config import parse_config

    cfg = parse_config(plane.config_text, source="<chaos>")
    return ChaosPlane(url=plane.url, app_name=plane.app_name, config_text=plane.config_text,
                      audit_dir=plane.audit_dir, metrics_url=plane.metrics_url,
                      boundaries=Boundaries(plane.config_text),
                      bound_s=cfg.policy.snapshot_staleness_bound_ms / 1000.0)


@pytest.fixture(scope="package")
def chaos_plane(chaos_ray, fake_provider):
    plane, teardown = _deploy(chaos_config_text(fake_provider.port), APP_NAME, 180)
    yield _chaos_plane(plane)
    teardown()


def deploy_beside(base: ChaosPlane, config_text: str, app_name: str, route_prefix: str,
                  ready_timeout_s: float = 180.0):
    """Deploy another config as a second Serve application on the same proxy, under
    ``route_prefix``, with its own audit dir and metrics port; returns (ChaosPlane, teardown)."""
    import ray
    from ray import serve

    from deployments import runtime
    from deployments.app import build_app
    from deployments.placement_actor import NAMESPACE, actor_name

    audit_dir = tempfile.mkdtemp(prefix=f"{app_name}-audit-")
    metrics_port = free_port()
    text = config_text.rstrip() + (f"\ntelemetry: {{audit_dir: {audit_dir}, metrics_port: {metrics_port}, "
                                   "audit_flush_interval_ms: 500}\n")
    serve.run(build_app(text, app_name), name=app_name, route_prefix=route_prefix, blocking=False)
    url = base.url.rstrip("/") + route_prefix
    try:
        runtime.wait_ready(url, timeout_s=ready_timeout_s)
    except TimeoutError:
        serve.delete(app_name)
        raise

    def teardown() -> None:
        serve.delete(app_name)
        try:
            ray.kill(ray.get_actor(actor_name(app_name), namespace=NAMESPACE))
        except ValueError:
            pass

    plane = Plane(url=url, app_name=app_name, config_text=text, audit_dir=audit_dir,
                  metrics_url=f"http://127.0.0.1:{metrics_port}/metrics")
    return _chaos_plane(plane), teardown


def ray_processes(title_prefix: str = "ray::") -> list:
    """psutil processes of this test session's own Ray (the children of its raylet) whose
    command line starts with ``title_prefix`` (Ray titles worker processes ``ray::<Actor>``).
    Never another engineer's Ray on the same machine."""
    import psutil
    import ray

    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    out = []
    for p in psutil.Process(raylet).children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith(title_prefix):
                out.append(p)
        except psutil.Error:
            continue
    return out


def until(predicate, timeout_s: float, step_s: float = 0.2):
    """Poll ``predicate`` until it returns something truthy, at most ``timeout_s``; returns the
    last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step_s)
