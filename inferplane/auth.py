"""Tenant authentication: `Authorization: Bearer <key>` against the config's SHA-256 digests.

The presented key is hashed once and compared with every stored digest by ``hmac.compare_digest``,
without early exit, so the time taken does not depend on which digest (if any) matched. Keys are
never stored, logged or returned; only the tenant name leaves this module.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable


class TenantKeys:
    def __init__(self, tenants: Iterable[tuple[str, Iterable[str]]]) -> None:
        self._digests: tuple[tuple[bytes, str], ...] = tuple(
            (bytes.fromhex(d), name) for name, digests in tenants for d in digests
        )

    def tenant_for(self, authorization: str | None) -> str | None:
        """The tenant owning the bearer key in an Authorization header value, or None."""
        if not authorization:
            return None
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        presented = hashlib.sha256(key.strip().encode("utf-8", "surrogateescape")).digest()
        found = None
        for digest, tenant in self._digests:
            if hmac.compare_digest(presented, digest):
                found = tenant
        return found
