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
cache, fed only with the blocks of prompts the plane sent there and that succeeded (``record``).
It never asks a substrate what it holds. ``hits(blocks)`` is what placement reads: per substrate,
the fraction of the prompt's blocks in the leading run it is believed to hold. The caller puts them
in ``PlacementRequest.prefix_hits``; ``place()`` stays pure.
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

    def leading_run(self, blocks: Sequence[int]) -> int:
        """How many of ``blocks``, from the first, are held (stops at the first one that is not).
        A query: it changes no recency."""
        held = self._blocks
        n = 0
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


class PrefixIndex:
    """The plane's belief of which prompt blocks each substrate holds (see the module docstring).

    ``capacity_blocks``: substrate name -> the blocks its cache holds (its KV-cache tokens across
    its replicas / the block size). Substrates not in it have no prefix cache: never a hit."""

    __slots__ = ("_caches",)

    def __init__(self, capacity_blocks: Mapping[str, int]) -> None:
        self._caches = {name: BlockCache(n) for name, n in capacity_blocks.items() if n >= 1}

    @property
    def substrates(self) -> tuple[str, ...]:
        return tuple(self._caches)

    def record(self, substrate: str, blocks: Sequence[int]) -> None:
        """A prompt of ``blocks`` was served on ``substrate``: it now holds them (believed)."""
        cache = self._caches.get(substrate)
        if cache is not None and blocks:
            cache.touch(blocks)

    def hit_fraction(self, substrate: str, blocks: Sequence[int]) -> float:
        """The leading run of ``blocks`` ``substrate`` is believed to hold / ``len(blocks)``, in
        [0, 1]; 0 for an empty prompt or a substrate without a prefix cache."""
        cache = self._caches.get(substrate)
        if cache is None or not blocks:
            return 0.0
        return cache.leading_run(blocks) / len(blocks)

    def hits(self, blocks: Sequence[int], substrates: Iterable[str] | None = None) -> tuple[tuple[str, float], ...]:
        """(substrate, hit fraction) for every substrate (of ``substrates``, or all) with a
        non-zero hit fraction: what ``PlacementRequest.prefix_hits`` takes."""
        if not blocks:
            return ()
        n = len(blocks)
        out = []
        caches = self._caches
        for name in (caches if substrates is None else substrates):
            cache = caches.get(name)
            if cache is None:
                continue
            run = cache.leading_run(blocks)
            if run:
                out.append((name, run / n))
        return tuple(out)
