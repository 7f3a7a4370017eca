"""The one build step pyproject.toml cannot declare: uPlot into the wheel.

The dashboard's only third-party code, uPlot, is an npm package pinned in
cloud/web/package-lock.json. A checkout serves it from cloud/web/node_modules (`./dev.sh setup`
runs `npm ci`); a wheel must carry it, so building one copies the files the dashboard loads into
cloud/web/vendor/uplot/ inside the build, running `npm ci` first when node_modules lacks them
or is older than the lock file (as dev.sh's web_setup decides).
npm is needed only here, at build time; an installed cloud serves the copy
(cloud/api/webui.py::uplot_dir). An editable install copies nothing: it serves node_modules.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

WEB = Path("cloud") / "web"
UPLOT_FILES = ("uPlot.esm.js", "uPlot.min.css")  # as cloud/api/webui.py::UPLOT_FILES


class BuildWithUplot(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        source = WEB / "node_modules" / "uplot" / "dist"
        installed = WEB / "node_modules" / ".package-lock.json"  # what npm ci last installed
        if (
            not all((source / name).is_file() for name in UPLOT_FILES)
            or not installed.is_file()
            or (WEB / "package-lock.json").stat().st_mtime > installed.stat().st_mtime
        ):
            npm = shutil.which("npm")
            if npm is None:
                raise SystemExit(
                    "building the wheel needs uPlot from npm: install npm (Debian: nodejs npm) "
                    f"or run `npm ci` in {WEB} first"
                )
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=WEB, check=True
            )
        target = Path(self.build_lib) / WEB / "vendor" / "uplot"
        target.mkdir(parents=True, exist_ok=True)
        for name in UPLOT_FILES:
            shutil.copyfile(source / name, target / name)
        shutil.copyfile(source.parent / "LICENSE", target / "LICENSE")


setup(cmdclass={"build_py": BuildWithUplot})
