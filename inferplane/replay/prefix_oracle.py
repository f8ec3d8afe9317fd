"""The ceiling of prefix affinity: a prefix-cache belief that is the simulator's truth.

Not a router anyone can run. The plane's own belief (``placement.prefix.PrefixIndex``) learns where
prompts' blocks are cached only from the requests it sent; ``PrefixOracle`` instead reads the
simulator's caches (``substrate_sim.SimSubstrate.prefix_caches``, one LRU per replica) at the moment
a request is placed. Given to the replay's ingress replicas in place of their ``PrefixIndex``
(``ReplicaState``'s ``prefix_belief``, through ``PlaneRouter``; router
``inferplane-prefix-oracle``), everything else identical, it measures what prefix affinity could do
on a fleet and load with perfect knowledge of the caches, so a gap between it and the learnt belief
is the belief's, and what it still misses is not a router's to win.

What it reports for a substrate is the hit the simulator would credit if the prompt started its
prefill now: the longest leading run of the prompt's blocks any of its replicas holds
(``SimSubstrate._prefix_hit`` credits the best replica's run), / the prompt's blocks. It can still
differ from what is served: the prompt may wait for a slot or a prefill lane while other prompts
evict its blocks or (a conversation's turns in flight together) add them.

What the plane itself knows it keeps as the learnt belief does: a prompt the replica has
dispatched and that has not yet started its prefill is not in any cache yet, but one sharing its
blocks that arrives behind it will find them; so the blocks of the replica's prompts in flight count
as held (``sent`` / ``settled``, ``placement.prefix.InFlightBlocks``), and the simulator's caches
record the rest.

A ``plane.state.PrefixBelief``, as ``PrefixIndex`` is: ``hits(blocks)``, ``sent`` and ``settled``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from inferplane.placement.prefix import InFlightBlocks
from inferplane.replay.substrate_sim import SimSubstrate


class PrefixOracle:
    """The simulator's prefix caches, read as a belief (module docstring)."""

    __slots__ = ("_caches", "_in_flight")

    def __init__(self, substrates: Iterable[SimSubstrate]) -> None:
        # The cache objects themselves, not copies: read live at every placement.
        self._caches = {s.spec.name: s.prefix_caches for s in substrates if s.prefix_caches}
        self._in_flight = InFlightBlocks(self._caches)

    @property
    def substrates(self) -> tuple[str, ...]:
        return tuple(self._caches)

    def sent(self, substrate: str, blocks: Sequence[int]) -> None:
        """A prompt of ``blocks`` was dispatched there: held, as far as placement can tell, while in flight."""
        if blocks:
            self._in_flight.add(substrate, blocks)

    def settled(self, substrate: str, blocks: Sequence[int], prefilled: bool) -> None:
        """No longer in flight; the simulator's caches hold what was prefilled."""
        if blocks:
            self._in_flight.remove(substrate, blocks)

    def hit_fraction(self, substrate: str, blocks: Sequence[int]) -> float:
        """The longest leading run of ``blocks`` a replica of ``substrate`` holds now / ``len(blocks)``;
        0 for an empty prompt or a substrate without a prefix cache."""
        caches = self._caches.get(substrate)
        if not caches or not blocks:
            return 0.0
        in_flight = self._in_flight.get(substrate)
        return max(c.leading_run(blocks, in_flight) for c in caches) / len(blocks)

    def hits(self, blocks: Sequence[int], substrates: Iterable[str] | None = None) -> tuple[tuple[str, float], ...]:
        """(substrate, hit fraction) for every substrate (of ``substrates``, or all) with a non-zero
        hit fraction, as ``PrefixIndex.hits``."""
        if not blocks:
            return ()
        names = self._caches if substrates is None else substrates
        return tuple((name, hit) for name in names if (hit := self.hit_fraction(name, blocks)))
