"""The cloud's web dashboard: two HTML pages and their static assets, no build step.

`GET /` is the dashboard (a hash-routed single page: overview, devices, alerts, rules, models,
channels), `GET /login` the login page. Both are plain files from cloud/web/; the JavaScript is
ES modules under cloud/web/static/js/, and the only third-party code, uPlot (charts), comes from
the npm registry and is served at /static/vendor/uplot/: from cloud/web/vendor/uplot/ in an
installed wheel (setup.py copies it there at build time), else from cloud/web/node_modules in a
checkout (`./dev.sh setup` runs `npm ci`). Nothing is loaded from the internet.

Missing vendor assets are not fatal: the server logs one clear line, the pages still work, and
the charts say that the charting library is missing.

Every HTML answer carries a strict Content-Security-Policy (scripts only from this origin, no
inline script, no framing): the pages keep the access token in memory (the refresh token is an
HttpOnly cookie no script reads), so an injected script is what could still use it; data is always
written into the DOM as text, never as HTML.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

log = logging.getLogger("iotsphere.cloud.web")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
STATIC_DIR = WEB_DIR / "static"
UPLOT_FILES = ("uPlot.esm.js", "uPlot.min.css")  # setup.py copies the same files
# idiomorph patches live pages in place (app.js); without it pages are replaced whole
VENDOR = {"uplot": UPLOT_FILES, "idiomorph": ("idiomorph.esm.js",)}  # as setup.py::VENDOR


def vendor_dir(package: str, web_dir: Path = WEB_DIR) -> Path:
    """Where an npm package's files are: the wheel's copy (package data) first, else npm's in
    a checkout."""
    packaged = web_dir / "vendor" / package
    if all((packaged / name).is_file() for name in VENDOR[package]):
        return packaged
    return web_dir / "node_modules" / package / "dist"


def uplot_dir(web_dir: Path = WEB_DIR) -> Path:
    return vendor_dir("uplot", web_dir)


UPLOT_DIR = uplot_dir()

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class _Assets(StaticFiles):
    """StaticFiles that asks the browser to revalidate (ETag) so an upgrade shows at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def vendor_missing() -> list[str]:
    """The vendor files the dashboard needs that are not installed."""
    return [name for name in UPLOT_FILES if not (UPLOT_DIR / name).is_file()]


def install_web(app: FastAPI) -> None:
    """Add the pages and static routes to the app (called by create_app)."""

    def page(name: str) -> FileResponse:
        return FileResponse(WEB_DIR / name, media_type="text/html", headers=PAGE_HEADERS)

    @app.get("/", include_in_schema=False)
    async def dashboard_page() -> FileResponse:
        return page("index.html")

    @app.get("/login", include_in_schema=False)
    async def login_page() -> FileResponse:
        return page("login.html")

    @app.get("/index.html", include_in_schema=False)
    async def index_alias() -> RedirectResponse:
        return RedirectResponse("/", status_code=308)

    missing = vendor_missing()
    if missing:
        log.warning(
            "dashboard charts unavailable: %s missing in %s; run `./dev.sh setup` "
            "(npm ci in cloud/web) to install them",
            ", ".join(missing),
            UPLOT_DIR,
        )
    else:
        # mounted before /static, which would otherwise claim the path
        app.mount("/static/vendor/uplot", _Assets(directory=UPLOT_DIR), name="vendor-uplot")
    morph = vendor_dir("idiomorph")
    if (morph / "idiomorph.esm.js").is_file():
        app.mount("/static/vendor/idiomorph", _Assets(directory=morph), name="vendor-idiomorph")
    else:
        log.warning("live pages are redrawn whole: idiomorph missing in %s (./dev.sh setup)", morph)
    app.mount("/static", _Assets(directory=STATIC_DIR), name="static")
