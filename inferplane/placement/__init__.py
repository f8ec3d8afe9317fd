"""The placement engine: ``place(request, snapshot, policy) -> PlacementDecision``. Pure."""

from inferplane.placement.decision import CandidateVerdict, PlacementDecision, SpilloverReason
from inferplane.placement.engine import place
from inferplane.placement.filters import RejectionCode
from inferplane.placement.fleet import FleetSpec, ModelRoute, SubstrateSpec
from inferplane.placement.policy import PlacementPolicy
from inferplane.placement.request import PlacementRequest
from inferplane.placement.signals import CircuitState, Reading, SubstrateSignals
from inferplane.placement.snapshot import FleetSnapshot

__all__ = [
    "CandidateVerdict",
    "CircuitState",
    "FleetSnapshot",
    "FleetSpec",
    "ModelRoute",
    "PlacementDecision",
    "PlacementPolicy",
    "PlacementRequest",
    "Reading",
    "RejectionCode",
    "SpilloverReason",
    "SubstrateSignals",
    "SubstrateSpec",
    "place",
]
