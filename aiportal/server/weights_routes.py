# ruff: noqa: B008  (FastAPI declares parameters with Depends defaults)
"""Weights for the inference server: an administrator uploads a bundle once, every worker uses it.

- ``POST /v1/admin/weights`` [admin]: the body is a bundle from ``aiportal models pack`` (a tar,
  streamed to disk, at most ``--max-bundle-mb``). It is opened as hostile input, every file is
  checked against the bundle's manifest (size, sha256; and against the project's own manifest where
  that publishes a sha256) and installed through the same staged, locked, atomic path as
  ``aiportal models import``: a model is never half-installed, two uploads never collide.
- ``GET /v1/admin/weights`` [admin]: the installed weights re-hashed (``aiportal models verify``).

The weights land in ``AIPORTAL_WEIGHTS_DIR`` and ``TOTALSEG_HOME_DIR`` of the API server; Celery
workers that run with the same two folders (a shared disk) use them from their next job on.
Answers name models and versions, never the server's folders.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

from fastapi import Depends, Request
from pydantic import BaseModel

from aiportal.errors import AIPortalError
from aiportal.server.limits import UploadRefused, redact_paths

BUNDLE_PATH = "/v1/admin/weights"
CHUNK = 1 << 20
log = logging.getLogger("aiportal.server")


class InstalledWeights(BaseModel):
    model_id: str
    version: str
    status: str  # "installed" or "already installed"
    files: int
    bytes: int
    checked: str


class BundleAnswer(BaseModel):
    models: list[InstalledWeights]
    workers: str


class WeightsCheck(BaseModel):
    model_id: str
    ok: bool
    detail: str
    problems: list[str]


def _bundle_error(error: AIPortalError, path: Path) -> UploadRefused:
    def clean(text: str | None) -> str:
        return redact_paths((text or "").replace(str(path), "the uploaded bundle")) or ""

    return UploadRefused(400, clean(error.message), clean(error.fix))


async def _receive(request: Request, target: Path, limit: int) -> int:
    """Stream the request body into ``target``; 413 past ``limit`` (the middleware counts too)."""
    written = 0
    with open(target, "wb") as out:
        async for chunk in request.stream():
            written += len(chunk)
            if written > limit:
                raise UploadRefused(413, f"the bundle is larger than this server's limit of {limit / 2**20:.0f} MiB",
                                    "pack fewer models per bundle, or start the server with a larger --max-bundle-mb")
            out.write(chunk)
    if not written:
        raise UploadRefused(400, "the request has no body", "send the bundle file (`aiportal models pack`) as the body")
    return written


def _installed(results) -> list[InstalledWeights]:
    from aiportal.weights import store

    answer = []
    for result in results:
        receipt = store.read_receipt(result.model_id) or {}
        files = receipt.get("files", {})
        answer.append(InstalledWeights(
            model_id=result.model_id, version=str(receipt.get("version", "")),
            status="already installed" if result.already else "installed", files=len(files),
            bytes=sum(f.get("size", 0) for f in files.values()),
            checked="size and sha256 of every file against the bundle's manifest"))
    return answer


def add_weights_routes(app, settings, require) -> None:
    """The routes, bound to the server's settings and its scope check; added to the app itself, not
    through an ``APIRouter``, for the reason :mod:`.job_routes` gives (route labels, 405 ``Allow``)."""

    @app.post(BUNDLE_PATH, response_model=BundleAnswer, tags=["admin"])
    async def upload_bundle(request: Request, principal=Depends(require("admin"))) -> BundleAnswer:
        from aiportal.weights.bundle import import_bundle

        folder = Path(settings.data_dir) / "weights-uploads"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{uuid.uuid4().hex}.tar"
        try:
            size = await _receive(request, path, settings.max_bundle_bytes)
            try:
                results = await asyncio.to_thread(import_bundle, path)
            except AIPortalError as error:
                raise _bundle_error(error, path) from None
        finally:
            path.unlink(missing_ok=True)
        answer = _installed(results)
        log.info("weights bundle (%.1f MB) from %s: %s", size / 1e6, principal.subject,
                 ", ".join(f"{item.model_id} {item.status}" for item in answer))
        return BundleAnswer(models=answer, workers="workers that share this server's weights folders "
                                                  "(AIPORTAL_WEIGHTS_DIR, TOTALSEG_HOME_DIR) use them from their "
                                                  "next job on")

    @app.get(BUNDLE_PATH, response_model=list[WeightsCheck], tags=["admin"])
    async def check_weights(_principal=Depends(require("admin"))) -> list[WeightsCheck]:
        from aiportal.weights.verify import verify

        checks = await asyncio.to_thread(verify, None, False)
        return [WeightsCheck(model_id=c.model_id, ok=c.ok, detail=redact_paths(c.detail) or "",
                             problems=[redact_paths(p) or "" for p in c.problems]) for c in checks]
