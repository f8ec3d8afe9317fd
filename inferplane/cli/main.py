"""Entry point: parses the command line, dispatches to a command group, turns known errors into
one line on stderr (``--debug`` shows the traceback)."""

from __future__ import annotations

import argparse
import sys

from inferplane import __version__
from inferplane.cli import (bench, calibrate, deploy, explain, history, keys, models, replay, report, run, status,
                            validate)
from inferplane.config.errors import ConfigError

GROUPS = (validate, explain, run, deploy, status, models, history, bench, calibrate, keys, report, replay)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inferplane",
        description="Inference placement on Ray Serve: decide, per request, which substrate runs it.",
    )
    parser.add_argument("--version", action="version", version=f"inferplane {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        if args.debug:
            raise
        print(exc.render(), file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as exc:  # failures the user can act on: one line
        if args.debug:
            raise
        print(f"inferplane: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
