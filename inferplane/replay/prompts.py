"""Synthetic prompts of a given size: what a replay sends when the trace has only token counts.

``prompt_text(key, words)`` is ``words`` three-letter English words drawn by a ``random.Random``
seeded with ``key``: the same key gives the same text, different keys differ from the first words
on (so a prefix cache never serves one request's prefill from another's). Each word with its space
is one token for SmolLM2's tokenizer (checked for every word; 1,000 random words are 1,000
tokens) and four characters, so the plane's own estimate (``inferplane.api.tokens``: a token per
four characters) agrees with the engine's count.
"""

from __future__ import annotations

import random

WORDS = (
    "the and for are but not you all any can had her was one our out day get has him his how man new "
    "now old see two way who boy did its let put say she too use act add age ago air arm art ask bad "
    "bag bed big bit box bus buy car cat cup cut dog dry ear eat egg end eye far fat few fit fly fun "
    "gas god gun guy hat hit hot ice job key kid law lay leg lie lot low map may mix net oil pay pen "
    "per pop red run sea set sit six sky son sun tax tea ten tie top toy try war win yes yet"
).split()


def prompt_text(key: str, words: int) -> str:
    """``max(1, words)`` words, fixed by ``key``."""
    rng = random.Random(key)
    return " ".join(rng.choice(WORDS) for _ in range(max(1, words)))
