"""`iotsphere gateway backup FILE` and `iotsphere gateway restore FILE` (edge.admin.backup)."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from common.backup_files import add_backup_parser, backup_destination, pack_snapshot
from common.cli import CliError, add_common_args, data_dir_of, print_json
from edge.admin.backend import AdminBackend, running_gateway_url
from edge.admin.backup import CONTENTS_HELP, BackupError, extract, fold_wal, install, write_archive
from edge.app.config import ConfigError, GatewayConfig, load_config
from edge.storage.store import GatewayStore, StoreError


def _config(args: argparse.Namespace) -> GatewayConfig:
    try:
        return load_config(data_dir_of(args))
    except ConfigError as exc:
        raise CliError(str(exc), 2) from exc


def _cmd_backup(args: argparse.Namespace) -> int:
    from edge.app.cli import with_backend  # imports this module: not at the top

    dest = backup_destination(args.file)
    cfg = _config(args)

    async def snapshot(backend: AdminBackend) -> dict[str, Any]:
        return await backend.snapshot_store()

    # The running gateway copies its store between two commits; a stopped one is opened here.
    result = with_backend(args, snapshot)
    copy = Path(result["path"])
    print_json(
        pack_snapshot(dest, copy, lambda: write_archive(dest, copy, cfg.data_dir, fold_wal(copy)))
    )
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    source = Path(args.file).absolute()
    if not source.is_file():
        raise CliError(f"{source}: no such file", 2)
    cfg = _config(args)
    if running_gateway_url(cfg.run_dir) is not None:
        raise CliError(f"a gateway is running on {cfg.data_dir}: stop it, then restore")
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=cfg.data_dir))
    try:
        manifest = extract(source, staging)  # the file is checked first
        if cfg.db_path.exists() and not args.force:
            raise CliError(f"{cfg.data_dir} already holds a gateway store; --force replaces it", 2)
        # Opening it runs the migrations: a backup of an older release comes back upgraded.
        GatewayStore(staging / "gateway.duckdb").close()
        if running_gateway_url(cfg.run_dir) is not None:  # started meanwhile
            raise CliError(f"a gateway is running on {cfg.data_dir}: stop it, then restore")
        install(staging, manifest, cfg)
    except BackupError as exc:
        raise CliError(str(exc), exc.exit_code) from exc
    except (StoreError, OSError) as exc:
        raise CliError(f"restore from {source} failed: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print_json({"restored": str(source), "data_dir": str(cfg.data_dir), **manifest})
    return 0


def register_backup(sub: Any) -> None:
    """`gateway backup` and `gateway restore`, on the gateway's subparsers."""
    add_backup_parser(
        sub,
        help="write a consistent backup of the data dir, running or stopped",
        description=f"Write FILE: {CONTENTS_HELP}. While the gateway runs, its store is copied"
        " between two commits: every reading committed before the backup started is in it.",
        add_args=add_common_args,
        handler=_cmd_backup,
    )

    restore = sub.add_parser(
        "restore",
        help="restore a backup into the data dir (the gateway must be stopped)",
        description=f"Restore FILE, written by `gateway backup` ({CONTENTS_HELP}), into the data"
        " dir. Refused while a gateway runs on it, for a file that is no gateway backup, and for"
        " a backup of a newer release; an older release's store is migrated.",
    )
    restore.add_argument("file", metavar="FILE", help="a file written by `gateway backup`")
    restore.add_argument("--force", action="store_true", help="replace an existing store")
    add_common_args(restore, json_flag=True)
    restore.set_defaults(handler=_cmd_restore)
