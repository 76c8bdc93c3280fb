"""The API description's pages without the internet: ``GET /docs`` (Swagger UI), ``GET /redoc`` (ReDoc).

FastAPI's own pages load Swagger UI and ReDoc from the jsDelivr CDN, so on a hospital network
without internet they stay blank. These pages load them from this server instead
(``GET /docs/assets/{name}``), from the files the pinned PyPI package ``fastapi-offline`` ships
(Swagger UI 5, ReDoc 2; MIT); only its files are used, not its ``FastAPI`` subclass. Like every
path, pages and assets sit behind the server's authentication (a browser signs in once, see
:mod:`.browser_auth`) and need no scope beyond a valid credential, as ``/openapi.json`` does.
The routes are added to the app itself, not through an ``APIRouter``: see :mod:`.job_routes`;
none of them is in the API description.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from aiportal.server.schemas import ApiError

ASSETS_PATH = "/docs/assets"
# Nothing on these pages may reach another host: ReDoc 2 shows its maker's logo from their CDN, and
# Swagger UI would send the API description's address to its online validator (switched off below too).
PAGE_POLICY = {"Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                                          "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                                          "worker-src 'self' blob:"}
# The only files served: a fixed list, so a name can never reach another file of the package.
ASSET_NAMES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def assets_folder() -> Path:
    """The folder of Swagger UI's and ReDoc's files in the installed ``fastapi-offline`` package."""
    return Path(str(files("fastapi_offline") / "static"))


def add_docs_routes(app: FastAPI) -> None:
    """``/docs``, ``/redoc`` and their assets; create ``app`` with ``docs_url=None, redoc_url=None``."""
    folder, title, openapi_url = assets_folder(), app.title, app.openapi_url or "/openapi.json"
    missing = [name for name in ASSET_NAMES if not (folder / name).is_file()]
    if missing:  # a broken install shows at start-up, not as a blank page in a browser
        raise RuntimeError(f"fastapi-offline lacks {', '.join(missing)}: "
                           "reinstall it (pip install -c scripts/constraints.txt 'aiportal[server]')")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(openapi_url=openapi_url, title=f"{title} - Swagger UI",
                                   swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
                                   swagger_ui_parameters={"validatorUrl": None})
        page.headers.update(PAGE_POLICY)
        return page

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        page = get_redoc_html(openapi_url=openapi_url, title=f"{title} - ReDoc",
                              redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
                              redoc_favicon_url=f"{ASSETS_PATH}/favicon.png", with_google_fonts=False)
        page.headers.update(PAGE_POLICY)
        return page

    @app.get(ASSETS_PATH + "/{name}", include_in_schema=False)
    def docs_asset(name: str) -> FileResponse:
        if name not in ASSET_NAMES:
            raise ApiError(404, "no such documentation asset", "open /docs or /redoc")
        return FileResponse(folder / name, headers={"Cache-Control": "private, max-age=86400"})
