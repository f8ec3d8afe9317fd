"""The errors every substrate adapter raises, and nothing else.

    SubstrateError                    base; ``retryable`` says whether another substrate may be tried
    ├── SubstrateUnavailable          cannot connect, 5xx, engine dead          retryable
    ├── SubstrateTimeout              no answer in time                          retryable
    ├── SubstrateRateLimited          429; carries ``retry_after_s``             retryable
    ├── SubstrateProtocolError        an answer that is not the API it claims    retryable
    └── SubstrateRejectedRequest      4xx other than 429: the request is bad     not retryable

Messages never contain API keys, prompt text or completion text: they are logged and audited.
"""

from __future__ import annotations


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
