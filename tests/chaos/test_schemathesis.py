"""Bad input generated from the OpenAI OpenAPI description (``../shared/data/openapi/
openai-openapi.inference-subset.yaml``, read in place) by schemathesis: every operation of
``/chat/completions``, ``/completions`` and ``/models``, authenticated, positive and negative
examples, a bounded count each. The plane must never answer 5xx, never crash (its replicas are the
same ones afterwards), every 4xx must be an OpenAI-style error JSON, and every 200 JSON body must
conform to the response schema the description documents (schemathesis's
``response_schema_conformance``). Not checked, deliberately (README, "OpenAI API fidelity"): status
codes the description does not list (it documents only 200; the plane answers 400, 401, 403, 404,
408, 413, 429, 503 as OpenAI does) and streamed answers (``text/event-stream``, which the
description does not model)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.chaos.traffic import KEYS

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

SPEC = Path(__file__).resolve().parents[3] / "shared" / "data" / "openapi" / "openai-openapi.inference-subset.yaml"
OPERATIONS = (("/chat/completions", "GET"), ("/chat/completions", "POST"), ("/completions", "POST"),
              ("/models", "GET"))
EXAMPLES = 40
"""Examples per operation and generation mode (and again for bodies routed to a served model)."""
ROUTED_MAX_TOKENS = 32
"""Bodies re-pointed at a served model get at most this many output tokens, so a generated
``max_tokens`` of 100k does not hold an emulated substrate for minutes (huge values are covered,
unrouted, by the generated bodies and by test_bad_requests)."""


def _schema():
    import schemathesis

    return schemathesis.openapi.from_path(str(SPEC))


def _check(response, case) -> str:
    """Raises AssertionError on a 5xx, a 4xx that is not an OpenAI error, or a 200 JSON body that
    does not conform to the documented response schema; returns a label."""
    from schemathesis.checks import response_schema_conformance

    status = response.status_code
    where = f"{case.method} {case.path} body={json.dumps(case.body, default=str)[:300]!s}"
    assert status < 500, f"{status} for {where}: {response.text[:300]}"
    # schemathesis's response: header name (as sent) -> list of values
    content_type = next((v[0] for k, v in response.headers.items() if k.lower() == "content-type"), "")
    if status == 200 and content_type.startswith("application/json"):
        try:
            case.validate_response(response, checks=[response_schema_conformance])
        except Exception as exc:  # schemathesis raises a FailureGroup (an AssertionError subclass or not)
            raise AssertionError(f"200 not conforming to the response schema for {where}: {str(exc)[:600]}") from None
    if status >= 400:
        try:
            err = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            raise AssertionError(f"{status} without an OpenAI error body for {where}: {response.text[:300]}")
        assert isinstance(err.get("message"), str) and err["message"], where
        assert isinstance(err.get("type"), str) and "code" in err, where
        return f"{status}:{err.get('code')}"
    return str(status) + (" (schema checked)" if content_type.startswith("application/json") else "")


def _route(case) -> None:
    """Point a generated body at a served model, with a bounded output, keeping the rest."""
    if isinstance(case.body, dict):
        case.body["model"] = "smollm2"
        for key in ("max_tokens", "max_completion_tokens"):
            if isinstance(case.body.get(key), int) and not isinstance(case.body.get(key), bool):
                case.body[key] = max(min(case.body[key], ROUTED_MAX_TOKENS), -ROUTED_MAX_TOKENS)
        if case.body.get("max_tokens") is None and case.body.get("max_completion_tokens") is None:
            case.body["max_tokens"] = 8


def _fuzz(operation, mode, routed: bool, base_url: str, auth: dict, seen: Counter, failures: list) -> None:
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        if routed:
            _route(case)
        headers = dict(case.headers or {})
        headers.update(auth)
        case.headers = headers
        response = case.call(base_url=base_url, timeout=60)
        try:
            seen[f"{operation.method.upper()} {operation.path}: {_check(response, case)}"] += 1
        except AssertionError as exc:
            failures.append(str(exc))
            raise

    run()


def test_generated_requests_get_no_5xx_and_openai_shaped_4xx(chaos_plane, report):
    from schemathesis import GenerationMode

    plane = chaos_plane
    before = {d: plane.replicas(d) for d in ("inferplane-ingress", "local-gpu-emulated")}
    schema = _schema()
    auth = {"Authorization": f"Bearer {KEYS['global-app']}"}
    seen: Counter[str] = Counter()
    failures: list[str] = []

    for path, method in OPERATIONS:
        operation = schema[path][method]
        runs = [(GenerationMode.POSITIVE, False), (GenerationMode.NEGATIVE, False)]
        if method == "POST":
            runs.append((GenerationMode.POSITIVE, True))
        for mode, routed in runs:
            try:
                _fuzz(operation, mode, routed, plane.url + "/v1", auth, seen, failures)
            except AssertionError:
                pass  # recorded in failures; keep going so the report covers every operation
    after = {d: plane.replicas(d) for d in before}
    health = plane.status()

    fig = report.scenario("7 schemathesis (OpenAPI)")
    fig.sent = sum(seen.values()) + len(failures)
    answered = {k for k in seen if k.rsplit(": ", 1)[1].startswith("200")}
    fig.answered = sum(seen[k] for k in answered)
    fig.errors.update(Counter(k.rsplit(": ", 1)[1] for k in seen.elements() if k not in answered))
    fig.errors.update({"check-failed": len(failures)} if failures else {})
    fig.note = f"{len(OPERATIONS)} operations x positive/negative (+routed) x {EXAMPLES} examples"

    assert not failures, "\n".join(failures[:10])
    assert sum(v for k, v in seen.items() if k.endswith("(schema checked)")) >= 20, seen  # the check ran
    assert after == before, "a replica was replaced during the run: something crashed"
    assert all(s["replicas"] for s in health["substrates"])
