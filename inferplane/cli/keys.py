"""`inferplane keys hash`: the SHA-256 digest to store in a tenant's `api_keys_sha256`.

The key is read from standard input (not the command line, so it stays out of shell history and
process listings); only the digest is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="tenant API key helpers", description=__doc__)
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    h = ksub.add_parser("hash", help="print the SHA-256 of a key read from stdin")
    h.set_defaults(func=cmd_hash)
    n = ksub.add_parser("new", help="make a new random key and print it with its digest")
    n.set_defaults(func=cmd_new)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def cmd_hash(args: argparse.Namespace) -> int:
    key = sys.stdin.readline().rstrip("\r\n")
    if not key:
        raise ValueError("no key on standard input")
    print(digest(key))
    return 0


def cmd_new(args: argparse.Namespace) -> int:
    key = "sk-ip-" + secrets.token_urlsafe(32)
    print(f"key:    {key}\nsha256: {digest(key)}")
    return 0
