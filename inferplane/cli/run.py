"""`inferplane run [CONFIG]`: start a local Ray, deploy the plane, serve until Ctrl-C.

Default CONFIG is the embedded `configs/local.yaml`: a real vLLM engine (CPU build) serving
SmolLM2-135M-Instruct, plus emulated remote substrates. The models a config's vLLM substrates need
are prepared first (`inferplane models prepare`). Binds to 127.0.0.1 unless the config's
`ingress.host` or `--host` says otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import signal
import threading
import time
from pathlib import Path

from inferplane.config import build, load_config
from inferplane.config.schema import SubstrateKind

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "local.yaml"

# The demo keys of configs/local.yaml. Printed only for tenants whose stored digest matches.
DEMO_KEYS = ("sk-inferplane-demo-eu", "sk-inferplane-demo-global")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the plane locally on Ray Serve", description=__doc__)
    p.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG), help="default: configs/local.yaml")
    p.add_argument("--host", help="bind address (default: the config's ingress.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default: the config's ingress.port, 8000)")
    p.add_argument("--app-name", default="inferplane")
    p.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard")
    p.add_argument("--exit-after", type=float, metavar="SECONDS",
                   help="shut down after this long (for scripted runs); default: until Ctrl-C")
    p.set_defaults(func=cmd)


def demo_keys_for(config) -> dict[str, str]:
    by_digest = {hashlib.sha256(k.encode()).hexdigest(): k for k in DEMO_KEYS}
    return {t.name: by_digest[d] for t in config.tenants for d in t.api_keys_sha256 if d in by_digest}


def cmd(args: argparse.Namespace) -> int:
    from inferplane.cli.models import prepare_config_models
    from inferplane.cli.validate import summary

    print(summary(args.config), flush=True)
    config_text = Path(args.config).read_text(encoding="utf-8")
    cfg = build(load_config(args.config)).config
    host = args.host or cfg.ingress.host
    port = args.port or cfg.ingress.port
    if any(s.kind is SubstrateKind.VLLM for s in cfg.substrates):
        from inferplane.models.prepare import ModelPrepareError

        print("preparing models ...", flush=True)
        try:
            prepare_config_models(args.config, echo=lambda line: print("  " + line, flush=True))
        except ModelPrepareError as exc:
            raise ValueError(str(exc)) from None

    from deployments import runtime

    t0 = time.monotonic()
    print("starting Ray and deploying (a vLLM engine takes 20-40 s on CPU) ...", flush=True)
    runtime.start_local_ray(dashboard=not args.no_dashboard)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        runtime.deploy(config_text, args.app_name, host, port,
                       files=[{"path": args.config, "kind": "fleet", "team": None, "text": config_text}])
        url = f"http://{host}:{port}"
        runtime.wait_ready(url)
        print(f"\ninferplane is serving at {url}/v1 (ready in {time.monotonic() - t0:.0f}s)")
        if not args.no_dashboard:
            print("Ray dashboard (scale substrates there): http://127.0.0.1:8265")
        keys = demo_keys_for(cfg)
        for tenant, key in keys.items():
            print(f"  tenant {tenant:<12} key {key}")
        model = cfg.models[0].name
        key = next(iter(keys.values()), "YOUR-KEY")
        print("\ntry:\n"
              f"  curl -s -i {url}/v1/chat/completions -H 'Authorization: Bearer {key}' "
              "-H 'Content-Type: application/json' "
              f"-d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", "
              "\"content\": \"What is the capital of France?\"}], \"max_tokens\": 32}'\n"
              "Ctrl-C stops the plane.", flush=True)
        stop.wait(args.exit_after)
    finally:
        print("shutting down ...", flush=True)
        runtime.teardown(args.app_name)
    return 0
