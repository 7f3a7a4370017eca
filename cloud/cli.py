"""`iotsphere cloud ...` (being built: see issue 3)."""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
