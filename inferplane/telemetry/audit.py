"""The placement audit log: one Parquet row per request, served, failed or rejected.

Schema version 1 (``AUDIT_SCHEMA_VERSION``; every file also carries it in its Parquet key-value
metadata as ``inferplane.audit.schema_version``). Columns, in order ("?" = nullable):

==================================  =====================  ==========  ============================================
column                              type                   unit        meaning
==================================  =====================  ==========  ============================================
schema_version                      int16                  -           the schema version of the row (1)
request_id                          string                 -           the ingress's request id
placement_id                        string?                -           the final placement attempt's id (the
                                                                       ``x-inferplane-placement-id`` header);
                                                                       null when rejected before placement
time                                timestamp[us, UTC]     -           when the ingress received the request;
                                                                       the ``date=`` partition is its UTC date
finished_at                         timestamp[us, UTC]     -           when the response ended (last byte or error)
ingress_id                          string                 -           the ingress replica that answered
ingress_region                      string?                -           the ingress's region
tenant                              string?                -           the authenticated tenant (null: no valid key)
model                               string?                -           the canonical model name; a name the fleet
                                                                       does not serve is ``unknown:<sha256[:12]>``
model_version                       string?                -           the model's version the request was given
                                                                       and placed on (``models[].versions``);
                                                                       null for a model without versions, and
                                                                       in older files
rollout                             string?                -           the model's split then, in percent:
                                                                       ``v1=90,v2=10`` (null likewise)
sla_class                           string?                -           the SLA class; an unconfigured name is
                                                                       ``unknown:<sha256[:12]>``
substrate                           string?                -           the chosen substrate (null: not placed)
substrate_class                     string?                -           its class (``gpu_cluster``, ...)
substrate_kind                      string?                -           its kind (``vllm``, ...)
emulated                            bool?                  -           true when the substrate is an emulation
jurisdiction                        string?                -           its jurisdiction token (``DE``, ``EU``)
region                              string?                -           its region
zone                                string?                -           its zone
primary_substrate                   string?                -           the model's primary substrate
spillover                           bool                   -           placed off the primary
spillover_reason                    string?                -           ``SpilloverReason`` value
boundary                            string                 -           the widest boundary between primary and
                                                                       chosen: none, zone, region, jurisdiction
spillover_extra_cost_usd            float64?               USD         estimated cost on the chosen minus the
                                                                       primary's estimate in the same decision
                                                                       (null unless the primary was estimated)
spillover_extra_cost_actual_usd     float64?               USD         cost_usd minus the same tokens and time
                                                                       priced by the primary's cost model
candidate_count                     int32                  substrates  substrates serving the model considered
eligible_count                      int32                  substrates  candidates that passed every filter
rejections                          string?                -           the rejected candidates rolled up:
                                                                       "2 jurisdiction not in {EU}, 1 at capacity"
rejection_counts                    map<string, int32>     substrates  rejected candidates by rejection code
rejection_code                      string?                -           why nothing could take the request
rejection_message                   string?                -           the message the client got for it
attempts                            int16                  attempts    placement attempts (1 + retries)
status_code                         int16                  -           the HTTP status answered
error_code                          string?                -           the error code answered (snake_case)
streamed                            bool                   -           an SSE stream was requested
ttft_s                              float64?               s           receipt to first token
e2e_s                               float64?               s           receipt to end of response
tpot_s                              float64?               s/token     (e2e - ttft) / (output_tokens - 1)
input_tokens                        int32?                 tokens      prompt tokens: the engine's count when it
                                                                       reported one, else the ingress's
estimated_input_tokens              int32?                 tokens      prompt tokens as the ingress counted them
                                                                       before dispatch (null: not counted, or a
                                                                       row written before the column existed)
cached_input_tokens                 int32?                 tokens      prompt tokens the engine served from its
                                                                       prefix cache (null: not reported, and in
                                                                       older files)
output_tokens                       int32?                 tokens      completion tokens
cost_usd                            float64?               USD         attributed cost (``telemetry.cost``) of
                                                                       the final attempt; null if never placed
cost_tokens_usd                     float64?               USD         its token part
cost_gpu_usd                        float64?               USD         its amortised-hardware part
cost_egress_usd                     float64?               USD         its egress part
predicted_ttft_s                    float64?               s           the engine's prediction for the chosen
predicted_e2e_s                     float64?               s           the engine's prediction for the chosen
ttft_residual                       float64?               ratio       ttft_s / predicted_ttft_s of a 200
                                                                       (``telemetry.drift.residuals``; null
                                                                       otherwise, and in older files)
tpot_residual                       float64?               ratio       tpot_s / the decision's predicted time
                                                                       per output token (``predicted_tpot_s``),
                                                                       likewise
estimated_cost_usd                  float64?               USD         the engine's estimate for the chosen
predicted_prefix_hit                float64?               ratio       the fraction of the prompt placement
                                                                       predicted the chosen substrate's prefix
                                                                       cache holds (0: none; null if never
                                                                       placed, and in older files)
ttft_deadline_s                     float64?               s           the SLA class's deadline, when known
e2e_deadline_s                      float64?               s           the SLA class's deadline, when known
met_sla                             bool?                  -           200 within both deadlines (null: unknown)
snapshot_version                    int64?                 -           the fleet snapshot the decision used
snapshot_age_s                      float64?               s           its age when the request was placed
held_s                              float64                s           time it waited in the ingress's hold
                                                                       queue for a slot (0: it did not wait)
held_reason                         string?                -           why: the rolled-up refusal that put it
                                                                       in the queue (null: it did not wait)
policy_hash                         string?                -           the policy the decision used
decision_json                       string?                -           ``PlacementDecision.to_dict()`` as compact
                                                                       JSON, each candidate with its substrate's
                                                                       static facts (class, kind, jurisdiction,
                                                                       region, zone, emulated) at decision time
recovered_by                        string?                -           the ingress replica that rebuilt the row
                                                                       from a killed writer's journal
                                                                       (``telemetry.journal``); null when written
                                                                       by the replica that answered. A recovered
                                                                       row is the row its writer would have
                                                                       written, ``decision_json`` included, but
                                                                       for the columns taken from the config
                                                                       when that changed (see ``audit_row``)
model_file_sha256                   string?                -           SHA-256 of the team's model file that
                                                                       declared the model (``inferplane models
                                                                       apply``); null for a model of the fleet
                                                                       file, an unknown one, and in older files
==================================  =====================  ==========  ============================================

Every row is built by ``audit_row`` from the request's frozen ``plane.record.RequestRecord``, and
by nothing else (the journal stores records; recovery rebuilds rows with the same function).
Never written: API keys (tenant or provider), prompt text, completion text. A record carries none
of them, and client-controlled strings it does carry (the model name, the SLA-class header, an
upstream's error code) are written only when they name a configured model or class (or are a
snake_case code); otherwise as ``unknown:<sha256[:12]>`` (``redacted``). A new column may be added in a later version (readers fill it with null for old files);
renaming or retyping one is a new version. ``recovered_by`` was added that way: a file written
before it reads with null there, which is what it means (none of its rows was recovered); so were
``estimated_input_tokens``, ``ttft_residual``, ``tpot_residual``, ``predicted_prefix_hit``,
``cached_input_tokens``, ``model_version`` and ``rollout`` (null: not known then).

Files: ``DIR/date=YYYY-MM-DD/audit-<writer_id>-<seq>.parquet`` (Hive partitioning by the row's UTC
date). Each ``flush`` writes complete files under a hidden temporary name (``.``-prefixed, which
``pyarrow.dataset`` and pandas skip) and renames them into place, so readers never see half a file.
The background thread flushes every ``flush_interval_s`` (2 s by default); ``close`` flushes the
rest. Compaction (rotation): a writer merges its small files of one partition into one
``audit-<writer_id>-<first>to<last>.parquet`` once they span ``rotate_interval_s`` or reach
``rotate_bytes``, and on ``close``. The merged file is renamed into place before its sources are
removed; ``read_audit`` ignores a small file covered by a merged file of the same writer, so it
never counts a row twice, and a writer that restarts removes covered leftovers of a crash. (A raw
``pyarrow.dataset`` reader can see both during the few milliseconds between the rename and the
removals.) ``writer_id`` must be unique among running writers; the ingress uses its replica id.
``on_written`` (optional) is told the request ids of each file once it is durably in place; the
write-ahead journal (``telemetry.journal``, under ``DIR/_journal/``, which these readers and
``pyarrow.dataset`` skip) deletes its segments from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Self

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from inferplane.placement.decision import CandidateVerdict, PlacementDecision, SpilloverReason, roll_up
from inferplane.placement.filters import RejectionCode
from inferplane.placement.fleet import FleetSpec, SubstrateSpec
from inferplane.placement.policy import PlacementPolicy
from inferplane.placement.signals import DriftPenalty
from inferplane.plane.record import RequestRecord
from inferplane.telemetry.cost import request_cost
from inferplane.telemetry.drift import residuals

log = logging.getLogger("inferplane.audit")

AUDIT_SCHEMA_VERSION = 1
_TS = pa.timestamp("us", tz="UTC")

AUDIT_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("schema_version", pa.int16(), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("placement_id", pa.string()),
        pa.field("time", _TS, nullable=False),
        pa.field("finished_at", _TS, nullable=False),
        pa.field("ingress_id", pa.string(), nullable=False),
        pa.field("ingress_region", pa.string()),
        pa.field("tenant", pa.string()),
        pa.field("model", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("rollout", pa.string()),
        pa.field("sla_class", pa.string()),
        pa.field("substrate", pa.string()),
        pa.field("substrate_class", pa.string()),
        pa.field("substrate_kind", pa.string()),
        pa.field("emulated", pa.bool_()),
        pa.field("jurisdiction", pa.string()),
        pa.field("region", pa.string()),
        pa.field("zone", pa.string()),
        pa.field("primary_substrate", pa.string()),
        pa.field("spillover", pa.bool_(), nullable=False),
        pa.field("spillover_reason", pa.string()),
        pa.field("boundary", pa.string(), nullable=False),
        pa.field("spillover_extra_cost_usd", pa.float64()),
        pa.field("spillover_extra_cost_actual_usd", pa.float64()),
        pa.field("candidate_count", pa.int32(), nullable=False),
        pa.field("eligible_count", pa.int32(), nullable=False),
        pa.field("rejections", pa.string()),
        pa.field("rejection_counts", pa.map_(pa.string(), pa.int32()), nullable=False),
        pa.field("rejection_code", pa.string()),
        pa.field("rejection_message", pa.string()),
        pa.field("attempts", pa.int16(), nullable=False),
        pa.field("status_code", pa.int16(), nullable=False),
        pa.field("error_code", pa.string()),
        pa.field("streamed", pa.bool_(), nullable=False),
        pa.field("ttft_s", pa.float64()),
        pa.field("e2e_s", pa.float64()),
        pa.field("tpot_s", pa.float64()),
        pa.field("input_tokens", pa.int32()),
        pa.field("estimated_input_tokens", pa.int32()),
        pa.field("cached_input_tokens", pa.int32()),
        pa.field("output_tokens", pa.int32()),
        pa.field("cost_usd", pa.float64()),
        pa.field("cost_tokens_usd", pa.float64()),
        pa.field("cost_gpu_usd", pa.float64()),
        pa.field("cost_egress_usd", pa.float64()),
        pa.field("predicted_ttft_s", pa.float64()),
        pa.field("predicted_e2e_s", pa.float64()),
        pa.field("ttft_residual", pa.float64()),
        pa.field("tpot_residual", pa.float64()),
        pa.field("estimated_cost_usd", pa.float64()),
        pa.field("predicted_prefix_hit", pa.float64()),
        pa.field("ttft_deadline_s", pa.float64()),
        pa.field("e2e_deadline_s", pa.float64()),
        pa.field("met_sla", pa.bool_()),
        pa.field("snapshot_version", pa.int64()),
        pa.field("snapshot_age_s", pa.float64()),
        pa.field("held_s", pa.float64(), nullable=False),
        pa.field("held_reason", pa.string()),
        pa.field("policy_hash", pa.string()),
        pa.field("decision_json", pa.string()),
        pa.field("recovered_by", pa.string()),
        pa.field("model_file_sha256", pa.string()),
    ],
    metadata={"inferplane.audit.schema_version": str(AUDIT_SCHEMA_VERSION)},
)
COLUMNS: tuple[str, ...] = tuple(AUDIT_SCHEMA.names)
_COLUMN_SET = frozenset(COLUMNS)

BOUNDARIES = ("none", "zone", "region", "jurisdiction")

# The engine validates these client-supplied names in this order; a refusal at one of these
# codes means the SLA class named in the request was not (yet) checked against the config.
_SLA_UNCHECKED = frozenset({
    RejectionCode.UNKNOWN_MODEL, RejectionCode.UNKNOWN_TENANT, RejectionCode.MODEL_NOT_ALLOWED,
    RejectionCode.UNKNOWN_SLA_CLASS,
})
_ERROR_CODE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_DIGEST_RE = re.compile(r"^unknown:[0-9a-f]{12}$")
DECISION_FIELDS: tuple[str, ...] = tuple(inspect.signature(PlacementDecision).parameters)
"""What makes a ``PlacementDecision``: its constructor's keywords, ``candidates`` included."""


# -------------------------------------------------------------------------------------------------
# Rows


def utc(seconds: float) -> datetime:
    """Epoch seconds as an aware UTC datetime (the ``time`` and ``finished_at`` columns)."""
    return datetime.fromtimestamp(seconds, tz=UTC)


def _digest(value: str) -> str:
    return "unknown:" + hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def safe_error_code(code: str | None) -> str | None:
    """An error code as a row writes it: snake_case (or already a digest) as it is, anything else
    as a digest."""
    if code is None or _ERROR_CODE_RE.fullmatch(code) or _DIGEST_RE.fullmatch(code):
        return code
    return _digest(code)


def _spec_or_none(fleet: FleetSpec | None, name: str | None) -> SubstrateSpec | None:
    if fleet is None or name is None:
        return None
    for spec in fleet.substrates:
        if spec.name == name:
            return spec
    return None


def boundary_crossed(primary: SubstrateSpec | None, chosen: SubstrateSpec | None) -> str:
    """The widest boundary between the primary and the chosen substrate: ``jurisdiction`` when the
    countries they may execute in differ, else ``region``, else ``zone``, else ``none``. An unknown
    primary counts as the widest (unknown is never assumed to be close)."""
    if chosen is None:
        return "none"
    if primary is None:
        return "jurisdiction"
    if primary.countries != chosen.countries:
        return "jurisdiction"
    if primary.region != chosen.region:
        return "region"
    if primary.zone != chosen.zone:
        return "zone"
    return "none"


def roll_up_rejections(decision: PlacementDecision) -> tuple[str | None, dict[str, int]]:
    """The rejected candidates as "n summary, ..." (most frequent first: the part of the engine's
    ``placement.decision.roll_up`` message after "eligible: ") and their counts by code."""
    rejected = [c for c in decision.candidates if not c.eligible]
    if not rejected:
        return None, {}
    _, message = roll_up(decision.candidates, decision.model)
    by_code = Counter(c.code.value for c in rejected if c.code is not None)
    return message.split("` eligible: ", 1)[1], dict(sorted(by_code.items()))


def recorded_decision(decision: PlacementDecision, fleet: FleetSpec | None) -> dict:
    """``decision.to_dict()`` with ``scorer_names`` and, on each candidate, its rejection summary
    and its substrate's static facts from ``fleet`` (class, kind, jurisdiction, region, zone,
    emulated, emulates, display name; none when ``fleet`` is None or does not know it): an audit
    row's ``decision_json`` and ``inferplane explain --json``. ``decision_from_record`` inverts it.
    Client text is written as it is in ``decision``: ``audit_row`` passes a ``redacted`` one."""
    out = decision.to_dict()
    for cand, verdict in zip(out["candidates"], decision.candidates):
        cand["summary"] = verdict.summary
        spec = _spec_or_none(fleet, cand["name"])
        if spec is not None:
            cand.update(substrate_class=spec.substrate_class, kind=spec.kind, jurisdiction=spec.jurisdiction,
                        region=spec.region, zone=spec.zone, emulated=spec.emulated, emulates=spec.emulates,
                        display_name=spec.display_name)
    out["scorer_names"] = list(decision.scorer_names)
    return out


def decision_from_record(record: Mapping[str, Any]) -> PlacementDecision:
    """The ``PlacementDecision`` a ``recorded_decision`` dict (an audit row's ``decision_json``) was
    made from."""
    names = tuple(record.get("scorer_names") or next(
        (list(c["scores"]) for c in record["candidates"] if c.get("scores") is not None), []))
    candidates = tuple(
        CandidateVerdict(
            name=c["name"], eligible=c["eligible"],
            code=None if c["code"] is None else RejectionCode(c["code"]),
            summary=c.get("summary"), reason=c["reason"],
            scores=None if c["scores"] is None else tuple(c["scores"][n] for n in names),
            total=c["total"], ttft_s=c["predicted_ttft_s"], e2e_s=c["predicted_e2e_s"],
            cost_usd=c["estimated_cost_usd"], meets_sla=c["meets_sla"],
            drift=tuple(DriftPenalty(**p) for p in c.get("drift") or ()),  # absent before drift penalties
        )
        for c in record["candidates"]
    )
    reason = record["spillover_reason"]
    code = record["rejection_code"]
    return PlacementDecision(
        placement_id=record["placement_id"], request_id=record["request_id"], attempt=record["attempt"],
        tenant=record["tenant"], model=record["model"], sla_class=record["sla_class"],
        substrate=record["substrate"], fallbacks=tuple(record["fallbacks"]), primary=record["primary"],
        spillover=record["spillover"], spillover_reason=None if reason is None else SpilloverReason(reason),
        candidates=candidates, scorer_names=names, predicted_ttft_s=record["predicted_ttft_s"],
        predicted_e2e_s=record["predicted_e2e_s"], estimated_cost_usd=record["estimated_cost_usd"],
        rejection_code=None if code is None else RejectionCode(code),
        rejection_message=record["rejection_message"], policy_hash=record["policy_hash"],
        snapshot_version=record["snapshot_version"], predicted_output_tokens=record.get("predicted_output_tokens"),
        declared_ttft_s=record.get("declared_ttft_s"), declared_tpot_s=record.get("declared_tpot_s"),
        predicted_prefix_hit=record.get("predicted_prefix_hit"), model_version=record.get("model_version"),
        rollout=record.get("rollout"),
    )


def redacted(record: RequestRecord, fleet: FleetSpec, policy: PlacementPolicy) -> RequestRecord:
    """``record`` with the client text a row may not carry replaced by ``unknown:<sha256[:12]>``
    (``record`` itself when there is none, the common case). Idempotent.

    A model name is kept when ``fleet`` serves it (by name or alias), or when it is the model of a
    ``decision`` not refused as ``unknown_model`` (the engine resolved it: a canonical name of the
    config it ran). An SLA-class name is kept when ``policy`` has that class, or when it is the
    class of a decision the engine did not refuse before checking it. Either is replaced
    everywhere it occurs: ``model``, ``sla_class``, the decision's ``model``, ``sla_class`` and
    ``rejection_message``. An error code that is not snake_case is replaced too (``safe_error_code``).
    The tenant is the authenticated tenant (a config name), never client text.
    """
    d = record.decision
    replace: dict[str, str] = {}
    for name in (record.model, None if d is None else d.model):
        if name and name not in fleet.model_names and not _DIGEST_RE.fullmatch(name) and not (
                d is not None and name == d.model and d.rejection_code is not RejectionCode.UNKNOWN_MODEL):
            replace[name] = _digest(name)
    for name in (record.sla_class, None if d is None else d.sla_class):
        if name and name not in policy.sla_classes and not _DIGEST_RE.fullmatch(name) and not (
                d is not None and name == d.sla_class and d.rejection_code not in _SLA_UNCHECKED):
            replace[name] = _digest(name)
    error_code = safe_error_code(record.error_code)
    if not replace and error_code == record.error_code:
        return record
    if d is not None and replace:
        message = d.rejection_message
        for raw, safe in replace.items():
            if message:
                message = message.replace(raw, safe)
        fields = {name: getattr(d, name) for name in DECISION_FIELDS}
        fields.update(model=replace.get(d.model, d.model), sla_class=replace.get(d.sla_class, d.sla_class),
                      rejection_message=message)
        d = PlacementDecision(**fields)
    return dataclasses.replace(
        record, decision=d, error_code=error_code,
        model=None if record.model is None else replace.get(record.model, record.model),
        sla_class=None if record.sla_class is None else replace.get(record.sla_class, record.sla_class))


def audit_row(record: RequestRecord, fleet: FleetSpec, policy: PlacementPolicy, *,
              recovered_by: str | None = None) -> dict[str, Any]:
    """The audit row of one finished request: the only function that builds one.

    ``fleet`` and ``policy`` are the config of the replica writing the row. Names are written as
    ``redacted`` leaves them (a model by its canonical name); with a decision, the tenant, model
    and SLA class are the decision's. The columns taken from the config (the chosen substrate's
    class, kind, emulation, jurisdiction, region and zone; the boundary a spillover crossed and its
    cost against the primary's cost model; the SLA class's deadlines and ``met_sla``; each
    candidate's static facts in ``decision_json``) are filled only when ``record.config_hash`` is
    ``policy.policy_hash``: a replica rebuilding another config's record from the journal leaves
    them null, and a spillover's boundary is then ``jurisdiction`` (unknown is never assumed
    close). Cost is ``record.cost`` as the answering replica attributed it. ``recovered_by``: the
    replica rebuilding the row from a journal (``telemetry.journal``), None for the one that answered.
    """
    record = redacted(record, fleet, policy)
    d = record.decision
    if d is None:
        tenant, model, sla_class = record.tenant, record.model, record.sla_class
    else:
        tenant, model, sla_class = d.tenant, d.model, d.sla_class
    if model is not None:
        model = fleet.model_names.get(model, model)
    same_config = record.config_hash == policy.policy_hash
    config_fleet = fleet if same_config else None
    cost = record.cost
    row: dict[str, Any] = {
        "schema_version": AUDIT_SCHEMA_VERSION,
        "request_id": record.request_id,
        "placement_id": None,
        "time": utc(record.received_at_s),
        "finished_at": utc(record.finished_at_s),
        "ingress_id": record.ingress_id,
        "ingress_region": record.ingress_region,
        "tenant": tenant,
        "model": model,
        "model_version": None,
        "rollout": None,
        "sla_class": sla_class,
        "substrate": None,
        "substrate_class": None,
        "substrate_kind": None,
        "emulated": None,
        "jurisdiction": None,
        "region": None,
        "zone": None,
        "primary_substrate": None,
        "spillover": False,
        "spillover_reason": None,
        "boundary": "none",
        "spillover_extra_cost_usd": None,
        "spillover_extra_cost_actual_usd": None,
        "candidate_count": 0,
        "eligible_count": 0,
        "rejections": None,
        "rejection_counts": {},
        "rejection_code": None,
        "rejection_message": None,
        "attempts": record.attempts,
        "status_code": record.status_code,
        "error_code": record.error_code,
        "streamed": record.streamed,
        "ttft_s": record.ttft_s,
        "e2e_s": record.e2e_s,
        "tpot_s": record.tpot_s,
        "input_tokens": record.input_tokens,
        "estimated_input_tokens": record.estimated_input_tokens,
        "cached_input_tokens": record.cached_input_tokens,
        "output_tokens": record.output_tokens,
        "cost_usd": None if cost is None else cost.total_usd,
        "cost_tokens_usd": None if cost is None else cost.tokens_usd,
        "cost_gpu_usd": None if cost is None else cost.gpu_usd,
        "cost_egress_usd": None if cost is None else cost.egress_usd,
        "predicted_ttft_s": None,
        "predicted_e2e_s": None,
        "ttft_residual": None,
        "tpot_residual": None,
        "estimated_cost_usd": None,
        "predicted_prefix_hit": None,
        "ttft_deadline_s": None,
        "e2e_deadline_s": None,
        "met_sla": None,
        "snapshot_version": None,
        "snapshot_age_s": None,
        "held_s": record.held_s,
        "held_reason": record.held_reason,
        "policy_hash": None,
        "decision_json": None,
        "recovered_by": recovered_by,
        "model_file_sha256": record.model_file_sha256,
    }
    if d is not None:
        row.update(_decision_columns(d))
        row["snapshot_age_s"] = record.snapshot_age_s
        row["ttft_residual"], row["tpot_residual"] = residuals(record)
        row["decision_json"] = json.dumps(recorded_decision(d, config_fleet), separators=(",", ":"),
                                          allow_nan=False)
        if row["spillover"] and not same_config:
            row["boundary"] = "jurisdiction"
        chosen = _spec_or_none(config_fleet, d.substrate)
        if chosen is not None:
            row.update(substrate_class=chosen.substrate_class, substrate_kind=chosen.kind, emulated=chosen.emulated,
                       jurisdiction=chosen.jurisdiction, region=chosen.region, zone=chosen.zone)
            if row["spillover"]:
                primary = _spec_or_none(config_fleet, d.primary)
                row["boundary"] = boundary_crossed(primary, chosen)
                if primary is not None and cost is not None:
                    on_primary = request_cost(primary, record.input_tokens or 0, record.output_tokens or 0,
                                              record.e2e_s or 0.0, record.ingress_region)
                    row["spillover_extra_cost_actual_usd"] = cost.total_usd - on_primary.total_usd
    sla = policy.sla_classes.get(sla_class) if same_config and sla_class is not None else None
    if sla is not None:
        row.update(ttft_deadline_s=sla.ttft_deadline_s, e2e_deadline_s=sla.e2e_deadline_s, met_sla=(
            record.status_code == 200 and record.ttft_s is not None and record.e2e_s is not None
            and record.ttft_s <= sla.ttft_deadline_s and record.e2e_s <= sla.e2e_deadline_s))
    return row


def _decision_columns(decision: PlacementDecision) -> dict[str, Any]:
    """The columns read off the decision itself: ids, the chosen and primary substrates, the
    spillover and its estimated extra cost over the primary's estimate, counts, the rejections
    rolled up, predictions, snapshot and policy."""
    spill = decision.placed and decision.spillover
    rejections, by_code = roll_up_rejections(decision)
    extra_estimate = None
    if spill and decision.estimated_cost_usd is not None:
        primary = next((c for c in decision.candidates if c.name == decision.primary), None)
        if primary is not None and primary.cost_usd is not None:
            extra_estimate = decision.estimated_cost_usd - primary.cost_usd
    return {
        "placement_id": decision.placement_id,
        "substrate": decision.substrate,
        "primary_substrate": decision.primary,
        "model_version": decision.model_version,
        "rollout": decision.rollout,
        "spillover": spill,
        "spillover_reason": decision.spillover_reason.value if spill and decision.spillover_reason else None,
        "spillover_extra_cost_usd": extra_estimate,
        "candidate_count": len(decision.candidates),
        "eligible_count": decision.eligible_count,
        "rejections": rejections,
        "rejection_counts": by_code,
        "rejection_code": None if decision.rejection_code is None else decision.rejection_code.value,
        "rejection_message": decision.rejection_message,
        "predicted_ttft_s": decision.predicted_ttft_s,
        "predicted_e2e_s": decision.predicted_e2e_s,
        "estimated_cost_usd": decision.estimated_cost_usd,
        "predicted_prefix_hit": decision.predicted_prefix_hit,
        "snapshot_version": decision.snapshot_version,
        "policy_hash": decision.policy_hash,
    }


# -------------------------------------------------------------------------------------------------
# Files

WRITER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_FILE_RE = re.compile(r"^audit-(?P<writer>.+)-(?P<first>\d{10})(?:to(?P<last>\d{10}))?\.parquet$")
_PARTITION_RE = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")


@dataclass(frozen=True, slots=True)
class AuditFile:
    path: Path
    writer: str
    first_seq: int
    last_seq: int

    @property
    def merged(self) -> bool:
        return self.first_seq != self.last_seq


def _parse(path: Path) -> AuditFile | None:
    m = _FILE_RE.fullmatch(path.name)
    if m is None:
        return None
    first = int(m["first"])
    return AuditFile(path, m["writer"], first, int(m["last"]) if m["last"] else first)


def _partitions(directory: Path) -> list[tuple[date, Path]]:
    out = []
    if not directory.is_dir():
        return out
    for child in directory.iterdir():
        m = _PARTITION_RE.fullmatch(child.name)
        if m and child.is_dir():
            out.append((date.fromisoformat(m[1]), child))
    return sorted(out)


def _visible(partition: Path) -> list[AuditFile]:
    """The partition's audit files, without small files covered by a merged file of their writer."""
    files = [f for f in map(_parse, sorted(partition.iterdir())) if f is not None]
    merged: dict[str, list[tuple[int, int]]] = {}
    for f in files:
        if f.merged:
            merged.setdefault(f.writer, []).append((f.first_seq, f.last_seq))
    return [f for f in files
            if f.merged or not any(a <= f.first_seq <= b for a, b in merged.get(f.writer, ()))]


def audit_files(directory: str | os.PathLike[str], since: date | None = None) -> list[Path]:
    """The files that make up the dataset now, each row in exactly one of them."""
    return [f.path for d, part in _partitions(Path(directory)) if since is None or d >= since
            for f in _visible(part)]


def read_audit(directory: str | os.PathLike[str], since: datetime | None = None, *,
               where: ds.Expression | None = None) -> pa.Table:
    """Every audit row in ``directory`` (received at or after ``since``, and matching ``where``, a
    ``pyarrow.dataset`` expression, if given), ordered by time.

    Safe while writers run: it reads only complete files, and re-lists if a compaction removed a
    file between listing and reading. Columns are ``AUDIT_SCHEMA``'s; a file of an older version
    reads with nulls in the columns it lacks. A naive ``since`` is taken as UTC.
    """
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    flt = where
    if since is not None:
        after = ds.field("time") >= pa.scalar(since, type=_TS)
        flt = after if flt is None else flt & after
    for attempt in range(8):
        paths = audit_files(directory, None if since is None else since.astimezone(UTC).date())
        if not paths:
            return AUDIT_SCHEMA.empty_table()
        try:
            dataset = ds.dataset([str(p) for p in paths], schema=AUDIT_SCHEMA, format="parquet")
            table = dataset.to_table(filter=flt)
            break
        except FileNotFoundError:
            if attempt == 7:
                raise
    return table.sort_by([("time", "ascending"), ("request_id", "ascending")])


def request_ids(directory: str | os.PathLike[str], writers: Collection[str], days: Collection[date]) -> set[str]:
    """The request ids in the files of ``writers`` (by file name) in the ``date=`` partitions of
    ``days``; only the ``request_id`` column is read. Re-lists if a compaction removed a file
    between listing and reading."""
    retries = 7
    while True:
        paths = [f.path for d, part in _partitions(Path(directory)) if d in days
                 for f in map(_parse, sorted(part.iterdir())) if f is not None and f.writer in writers]
        try:
            return {rid for path in paths
                    for rid in pq.read_table(path, columns=["request_id"]).column(0).to_pylist()}
        except FileNotFoundError:
            if retries == 0:
                raise
            retries -= 1


def _write_atomically(table: pa.Table, final: Path, compression: str | None) -> int:
    """Write ``table`` to a hidden temporary file, fsync it, rename it to ``final``; its size."""
    tmp = final.with_name(f".{final.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression=compression or "none")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)
    return final.stat().st_size


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(slots=True)
class _SmallFile:
    seq: int
    path: Path
    size: int
    written_at_s: float


class AuditLog:
    """Appends audit rows from any thread; writes them to Parquet from a background thread.

    ``append`` only takes a lock and appends to a list: no I/O, safe on an event loop. Rows are
    written within ``flush_interval_s`` (plus the write). Up to ``max_pending_rows`` rows wait in
    memory while the disk fails (failed writes are retried at the next flush); beyond that, rows
    are dropped and counted in ``dropped_rows``. ``close`` flushes everything, compacts, and is
    idempotent. ``background=False`` starts no thread (tests call ``flush`` themselves).
    ``on_written(request_ids)`` is called, from the flushing thread, after each file is fsynced and
    renamed into place, with the request ids of its rows; an exception from it is logged (the rows
    stay written, never queued again).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        writer_id: str,
        *,
        flush_interval_s: float = 2.0,
        rotate_bytes: int = 64 * 2**20,
        rotate_interval_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
        compression: str | None = "zstd",
        max_pending_rows: int = 1_000_000,
        compact_on_close: bool = True,
        background: bool = True,
        on_written: Callable[[list[str]], None] | None = None,
    ) -> None:
        if not WRITER_ID_RE.fullmatch(writer_id):
            raise ValueError(f"writer_id {writer_id!r} must match {WRITER_ID_RE.pattern}")
        if flush_interval_s <= 0 or rotate_interval_s <= 0 or rotate_bytes <= 0:
            raise ValueError("flush_interval_s, rotate_interval_s and rotate_bytes must be > 0")
        self._dir = Path(directory)
        self._writer = writer_id
        self._flush_interval_s = flush_interval_s
        self._rotate_bytes = rotate_bytes
        self._rotate_interval_s = rotate_interval_s
        self._clock = clock
        self._compression = compression
        self._max_pending = max_pending_rows
        self._compact_on_close = compact_on_close
        self._on_written = on_written
        self._lock = threading.Lock()  # guards _pending and _dropped
        self._io_lock = threading.Lock()  # one flush or compaction at a time
        self._pending: list[dict[str, Any]] = []
        self._dropped = 0
        self._closed = False
        self._segments: dict[str, list[_SmallFile]] = {}
        self._dir.mkdir(parents=True, exist_ok=True)
        self._seq = self._recover()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name=f"inferplane-audit-{writer_id}", daemon=True)
            self._thread.start()

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def dropped_rows(self) -> int:
        return self._dropped

    @property
    def pending_rows(self) -> int:
        return len(self._pending)

    # -- the hot path ------------------------------------------------------------------------
    def append(self, row: Mapping[str, Any]) -> None:
        """Queue one row (as made by ``audit_row``). Raises on a row with other columns."""
        if row.keys() != _COLUMN_SET:
            missing, extra = _COLUMN_SET - row.keys(), row.keys() - _COLUMN_SET
            raise ValueError(f"not an audit row: missing {sorted(missing)}, unexpected {sorted(extra)}")
        with self._lock:
            if self._closed:  # checked under the lock: a row queued before close() is written by it
                raise RuntimeError("the audit log is closed")
            if len(self._pending) >= self._max_pending:
                self._dropped += 1
                return
            self._pending.append(row)

    # -- writing -----------------------------------------------------------------------------
    def flush(self) -> int:
        """Write every queued row now, then compact what is due; the number of rows written."""
        with self._io_lock:
            written = self._flush_locked()
            self._compact_locked(self._clock(), force=False)
            return written

    def close(self) -> None:
        """Stop the thread, write every queued row, compact. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._io_lock:
            self._flush_locked()
            self._compact_locked(self._clock(), force=self._compact_on_close)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.wait(self._flush_interval_s):
            try:
                self.flush()
            except Exception:
                log.exception("audit flush failed; %d rows queued for the next one", len(self._pending))

    def _flush_locked(self) -> int:
        with self._lock:
            rows, self._pending = self._pending, []
        if not rows:
            return 0
        by_date: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            ts: datetime = row["time"]
            if ts.tzinfo is None:
                ts = ts.replace(tzinfo=UTC)
            by_date.setdefault(ts.astimezone(UTC).date().isoformat(), []).append(row)
        written = 0
        batches = sorted(by_date.items())
        for i, (day, batch) in enumerate(batches):
            table = self._table(batch)
            if table.num_rows == 0:
                continue
            try:
                self._write_small(day, table)
            except BaseException:
                # Nothing of this batch or later ones is visible: queue them again, in order.
                unwritten = [r for _, b in batches[i:] for r in b]
                with self._lock:
                    self._pending[:0] = unwritten
                raise
            written += table.num_rows
            self._tell_written(table)
        return written

    def _tell_written(self, table: pa.Table) -> None:
        if self._on_written is None:
            return
        try:
            self._on_written(table.column("request_id").to_pylist())
        except Exception:  # the rows are durable; only the hook's bookkeeping is behind
            log.exception("on_written failed after writing %d audit rows", table.num_rows)

    def _table(self, rows: list[dict[str, Any]]) -> pa.Table:
        try:
            return pa.Table.from_pylist(rows, schema=AUDIT_SCHEMA)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            good = []
            for row in rows:
                try:
                    pa.Table.from_pylist([row], schema=AUDIT_SCHEMA)
                    good.append(row)
                except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                    with self._lock:
                        self._dropped += 1
                    log.error("dropping an audit row that does not fit the schema (request %s): %s",
                              row.get("request_id"), type(exc).__name__)
            return pa.Table.from_pylist(good, schema=AUDIT_SCHEMA)

    def _write_small(self, day: str, table: pa.Table) -> None:
        part = self._dir / f"date={day}"
        part.mkdir(exist_ok=True)
        seq = self._seq
        self._seq += 1
        path = part / f"audit-{self._writer}-{seq:010d}.parquet"
        size = _write_atomically(table, path, self._compression)
        self._segments.setdefault(day, []).append(_SmallFile(seq, path, size, self._clock()))

    # -- compaction --------------------------------------------------------------------------
    def _compact_locked(self, now_s: float, *, force: bool) -> None:
        for day in list(self._segments):
            files = self._segments[day]
            due = force or (files and (now_s - files[0].written_at_s >= self._rotate_interval_s
                                       or sum(f.size for f in files) >= self._rotate_bytes))
            if not due:
                continue
            del self._segments[day]
            if len(files) >= 2:
                try:
                    self._merge(day, files)
                except Exception:  # the small files stay: nothing is lost, only not merged
                    log.exception("could not merge %d audit files of %s; leaving them as they are", len(files), day)

    def _merge(self, day: str, files: list[_SmallFile]) -> None:
        """One file for ``files``: written and renamed into place before the sources go, so a
        crash in between leaves a merged file that covers them (dropped at the next start)."""
        table = pa.concat_tables([pq.read_table(f.path, schema=AUDIT_SCHEMA) for f in files]).combine_chunks()
        target = self._dir / f"date={day}" / f"audit-{self._writer}-{files[0].seq:010d}to{files[-1].seq:010d}.parquet"
        _write_atomically(table, target, self._compression)
        for f in files:
            f.path.unlink(missing_ok=True)
        _fsync_dir(target.parent)

    def _recover(self) -> int:
        """Finish what a previous run of this writer left: drop its temporary files and small files
        covered by a merged one, adopt its other small files for compaction; the next sequence."""
        last = 0
        now = self._clock()
        for _, part in _partitions(self._dir):
            mine: list[AuditFile] = []
            for child in sorted(part.iterdir()):
                if child.name.startswith(".") and child.name.endswith(".tmp"):
                    tmp = _parse(Path(child.name[1:-len(".tmp")]))
                    if tmp is not None and tmp.writer == self._writer:
                        child.unlink(missing_ok=True)  # an interrupted write of ours
                    continue
                f = _parse(child)
                if f is not None and f.writer == self._writer:
                    mine.append(f)
                    last = max(last, f.last_seq)
            ranges = [(f.first_seq, f.last_seq) for f in mine if f.merged]
            day = part.name[len("date="):]
            for f in mine:
                if f.merged:
                    continue
                if any(a <= f.first_seq <= b for a, b in ranges):
                    f.path.unlink(missing_ok=True)
                else:
                    self._segments.setdefault(day, []).append(
                        _SmallFile(f.first_seq, f.path, f.path.stat().st_size, now))
        return last + 1
