"""`inferplane history CONFIG`: the config history next to CONFIG's audit log, one line per `build` or
`deploy` (who, when, what, the files' hashes, models added, changed or removed); `--json` prints the
records as they are stored."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from inferplane.cli.table import render_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("history", help="who shipped which config files when", description=__doc__)
    p.add_argument("config", nargs="?", help="the config (fleet) file whose audit directory holds the history")
    p.add_argument("--file", default=None, help="read this history file instead")
    p.add_argument("--json", action="store_true", help="print the stored records")
    p.set_defaults(func=cmd)


def cmd(args: argparse.Namespace) -> int:
    from inferplane.config import history

    if args.file is None and args.config is None:
        raise ValueError("give a config file (its audit directory holds the history) or --file")
    path = Path(args.file) if args.file else history.history_path_of_fleet(args.config)
    records = history.read_history(path)
    if args.json:
        for rec in records:
            print(json.dumps(rec))
        return 0
    if not records:
        print(f"{path}: no history yet")
        return 0
    rows = [[rec["at"], rec["by"], rec["action"],
             " ".join(f"{f['path']}@{f['sha256'][:8]}" for f in rec["files"]),
             history.summary(rec), rec["policy_hash"]] for rec in records]
    print(f"{path}: {len(records)} record{'s' if len(records) != 1 else ''}")
    print(render_table(["when (UTC)", "by", "action", "files (sha256)", "changes", "policy"], rows))
    return 0
