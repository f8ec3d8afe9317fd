"""The errors every substrate adapter raises, and nothing else.

    SubstrateError                    base; ``retryable`` says whether another substrate may be tried
    ├── SubstrateUnavailable          cannot connect, 5xx, engine dead          retryable
    ├── SubstrateTimeout              no answer in time                          retryable
    ├── SubstrateRateLimited          429; carries ``retry_after_s``             retryable
    ├── SubstrateProtocolError        an answer that is not the API it claims    retryable
    └── SubstrateRejectedRequest      the request itself is invalid (a 400 or    not retryable
                                      422, an engine's validation error)

The split decides isolation between tenants: a retryable error counts against the substrate's
health (its circuit breaker), a ``SubstrateRejectedRequest`` never does, and is answered to the
client as a 400 with its message. So an error is a rejection only when the request's own content
caused it: a substrate's bad key, missing model or exhausted quota is the substrate's failure.

Messages never contain API keys, prompt text or completion text: they are logged, and a
rejection's message is shown to the client. ``reason`` shortens text for a message.
"""

from __future__ import annotations

MESSAGE_LIMIT = 200
"""Characters of a reason (an upstream's or an engine's error text) kept in a message."""


def reason(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` on one line and at most ``limit`` characters, cut between words and marked ``…``
    when longer. Only a single word longer than the whole limit is cut inside itself. Redact
    secrets before calling: what is cut away can then never be part of one."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    if text[limit - 1] != " ":
        cut = head.rfind(" ")
        if cut > 0:
            head = head[:cut]
    return head.rstrip() + "…"


class SubstrateError(Exception):
    retryable: bool = True

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SubstrateUnavailable(SubstrateError):
    pass


class SubstrateTimeout(SubstrateError):
    pass


class SubstrateRateLimited(SubstrateError):
    def __init__(self, message: str, *, retry_after_s: float | None = None, status: int | None = 429) -> None:
        super().__init__(message, status=status)
        self.retry_after_s = retry_after_s


class SubstrateProtocolError(SubstrateError):
    pass


class SubstrateRejectedRequest(SubstrateError):
    retryable = False
