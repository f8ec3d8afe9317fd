"""Prometheus metrics of the plane, correct across every ingress replica from one scrape endpoint.

A scrape through the Serve proxy lands on one random ingress replica, so per-replica metrics would
be wrong. Instead each ingress replica records into a ``MetricsDelta`` (plain dicts keyed by label
tuples; histogram bucket counts), hands it to the PlacementActor on its periodic sync and starts a
new one. The actor merges every delta into ``PlaneMetrics``, a ``prometheus_client`` collector in
its own ``CollectorRegistry``, served by ``serve_metrics``: the only endpoint to scrape.

``MetricsOutbox`` makes the hand-over exactly-once: each delta gets a sequence number and stays
in the outbox until a sync that carried it succeeds; ``PlaneMetrics.apply`` skips a
``(source, seq)`` it has already merged, so a sync that timed out after the actor applied it is
not counted twice when resent.

Metrics (counters end in ``_total``; times in seconds; money in USD):

- ``inferplane_placements_total{tenant,model,sla_class,substrate,spillover}``: placements, one per
  ``place()`` that named a substrate (a retry is another placement).
- ``inferplane_spillovers_total{from_substrate,to_substrate,reason}``: placements off the primary.
- ``inferplane_rejections_total{code,tenant,model}``: requests refused, once per request, by the
  code it was refused with: the decision's ``RejectionCode`` (``jurisdiction``, ``context_window``,
  ``capacity``, ``unhealthy``...), the hold queue's (``queue_full``, ``shed``), or the ingress's
  own (``auth``, ``invalid``, ``snapshot_stale``; see ``rejection_code_for``).
- ``inferplane_requests_total{tenant,model,sla_class,substrate,outcome}``: finished requests that
  ran on a substrate, ``outcome`` ``ok`` or ``error``. This and the per-request metrics below are
  a function of the request's ``RequestRecord`` (``MetricsDelta.record_request``).
- ``inferplane_model_version_requests_total{model,version,outcome}``: finished requests of a model
  with versions (a canary), by the version each was given, ``outcome`` ``ok``, ``error`` or
  ``refused``: the split as served, beside the split configured (the decision's ``rollout``).
- ``inferplane_input_tokens_total`` / ``inferplane_output_tokens_total{tenant,substrate}``.
- ``inferplane_cost_usd_total{tenant,substrate}``: attributed cost (``telemetry.cost``).
- ``inferplane_prefix_predicted_tokens_total{tenant,substrate}``: prompt tokens placement predicted
  the substrate's prefix cache would serve (the decision's ``predicted_prefix_hit`` x the request's
  input tokens); over ``inferplane_input_tokens_total``, the predicted hit ratio.
- ``inferplane_prefix_cached_tokens_total{tenant,substrate}``: prompt tokens the engine reported it
  served from its prefix cache (the measured side; only substrates that report it).
- ``inferplane_placement_duration_seconds{result}``: time in ``place()`` (histogram).
- ``inferplane_request_duration_seconds{substrate,sla_class}``: end-to-end time of successful
  requests, from receipt (histogram).
- ``inferplane_time_to_first_token_seconds{substrate,sla_class}`` and
  ``inferplane_time_per_output_token_seconds{substrate}`` (histograms).
- ``inferplane_hold_queue_wait_seconds{tenant,sla_class,result}``: time requests waited in an
  ingress's hold queue (``plane.queue``), ``result`` ``dispatched`` or ``refused`` (histogram).
- ``inferplane_ttft_residual_ratio{substrate}`` and ``inferplane_tpot_residual_ratio{substrate}``:
  observed over predicted TTFT and time per output token of successful placed requests
  (``telemetry.drift.residuals``; 1 is a perfect prediction, 2 twice as slow), histograms with
  log-spaced buckets around 1 (``RESIDUAL_BUCKETS``).
- ``inferplane_sovereignty_violations_total{tenant,substrate}``: placed requests whose substrate's
  jurisdiction is not within the tenant's allowed jurisdictions (``jurisdiction.is_within``). It
  must stay 0: every (tenant, substrate) pair of the config that could violate has a 0 sample, so
  ``increase()`` sees the first one.
- ``inferplane_tenant_budget_usd{tenant}`` (tenants with a budget: their budget per period) and
  ``inferplane_tenant_spend_usd{tenant}`` (attributed spend in the current period, from the actor's
  latest snapshot; every tenant of the config).
- ``inferplane_substrate_drift{substrate,kind}``: 1 while the actor's ``DriftDetector``
  (``telemetry.drift``, fed the residuals the ingress replicas hand over with their deltas) flags
  the substrate, ``kind`` ``ttft``, ``tpot`` (residuals drifting) or ``size`` (TTFT no longer
  tracking prompt size); 0 otherwise.
- ``inferplane_audit_rows_dropped_total``: audit rows an ingress could not queue.
- Per substrate, from the actor's latest snapshot (a signal that is missing has no sample):
  ``inferplane_substrate_info{substrate,substrate_class,kind,jurisdiction,region,zone,emulated}`` (1),
  ``inferplane_substrate_in_flight_requests``, ``inferplane_substrate_queued_requests``,
  ``inferplane_substrate_gpu_memory_used_ratio``, ``inferplane_substrate_kv_cache_usage_ratio``,
  ``inferplane_substrate_rate_limit_remaining_requests``,
  ``inferplane_substrate_rate_limit_remaining_tokens``, ``inferplane_substrate_error_ratio``,
  ``inferplane_substrate_ttft_observed_over_declared_ratio`` (the learnt first-token ratio the
  estimate scales by: how much slower than its declared profile the substrate really is),
  ``inferplane_substrate_circuit_state`` (0 closed, 1 half-open, 2 open),
  ``inferplane_substrate_external_signal{substrate,signal}`` (values the platform team pushed) and
  ``inferplane_substrate_signal_age_seconds{substrate,signal}`` (age when the snapshot was taken).
- ``inferplane_substrate_replicas{substrate,state}``: replicas live (reporting, admitted to),
  stopping (draining), starting and target (from Serve), and
  ``inferplane_substrate_capacity_requests{substrate,limit}``: what it admits now (``concurrent`` slots,
  ``queued`` places; a vLLM or emulated substrate's follow its live replicas).
- ``inferplane_substrate_replica_seconds_total{substrate}`` and
  ``inferplane_substrate_owned_cost_usd_total{substrate}`` (vLLM and emulated substrates): live
  replica-seconds since the actor started, and the owned hardware's cost over them
  (``telemetry.cost.usd_per_replica_second``): the hardware as scaled, busy or idle.
- ``inferplane_snapshot_version`` and ``inferplane_signals_updated_timestamp_seconds`` (the actor's),
  ``inferplane_ingress_snapshot_version{ingress}`` and ``inferplane_ingress_snapshot_age_seconds{ingress}``
  (each ingress replica's, as of its last sync).

Label values never carry client text: given a ``LabelVocabulary`` (the config's tenants, models,
SLA classes and substrates), any other value becomes ``other``; a missing one is ``""``.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from inferplane.jurisdiction import is_within
from inferplane.placement.decision import PlacementDecision, SpilloverReason
from inferplane.placement.fleet import FleetSpec
from inferplane.placement.policy import PlacementPolicy
from inferplane.placement.signals import CircuitState, limits
from inferplane.placement.snapshot import FleetSnapshot
from inferplane.plane.record import RequestRecord
from inferplane.telemetry.cost import usd_per_replica_second
from inferplane.telemetry.drift import KINDS, DriftDetector, DriftSettings, declared_residuals, residuals

PREFIX = "inferplane_"
METRICS_PORT = 9464
OTHER = "other"

PLACEMENT_BUCKETS_S = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.25, 0.5, 1.0)
RESIDUAL_BUCKETS = (0.25, 0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
MAX_DRIFT_SAMPLES = 4096
"""Residual samples a delta carries at most (the newest): the detector reads only recent ones."""


@dataclass(frozen=True, slots=True)
class CounterDef:
    name: str
    """Without the prefix and without ``_total`` (prometheus_client appends it)."""
    doc: str
    labels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HistogramDef:
    name: str
    doc: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...]


COUNTERS: dict[str, CounterDef] = {c.name: c for c in (
    CounterDef("placements", "Placements (each place() that named a substrate; a retry is another).",
               ("tenant", "model", "sla_class", "substrate", "spillover")),
    CounterDef("spillovers", "Placements off the model's primary substrate, by reason.",
               ("from_substrate", "to_substrate", "reason")),
    CounterDef("rejections", "Requests refused, by rejection code.", ("code", "tenant", "model")),
    CounterDef("requests", "Finished requests that ran on a substrate, by outcome (ok or error).",
               ("tenant", "model", "sla_class", "substrate", "outcome")),
    CounterDef("input_tokens", "Input (prompt) tokens of finished requests.", ("tenant", "substrate")),
    CounterDef("output_tokens", "Output (completion) tokens of finished requests.", ("tenant", "substrate")),
    CounterDef("cost_usd", "Attributed cost of finished requests, USD.", ("tenant", "substrate")),
    CounterDef("prefix_predicted_tokens", "Prompt tokens placement predicted the substrate's prefix cache would "
               "serve (predicted hit fraction x input tokens).", ("tenant", "substrate")),
    CounterDef("prefix_cached_tokens", "Prompt tokens the engine reported serving from its prefix cache.",
               ("tenant", "substrate")),
    CounterDef("model_version_requests", "Finished requests of a model with versions, by the version they were "
               "given (models[].versions) and outcome (ok, error, or refused).", ("model", "version", "outcome")),
    CounterDef("audit_rows_dropped", "Audit rows an ingress replica could not queue.", ()),
    CounterDef("sovereignty_violations",
               "Placed requests whose substrate's jurisdiction is outside the tenant's allowed ones (must be 0).",
               ("tenant", "substrate")),
)}
ACTOR_COUNTERS = ("substrate_replica_seconds", "substrate_owned_cost_usd")
"""Counters the actor integrates itself (not shipped by ingress replicas): ``_capacity_families``."""
HISTOGRAMS: dict[str, HistogramDef] = {h.name: h for h in (
    HistogramDef("placement_duration_seconds", "Time spent in place(), seconds.", ("result",),
                 PLACEMENT_BUCKETS_S),
    HistogramDef("request_duration_seconds", "End-to-end time of successful requests from receipt, seconds.",
                 ("substrate", "sla_class"), LATENCY_BUCKETS_S),
    HistogramDef("time_to_first_token_seconds", "Time from receipt to the first token, seconds.",
                 ("substrate", "sla_class"), TTFT_BUCKETS_S),
    HistogramDef("time_per_output_token_seconds", "Mean time per output token after the first, seconds.",
                 ("substrate",), TPOT_BUCKETS_S),
    HistogramDef("hold_queue_wait_seconds",
                 "Time requests waited in an ingress's hold queue for a slot, by whether they were then "
                 "dispatched or refused, seconds.", ("tenant", "sla_class", "result"), TTFT_BUCKETS_S),
    HistogramDef("ttft_residual_ratio", "Observed over predicted time to first token of successful requests.",
                 ("substrate",), RESIDUAL_BUCKETS),
    HistogramDef("tpot_residual_ratio", "Observed over predicted time per output token of successful requests.",
                 ("substrate",), RESIDUAL_BUCKETS),
)}

CIRCUIT_VALUE = {CircuitState.CLOSED: 0.0, CircuitState.HALF_OPEN: 1.0, CircuitState.OPEN: 2.0}
# signal field -> (gauge name, help)
SIGNAL_GAUGES: dict[str, tuple[str, str]] = {
    "in_flight": ("substrate_in_flight_requests", "Requests running on the substrate."),
    "queued": ("substrate_queued_requests", "Requests waiting in the substrate's queue."),
    "gpu_memory_used_ratio": ("substrate_gpu_memory_used_ratio", "GPU memory used, 0-1."),
    "kv_cache_usage": ("substrate_kv_cache_usage_ratio", "KV-cache use, 0-1."),
    "rate_limit_requests_remaining": ("substrate_rate_limit_remaining_requests",
                                      "Requests left in the API's rate-limit window."),
    "rate_limit_tokens_remaining": ("substrate_rate_limit_remaining_tokens",
                                    "Tokens left in the API's rate-limit window."),
    "error_rate": ("substrate_error_ratio", "Share of recent outcomes that failed, 0-1."),
    "ttft_ratio": ("substrate_ttft_observed_over_declared_ratio",
                   "Median of recent outcomes' observed over declared first-token time; placement "
                   "scales its first-token predictions by it (at least 1)."),
}
SIGNAL_FIELDS = (*SIGNAL_GAUGES, "recent_ttft_s", "recent_tpot_s")

# Codes the ingress answers with before placement -> the rejection code counted.
API_ERROR_REJECTION: dict[str, str] = {
    "invalid_api_key": "auth",
    "invalid_json": "invalid",
    "invalid_request": "invalid",
    "request_too_large": "invalid",
    "placement_unavailable": "snapshot_stale",
}
_CODE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SHAPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_REASONS = frozenset(r.value for r in SpilloverReason)
_FIXED = {"spillover": frozenset({"true", "false"}), "outcome": frozenset({"ok", "error", "refused"}),
          "result": frozenset({"placed", "rejected", "dispatched", "refused"})}


def rejection_code_for(api_error_code: str) -> str:
    """The rejection code to count for an error the ingress answers before placement."""
    return API_ERROR_REJECTION.get(api_error_code, api_error_code)


# -------------------------------------------------------------------------------------------------
# Label values


@dataclass(frozen=True, slots=True)
class LabelVocabulary:
    """The values each label may take; anything else is recorded as ``other``."""

    tenants: frozenset[str]
    models: Mapping[str, str]
    """Every public name and alias -> the canonical name."""
    sla_classes: frozenset[str]
    substrates: frozenset[str]
    tenant_countries: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    """Tenant -> the countries it allows (the sovereignty check)."""
    substrate_countries: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    """Substrate -> the countries it may execute in."""
    tenant_budgets_usd: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Tenants with a budget -> their budget per period."""

    @staticmethod
    def of(fleet: FleetSpec, policy: PlacementPolicy) -> LabelVocabulary:
        return LabelVocabulary(
            tenants=frozenset(policy.tenants), models=dict(fleet.model_names),
            sla_classes=frozenset(policy.sla_classes), substrates=frozenset(s.name for s in fleet.substrates),
            tenant_countries={t.name: t.allowed_countries for t in policy.tenants.values()},
            substrate_countries={s.name: s.countries for s in fleet.substrates},
            tenant_budgets_usd={t.name: t.budget_usd for t in policy.tenants.values() if t.budget_usd is not None},
        )

    def violates(self, tenant: str | None, substrate: str | None) -> bool:
        """The substrate may execute outside the tenant's allowed countries (False when either is
        unknown here: nothing to judge by)."""
        allowed = self.tenant_countries.get(tenant) if tenant is not None else None
        countries = self.substrate_countries.get(substrate) if substrate is not None else None
        return allowed is not None and countries is not None and not is_within(countries, allowed)

    def could_violate(self) -> list[tuple[str, str]]:
        """The (tenant, substrate) pairs of the config a placement would violate, sorted."""
        return sorted((t, s) for t in self.tenant_countries for s in self.substrate_countries if self.violates(t, s))

    def clean(self, label: str, value: str) -> str:
        if label == "tenant":
            return value if value in self.tenants else OTHER
        if label == "model":
            return self.models.get(value, OTHER)
        if label == "sla_class":
            return value if value in self.sla_classes else OTHER
        if label in ("substrate", "from_substrate", "to_substrate"):
            return value if value in self.substrates else OTHER
        return _clean_shape(label, value)


def _clean_shape(label: str, value: str) -> str:
    """Without a vocabulary: fixed sets and codes are checked exactly, names by their shape."""
    if label in _FIXED:
        return value if value in _FIXED[label] else OTHER
    if label == "reason":
        return value if value in _REASONS else OTHER
    if label == "code":
        return value if _CODE_RE.fullmatch(value) else OTHER
    return value if _SHAPE_RE.fullmatch(value) else OTHER


def _clean(vocab: LabelVocabulary | None, labels: tuple[str, ...], values: Iterable[Any]) -> tuple[str, ...]:
    out = []
    for label, value in zip(labels, values, strict=True):
        if value is None or value == "":
            out.append("")
        elif vocab is not None:
            out.append(vocab.clean(label, str(value)))
        else:
            out.append(_clean_shape(label, str(value)))
    return tuple(out)


# -------------------------------------------------------------------------------------------------
# Deltas (ingress side)


class MetricsDelta:
    """Counts and observations since the last hand-over. Thread-safe; picklable (the vocabulary and
    the lock stay behind). ``counters[name][labels] = value``; ``histograms[name][labels] =
    [sum, [count per bucket..., count above the last bound]]`` (not cumulative). ``samples``: the
    finished requests' residuals for the actor's drift detector, ``(substrate, at_s, ttft_residual,
    tpot_residual, input_tokens, output_tokens, ttft_s, tpot_s)`` (the newest ``MAX_DRIFT_SAMPLES``)."""

    __slots__ = ("_lock", "_vocab", "counters", "histograms", "samples")

    def __init__(self, vocabulary: LabelVocabulary | None = None) -> None:
        self.counters: dict[str, dict[tuple[str, ...], float]] = {}
        self.histograms: dict[str, dict[tuple[str, ...], list]] = {}
        self.samples: list[tuple] = []
        self._vocab = vocabulary
        self._lock = threading.Lock()

    def __getstate__(self) -> tuple:
        with self._lock:
            return ({n: dict(v) for n, v in self.counters.items()},
                    {n: {k: [s, list(c)] for k, (s, c) in v.items()} for n, v in self.histograms.items()},
                    list(self.samples))

    def __setstate__(self, state: tuple) -> None:
        self.counters, self.histograms = state[0], state[1]
        self.samples = list(state[2]) if len(state) > 2 else []  # a delta of a replica without them
        self._vocab = None
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.counters or self.histograms or self.samples)

    # -- recording ---------------------------------------------------------------------------
    def _inc(self, name: str, values: tuple, amount: float = 1.0) -> None:
        key = _clean(self._vocab, COUNTERS[name].labels, values)
        series = self.counters.setdefault(name, {})
        series[key] = series.get(key, 0.0) + amount

    def _observe(self, name: str, values: tuple, value: float) -> None:
        h = HISTOGRAMS[name]
        key = _clean(self._vocab, h.labels, values)
        series = self.histograms.setdefault(name, {})
        entry = series.get(key)
        if entry is None:
            entry = series[key] = [0.0, [0] * (len(h.buckets) + 1)]
        entry[0] += value
        entry[1][bisect.bisect_left(h.buckets, value)] += 1  # le is inclusive

    def record_decision(self, decision: PlacementDecision, placement_seconds: float) -> None:
        """One ``place()`` call: its duration, and a placement (and a spillover when it is one).
        Call it for every attempt of a request. A decision that placed nothing is not a rejection
        yet (the request may wait in the hold queue and be placed): the request's record says
        whether it was refused (``record_request``)."""
        with self._lock:
            self._observe("placement_duration_seconds", ("placed" if decision.placed else "rejected",),
                          placement_seconds)
            if decision.placed:
                self._inc("placements", (decision.tenant, decision.model, decision.sla_class, decision.substrate,
                                         "true" if decision.spillover else "false"))
                if decision.spillover:
                    reason = decision.spillover_reason
                    self._inc("spillovers", (decision.primary, decision.substrate,
                                             None if reason is None else reason.value))

    def record_rejection(self, code: str, tenant: str | None, model: str | None) -> None:
        """A request refused outside ``place()`` (``auth``, ``invalid``, ``snapshot_stale``...)."""
        with self._lock:
            self._inc("rejections", (code, tenant, model))

    def record_request(self, record: RequestRecord) -> None:
        """A finished request, from its record; call it once per request, when it ends (the
        attempts' placements are ``record_decision``'s). Refused before placement: a rejection under
        ``rejection_code_for`` its error code. Placed: the request under ``ok`` (a 200) or
        ``error``, its tokens and attributed cost (``record.cost``), its end-to-end time when it
        succeeded (a fast failure is not a fast answer), TTFT and TPOT whenever known; when it
        succeeded, its residuals (``telemetry.drift.residuals``: histograms, and a sample for the
        actor's drift detector); a sovereignty violation if its substrate may execute outside its
        tenant's jurisdictions. A decision that placed nothing was counted by ``record_decision``."""
        d = record.decision
        if d is None:
            self.record_rejection(rejection_code_for(record.error_code or "invalid"), record.tenant, record.model)
            return
        if record.held_s > 0.0:
            self.record_held(d, record.held_s, record.status_code == 200 or d.placed)
        if d.model_version is not None:
            with self._lock:
                self._inc("model_version_requests", (d.model, d.model_version, "refused" if not d.placed
                                                     else "ok" if record.status_code == 200 else "error"))
        if not d.placed:
            code = record.error_code or (None if d.rejection_code is None else d.rejection_code.value)
            self.record_rejection(rejection_code_for(code or "invalid"), d.tenant, d.model)
            return
        substrate, tenant, sla_class = d.substrate, d.tenant, d.sla_class
        ok = record.status_code == 200
        tpot_s = record.tpot_s
        with self._lock:
            self._inc("requests", (tenant, d.model, sla_class, substrate, "ok" if ok else "error"))
            if ok and record.e2e_s is not None:
                self._observe("request_duration_seconds", (substrate, sla_class), record.e2e_s)
            if record.ttft_s is not None:
                self._observe("time_to_first_token_seconds", (substrate, sla_class), record.ttft_s)
            if tpot_s is not None:
                self._observe("time_per_output_token_seconds", (substrate,), tpot_s)
            self._inc("input_tokens", (tenant, substrate), float(record.input_tokens or 0))
            self._inc("output_tokens", (tenant, substrate), float(record.output_tokens or 0))
            self._inc("cost_usd", (tenant, substrate), 0.0 if record.cost is None else record.cost.total_usd)
            if d.predicted_prefix_hit:
                self._inc("prefix_predicted_tokens", (tenant, substrate),
                          d.predicted_prefix_hit * float(record.input_tokens or 0))
            if record.cached_input_tokens:
                self._inc("prefix_cached_tokens", (tenant, substrate), float(record.cached_input_tokens))
            if self._vocab is not None and self._vocab.violates(tenant, substrate):
                self._inc("sovereignty_violations", (tenant, substrate))
            if ok:
                ttft_res, tpot_res = residuals(record)
                if ttft_res is not None:
                    self._observe("ttft_residual_ratio", (substrate,), ttft_res)
                if tpot_res is not None:
                    self._observe("tpot_residual_ratio", (substrate,), tpot_res)
                judged = declared_residuals(record)  # what the drift detector judges (telemetry.drift)
                if judged[0] is not None or judged[1] is not None:
                    self.samples.append((_clean(self._vocab, ("substrate",), (substrate,))[0], record.finished_at_s,
                                         *judged, record.input_tokens, record.output_tokens,
                                         record.substrate_ttft_s, tpot_s))
                    if len(self.samples) > 2 * MAX_DRIFT_SAMPLES:
                        del self.samples[:-MAX_DRIFT_SAMPLES]

    def record_held(self, decision: PlacementDecision, held_s: float, dispatched: bool) -> None:
        """A request that waited in the hold queue: for how long, and whether it was dispatched."""
        with self._lock:
            self._observe("hold_queue_wait_seconds",
                          (decision.tenant, decision.sla_class, "dispatched" if dispatched else "refused"), held_s)

    def record_audit_dropped(self, rows: int) -> None:
        with self._lock:
            self._inc("audit_rows_dropped", (), float(rows))

    # -- hand-over ---------------------------------------------------------------------------
    def take(self) -> MetricsDelta:
        """Everything recorded so far, as a new delta; this one starts again from zero."""
        out = MetricsDelta()
        with self._lock:
            out.counters, self.counters = self.counters, {}
            out.histograms, self.histograms = self.histograms, {}
            out.samples, self.samples = self.samples[-MAX_DRIFT_SAMPLES:], []
        return out

    def merge(self, other: MetricsDelta, vocabulary: LabelVocabulary | None = None) -> None:
        """Add ``other`` into this one (labels cleaned again by ``vocabulary`` when given); its
        residual samples are appended (the newest ``MAX_DRIFT_SAMPLES`` kept)."""
        counters, histograms, samples = other.__getstate__()
        with self._lock:
            if samples:
                if vocabulary is not None:
                    samples = [(_clean(vocabulary, ("substrate",), (x[0],))[0], *x[1:]) for x in samples]
                self.samples = (self.samples + samples)[-MAX_DRIFT_SAMPLES:]
            for name, series in counters.items():
                d = COUNTERS.get(name)
                if d is None:
                    continue
                mine = self.counters.setdefault(name, {})
                for key, value in series.items():
                    k = _clean(vocabulary, d.labels, key) if vocabulary is not None else key
                    mine[k] = mine.get(k, 0.0) + value
            for name, series in histograms.items():
                h = HISTOGRAMS.get(name)
                if h is None:
                    continue
                mine = self.histograms.setdefault(name, {})
                for key, (total, counts) in series.items():
                    if len(counts) != len(h.buckets) + 1:
                        continue  # recorded with other buckets (another version): not mergeable
                    k = _clean(vocabulary, h.labels, key) if vocabulary is not None else key
                    entry = mine.get(k)
                    if entry is None:
                        mine[k] = [total, list(counts)]
                    else:
                        entry[0] += total
                        entry[1] = [a + b for a, b in zip(entry[1], counts)]


class MetricsOutbox:
    """The ingress side of the hand-over: record into ``delta``; on each sync send ``pending()``
    and, only if the call succeeded, ``acknowledge`` it. Unacknowledged batches are sent again and
    the actor skips the ones it has applied. After ``max_batches`` failed syncs the backlog is
    merged into one batch (a batch merged after a sync that did reach the actor is then counted
    twice: the one at-least-once corner, after a long outage)."""

    def __init__(self, vocabulary: LabelVocabulary | None = None, max_batches: int = 256) -> None:
        self.delta = MetricsDelta(vocabulary)
        self._seq = 0
        self._unacked: list[tuple[int, MetricsDelta]] = []
        self._max = max_batches
        self._lock = threading.Lock()

    def pending(self) -> list[tuple[int, MetricsDelta]]:
        with self._lock:
            fresh = self.delta.take()
            if fresh:
                self._seq += 1
                self._unacked.append((self._seq, fresh))
            if len(self._unacked) > self._max:
                merged = MetricsDelta()
                for _, d in self._unacked:
                    merged.merge(d)
                self._seq += 1
                self._unacked = [(self._seq, merged)]
            return list(self._unacked)

    def acknowledge(self, sent: list[tuple[int, MetricsDelta]]) -> None:
        if not sent:
            return
        upto = sent[-1][0]
        with self._lock:
            self._unacked = [(s, d) for s, d in self._unacked if s > upto]


# -------------------------------------------------------------------------------------------------
# The collector (actor side)


class PlaneMetrics:
    """Every ingress replica's deltas merged, plus the actor's signals, as one Prometheus collector
    registered in its own ``registry``. Thread-safe. The residual samples of the deltas it applies
    feed ``drift`` (a ``telemetry.drift.DriftDetector`` with ``drift_settings``), read by
    ``drift_flags``, ``drift_floors`` and ``drift_status`` and exported as
    ``inferplane_substrate_drift``."""

    def __init__(self, vocabulary: LabelVocabulary | None = None, drift_settings: DriftSettings | None = None) -> None:
        self._vocab = vocabulary
        self.drift = DriftDetector(drift_settings or DriftSettings())
        self._lock = threading.Lock()
        self._totals = MetricsDelta()
        self._applied: dict[str, int] = {}
        self._snapshot: FleetSnapshot | None = None
        self._replicas: dict[str, dict[str, int | None]] = {}
        """Substrate -> replica counts by state (``FleetState.replica_counts``)."""
        self._replica_seconds: dict[str, float] = {}
        """Substrate -> live replica-seconds (``FleetState.replica_seconds``)."""
        self._signals_at_s: float | None = None
        self._ingress: dict[str, tuple[int, float, float | None]] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def set_vocabulary(self, vocabulary: LabelVocabulary) -> None:
        """The label values of a newly applied config (``models apply``); totals counted so far stay."""
        with self._lock:
            self._vocab = vocabulary

    def apply(self, delta: MetricsDelta, *, source: str | None = None, seq: int | None = None) -> bool:
        """Merge one delta; with ``source`` and ``seq``, only if that sequence number of that source
        is newer than the last applied (returns False for a resent one)."""
        with self._lock:
            if source is not None and seq is not None:
                if seq <= self._applied.get(source, 0):
                    return False
                self._applied[source] = seq
            counters, histograms, samples = delta.__getstate__()
            if samples:
                for x in sorted(samples, key=lambda x: x[1]):  # deltas of several replicas interleave
                    self.drift.observe(_clean(self._vocab, ("substrate",), (x[0],))[0], *x[1:])
                delta = MetricsDelta()
                delta.counters, delta.histograms = counters, histograms
            self._totals.merge(delta, self._vocab)
            return True

    def drift_flags(self, now_s: float) -> dict[str, frozenset[str]]:
        """Substrate -> its flagged drift kinds (``DriftDetector.flags``)."""
        with self._lock:
            return self.drift.flags(now_s)

    def drift_floors(self, now_s: float) -> dict:
        """Substrate -> its penalty floors (``DriftDetector.floors``), for ``penalize`` mode."""
        with self._lock:
            return self.drift.floors(now_s)

    def drift_status(self, now_s: float) -> dict[str, dict]:
        """Per substrate: the detector's flags, medians and size fit (``DriftDetector.status``)."""
        with self._lock:
            self.drift.forget(now_s)
            return self.drift.status(now_s)

    def counter_totals(self, name: str) -> dict[tuple[str, ...], float]:
        """Counter ``name`` merged over every ingress replica so far: label values -> total (a copy;
        the actor's autoscaler reads placements, spillovers and rejections from it)."""
        with self._lock:
            return dict(self._totals.counters.get(name, {}))

    def apply_batch(self, source: str, batch: Iterable[tuple[int, MetricsDelta]]) -> int:
        """``apply`` each ``(seq, delta)`` of a ``MetricsOutbox.pending()``; how many were new."""
        return sum(self.apply(delta, source=source, seq=seq) for seq, delta in batch)

    def set_signals(self, snapshot: FleetSnapshot, now_s: float) -> None:
        """The latest snapshot's per-substrate signals; ages are taken at ``now_s``. The actor holds a
        ``PublishedSnapshot``: pass ``FleetSnapshot(p.version, p.taken_at_s, fleet, p.signals)``."""
        if not isinstance(snapshot, FleetSnapshot):  # fail here, not in every scrape
            raise TypeError(f"set_signals takes a FleetSnapshot, not {type(snapshot).__name__}")
        with self._lock:
            self._snapshot = snapshot
            self._signals_at_s = now_s

    def set_replicas(self, counts: dict[str, dict[str, int | None]],
                     replica_seconds: dict[str, float] | None = None) -> None:
        """Each substrate's replicas by state (live, stopping, starting, target; None: unknown),
        as the authority last counted them (``FleetState.replica_counts``), and its live
        replica-seconds so far (``FleetState.replica_seconds``)."""
        with self._lock:
            self._replicas = counts
            if replica_seconds is not None:
                self._replica_seconds = replica_seconds

    def set_ingress(self, ingress_id: str, snapshot_version: int, snapshot_age_s: float,
                    now_s: float | None = None) -> None:
        """An ingress replica's snapshot version and age at its last sync."""
        with self._lock:
            self._ingress[ingress_id] = (snapshot_version, snapshot_age_s, now_s)

    def expire_ingress(self, now_s: float, max_silence_s: float) -> None:
        """Forget ingress replicas not heard of (``set_ingress`` with ``now_s``) for ``max_silence_s``."""
        with self._lock:
            for ingress_id in [i for i, (_, _, at) in self._ingress.items()
                               if at is not None and now_s - at > max_silence_s]:
                del self._ingress[ingress_id]
                self._applied.pop(ingress_id, None)

    # -- the Collector protocol --------------------------------------------------------------
    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counters, histograms, _ = self._totals.__getstate__()
            snapshot, at_s = self._snapshot, self._signals_at_s
            replicas = self._replicas, self._replica_seconds
            ingress = dict(self._ingress)
            drift = None if at_s is None else self.drift.flags(at_s)
        vocab = self._vocab
        if vocab is not None:  # the violations that could happen exist as 0, so increase() sees the first
            series = counters.setdefault("sovereignty_violations", {})
            for pair in vocab.could_violate():
                series.setdefault(pair, 0.0)
        for d in COUNTERS.values():
            fam = CounterMetricFamily(PREFIX + d.name, d.doc, labels=d.labels)
            for key, value in sorted(counters.get(d.name, {}).items()):
                fam.add_metric(key, value)
            yield fam
        for h in HISTOGRAMS.values():
            fam = HistogramMetricFamily(PREFIX + h.name, h.doc, labels=h.labels)
            for key, (total, counts) in sorted(histograms.get(h.name, {}).items()):
                cumulative, running = [], 0
                for bound, n in zip((*h.buckets, float("inf")), counts):
                    running += n
                    cumulative.append((floatToGoString(bound), running))
                fam.add_metric(key, cumulative, sum_value=total)
            yield fam
        yield from self._signal_families(snapshot, at_s)
        yield from _capacity_families(snapshot, replicas)
        yield from self._tenant_families(snapshot)
        flagged = GaugeMetricFamily(PREFIX + "substrate_drift",
                                    "1 while the substrate's prediction residuals drift (kind ttft, tpot) or its "
                                    "TTFT stops tracking prompt size (kind size), else 0.",
                                    labels=("substrate", "kind"))
        if drift is not None:
            names = sorted(vocab.substrates) if vocab is not None else sorted(drift)
            for name in names:
                kinds = drift.get(name, frozenset())
                for kind in KINDS:
                    flagged.add_metric((name, kind), 1.0 if kind in kinds else 0.0)
        yield flagged
        version = GaugeMetricFamily(PREFIX + "ingress_snapshot_version",
                                    "The fleet snapshot version an ingress replica places on.", labels=("ingress",))
        age = GaugeMetricFamily(PREFIX + "ingress_snapshot_age_seconds",
                                "Age of an ingress replica's snapshot at its last sync, seconds.",
                                labels=("ingress",))
        for ingress_id, (v, a, _) in sorted(ingress.items()):
            key = _clean(None, ("ingress",), (ingress_id,))
            version.add_metric(key, v)
            age.add_metric(key, a)
        yield version
        yield age

    def _tenant_families(self, snapshot: FleetSnapshot | None) -> Iterator[Metric]:
        budget = GaugeMetricFamily(PREFIX + "tenant_budget_usd", "The tenant's budget per period, USD.",
                                   labels=("tenant",))
        spend = GaugeMetricFamily(PREFIX + "tenant_spend_usd",
                                  "The tenant's attributed spend in the current period, USD.", labels=("tenant",))
        vocab = self._vocab
        if vocab is not None:
            for tenant, usd in sorted(vocab.tenant_budgets_usd.items()):
                budget.add_metric((tenant,), usd)
            if snapshot is not None:
                spent = snapshot.tenant_spend_usd or {}
                for tenant in sorted(vocab.tenants):
                    spend.add_metric((tenant,), float(spent.get(tenant, 0.0)))
        yield budget
        yield spend

    def _signal_families(self, snapshot: FleetSnapshot | None, at_s: float | None) -> Iterator[Metric]:
        info = GaugeMetricFamily(PREFIX + "substrate_info", "Static facts of a substrate (value 1).",
                                 labels=("substrate", "substrate_class", "kind", "jurisdiction", "region",
                                         "zone", "emulated"))
        gauges = {field: GaugeMetricFamily(PREFIX + name, doc, labels=("substrate",))
                  for field, (name, doc) in SIGNAL_GAUGES.items()}
        circuit = GaugeMetricFamily(PREFIX + "substrate_circuit_state",
                                    "Circuit breaker: 0 closed, 1 half-open, 2 open.", labels=("substrate",))
        ages = GaugeMetricFamily(PREFIX + "substrate_signal_age_seconds",
                                 "Age of each signal when the snapshot was taken, seconds.",
                                 labels=("substrate", "signal"))
        external = GaugeMetricFamily(PREFIX + "substrate_external_signal",
                                     "Signals the platform team pushed for a substrate, by name.",
                                     labels=("substrate", "signal"))
        version = GaugeMetricFamily(PREFIX + "snapshot_version", "The actor's latest fleet snapshot version.")
        updated = GaugeMetricFamily(PREFIX + "signals_updated_timestamp_seconds",
                                    "When the actor last published signals, Unix seconds.")
        if snapshot is not None and at_s is not None:
            version.add_metric((), snapshot.version)
            updated.add_metric((), at_s)
            for spec, sig in zip(snapshot.fleet.substrates, snapshot.signals):
                name = (spec.name,)
                info.add_metric((spec.name, spec.substrate_class, spec.kind, spec.jurisdiction, spec.region,
                                 spec.zone, "true" if spec.emulated else "false"), 1.0)
                circuit.add_metric(name, CIRCUIT_VALUE[sig.circuit])
                for field in SIGNAL_FIELDS:
                    reading = getattr(sig, field)
                    if reading is None:
                        continue
                    if field in gauges:
                        gauges[field].add_metric(name, reading.value)
                    ages.add_metric((spec.name, field), max(0.0, at_s - reading.observed_at_s))
                for signal, reading in getattr(sig, "external", ()):
                    key = (spec.name, _clean_shape("signal", signal))
                    external.add_metric(key, reading.value)
                    ages.add_metric(key, max(0.0, at_s - reading.observed_at_s))
        yield info
        yield from gauges.values()
        yield circuit
        yield ages
        yield external
        yield version
        yield updated


def _capacity_families(snapshot: FleetSnapshot | None, replicas: tuple[dict, dict]) -> Iterator[Metric]:
    """``substrate_replicas{state}``, ``substrate_capacity_requests{limit}``, ``substrate_replica_seconds``
    and ``substrate_owned_cost_usd`` (module doc)."""
    replicas, replica_seconds = replicas
    seconds = CounterMetricFamily(PREFIX + "substrate_replica_seconds",
                                  "Live replica-seconds of a substrate since the placement actor started.",
                                  labels=("substrate",))
    owned = CounterMetricFamily(PREFIX + "substrate_owned_cost_usd",
                                "Owned hardware's cost over its live replica-seconds, USD (vLLM and emulated "
                                "substrates with a GPU price; busy or idle).", labels=("substrate",))
    counts = GaugeMetricFamily(PREFIX + "substrate_replicas",
                               "Replicas of a substrate by state: live (reporting and admitted to), stopping "
                               "(draining), starting and target (as Serve says).", labels=("substrate", "state"))
    capacity = GaugeMetricFamily(PREFIX + "substrate_capacity_requests",
                                 "Requests a substrate admits now: concurrent slots and queue places (vLLM and "
                                 "emulated: per replica x live replicas).", labels=("substrate", "limit"))
    for name, by_state in sorted(replicas.items()):
        for state, n in by_state.items():
            if n is not None:
                counts.add_metric((name, state), n)
    if snapshot is not None:
        for spec, sig in zip(snapshot.fleet.substrates, snapshot.signals):
            max_concurrent, max_queued = limits(spec, sig)
            capacity.add_metric((spec.name, "concurrent"), max_concurrent)
            capacity.add_metric((spec.name, "queued"), max_queued)
            if spec.replicas is not None and spec.name in replica_seconds:
                seconds.add_metric((spec.name,), replica_seconds[spec.name])
                owned.add_metric((spec.name,), replica_seconds[spec.name] * usd_per_replica_second(spec))
    yield counts
    yield capacity
    yield seconds
    yield owned


def serve_metrics(registry: CollectorRegistry, host: str = "127.0.0.1", port: int = METRICS_PORT):
    """Serve ``registry`` at ``http://host:port/metrics`` from a daemon thread (prometheus_client's
    server). Returns ``(server, thread)``; ``server.shutdown()`` stops it. ``port=0`` picks one:
    ``server.server_port``."""
    return start_http_server(port, addr=host, registry=registry)
