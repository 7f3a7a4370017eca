"""The one build step pyproject.toml cannot declare: uPlot and idiomorph into the wheel.

The dashboard's only third-party code, uPlot (charts) and idiomorph (patching live pages in
place), are npm packages pinned in cloud/web/package-lock.json. A checkout serves them from
cloud/web/node_modules (`./dev.sh setup` runs `npm ci`); a wheel must carry them, so building
one copies the files the dashboard loads into cloud/web/vendor/<package>/ inside the build,
running `npm ci` first when node_modules lacks them or is older than the lock file (as dev.sh's
web_setup decides).
npm is needed only here, at build time; an installed cloud serves the copy
(cloud/api/webui.py::vendor_dir). An editable install copies nothing: it serves node_modules.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

WEB = Path("cloud") / "web"
# package -> the files of its dist/ the dashboard loads (as cloud/api/webui.py::VENDOR)
VENDOR = {"uplot": ("uPlot.esm.js", "uPlot.min.css"), "idiomorph": ("idiomorph.esm.js",)}


class BuildWithVendored(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        modules = WEB / "node_modules"
        installed = modules / ".package-lock.json"  # what npm ci last installed
        if (
            not all((modules / p / "dist" / f).is_file() for p, fs in VENDOR.items() for f in fs)
            or not installed.is_file()
            or (WEB / "package-lock.json").stat().st_mtime > installed.stat().st_mtime
        ):
            npm = shutil.which("npm")
            if npm is None:
                raise SystemExit(
                    "building the wheel needs uPlot and idiomorph from npm: install npm"
                    " (Debian: nodejs npm) "
                    f"or run `npm ci` in {WEB} first"
                )
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=WEB, check=True
            )
        for package, files in VENDOR.items():
            source = modules / package / "dist"
            target = Path(self.build_lib) / WEB / "vendor" / package
            target.mkdir(parents=True, exist_ok=True)
            for name in files:
                shutil.copyfile(source / name, target / name)
            shutil.copyfile(source.parent / "LICENSE", target / "LICENSE")


setup(cmdclass={"build_py": BuildWithVendored})
