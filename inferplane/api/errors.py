"""OpenAI-style error bodies: ``{"error": {"message", "type", "code", "param"}}``, and the 400 a
request body that fails validation gets.

``param`` is a plain field path a client can act on (``prompt``, ``messages[0].content``,
``stop``), never pydantic's location with union-member tags (``prompt.str``). When a value
matches no member of a union (``prompt: 5``), the message lists what each member expected
("Input should be a valid string, a valid array"); when a member's own check refused the value
(too many stop sequences, a batch of prompts), that check's message is the one given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import ValidationError

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


# -- validation errors -----------------------------------------------------------------------------

_FIELD = re.compile(r"^[a-z_][a-z0-9_]*$")
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "tuple", "set"})
_MISMATCHES = frozenset({
    "string_type", "int_type", "int_parsing", "float_type", "float_parsing", "bool_type", "bool_parsing",
    "list_type", "dict_type", "model_type", "model_attributes_type", "none_required", "literal_error",
    "union_tag_invalid", "is_instance_of", "tuple_type",
})
"""Error types that say only "this member of a union does not take that type"."""


def _field_path(loc: tuple) -> str:
    """``('messages', 0, 'content', 'list[ContentPart]', 1, 'text')`` -> ``messages[0].content[1].text``:
    field names and indices kept, pydantic's union-member tags (``str``, ``list[str]``,
    ``function-after[...]``, model names, discriminator values) dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _FIELD.match(part) and part not in _TYPE_TAGS:
            out += f".{part}" if out else part
    return out


def _param_and_message(exc: ValidationError) -> tuple[str | None, str]:
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first["type"] == "invalid_parameter":  # a cross-field check names its field in its context
        return first["ctx"]["field"], first["msg"]
    param = _field_path(first["loc"])
    # The errors of one union are those at or under the first one's field path. A member's own
    # check (not a type mismatch) is the reason, with its own path; otherwise list what each
    # member expected.
    same = [e for e in errors if _field_path(e["loc"]).startswith(param)]
    for e in same:
        if e["type"] not in _MISMATCHES:
            return _field_path(e["loc"]) or None, e["msg"]
    # Only mismatches: the member that got furthest into the value (a list whose item is wrong)
    # says most; at equal depth, every member's expectation.
    deepest = max(same, key=lambda e: len(_field_path(e["loc"])))
    if len(_field_path(deepest["loc"])) > len(param):
        return _field_path(deepest["loc"]), deepest["msg"]
    same = [e for e in same if _field_path(e["loc"]) == param]
    expected = list(dict.fromkeys(e["msg"].removeprefix("Input should be ") for e in same))
    if len(expected) == 1:
        return param or None, same[0]["msg"]
    return param or None, "Input should be " + " or ".join(expected)


def validation_error_param(exc: ValidationError) -> str | None:
    """The field the client should change: a plain path such as ``messages[0].content``."""
    return _param_and_message(exc)[0]


def validation_error_message(exc: ValidationError) -> str:
    """``"<param>: <reason>"`` (or the reason alone for the body as a whole)."""
    param, message = _param_and_message(exc)
    return f"{param}: {message}" if param else message


def validation_error(exc: ValidationError) -> ApiError:
    """The 400 for a body that fails validation: ``invalid_json`` when it is not JSON (or not an
    object), else ``invalid_request`` naming the parameter."""
    first = exc.errors(include_url=False)[0]
    if first["type"] in ("json_invalid", "json_type"):
        return ApiError(400, "invalid_json", f"request body is not valid JSON: {first['msg']}")
    param, message = _param_and_message(exc)
    return ApiError(400, "invalid_request", f"{param}: {message}" if param else message, param=param)
