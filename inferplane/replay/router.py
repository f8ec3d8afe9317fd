"""The contract between the simulator and a router (inferplane's placement or a baseline).

The simulator asks ``place`` for every attempt of every request and tells the router what
happened to what it dispatched, the way production tells it: a dispatch, a first token, a finish,
an error. A router sees nothing else of the substrates unless it says how it learns it (the
plane's placement actor receives the substrates' own load reports; a gateway does not).

Contract of ``place(request, tried, now_s)``: ``tried`` are the substrates that already failed
this request, in order (empty on the first attempt); the answer names a substrate, refuses with
a reason, or holds the request (``held``): a router that queues requests while its substrates are
full answers a held request later, through the ``Host`` it was given (``attach``), with
``host.resume(request, placement, now_s)``: a substrate, or a refusal. ``spillover_logged`` is
True only when the router recorded, in a decision someone can audit, that this placement is a
spillover.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from inferplane.placement.decision import PlacementDecision
from inferplane.replay.attempt import Failure
from inferplane.replay.workload import ReplayRequest


class Placement(NamedTuple):
    """A router's answer to one attempt. (A named tuple: one is built per attempt.)"""

    substrate: str | None
    """None: the router refuses the request (``rejection`` says why)."""
    spillover_logged: bool = False
    rejection: str | None = None
    first_byte_timeout_s: float | None = None
    """The router's own per-try timeout to the first token, on top of the substrate client's."""
    decision: PlacementDecision | None = None
    held: bool = False
    """The router holds the request: it answers later (``Host.resume``)."""


HELD = Placement(None, held=True)


class Host(Protocol):
    """What the simulator offers a router that holds requests."""

    @property
    def now_s(self) -> float:
        """The simulated time now."""

    def at(self, t: float, fn: Callable[..., None], *args) -> None:
        """Run ``fn(t, *args)`` at simulated time ``t`` (not before now)."""

    def resume(self, request: ReplayRequest, placement: Placement, now_s: float) -> None:
        """The held ``request``'s answer: dispatch to ``placement.substrate`` or refuse."""

    def replicas(self, name: str) -> tuple[int, int]:
        """(live, starting) replicas of a substrate the plane autoscales."""

    def scale(self, name: str, target: int, now_s: float) -> None:
        """Set an autoscaled substrate's target replicas (Serve's ``update_deployment_replicas``)."""


@dataclass(frozen=True, slots=True)
class Periodic:
    """A callback the simulator runs every ``period_s`` from ``first_s`` while requests remain."""

    period_s: float
    first_s: float
    run: Callable[[float], None]


class Router(Protocol):
    name: str

    def place(self, request: ReplayRequest, tried: tuple[str, ...], now_s: float) -> Placement: ...

    def dispatched(self, request: ReplayRequest, substrate: str, now_s: float) -> None: ...

    def finished(self, request: ReplayRequest, substrate: str, dispatched_s: float, first_token_s: float,
                 output_tokens: int, now_s: float) -> None: ...

    def failed(self, request: ReplayRequest, substrate: str, failure: Failure, retry_after_s: float | None,
               now_s: float) -> None: ...

    def periodic(self) -> tuple[Periodic, ...]: ...

    # A router that holds requests also has ``attach(host: Host) -> None``, called once before the
    # run; one that never holds need not define it.
