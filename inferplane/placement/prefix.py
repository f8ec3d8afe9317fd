"""Prefix-cache locality: chained block hashes of a prompt, and the plane's belief of where they are cached.

An engine with a prefix cache (vLLM's automatic prefix caching, Mooncake's KV store) splits a prompt's
token ids into fixed-size blocks and keys each block's KV by a hash that covers the whole prefix up to
and including that block. Equal hashes therefore mean equal prefixes, and a cache can only ever reuse a
*leading run* of a prompt's blocks: the first block it does not hold ends the reuse, whatever it holds
after it. The Mooncake traces carry such hashes (``hash_ids``, 512-token blocks).

``block_hashes(token_ids, block_tokens)``: one hash per *full* block (a partial last block is not
cached by vLLM, so it is not hashed): ``h[i] = blake2b(h[i-1] || tokens of block i)``, 64 bits, with
``h[-1] = 0``. Deterministic across processes (no Python ``hash``).

``BlockCache``: a bounded LRU set of block hashes (one engine replica's cache in the simulator, or the
plane's belief of one substrate). A prompt's blocks are touched last block first, so the prompt's
first blocks are the most recently used and evicted last, as vLLM frees a finished request's blocks
tail first: a leading run survives longer than its tail.

``PrefixIndex``: the plane's *belief*, one ``BlockCache`` per substrate that declares a prefix
cache, fed only with the blocks of prompts the plane sent there. It never asks a substrate what it
holds. A prompt counts from the moment it is dispatched (``sent``): an engine caches a prompt's
blocks as it prefills them, and a prompt that shares them and arrives behind it finds them (as
Ray Serve's prefix-aware router and SGLang's cache-aware router insert a prompt into the chosen
replica's tree when they route it, not when it finishes). While in flight its blocks are held
apart (``InFlightBlocks``, counted); when it settles (``settled``) they go into the LRU if the
substrate prefilled it (its first byte came) and are forgotten if it failed or was abandoned
before that. ``hits(blocks)`` is what placement reads: per substrate, the fraction of the
prompt's blocks in the leading run it is believed to hold, cached or in flight. The caller puts
them in ``PlacementRequest.prefix_hits``; ``place()`` stays pure.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence

_BLAKE2B = hashlib.blake2b


def block_hashes(token_ids: Sequence[int], block_tokens: int) -> tuple[int, ...]:
    """The chained hash of every full ``block_tokens``-token block of ``token_ids``, in order."""
    if block_tokens < 1:
        raise ValueError(f"block_tokens must be at least 1, got {block_tokens}")
    out = []
    parent = 0
    for start in range(0, len(token_ids) - block_tokens + 1, block_tokens):
        data = parent.to_bytes(8, "little") + array("q", token_ids[start:start + block_tokens]).tobytes()
        parent = int.from_bytes(_BLAKE2B(data, digest_size=8).digest(), "little")
        out.append(parent)
    return tuple(out)


class BlockCache:
    """A bounded LRU set of block hashes: at most ``capacity_blocks`` held."""

    __slots__ = ("capacity_blocks", "_blocks")

    def __init__(self, capacity_blocks: int) -> None:
        if capacity_blocks < 1:
            raise ValueError(f"a block cache holds at least one block, got {capacity_blocks}")
        self.capacity_blocks = capacity_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block: int) -> bool:
        return block in self._blocks

    def leading_run(self, blocks: Sequence[int], in_flight: Mapping[int, int] | None = None) -> int:
        """How many of ``blocks``, from the first, are held, or carried by a prompt ``in_flight``
        (``InFlightBlocks.get``); stops at the first one that is neither. A query: it changes no
        recency."""
        held = self._blocks
        n = 0
        if in_flight:
            for b in blocks:
                if b not in held and b not in in_flight:
                    break
                n += 1
            return n
        for b in blocks:
            if b not in held:
                break
            n += 1
        return n

    def touch(self, blocks: Sequence[int]) -> None:
        """``blocks`` are now cached and the most recently used, the first of them most recently;
        the least recently used blocks beyond ``capacity_blocks`` are evicted."""
        held = self._blocks
        move = held.move_to_end
        for b in reversed(blocks):
            if b in held:
                move(b)
            else:
                held[b] = None
        excess = len(held) - self.capacity_blocks
        while excess > 0:
            held.popitem(last=False)
            excess -= 1


class InFlightBlocks:
    """The blocks of the prompts in flight to each substrate, counted (prompts share blocks)."""

    __slots__ = ("_by_substrate",)

    def __init__(self, substrates: Iterable[str]) -> None:
        self._by_substrate: dict[str, dict[int, int]] = {name: {} for name in substrates}

    def get(self, substrate: str) -> dict[int, int] | None:
        """Block -> prompts in flight to ``substrate`` that carry it; None for an unknown substrate."""
        return self._by_substrate.get(substrate)

    def add(self, substrate: str, blocks: Sequence[int]) -> None:
        counts = self._by_substrate.get(substrate)
        if counts is not None:
            for b in blocks:
                counts[b] = counts.get(b, 0) + 1

    def remove(self, substrate: str, blocks: Sequence[int]) -> None:
        """Undo one ``add`` of the same blocks (more removals than adds of a block are ignored)."""
        counts = self._by_substrate.get(substrate)
        if counts is not None:
            for b in blocks:
                n = counts.get(b, 0)
                if n > 1:
                    counts[b] = n - 1
                elif n:
                    del counts[b]


class PrefixIndex:
    """The plane's belief of which prompt blocks each substrate holds (see the module docstring).

    ``capacity_blocks``: substrate name -> the blocks its cache holds (its KV-cache tokens across
    its replicas / the block size). Substrates not in it have no prefix cache: never a hit."""

    __slots__ = ("_caches", "_in_flight")

    def __init__(self, capacity_blocks: Mapping[str, int]) -> None:
        self._caches = {name: BlockCache(n) for name, n in capacity_blocks.items() if n >= 1}
        self._in_flight = InFlightBlocks(self._caches)

    @property
    def substrates(self) -> tuple[str, ...]:
        return tuple(self._caches)

    def record(self, substrate: str, blocks: Sequence[int]) -> None:
        """A prompt of ``blocks`` was prefilled on ``substrate``: it now holds them (believed)."""
        cache = self._caches.get(substrate)
        if cache is not None and blocks:
            cache.touch(blocks)

    def sent(self, substrate: str, blocks: Sequence[int]) -> None:
        """A prompt of ``blocks`` was dispatched to ``substrate``: believed held there while in flight."""
        if blocks:
            self._in_flight.add(substrate, blocks)

    def settled(self, substrate: str, blocks: Sequence[int], prefilled: bool) -> None:
        """The prompt ``sent`` there is no longer in flight; ``prefilled`` (its first byte came):
        its blocks are cached there (``record``), else what only it held is forgotten."""
        if blocks:
            self._in_flight.remove(substrate, blocks)
            if prefilled:
                self.record(substrate, blocks)

    def hit_fraction(self, substrate: str, blocks: Sequence[int]) -> float:
        """The leading run of ``blocks`` ``substrate`` is believed to hold / ``len(blocks)``, in
        [0, 1]; 0 for an empty prompt or a substrate without a prefix cache."""
        cache = self._caches.get(substrate)
        if cache is None or not blocks:
            return 0.0
        return cache.leading_run(blocks, self._in_flight.get(substrate)) / len(blocks)

    def hits(self, blocks: Sequence[int], substrates: Iterable[str] | None = None) -> tuple[tuple[str, float], ...]:
        """(substrate, hit fraction) for every substrate (of ``substrates``, or all) with a
        non-zero hit fraction: what ``PlacementRequest.prefix_hits`` takes."""
        if not blocks:
            return ()
        n = len(blocks)
        out = []
        caches = self._caches
        in_flight = self._in_flight
        for name in (caches if substrates is None else substrates):
            cache = caches.get(name)
            if cache is None:
                continue
            run = cache.leading_run(blocks, in_flight.get(name))
            if run:
                out.append((name, run / n))
        return tuple(out)
