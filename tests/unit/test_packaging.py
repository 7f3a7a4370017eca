"""Packaging (issue 14): the extras split the gateway from the cloud, the gateway process loads
nothing of the cloud's, a group whose extra is missing says so in one line, `--version`, and the
built wheel carries every file the cloud serves (uPlot included).

The fresh-venv installs (network, a few hundred MB) are `soak`: ./dev.sh test-soak."""

from __future__ import annotations

import email
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import httpx
import pytest

from cloud.api import webui
from common import cli
from tests.conftest import IOTSPHERE, REPO
from tests.support.ports import free_port

# what a gateway must never load: the cloud's code and its web stack
CLOUD_ONLY = {"cloud", "fastapi", "uvicorn", "pydantic", "starlette", "pyarrow", "aiosmtplib"}


def _modules_after(code: str) -> tuple[set[str], str]:
    """(the modules loaded, stderr) once `code` ran in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", code + "print('\\n'.join(sys.modules))\n"],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=True,
    )  # fmt: skip
    return set(done.stdout.split()), done.stderr


def _cloud_only(modules: set[str]) -> set[str]:
    return {name for name in modules if name.split(".")[0] in CLOUD_ONLY}


def test_gateway_command_line_loads_nothing_of_the_cloud() -> None:
    """`iotsphere gateway run --help`, as the console script runs it."""
    loaded, stderr = _modules_after(
        "import contextlib, sys\n"
        "from common.cli import main\n"
        "with contextlib.redirect_stdout(sys.stderr), contextlib.suppress(SystemExit):\n"
        "    main(['gateway', 'run', '--help'])\n"
    )
    assert "edge.app.cli" in loaded and "usage: iotsphere gateway run" in stderr
    assert not _cloud_only(loaded)


def test_every_gateway_and_simulator_module_loads_nothing_of_the_cloud() -> None:
    """All of edge/ (edge.app.gateway and whatever it imports lazily at start-up) and
    firmware_stubs/ (`iotsphere sim`, in the gateway extra)."""
    loaded, _ = _modules_after(
        "import importlib, pkgutil, sys, edge, firmware_stubs\n"
        "for pkg in (edge, firmware_stubs):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
    )
    assert {"edge.app.gateway", "edge.sync.cloud_client", "edge.status.page"} <= loaded
    assert not _cloud_only(loaded)


def test_version_prints_the_installed_version() -> None:
    done = subprocess.run(
        [*IOTSPHERE, "--version"], capture_output=True, text=True, cwd=REPO, timeout=30,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"iotsphere {importlib.metadata.version('iotsphere')}\n"


@pytest.mark.parametrize(
    ("argv", "absent", "extra"),
    [
        (["cloud", "serve", "--port", "1"], "fastapi", "cloud"),
        (["gateway", "run"], "aiocoap", "gateway"),
        (["sim", "mqtt", "--count", "1"], "aiomqtt", "gateway"),
        (["demo"], "pyarrow", "all"),
    ],
)
def test_a_group_without_its_extra_says_which_to_install(
    argv: list[str], absent: str, extra: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:  # fmt: skip
    real = importlib.util.find_spec
    monkeypatch.setattr("common.cli.find_spec", lambda name: None if name == absent else real(name))
    assert cli.main([*argv, "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"needs the '{extra}' extra, which is not installed (missing: {absent})" in err
    assert f"pip install 'iotsphere[{extra}]'" in err
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert f"(not installed: pip install 'iotsphere[{extra}]')" in " ".join(
        capsys.readouterr().out.split()
    )


def test_uplot_is_served_from_the_wheel_copy_first_else_from_npm(tmp_path: Path) -> None:
    npm = tmp_path / "node_modules" / "uplot" / "dist"
    assert webui.uplot_dir(tmp_path) == npm
    packaged = tmp_path / "vendor" / "uplot"
    packaged.mkdir(parents=True)
    for name in webui.UPLOT_FILES:
        (packaged / name).write_text("x")
    assert webui.uplot_dir(tmp_path) == packaged


def _source_copy(dest: Path) -> Path:
    """The checkout's files (tracked and new, not ignored) and uPlot from node_modules: the
    build writes its build/ there, never into the shared working tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, cwd=REPO, timeout=30, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for rel in filter(None, listed):
        if (REPO / rel).is_file() and not rel.startswith(("tests/", "bench/", "docs/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    modules = REPO / "cloud" / "web" / "node_modules"
    if not (modules / "uplot" / "dist").is_dir():  # pragma: no cover - ./dev.sh setup runs npm ci
        pytest.fail("run ./dev.sh setup: cloud/web/node_modules is missing")
    shutil.copytree(modules, dest / "cloud" / "web" / "node_modules")
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = _source_copy(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(src)],
        capture_output=True, timeout=300, check=True,
    )  # fmt: skip
    (built,) = out.glob("iotsphere-*.whl")
    return built


@pytest.mark.timeout(300)
def test_wheel_holds_everything_the_cloud_serves(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (meta_name,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(zf.read(meta_name))
    for package, files in webui.VENDOR.items():
        for name in files:
            assert f"cloud/web/vendor/{package}/{name}" in names
    assert {"cloud/web/index.html", "cloud/web/login.html", "cloud/web/static/js/chart.js",
            "edge/status/web/status.js"} <= names  # fmt: skip
    assert not [n for n in names if "node_modules" in n or n.startswith(("tests/", "bench/"))]
    assert not [n for n in names if "axe" in n.rsplit("/", 1)[-1]]  # a devDependency: tests only
    needs: dict[str, set[str]] = {}  # extra ("" for the base) -> distributions
    for req in meta.get_all("Requires-Dist") or []:
        dist = re.match(r"[A-Za-z0-9_.-]+", req)
        extra = re.search(r'extra == "([^"]+)"', req)
        assert dist is not None
        needs.setdefault(extra.group(1) if extra else "", set()).add(dist.group().lower())
    assert needs[""] == {"cbor2", "cryptography", "orjson", "pyjwt"}  # what common/ imports
    assert {"aiocoap", "aiomqtt", "duckdb"} <= needs["gateway"]
    assert not {"fastapi", "uvicorn", "pydantic", "pyarrow", "aiosmtplib"} & needs["gateway"]
    assert {"fastapi", "uvicorn", "pyarrow", "duckdb"} <= needs["cloud"]
    assert not {"aiocoap", "aiomqtt", "paho-mqtt", "aiohttp"} & needs["cloud"]
    assert not {"pytest", "mypy", "ruff", "playwright"} & set().union(
        *(names for extra, names in needs.items() if extra != "dev")
    )


def _fresh_venv(where: Path, wheel: Path, extra: str) -> Path:
    venv.create(where, with_pip=True)
    subprocess.run(
        [str(where / "bin" / "pip"), "install", "-q", f"{wheel}[{extra}]"],
        capture_output=True, timeout=600, check=True,
    )  # fmt: skip
    return where / "bin" / "iotsphere"


def _run(exe: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60,
        check=False,
    )  # fmt: skip


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_fresh_venvs_with_one_extra_each(wheel: Path, tmp_path: Path) -> None:
    """Install the wheel with [gateway] and with [cloud], each in its own venv, and run them
    from outside the checkout: the cloud serves its dashboard and uPlot without npm."""
    gateway = _fresh_venv(tmp_path / "gw", wheel, "gateway")
    assert _run(gateway, "--version", cwd=tmp_path).stdout.startswith("iotsphere ")
    assert _run(gateway, "gateway", "run", "--help", cwd=tmp_path).returncode == 0
    refused = _run(gateway, "cloud", "serve", cwd=tmp_path)
    assert refused.returncode == 1 and "pip install 'iotsphere[cloud]'" in refused.stderr
    cloud = _fresh_venv(tmp_path / "cl", wheel, "cloud")
    assert _run(cloud, "gateway", "run", cwd=tmp_path).returncode == 1
    port = free_port()
    server = subprocess.Popen(
        [str(cloud), "cloud", "serve", "--data-dir", str(tmp_path / "data"), "--port", str(port)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        for path in (
            "/",
            "/static/vendor/uplot/uPlot.esm.js",
            "/static/vendor/uplot/uPlot.min.css",
        ):
            r = httpx.get(base + path, timeout=10)
            assert r.status_code == 200 and r.content, path
    finally:
        server.terminate()
        server.wait(30)
