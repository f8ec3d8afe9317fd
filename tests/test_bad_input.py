"""Bad input at unit level, no Ray: whatever bytes or JSON a client sends, parsing a request body
either succeeds or fails with a pydantic ``ValidationError`` that the ingress turns into an
OpenAI-style 400, the token estimates of any body that parses are positive integers, and counting
it with a real tokenizer (SmolLM2's, chat template included) never raises.
(The same cases against a running plane are in tests/chaos.)

Isolation: every sampling value the ingress admits, vLLM's own ``SamplingParams`` admits too, and
a value the engine refuses anyway becomes the request's fault in the vLLM adapter (a
non-retryable rejection carrying the engine's reason), which the attempt loop answers 400 without
holding it against the substrate. The live version is tests/integration/test_isolation.py."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from inferplane.api.errors import ApiError
from inferplane.api.openai_schema import ChatCompletionRequest, CompletionRequest
from inferplane.api.tokens import TokenCounter, estimate_chat_tokens, estimate_completion_tokens, load_tokenizer
from inferplane.config.schema import TokenizerSpec
from substrate_adapters.base import ChatTurn, Finished, GenerationRequest
from substrate_adapters import vllm_engine
from substrate_adapters.errors import SubstrateError, SubstrateRejectedRequest, SubstrateUnavailable

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "root", ""])
messages = st.lists(st.fixed_dictionaries({"role": roles}, optional={
    "content": st.none() | st.text(max_size=50) | st.lists(st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url"])}, optional={"text": st.none() | st.text(max_size=20)}),
        max_size=3) | json_values,
    "name": st.text(max_size=5) | st.integers()}), max_size=5)
chat_bodies = st.fixed_dictionaries({}, optional={
    "model": st.text(max_size=10) | st.integers() | st.none(),
    "messages": messages | json_values,
    "max_tokens": st.integers(min_value=-10, max_value=2**70) | st.none() | st.text(max_size=3),
    "max_completion_tokens": st.integers(min_value=-10, max_value=10**7) | st.floats(allow_nan=False),
    "stream": st.booleans() | st.text(max_size=5) | st.integers(),
    "stream_options": json_values,
    "temperature": st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=3),
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=3), max_size=6) | st.integers(),
    "n": st.integers(min_value=-2, max_value=4),
    "extra": json_values,
})


def _ingress_error(exc: ValidationError) -> ApiError:
    from inferplane.api.errors import validation_error

    return validation_error(exc)


def _assert_openai_400(exc: ValidationError) -> None:
    err = _ingress_error(exc)
    assert err.status == 400
    body = err.body()["error"]
    assert isinstance(body["message"], str) and body["message"]
    assert body["type"] == "invalid_request_error" and body["code"] in ("invalid_json", "invalid_request")
    json.dumps(err.body())  # serialisable as the response


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_fail_as_an_openai_400(raw):
    for schema in (ChatCompletionRequest, CompletionRequest):
        try:
            schema.model_validate_json(raw)
        except ValidationError as exc:
            _assert_openai_400(exc)


@pytest.fixture(scope="module")
def smollm2_counter() -> TokenCounter:
    """Counts every body as model ``m`` with SmolLM2's tokenizer and chat template."""
    from inferplane.models.prepare import prepare_builtin

    prepare_builtin("builtin:smollm2-135m-instruct")
    return TokenCounter({"m": load_tokenizer(TokenizerSpec(hf="builtin:smollm2-135m-instruct"))}, {"m": "m"})


def _counted(counter: TokenCounter, body) -> int:
    return counter.prompt_tokens(body.model_copy(update={"model": "m"}))


@given(chat_bodies)
def test_any_chat_body_parses_with_a_positive_estimate_or_fails_as_a_400(smollm2_counter, body):
    try:
        parsed = ChatCompletionRequest.model_validate_json(json.dumps(body))
    except ValidationError as exc:
        _assert_openai_400(exc)
        return
    assert estimate_chat_tokens(parsed) >= 1
    assert _counted(smollm2_counter, parsed) >= 1  # the template's reply prompt at least
    assert parsed.max_tokens is None or parsed.max_tokens >= 1


@given(st.fixed_dictionaries({"model": st.text(min_size=1, max_size=5)}, optional={
    "prompt": st.text(max_size=50) | st.lists(st.text(max_size=10), max_size=3) | json_values,
    "max_tokens": st.integers(min_value=-5, max_value=2**40)}))
def test_any_completion_body_parses_with_a_positive_estimate_or_fails_as_a_400(smollm2_counter, body):
    try:
        parsed = CompletionRequest.model_validate_json(json.dumps(body))
    except ValidationError as exc:
        _assert_openai_400(exc)
        return
    assert estimate_completion_tokens(parsed) >= 1
    assert _counted(smollm2_counter, parsed) >= 0  # "" is no tokens to the engine too


@pytest.mark.parametrize("raw", [
    b"[" * 100_000 + b"]" * 100_000,                       # nesting far past any recursion limit
    b'{"model": "m", "messages": [' + b'{"role": "user", "content": "x"},' * 50_000 + b"]}",  # trailing comma
    b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}',                  # lone surrogate
    b'{"model": "m", "model": "n", "messages": [{"role": "user", "content": "x"}]}',         # duplicate key
    b'\xef\xbb\xbf{"model": "m", "messages": [{"role": "user", "content": "x"}]}',           # UTF-8 BOM
])
def test_pathological_json_never_raises_anything_but_a_validation_error(smollm2_counter, raw):
    try:
        body = ChatCompletionRequest.model_validate_json(raw)
    except ValidationError as exc:
        _assert_openai_400(exc)
    else:
        assert estimate_chat_tokens(body) >= 1
        assert _counted(smollm2_counter, body) >= 1


# -- the ingress's sampling checks: the bounds of the OpenAI API and of vLLM -----------------------

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "m", "prompt": "hi"}
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

REFUSED = [
    # (field, value or raw JSON literal, what the message says)
    ("stop", [""], "stop: a stop sequence cannot be an empty string"),
    ("stop", "", "stop: a stop sequence cannot be an empty string"),
    ("stop", ["\n", ""], "stop: a stop sequence cannot be an empty string"),
    ("stop", ["a", "b", "c", "d", "e"], "stop: at most 4 stop sequences are allowed, got 5"),
    ("top_p", 0, "top_p: Input should be greater than 0"),
    ("top_p", -0.5, "top_p: Input should be greater than 0"),
    ("top_p", 1.0001, "top_p: Input should be less than or equal to 1"),
    ("top_p", "NaN", "top_p: Input should be a finite number"),
    ("temperature", 2.01, "temperature: Input should be less than or equal to 2"),
    ("temperature", -0.01, "temperature: Input should be greater than or equal to 0"),
    ("temperature", "Infinity", "temperature: Input should be a finite number"),
    ("presence_penalty", 2.5, "presence_penalty: Input should be less than or equal to 2"),
    ("presence_penalty", -2.5, "presence_penalty: Input should be greater than or equal to -2"),
    ("frequency_penalty", 3, "frequency_penalty: Input should be less than or equal to 2"),
    ("frequency_penalty", "NaN", "frequency_penalty: Input should be a finite number"),
    ("seed", 2**70, f"seed: Input should be less than or equal to {INT64_MAX}"),
    ("seed", INT64_MAX + 1, f"seed: Input should be less than or equal to {INT64_MAX}"),
    ("seed", INT64_MIN - 1, f"seed: Input should be greater than or equal to {INT64_MIN}"),
    ("max_tokens", 0, "max_tokens: Input should be greater than or equal to 1"),
    ("n", 2, "n: Input should be less than or equal to 1"),
]


def _raw(body: dict, field: str, value) -> str:
    """``body`` with ``field`` set; "NaN" and "Infinity" go in as the bare literals clients send."""
    text = json.dumps({**body, field: "__VALUE__"})
    literal = value if value in ("NaN", "Infinity") else json.dumps(value)
    return text.replace('"__VALUE__"', literal)


def _refusal(schema, raw: str) -> ApiError:
    with pytest.raises(ValidationError) as info:
        schema.model_validate_json(raw)
    return _ingress_error(info.value)


@pytest.mark.parametrize("schema,body", [(ChatCompletionRequest, CHAT), (CompletionRequest, COMPLETION)],
                         ids=["chat", "completion"])
@pytest.mark.parametrize("field,value,message", REFUSED, ids=[f"{f}={v!r}" for f, v, _ in REFUSED])
def test_a_sampling_value_an_engine_refuses_is_an_openai_400_naming_the_parameter(schema, body, field, value,
                                                                                 message):
    err = _refusal(schema, _raw(body, field, value))
    assert (err.status, err.code, err.param, err.message) == (400, "invalid_request", field, message)
    assert err.body() == {"error": {"message": message, "type": "invalid_request_error", "param": field,
                                    "code": "invalid_request"}}


def test_max_completion_tokens_below_one_is_refused():
    err = _refusal(ChatCompletionRequest, _raw(CHAT, "max_completion_tokens", 0))
    assert (err.status, err.param) == (400, "max_completion_tokens")


EDGES = [
    {"top_p": 1}, {"top_p": 1e-9}, {"temperature": 0}, {"temperature": 2}, {"seed": INT64_MAX},
    {"seed": INT64_MIN}, {"seed": -1}, {"presence_penalty": -2, "frequency_penalty": 2},
    {"stop": ["a", "b", "c", "d"]}, {"stop": "\n"}, {"stop": []}, {"stop": None}, {"max_tokens": 1},
]


@pytest.mark.parametrize("schema,body", [(ChatCompletionRequest, CHAT), (CompletionRequest, COMPLETION)],
                         ids=["chat", "completion"])
@pytest.mark.parametrize("values", EDGES, ids=[json.dumps(v) for v in EDGES])
def test_valid_edge_values_pass(schema, body, values):
    parsed = schema.model_validate_json(json.dumps({**body, **values}))
    for field, value in values.items():
        got = getattr(parsed, field)
        assert got == ([value] if field == "stop" and isinstance(value, str) else value)


# -- what the ingress admits, vLLM admits ----------------------------------------------------------

def _generation(body, max_tokens: int) -> GenerationRequest:
    """The substrate request the ingress makes of a parsed body (its payload's sampling fields)."""
    return GenerationRequest(request_id="r", model="m", api="completion", prompt="hi", max_tokens=max_tokens,
                             temperature=body.temperature, top_p=body.top_p, stop=tuple(body.stop or ()),
                             seed=body.seed)


@pytest.mark.parametrize("values", EDGES, ids=[json.dumps(v) for v in EDGES])
def test_valid_edge_values_pass_vllm_too(values):
    body = CompletionRequest.model_validate_json(json.dumps({**COMPLETION, **values}))
    params = vllm_engine._sampling_params(_generation(body, body.max_tokens or 16))
    if body.top_p is not None and body.temperature is None:
        assert params.top_p == body.top_p
    if body.seed is not None:
        assert params.seed == (None if body.seed == -1 else body.seed)  # vLLM reads -1 as "no seed"


# Mostly near the bounds, where the ingress and the engine could disagree; sometimes anywhere.
numbers = (st.floats(min_value=-2.5, max_value=2.5)
           | st.sampled_from([0, 1, 2, -2, 0.0, -0.0, 1e-9, 5e-324, 1.0000001, 2.0000001, -2.0000001])
           | st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-(2**70), max_value=2**70))
seeds = (st.integers(min_value=-(2**63) - 2, max_value=2**63 + 1)
         | st.sampled_from([INT64_MIN, INT64_MIN - 1, INT64_MAX, INT64_MAX + 1, -1, 0])
         | st.integers(min_value=-(2**70), max_value=2**70))
sampling_bodies = st.fixed_dictionaries({}, optional={
    "temperature": numbers, "top_p": numbers, "presence_penalty": numbers, "frequency_penalty": numbers,
    "seed": seeds, "max_tokens": st.integers(min_value=-2, max_value=10**7),
    "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=6),
})


@given(sampling_bodies)
def test_every_sampling_value_the_ingress_admits_vllm_admits(values):
    try:
        body = CompletionRequest.model_validate_json(json.dumps({**COMPLETION, **values}))
    except ValidationError as exc:
        _assert_openai_400(exc)
        return
    # Raises VLLMValidationError (or the adapter's own rejection) for anything the engine refuses.
    vllm_engine._sampling_params(_generation(body, body.max_tokens or 16))


# -- the vLLM adapter: the request's own fault is a non-retryable rejection ----------------------

class _Output:
    def __init__(self, text: str, finished: bool) -> None:
        self.prompt_token_ids = [1, 2, 3]
        self.finished = finished
        self.outputs = [type("Completion", (), {"text": text, "token_ids": [7], "finish_reason": "stop"})()]


class FakeEngine:
    """Stands in for ``AsyncLLM``: yields ``outputs`` or raises ``error`` once iterated, and
    records what reached it."""

    def __init__(self, *, error: BaseException | None = None, tokenizer=None) -> None:
        self.error = error
        self.tokenizer = tokenizer
        self.generated: list[tuple[str, object, str]] = []
        self.aborted: list[str] = []

    def generate(self, prompt, params, request_id):
        self.generated.append((prompt, params, request_id))

        async def stream():
            if self.error is not None:
                raise self.error
            yield _Output("Paris", True)

        return stream()

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def get_tokenizer(self):
        assert self.tokenizer is not None, "completions need no tokenizer"
        return self.tokenizer

    def shutdown(self) -> None:
        pass


def _adapter(engine: FakeEngine):
    from inferplane.config.schema import ServedModel, VllmSettings

    settings = VllmSettings.model_validate({"engine": {"model_path": "/nonexistent", "max_model_len": 4096}})
    return vllm_engine.VllmEngineAdapter([ServedModel(name="m", context_window_tokens=4096)], settings,
                                         engine=engine)


def _run(adapter, request: GenerationRequest):
    async def main():
        return [event async for event in adapter.generate(request)]

    return asyncio.run(main())


def _request(**values) -> GenerationRequest:
    fields = {"request_id": "req-x", "model": "m", "api": "completion", "prompt": "The capital of France is",
              "max_tokens": 4, **values}
    return GenerationRequest(**fields)


@pytest.mark.parametrize("values,reason", [
    ({"top_p": 0.0}, "top_p must be in (0, 1], got 0.0."),
    ({"stop": ("",)}, "stop cannot contain an empty string."),
    ({"temperature": math.nan}, "temperature must be a finite number, got nan."),
    ({"max_tokens": 0}, "max_tokens must be at least 1, got 0."),
    ({"seed": 2**70}, "seed must be a signed 64-bit integer"),
], ids=["top_p=0", "empty-stop", "temperature=nan", "max_tokens=0", "seed=2**70"])
def test_vllm_sampling_params_refusing_the_request_is_a_non_retryable_rejection(values, reason):
    """The real ``vllm.SamplingParams`` judges the values (the seed: the adapter, as vLLM's own
    server does); the engine never sees the request and no slot stays taken."""
    engine = FakeEngine()
    adapter = _adapter(engine)
    with pytest.raises(SubstrateRejectedRequest) as info:
        _run(adapter, _request(**values))
    err = info.value
    assert not err.retryable and err.status == 400
    assert str(err).startswith("vLLM refused the request: ") and reason in str(err)
    assert engine.generated == [] and adapter.load().in_flight == 0


def test_a_valid_request_reaches_the_engine_with_its_values():
    engine = FakeEngine()
    events = _run(_adapter(engine), _request(top_p=1.0, temperature=0.0, seed=2**63 - 1, stop=("\n",)))
    assert events[-1] == Finished("stop", 3, 1)
    ((prompt, params, request_id),) = engine.generated
    assert (prompt, request_id, params.seed, params.stop) == ("The capital of France is", "req-x", 2**63 - 1,
                                                               ["\n"])


def _engine_errors():
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    too_long = VLLMValidationError(  # as vLLM 0.32's renderer words it
        "This model's maximum context length is 4096 tokens. However, your prompt contains at least 4097 "
        "input tokens, which exceeds this limit even without any output tokens.", parameter="input_tokens",
        value=4097)
    overflow = EngineGenerateError()
    overflow.__cause__ = OverflowError("can't serialize ints < -2**63 or > 2**64 - 1")
    return [
        (too_long, SubstrateRejectedRequest, "maximum context length is 4096 tokens. However, your prompt"),
        (overflow, SubstrateRejectedRequest, "can't serialize ints"),
        (EngineDeadError(), SubstrateUnavailable, "vLLM engine died"),
        (EngineGenerateError(), SubstrateUnavailable, "EngineGenerateError"),
        (RuntimeError("something inside broke"), SubstrateUnavailable, "RuntimeError"),
    ]


@pytest.mark.parametrize("case", range(5), ids=["prompt-too-long", "overflow", "engine-dead", "generate-error",
                                                "unexpected"])
def test_what_the_engine_raises_is_judged_by_whose_fault_it_is(case):
    error, kind, text = _engine_errors()[case]
    engine = FakeEngine(error=error)
    adapter = _adapter(engine)
    with pytest.raises(SubstrateError) as info:
        _run(adapter, _request())
    assert type(info.value) is kind and text in str(info.value)
    assert info.value.retryable is (kind is not SubstrateRejectedRequest)
    assert "(parameter=" not in str(info.value)  # the reason once, not vLLM's repeat of the value
    assert engine.aborted == ["req-x"] and adapter.load().in_flight == 0


def test_an_engine_reason_is_cut_between_words():
    from vllm.exceptions import VLLMValidationError

    long_reason = " ".join(f"because{i:02d}" for i in range(60))
    with pytest.raises(SubstrateRejectedRequest) as info:
        _run(_adapter(FakeEngine(error=VLLMValidationError(long_reason))), _request())
    reason = str(info.value).removeprefix("vLLM refused the request: ")
    assert reason.endswith("…") and len(reason) <= 200
    kept = reason[:-1].split(" ")
    assert kept == [f"because{i:02d}" for i in range(len(kept))]


class _Template:
    """A tokenizer whose chat template raises ``error``, or renders the turns."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        if self.error is not None:
            raise self.error
        return "".join(f"<{m['role']}>{m['content']}" for m in messages)


def _chat() -> GenerationRequest:
    return GenerationRequest(request_id="req-c", model="m", api="chat", max_tokens=4,
                             messages=(ChatTurn("user", "hi"), ChatTurn("user", "again")))


def test_a_chat_template_refusing_the_messages_is_the_requests_fault():
    from jinja2.exceptions import TemplateError

    engine = FakeEngine(tokenizer=_Template(TemplateError("Conversation roles must alternate user/assistant")))
    with pytest.raises(SubstrateRejectedRequest) as info:
        _run(_adapter(engine), _chat())
    assert not info.value.retryable and "roles must alternate" in str(info.value)
    assert engine.generated == []


def test_a_model_without_a_chat_template_is_the_substrates_fault():
    engine = FakeEngine(tokenizer=_Template(ValueError("tokenizer.chat_template is not set")))
    with pytest.raises(SubstrateUnavailable) as info:
        _run(_adapter(engine), _chat())
    assert info.value.retryable and engine.generated == []
    engine = FakeEngine(tokenizer=_Template())
    assert _run(_adapter(engine), _chat())[-1] == Finished("stop", 3, 1)
    assert engine.generated[0][0] == "<user>hi<user>again"


def test_a_rejection_by_the_engine_is_answered_400_and_never_held_against_it():
    """The adapter's error as the substrate deployment sends it on, through the attempt loop."""
    from inferplane.fleet_state import PublishedSnapshot
    from inferplane.plane.attempts import AttemptLoop, FirstByteFailure, Refusal
    from inferplane.plane.state import ReplicaState
    from tests.builders import NOW, fleet, request, signals, substrate

    built = fleet(substrate("v").cls("gpu_cluster").jurisdiction("DE").capacity(4),
                  substrate("s").cls("sovereign_onprem").jurisdiction("DE").capacity(4),
                  ).model("m", primary="v").spillover(classes=["sovereign_onprem"]).build()
    state = ReplicaState(built.fleet, built.policy)
    report = state.take_report(NOW)
    sigs = tuple(signals(now=NOW) for _ in built.fleet.substrates)
    assert state.publish(PublishedSnapshot(1, NOW, built.policy.policy_hash, sigs), report)
    with pytest.raises(SubstrateError) as info:
        _run(_adapter(FakeEngine()), _request(top_p=0.0))
    exc = info.value
    loop = AttemptLoop(state, request(model="m"))
    assert loop.start().substrate == "v"
    step = loop.failed(FirstByteFailure(type(exc).__name__, str(exc), exc.retryable), NOW + 0.1)
    assert isinstance(step, Refusal) and (step.status, step.code) == (400, "substrate_rejected_request")
    assert "top_p must be in (0, 1]" in step.message
    assert state.take_report(NOW + 1).outcomes == []
