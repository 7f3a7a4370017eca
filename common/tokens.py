"""Random secrets that people copy onto a command line."""

from __future__ import annotations

import secrets


def new_cli_token(nbytes: int = 32) -> str:
    """A URL-safe random secret that never starts with '-'.

    Users paste these after an option (`gateway enroll --token T`, `mosquitto_pub -P T`);
    argparse and getopt read a leading '-' as another option, so one token in 64 would fail.
    Rejection sampling keeps the remaining tokens uniformly random.
    """
    while True:
        token = secrets.token_urlsafe(nbytes)
        if not token.startswith("-"):
            return token
