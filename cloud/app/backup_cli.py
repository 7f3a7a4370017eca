"""`iotsphere cloud backup FILE` (cloud.app.backup)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

from cloud.app.admin_ops import LOCAL_ADMIN_PREFIX
from cloud.app.backup import (
    CONTENTS_HELP,
    NOT_EMBEDDED,
    snapshot,
    snapshot_path,
    write_archive,
)
from cloud.app.settings import DB_FILE
from cloud.storage.db import Database
from cloud.storage.errors import StoreError
from common.backup_files import add_backup_parser, backup_destination, pack_snapshot
from common.cli import CliError, data_dir_of, print_json


def _copy_stopped(data_dir: Path) -> Path:
    """No server runs: open the file here and copy it the same way."""
    dest = snapshot_path(data_dir)
    try:
        db = Database(data_dir / DB_FILE)
    except StoreError as exc:
        raise CliError(f"cannot open the cloud store (is `cloud serve` running?): {exc}") from exc
    try:
        snapshot(db, dest)
    finally:
        db.close()
    return dest


def _cmd_backup(args: argparse.Namespace) -> int:
    from cloud.app.cli import _ask_running, _database_url  # imports this module: not at the top

    if _database_url(args) is not None:
        raise CliError(NOT_EMBEDDED, 2)
    dest = backup_destination(args.file)
    data_dir = Path(data_dir_of(args))
    if not (data_dir / DB_FILE).exists():
        raise CliError(f"no cloud store in {data_dir}", 2)
    answer = _ask_running(args, "POST", f"{LOCAL_ADMIN_PREFIX}/backup")
    copy = Path(answer["path"]) if answer is not None else _copy_stopped(data_dir)
    errors = (OSError, duckdb.Error)
    print_json(pack_snapshot(dest, copy, lambda: write_archive(dest, copy, data_dir), errors))
    return 0


def register_cloud_backup(sub: Any, add_args: Callable[..., None]) -> None:
    """`cloud backup`, on the cloud's subparsers (add_args: the cloud's common arguments)."""
    add_backup_parser(
        sub,
        help="write a consistent backup of the embedded store, running or stopped",
        description=f"Write FILE: {CONTENTS_HELP}. While `cloud serve` runs, its store is copied"
        " between two queries: everything committed before the backup started is in it.",
        add_args=add_args,
        handler=_cmd_backup,
    )
