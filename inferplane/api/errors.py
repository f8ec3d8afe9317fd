"""OpenAI-style error bodies: ``{"error": {"message", "type", "code", "param"}}``."""

from __future__ import annotations

from dataclasses import dataclass

ERROR_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable",
    504: "server_error",
}


@dataclass(frozen=True, slots=True)
class ApiError(Exception):
    """An error answered to the client. ``code`` is a stable machine-readable string."""

    status: int
    code: str
    message: str
    param: str | None = None
    retry_after_s: float | None = None

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": ERROR_TYPE_BY_STATUS.get(self.status, "invalid_request_error"),
                "code": self.code,
                "param": self.param,
            }
        }

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, int(round(self.retry_after_s))))}
