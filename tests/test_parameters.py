"""Every OpenAI parameter applied or refused (issue #16), without Ray:

- the schema: typed, bounded, with a plain ``param`` name and a readable message for what it refuses;
- ``required_features``: what a body asks of its substrate; placement honours it (``ParametersHonoured``)
  and refuses 400 naming the parameter when no eligible substrate can;
- the payload -> ``GenerationRequest`` round trip, and each adapter's mapping (vLLM's
  ``SamplingParams``, the emulation's stop and echo);
- the answer's framing, validated with the official ``openai`` SDK's own types.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math

import pytest
from openai.types import Completion
from openai.types.completion_choice import Logprobs
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import ValidationError

from deployments.substrate import delta_event, request_from_payload
from inferplane.api.errors import validation_error, validation_error_message, validation_error_param
from inferplane.api.openai_schema import PARAMETERS, ChatCompletionRequest, CompletionRequest, required_features
from inferplane.api.payload import substrate_payload
from inferplane.api.responses import completion_body, delta_chunk, finish_chunk, role_chunk
from inferplane.config.build import ALL_PARAMETERS
from inferplane.placement import place
from inferplane.placement.decision import STATUS_BY_REJECTION
from inferplane.placement.filters import LADDER, RejectionCode, unhonoured_parameter
from substrate_adapters import vllm_engine
from substrate_adapters.base import (
    ChatTurn,
    Finished,
    FunctionTool,
    GenerationRequest,
    ResponseFormat,
    TextDelta,
    TokenLogprob,
    ToolCall,
    TopLogprob,
)
from substrate_adapters.emulated import EmulatedAdapter
from substrate_adapters.errors import SubstrateRejectedRequest
from tests.builders import fleet, request, snapshot, substrate

MESSAGES = [{"role": "user", "content": "hi"}]
CHAT = {"model": "m", "messages": MESSAGES}
COMPLETION = {"model": "m", "prompt": "The capital of France is"}
WEATHER = {"type": "function", "function": {"name": "weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


# -- the schema: what is refused, with a plain param and a readable message ------------------------

REFUSED = [
    (CHAT, {"top_logprobs": 3}, "top_logprobs", "top_logprobs requires logprobs to be true"),
    (CHAT, {"logprobs": True, "top_logprobs": 21}, "top_logprobs", "Input should be less than or equal to 20"),
    (CHAT, {"logprobs": 3}, "logprobs", "Input should be a valid boolean, unable to interpret input"),
    (COMPLETION, {"logprobs": 6}, "logprobs", "Input should be less than or equal to 5"),
    (CHAT, {"response_format": {"type": "xml"}}, "response_format",
     "type must be one of text, json_object, json_schema"),
    (CHAT, {"response_format": {"type": "json_schema"}}, "response_format.json_schema", "Field required"),
    (CHAT, {"logit_bias": {"abc": 1}}, "logit_bias",
     'keys must be token ids (non-negative integers as strings), got "abc"'),
    (CHAT, {"logit_bias": {"50256": -101}}, "logit_bias", "Input should be greater than or equal to -100"),
    (CHAT, {"tool_choice": "auto"}, "tool_choice", "tool_choice needs tools"),
    (CHAT, {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "time"}}}, "tool_choice",
     "tool_choice names `time`, which is not among the tools"),
    (CHAT, {"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name",
     "String should match pattern '^[a-zA-Z0-9_-]{1,64}$'"),
    (COMPLETION, {"best_of": 2}, "best_of", "only best_of=1 is served (one candidate is generated per request), got 2"),
    (COMPLETION, {"prompt": ["a", "b"]}, "prompt",
     "one prompt per request is served; got a batch of 2 (send one request per prompt)"),
    (COMPLETION, {"prompt": [[1, 2], [3]]}, "prompt",
     "one prompt per request is served; got a batch of 2 (send one request per prompt)"),
    (COMPLETION, {"prompt": []}, "prompt", "prompt cannot be an empty list"),
    (COMPLETION, {"prompt": [-1]}, "prompt[0]", "Input should be greater than or equal to 0"),
    (COMPLETION, {"prompt": [[1, "a"]]}, "prompt[0][1]", "Input should be a valid integer, unable to parse string "
     "as an integer"),
    (COMPLETION, {"prompt": 5}, "prompt", "Input should be a valid string or a valid array"),
    (COMPLETION, {"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 stop sequences are allowed, got 5"),
    (CHAT, {"stop": 5}, "stop", "Input should be a valid array"),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, "messages[0].content",
     "Input should be a valid string or a valid array"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages[0].content[0].text",
     "Input should be a valid string"),
]


@pytest.mark.parametrize("base,values,param,message", REFUSED, ids=[f"{p}:{json.dumps(v)[:40]}" for _, v, p, _ in REFUSED])
def test_a_refused_value_names_its_plain_parameter(base, values, param, message):
    schema = ChatCompletionRequest if "messages" in base else CompletionRequest
    with pytest.raises(ValidationError) as info:
        schema.model_validate_json(json.dumps({**base, **values}))
    err = validation_error(info.value)
    assert (err.status, err.code, err.param, err.message) == (400, "invalid_request", param, f"{param}: {message}")
    assert validation_error_param(info.value) == param
    assert validation_error_message(info.value) == f"{param}: {message}"
    assert "." not in param or all(p not in param for p in ("str", "list[", "function-"))


def test_a_body_that_is_not_json_is_invalid_json():
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate_json(b"{nope")
    assert validation_error(info.value).code == "invalid_json"


ACCEPTED = [
    (COMPLETION, {"prompt": ["one"]}, "one"),
    (COMPLETION, {"prompt": [1, 2, 3]}, [1, 2, 3]),
    (COMPLETION, {"prompt": [[4, 5]]}, [4, 5]),
    (COMPLETION, {"best_of": 1, "echo": True, "suffix": "!", "logprobs": 0}, "The capital of France is"),
]


@pytest.mark.parametrize("base,values,prompt", ACCEPTED, ids=[json.dumps(v) for _, v, _ in ACCEPTED])
def test_completion_prompts_of_one(base, values, prompt):
    body = CompletionRequest.model_validate_json(json.dumps({**base, **values}))
    assert body.prompt == prompt
    assert body.prompt_text == (prompt if isinstance(prompt, str) else None)
    assert body.prompt_token_ids == (None if isinstance(prompt, str) else tuple(prompt))


def test_chat_parameters_parse_to_their_types():
    body = ChatCompletionRequest.model_validate({
        **CHAT, "logprobs": True, "top_logprobs": 2, "logit_bias": {"42": 5}, "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "weather"}}, "parallel_tool_calls": False,
        "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}},
        "presence_penalty": 0.5, "frequency_penalty": -0.5})
    assert body.response_format.json_schema.schema_ == SCHEMA
    assert body.tools[0].function.parameters == WEATHER["function"]["parameters"]


# -- required features ------------------------------------------------------------------------------

FEATURES = [
    ("chat", CHAT, set()),
    ("chat", {**CHAT, "temperature": 0.3, "top_p": 0.9, "n": 1, "response_format": {"type": "text"},
              "presence_penalty": 0, "user": "u", "metadata": {"k": "v"}}, set()),
    ("chat", {**CHAT, "logprobs": True}, {"logprobs"}),
    ("chat", {**CHAT, "logprobs": False}, set()),
    ("chat", {**CHAT, "logprobs": True, "top_logprobs": 3}, {"logprobs", "top_logprobs"}),
    ("chat", {**CHAT, "response_format": {"type": "json_object"}}, {"response_format"}),
    ("chat", {**CHAT, "tools": [WEATHER]}, {"tools"}),
    ("chat", {**CHAT, "logit_bias": {"1": 2}, "seed": 1, "stop": "x", "presence_penalty": 1,
              "frequency_penalty": 1}, {"logit_bias", "seed", "stop", "presence_penalty", "frequency_penalty"}),
    ("completion", COMPLETION, set()),
    ("completion", {**COMPLETION, "logprobs": 0}, {"logprobs"}),
    ("completion", {**COMPLETION, "logprobs": 2, "echo": True}, {"logprobs", "top_logprobs", "echo"}),
    ("completion", {**COMPLETION, "suffix": "!", "echo": False}, {"suffix"}),
]


@pytest.mark.parametrize("api,raw,expected", FEATURES, ids=[json.dumps(r)[:60] for _, r, _ in FEATURES])
def test_required_features(api, raw, expected):
    schema = ChatCompletionRequest if api == "chat" else CompletionRequest
    assert required_features(api, schema.model_validate(raw)) == expected


def test_the_schema_and_the_config_name_the_same_parameters():
    assert set(PARAMETERS) == ALL_PARAMETERS


# -- placement: a constraint, refused 400 naming the parameter -----------------------------------

def _fleet():
    # The emulation is the primary and cheaper: without the constraint it would be chosen.
    return (fleet(substrate("emu").cls("provider_api"), substrate("gpu").kind("vllm").cls("gpu_cluster"))
            .model("m", primary="emu").build())


def _place(built, features, **kw):
    req = dataclasses.replace(request(**kw), required_features=frozenset(features))
    return place(req, snapshot(built), built.policy), req


def test_a_logprobs_request_goes_to_the_substrate_that_honours_it():
    built = _fleet()
    plain, _ = _place(built, ())
    assert plain.substrate == "emu"
    decision, req = _place(built, {"logprobs", "top_logprobs"})
    assert decision.substrate == "gpu" and decision.spillover
    verdict = {c.name: c for c in decision.candidates}["emu"]
    assert (verdict.code, verdict.summary) == (RejectionCode.UNSUPPORTED_PARAMETER,
                                                "cannot honour `logprobs`, `top_logprobs`")
    # A retry keeps the constraint: it never widens the candidate set.
    retry = req.retry_excluding("gpu")
    assert retry.required_features == req.required_features
    again = place(retry, snapshot(built), built.policy)
    # The one that honours it failed: retrying may help, dropping the parameter is not the answer.
    assert again.substrate is None and again.http_status == 503


def test_a_parameter_no_candidate_honours_is_refused_400_naming_it():
    built = _fleet()
    decision, _ = _place(built, {"suffix", "stop"})
    assert decision.substrate is None
    assert (decision.http_status, decision.rejection_code) == (400, RejectionCode.UNSUPPORTED_PARAMETER)
    assert decision.rejection_message == "0/2 substrates serving `m` eligible: 2 cannot honour `suffix`"
    assert unhonoured_parameter(frozenset({"suffix", "stop"}), built.fleet, decision.candidates) == "suffix"


def test_the_rejection_sits_with_the_other_400_on_the_ladder():
    assert STATUS_BY_REJECTION[RejectionCode.UNSUPPORTED_PARAMETER] == 400
    assert LADDER[RejectionCode.JURISDICTION] < LADDER[RejectionCode.UNSUPPORTED_PARAMETER] < LADDER[
        RejectionCode.UNHEALTHY] < LADDER[RejectionCode.CAPACITY]


def test_a_busy_capable_substrate_is_a_429_not_a_400():
    """The one substrate that honours logprobs is full: waiting helps, so the request is told so."""
    from tests.builders import signals

    built = _fleet()
    req = dataclasses.replace(request(), required_features=frozenset({"logprobs"}))
    snap = snapshot(built, {"gpu": signals(in_flight=16, kv=0.5)})
    decision = place(req, snap, built.policy)
    assert decision.substrate is None and decision.http_status == 429


def test_features_by_kind_from_the_config():
    built = (fleet(substrate("emu"), substrate("gpu").kind("vllm"), substrate("api").kind("openai_compatible"))
             .model("m", primary="gpu").build())
    f = {s.name: s.features for s in built.fleet.substrates}
    assert f["gpu"] == ALL_PARAMETERS - {"suffix", "tools"}
    assert f["api"] == ALL_PARAMETERS
    assert f["emu"] == {"seed", "stop", "echo", "presence_penalty", "frequency_penalty"}
    assert built.fleet.lacking(frozenset({"tools"})) == {"emu", "gpu"}


# -- payload -> GenerationRequest ------------------------------------------------------------------

def test_the_payload_carries_every_parameter_to_the_generation_request():
    body = ChatCompletionRequest.model_validate({
        **CHAT, "logprobs": True, "top_logprobs": 2, "logit_bias": {"42": 5}, "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "weather"}}, "parallel_tool_calls": False,
        "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}},
        "presence_penalty": 0.5, "frequency_penalty": -0.5, "seed": 3, "stop": "\n",
        "messages": [{"role": "user", "content": "hi"},
                     {"role": "assistant", "content": None, "tool_calls": [
                         {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
                     {"role": "tool", "content": "sunny", "tool_call_id": "c1"}]})
    payload = substrate_payload("chat", body, 16, "req-1")
    json.dumps(payload)  # plain data crosses Serve
    g = request_from_payload({**payload, "model": "up"})
    assert (g.logprobs, g.logit_bias, g.presence_penalty, g.frequency_penalty, g.seed, g.stop) == (
        2, ((42, 5.0),), 0.5, -0.5, 3, ("\n",))
    assert g.response_format == ResponseFormat("json_schema", "city", json.dumps(SCHEMA), None)
    assert g.tools == (FunctionTool("weather", "Weather in a city", json.dumps(WEATHER["function"]["parameters"])),)
    assert (g.tool_choice, g.forced_function, g.parallel_tool_calls) == ("weather", "weather", False)
    assert g.messages[1].tool_calls == (ToolCall("c1", "weather", "{}"),) and g.messages[2].tool_call_id == "c1"


def test_a_token_id_prompt_with_echo_reaches_the_substrate():
    body = CompletionRequest.model_validate({"model": "m", "prompt": [[1, 2]], "echo": True, "logprobs": 1,
                                             "suffix": "x"})
    g = request_from_payload({**substrate_payload("completion", body, 4, "r"), "model": "up"})
    assert (g.prompt, g.prompt_token_ids, g.echo, g.logprobs, g.suffix) == (None, (1, 2), True, 1, "x")


# -- vLLM: SamplingParams and the adapter's deltas -----------------------------------------------

def _gen(**kw) -> GenerationRequest:
    return GenerationRequest(request_id="r", model="m", api="chat", messages=(ChatTurn("user", "hi"),), **kw)


def test_vllm_sampling_params_carry_the_parameters():
    params = vllm_engine._sampling_params(_gen(
        logprobs=3, logit_bias=((7, 5.0), (9, -100.0)), presence_penalty=0.5, frequency_penalty=-1.0,
        response_format=ResponseFormat("json_schema", "x", json.dumps(SCHEMA))))
    assert (params.logprobs, params.prompt_logprobs, params.presence_penalty, params.frequency_penalty) == (
        3, None, 0.5, -1.0)
    assert params.logit_bias == {7: 5.0, 9: -100.0}
    assert params.structured_outputs.json == SCHEMA


@pytest.mark.parametrize("request_kw,expected", [
    ({}, None),
    ({"response_format": ResponseFormat("json_object")}, {"json_object": True}),
    ({"tools": (FunctionTool("f", None, json.dumps(SCHEMA)),), "tool_choice": "f"}, {"json": SCHEMA}),
    ({"tools": (FunctionTool("f", None, None),), "tool_choice": "required", "parallel_tool_calls": False},
     {"json": {"type": "array", "minItems": 1, "maxItems": 1, "items": {"anyOf": [
         {"type": "object", "properties": {"name": {"type": "string", "enum": ["f"]},
                                           "parameters": {"type": "object"}}, "required": ["name", "parameters"]}]}}}),
    ({"tools": (FunctionTool("f", None, None),), "tool_choice": "auto"}, None),
])
def test_vllm_structured_outputs(request_kw, expected):
    assert vllm_engine._structured_output(_gen(**request_kw)) == expected


def test_vllm_echo_with_logprobs_asks_for_the_prompts_and_suffix_is_refused():
    params = vllm_engine._sampling_params(dataclasses.replace(_gen(logprobs=2), api="completion", prompt="x",
                                                              echo=True))
    assert params.prompt_logprobs == 2
    with pytest.raises(SubstrateRejectedRequest):
        vllm_engine._sampling_params(_gen(suffix="!"))


class _Lp:
    def __init__(self, logprob, rank, token):
        self.logprob, self.rank, self.decoded_token = logprob, rank, token


class _Out:
    def __init__(self, text, token_ids, logprobs=None, finished=False, reason=None):
        self.prompt_token_ids = [1, 2, 3]
        self.prompt_logprobs = None
        self.finished = finished
        self.outputs = [type("C", (), {"text": text, "token_ids": token_ids, "logprobs": logprobs,
                                       "finish_reason": reason})()]


class _Engine:
    def __init__(self, outputs):
        self.outputs, self.params, self.aborted = outputs, None, []

    def get_tokenizer(self):
        return type("T", (), {"apply_chat_template": lambda self, m, **kw: "PROMPT",
                              "decode": lambda self, ids: "decoded"})()

    def generate(self, prompt, params, request_id):
        self.params = params
        outputs = self.outputs

        async def run():
            for o in outputs:
                yield o
        return run()

    async def abort(self, request_id):
        self.aborted.append(request_id)

    def shutdown(self):
        pass


def _vllm(outputs, **settings):
    from inferplane.config.schema import ServedModel, VllmSettings

    s = VllmSettings.model_validate({"engine": {"model_path": "/x", "max_model_len": 64}, **settings})
    engine = _Engine(outputs)
    return vllm_engine.VllmEngineAdapter([ServedModel(name="m", context_window_tokens=64)], s, engine=engine), engine


async def _events(adapter, req):
    return [e async for e in adapter.generate(req)]


def test_vllm_deltas_carry_tokens_prompt_tokens_and_logprobs():
    outputs = [
        _Out("Par", [11], [{11: _Lp(-0.1, 1, "Par"), 12: _Lp(-2.5, 2, "Lon")}]),
        _Out("is.", [13, 14], [{13: _Lp(-0.2, 1, "is")}, {14: _Lp(-0.3, 1, ".")}], finished=True, reason="stop"),
    ]
    adapter, _ = _vllm(outputs)
    events = asyncio.run(_events(adapter, _gen(logprobs=1)))
    first, second, done = events
    assert (first.tokens, first.prompt_tokens, second.tokens, second.prompt_tokens) == (1, 3, 2, None)
    assert first.logprobs == (TokenLogprob("Par", -0.1, tuple(b"Par"), (TopLogprob("Par", -0.1, tuple(b"Par")),)),)
    assert [lp.token for lp in second.logprobs] == ["is", "."]
    assert done == Finished("stop", 3, 3)


def test_vllm_logprobs_of_the_end_of_sequence_token_are_not_in_the_answer():
    outputs = [_Out("Paris.", [11, 12, 2], [{11: _Lp(-0.1, 1, "Paris")}, {12: _Lp(-0.2, 1, ".")},
                                             {2: _Lp(-0.01, 1, "<|im_end|>")}], finished=True, reason="stop")]
    adapter, _ = _vllm(outputs)
    delta, done = asyncio.run(_events(adapter, _gen(logprobs=0)))
    assert [lp.token for lp in delta.logprobs] == ["Paris", "."] and delta.tokens == 3 and done.completion_tokens == 3


def test_vllm_forced_tool_call_is_one_delta_and_finish_reason_tool_calls():
    outputs = [_Out('{"city": ', [1]), _Out('"Paris"}', [2], finished=True, reason="stop")]
    adapter, engine = _vllm(outputs)
    req = _gen(tools=(FunctionTool("weather", None, json.dumps(SCHEMA)),), tool_choice="weather")
    delta, done = asyncio.run(_events(adapter, req))
    assert delta.text == "" and [(c.name, json.loads(c.arguments)) for c in delta.tool_calls] == [
        ("weather", {"city": "Paris"})]
    assert done.finish_reason == "tool_calls" and engine.params.structured_outputs.json == SCHEMA


def test_vllm_auto_tools_without_a_parser_are_refused():
    adapter, _ = _vllm([])
    with pytest.raises(SubstrateRejectedRequest, match="no tool-call parser"):
        asyncio.run(_events(adapter, _gen(tools=(FunctionTool("f"),))))


def test_vllm_echo_puts_the_prompt_first():
    adapter, _ = _vllm([_Out(" Paris", [5], finished=True, reason="length")])
    req = GenerationRequest(request_id="r", model="m", api="completion", prompt="Capital:", echo=True)
    delta, _ = asyncio.run(_events(adapter, req))
    assert delta.text == "Capital: Paris"


# -- the emulation: stop and echo applied, the rest refused -----------------------------------------

def _emu() -> EmulatedAdapter:
    from inferplane.config.schema import EmulatedSettings, ServedModel

    async def no_sleep(_):
        return None

    settings = EmulatedSettings.model_validate({"emulates": "x", "physics": {
        "ttft_ms": 0, "prefill_tokens_per_s": 1e6, "decode_tokens_per_s": 1e6, "max_concurrency": 4}})
    return EmulatedAdapter([ServedModel(name="m", context_window_tokens=64)], settings, substrate_name="emu",
                           sleep=no_sleep)


def test_the_emulation_cuts_its_filler_at_a_stop_string():
    events = asyncio.run(_events(_emu(), _gen(max_tokens=20, stop=("xt fr", "§"))))  # across two words
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "[emulated:emu] filler te"
    assert events[-1].finish_reason == "stop"


def test_the_emulation_echoes_and_refuses_what_it_would_invent():
    req = GenerationRequest(request_id="r", model="m", api="completion", prompt="Q:", echo=True, max_tokens=2)
    events = asyncio.run(_events(_emu(), req))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)).startswith("Q:[emulated:emu]")
    for kw in ({"logprobs": 0}, {"response_format": ResponseFormat("json_object")}, {"tools": (FunctionTool("f"),)},
               {"logit_bias": ((1, 1.0),)}):
        with pytest.raises(SubstrateRejectedRequest, match="does not honour"):
            asyncio.run(_events(_emu(), _gen(**kw)))


# -- framing, validated with the openai SDK's types ------------------------------------------------

def _lp(token: str, logprob: float, top: tuple = ()) -> TokenLogprob:
    return TokenLogprob(token, logprob, tuple(token.encode()),
                        tuple(TopLogprob(t, v, tuple(t.encode())) for t, v in top))


DELTAS = [
    delta_event(TextDelta("Par", 1, prompt_tokens=9, logprobs=(_lp("Par", -0.1, (("Par", -0.1), ("Lon", -2.4))),)),
                0),
    delta_event(TextDelta("is", 1, logprobs=(_lp("is", -0.2, (("is", -0.2), ("at", -3.0))),)), 3),
]
DONE = {"t": "done", "finish_reason": "stop", "prompt_tokens": 9, "completion_tokens": 2}


def test_chat_logprobs_are_openais_shape():
    body = completion_body("chat", "chatcmpl-1", 1, "m", DELTAS, DONE)
    parsed = ChatCompletion.model_validate(body)
    content = parsed.choices[0].logprobs.content
    assert [(c.token, c.logprob, [t.token for t in c.top_logprobs]) for c in content] == [
        ("Par", -0.1, ["Par", "Lon"]), ("is", -0.2, ["is", "at"])]
    assert content[0].bytes == list(b"Par") and parsed.choices[0].message.content == "Paris"
    chunk = ChatCompletionChunk.model_validate(delta_chunk("chat", "chatcmpl-1", 1, "m", DELTAS[1]))
    assert chunk.choices[0].logprobs.content[0].token == "is" and chunk.choices[0].delta.content == "is"


def test_completion_logprobs_are_openais_shape():
    body = completion_body("completion", "cmpl-1", 1, "m", DELTAS, DONE)
    lp = Completion.model_validate(body).choices[0].logprobs
    assert (lp.tokens, lp.token_logprobs, lp.text_offset) == (["Par", "is"], [-0.1, -0.2], [0, 3])
    assert lp.top_logprobs == [{"Par": -0.1, "Lon": -2.4}, {"is": -0.2, "at": -3.0}]
    # A stream's chunk has no finish_reason yet, which the SDK's Completion type requires: its
    # logprobs are checked with their own type.
    streamed = delta_chunk("completion", "cmpl-1", 1, "m", DELTAS[1])
    assert Logprobs.model_validate(streamed["choices"][0]["logprobs"]).text_offset == [3]


def test_no_logprobs_asked_none_given():
    plain = [delta_event(TextDelta("Paris", 1), 0)]
    body = completion_body("chat", "c", 1, "m", plain, DONE)
    assert body["choices"][0]["logprobs"] is None and body["choices"][0]["message"]["refusal"] is None
    ChatCompletion.model_validate(body)


def test_tool_calls_are_openais_shape():
    calls = (ToolCall("call_1", "weather", '{"city": "Paris"}'),)
    deltas = [delta_event(TextDelta("", 5, prompt_tokens=9, tool_calls=calls), 0)]
    done = {**DONE, "finish_reason": "tool_calls"}
    parsed = ChatCompletion.model_validate(completion_body("chat", "c", 1, "m", deltas, done))
    choice = parsed.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert [(c.id, c.type, c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [
        ("call_1", "function", "weather", '{"city": "Paris"}')]
    chunks = [role_chunk("chat", "c", 1, "m"), delta_chunk("chat", "c", 1, "m", deltas[0]),
              finish_chunk("chat", "c", 1, "m", done)]
    parsed_chunks = [ChatCompletionChunk.model_validate(c) for c in chunks]
    call = parsed_chunks[1].choices[0].delta.tool_calls[0]
    assert (call.index, call.id, call.function.name) == (0, "call_1", "weather")
    assert parsed_chunks[1].choices[0].delta.content is None
    assert parsed_chunks[2].choices[0].finish_reason == "tool_calls"


def test_every_delta_event_counts_its_tokens():
    event = delta_event(TextDelta("a b", 2, prompt_tokens=7), 0)
    assert (event["tokens"], event["prompt_tokens"]) == (2, 7) and "logprobs" not in event
    assert math.isfinite(DELTAS[0]["logprobs"][0]["logprob"])
