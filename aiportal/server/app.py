# ruff: noqa: B008  (FastAPI declares parameters with Depends/File/Query defaults)
"""The inference server's HTTP API (FastAPI): ``create_app(settings)``; OpenAPI at ``/openapi.json`` (authenticated).

Routes (all under authentication; scopes in brackets):

- ``GET /v1/health`` [status] · ``GET /v1/models`` [status]
- ``POST /v1/jobs`` [submit]: multipart upload (NIfTI, NRRD, MetaImage, or a DICOM series as .zip),
  ``consent=true`` required; ``client_request_id`` makes the submission idempotent
- ``POST /v1/jobs/pacs`` [submit]: a job from study/series UIDs on the configured PACS (pulled by DICOMweb)
- ``GET /v1/jobs`` · ``GET /v1/jobs/{id}`` · ``GET /v1/jobs/{id}/events`` (server-sent events) [status]
- ``POST /v1/jobs/{id}/cancel`` · ``POST /v1/jobs/{id}/push`` [submit]
- ``GET /v1/jobs/{id}/results`` · ``GET /v1/jobs/{id}/results/{name}`` [read]
- ``GET /v1/audit`` [audit] (these last four lines: :mod:`.job_routes`)
- ``POST``/``GET /v1/admin/weights`` [admin]: weights bundles (see :mod:`.weights_routes`)
- MONAI Label subset: ``GET /info/`` [read], ``POST /infer/{model}`` [submit] (see :mod:`.monailabel`)
- ``GET /metrics`` [metrics] (:mod:`.metrics`) · ``GET /dashboard`` [dashboard] (:mod:`.dashboard`)
- ``GET /docs`` · ``GET /redoc``: the API description's pages, with no CDN (:mod:`.docs_routes`)

Browsers asking for a page get a Basic challenge and sign in with the key as the password
(:mod:`.browser_auth`); scripts send ``Authorization: Bearer``.

Errors are JSON ``{"error": message, "fix": fix}`` with a 4xx status. Authentication happens in
an ASGI middleware before routing or body parsing, so every path (unknown ones too) answers 401
without a valid credential; the scope check is a dependency of each route (403). Uploads are
capped by ``max_upload_mb`` while they stream in (413). Logs carry job ids, never file names,
patient data or credentials.

TLS: ``aiportal serve --tls-cert --tls-key`` serves HTTPS directly; or run it on 127.0.0.1 behind
a reverse proxy (nginx, Caddy, Traefik) that terminates TLS and forwards to it, with
``proxy_request_buffering off`` and a client body limit at least ``max_upload_mb``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from aiportal import __version__
from aiportal.audit_database import anchor_audit_in
from aiportal.errors import AIPortalError
from aiportal.io.completeness import read_whole_gzip
from aiportal.server.auth import ApiKeyStore, Authenticator, AuthError, Principal, RateLimiter
from aiportal.server.browser_auth import challenge
from aiportal.server.docs_routes import add_docs_routes
from aiportal.server.engine import Engine, job_folder, make_engine
from aiportal.server.job_routes import add_job_routes
from aiportal.server.jobs import JobRecord, JobStore
from aiportal.server.jobs import make_engine as make_db_engine
from aiportal.server.limits import UploadRefused, safe_extract, unpacked_cap
from aiportal.server.roles import may_reach
from aiportal.server.routing import allowed_methods
from aiportal.server.schemas import (  # noqa: F401  (re-exported: the MONAI Label routes and tests use them)
    ApiError,
    ErrorBody,
    Health,
    JobView,
    LabelInfo,
    ModelInfo,
    PacsJobRequest,
    job_view,
)
from aiportal.server.settings import ServerSettings
from aiportal.server.weights_routes import BUNDLE_PATH, add_weights_routes

log = logging.getLogger("aiportal.server")

UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".zip")
SINGLE_FILE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")  # .nhdr/.mhd need a data file beside them



def _error(status: int, message: str, fix: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(ErrorBody(error=message, fix=fix).model_dump(), status_code=status, headers=headers)


# -- ASGI middleware: authentication, rate limit, upload size ----------------------------------------
class _BodyTooLarge(Exception):
    pass


async def _send_json(send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(key.lower().encode(), value.encode()) for key, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


class SecurityMiddleware:
    """401 before anything else, 429 per client, 413 for bodies over the limit (checked as they stream)."""

    def __init__(self, app, authenticator: Authenticator, limiter: RateLimiter, max_body: int,
                 path_limits: dict[str, int] | None = None) -> None:  # routes with their own cap (weights bundles)
        self.app, self.authenticator, self.limiter, self.max_body = app, authenticator, limiter, max_body
        self.path_limits = path_limits or {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # the API description (/openapi.json, /docs) needs a credential too
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        try:
            principal = await asyncio.to_thread(self.authenticator.authenticate, headers.get("authorization"),
                                                headers.get("x-api-key"))
        except AuthError as error:
            await _send_json(send, error.status, {"error": error.message, "fix": error.fix},
                             {"WWW-Authenticate": challenge(headers.get("accept"))})
            return
        wait_s = self.limiter.allow(principal.subject)
        if wait_s > 0:
            await _send_json(send, 429, {"error": "too many requests from this client",
                                         "fix": f"retry after {wait_s:.1f} s"}, {"Retry-After": str(int(wait_s) + 1)})
            return
        scope.setdefault("state", {})["principal"] = principal
        declared, max_body = headers.get("content-length", ""), self.path_limits.get(scope["path"], self.max_body)
        if declared.isdigit() and int(declared) > max_body:
            await _too_large(send, max_body)
            return
        received = 0
        started = over = False

        async def counted_receive():
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_body:
                    over = True
                    raise _BodyTooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            if over:  # the body parser turned our abort into its own 400: answer 413 instead (chunked uploads)
                if not started:
                    started = True
                    await _too_large(send, max_body)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await _too_large(send, max_body)


async def _too_large(send, limit: int) -> None:
    await _send_json(send, 413, {"error": f"request body larger than this server's limit of "
                                          f"{limit / 2**20:.0f} MiB",
                                 "fix": "crop or downsample the image, or ask the administrator to raise "
                                        "--max-upload-mb"})


def principal_of(request: Request) -> Principal:
    principal = request.scope.get("state", {}).get("principal")
    if principal is None:  # the middleware guarantees one; this guards a misconfigured mount
        raise AuthError(401, "authentication required", "send a bearer credential")
    return principal


def require(scope: str):
    def dependency(request: Request) -> Principal:
        principal = principal_of(request)
        principal.require(scope)
        return principal

    dependency.__name__ = f"require_{scope}"
    return dependency


# -- the app ---------------------------------------------------------------------------------------
class ServerState:
    """What the routes share: settings, stores, engine."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        anchor_audit_in(settings.db_url)  # every audit record of the server and its workers anchored in its database
        engine = make_db_engine(settings.db_url)
        self.store = JobStore(engine)
        self.keys = ApiKeyStore(engine)
        self.engine: Engine = make_engine(settings, self.store)

    def model_entry(self, model_id: str):
        from aiportal.models.catalog import get_catalog

        catalog = get_catalog()
        registered = {entry.id: entry for entry in catalog.models}
        if model_id not in registered:
            raise ApiError(404, f"unknown model {model_id!r}",
                           f"choose one of: {', '.join(registered)} (GET /v1/models)")
        return registered[model_id]

    def dispatcher(self):
        """The PACS watcher of ``--dispatch-rules``, or None."""
        if not self.settings.dispatch_rules:
            return None
        from aiportal.pacs.config import get_endpoint
        from aiportal.server.dispatch import DispatchConfig, OrthancDispatcher

        if not self.settings.pacs_endpoint:
            raise AIPortalError("--dispatch-rules needs --pacs", "name the PACS endpoint the jobs pull from")
        endpoint = get_endpoint(self.settings.pacs_endpoint)
        auth = (endpoint.username, endpoint.secret_password()) if endpoint.username else None
        return OrthancDispatcher(DispatchConfig.load(Path(self.settings.dispatch_rules)), auth,
                                 Path(self.settings.data_dir) / "dispatch.json", self.dispatch_submit)

    def dispatch_submit(self, study_uid: str, series_uid: str, rule, push: bool) -> None:
        from aiportal.export.exporter import parse_formats

        record, created = self.store.create(
            owner="dispatch", model=rule.model, source_kind="pacs", formats=parse_formats(rule.formats),
            client_request_id=f"dispatch:{series_uid}:{rule.model}", params=rule.params, study_uid=study_uid,
            series_uid=series_uid, push=push, deidentify=self.settings.deidentify)
        if created:
            self.engine.submit(record)

    def own_job(self, job_id: str, principal: Principal, reading: bool = True) -> JobRecord:
        record = self.store.get(job_id)
        if record is None or not may_reach(principal.scopes, record.owner, principal.subject, reading):
            raise ApiError(404, f"no job {job_id!r} for this client", "check the job id (GET /v1/jobs)")
        return record


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings.from_environment()
    state = ServerState(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        state.engine.start()
        dispatcher = state.dispatcher()
        if dispatcher is not None:
            dispatcher.start()
        log.info("aiportal server %s started: engine %s", __version__, settings.engine)
        yield
        if dispatcher is not None:
            dispatcher.stop()
        state.engine.stop()

    app = FastAPI(title="AI Portal inference server", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # served without a CDN by .docs_routes
                  description=__doc__.split("\n\n")[0],
                  responses={401: {"model": ErrorBody, "description": "missing or invalid credential"},
                             403: {"model": ErrorBody, "description": "credential lacks the scope"},
                             429: {"model": ErrorBody, "description": "rate limit"}})
    app.state.aiportal = state
    app.add_middleware(SecurityMiddleware, authenticator=Authenticator(state.keys, settings),
                       limiter=RateLimiter(settings.rate_limit_per_minute), max_body=settings.max_upload_bytes,
                       path_limits={BUNDLE_PATH: settings.max_bundle_bytes})
    _install_error_handlers(app)
    _add_routes(app, state)
    add_job_routes(app, state, require)
    from aiportal.server.monailabel import add_monailabel_routes

    add_monailabel_routes(app, state)
    from aiportal.server.dashboard import add_dashboard
    from aiportal.server.metrics import add_metrics

    add_dashboard(app, state, require, add_metrics(app, state, require))
    add_weights_routes(app, settings, require)  # POST/GET /v1/admin/weights: see .weights_routes
    add_docs_routes(app)  # /docs, /redoc and their scripts, from this server (no CDN)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError):
        return _error(error.status, error.message, error.fix)

    @app.exception_handler(AuthError)
    async def auth_error(_request: Request, error: AuthError):
        return _error(error.status, error.message, error.fix, {"WWW-Authenticate": 'Bearer realm="aiportal"'}
                      if error.status == 401 else None)

    @app.exception_handler(AIPortalError)
    async def user_error(_request: Request, error: AIPortalError):
        return _error(400, error.message, error.fix)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(part) for part in item.get('loc', ()))}: {item.get('msg', '')}"
                             for item in error.errors()[:5])
        return _error(422, f"invalid request: {problems}", "see the API description at /openapi.json")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        headers = {"Allow": allowed_methods(app, request.scope)} if error.status_code == 405 else error.headers
        return _error(error.status_code, str(error.detail), None, headers)

    @app.exception_handler(UploadRefused)
    async def upload_refused(_request: Request, error: UploadRefused):
        return _error(error.status, error.message, error.fix)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, error: Exception):
        log.exception("internal error")
        return _error(500, f"internal error: {type(error).__name__}", "report this to the server administrator")


def _parse_params(text: str) -> dict[str, Any]:
    try:
        params = json.loads(text or "{}")
    except ValueError as error:
        raise ApiError(400, f"params is not valid JSON: {error}",
                       'send a JSON object, e.g. {"threshold": 0.5}') from error
    if not isinstance(params, dict):
        raise ApiError(400, "params must be a JSON object", 'send e.g. {} or {"threshold": 0.5}')
    return params


def _parse_formats(text: str, dicom_source: bool) -> tuple[str, ...]:
    from aiportal.export.exporter import DICOM_FORMATS, parse_formats

    formats = parse_formats(text)
    if {"stl", "obj"} & set(formats):
        raise ApiError(400, "surface formats are not served", "ask for nrrd, json, csv, seg, sr, rtstruct, sc or estl")
    if not dicom_source and DICOM_FORMATS & set(formats):
        raise ApiError(400, "a DICOM SEG/SR/RTSTRUCT must reference the DICOM images it was made from; this upload "
                            "is not a DICOM series", "upload the DICOM series as a .zip, or ask for formats nrrd,json")
    return formats


def upload_suffix(filename: str | None) -> str:
    name = (filename or "").lower()
    suffix = next((suffix for suffix in UPLOAD_SUFFIXES if name.endswith(suffix)), None)
    if suffix is None or suffix in (".nhdr", ".mhd"):
        raise ApiError(415, "unsupported upload type",
                       f"upload one file of type {', '.join(SINGLE_FILE_SUFFIXES)}, or a DICOM series as .zip")
    return suffix


def save_upload(settings: ServerSettings, job_id: str, file, suffix: str) -> Path:
    """The uploaded file, copied into the new job's input folder (the caller removes the job folder on error)."""
    input_dir = job_folder(settings, job_id) / "input"
    input_dir.mkdir(parents=True)
    target = input_dir / f"upload{suffix}"
    with open(target, "wb") as out:
        shutil.copyfileobj(file.file, out, 1 << 20)
    return target


def check_upload(path: Path, suffix: str, max_unpacked: int) -> Path:
    """Reject a malformed volume or archive now (400), not as a failed job later; returns the model input."""
    if suffix == ".zip":
        folder = path.parent / "dicom"
        safe_extract(path, folder, max_unpacked)
        path.unlink()
        import pydicom

        files = [item for item in sorted(folder.rglob("*")) if item.is_file()]
        for item in files:
            try:
                pydicom.dcmread(item, stop_before_pixels=True)
                return folder
            except Exception:
                continue
        raise ApiError(400, "the .zip holds no readable DICOM file", "zip the folder of one DICOM series")
    import SimpleITK as sitk

    try:  # a full read: a truncated or corrupt file must fail here, not as a job later
        if suffix == ".nii.gz":
            read_whole_gzip(path)  # ITK's NIfTI reader fills a truncated stream with zeros instead of failing
        image = sitk.ReadImage(str(path))
        voxel_bytes = image.GetNumberOfPixels() * image.GetSizeOfPixelComponent()
        if suffix == ".nii" and path.stat().st_size < voxel_bytes:
            raise RuntimeError("file shorter than its voxels")
    except (RuntimeError, OSError, EOFError) as error:
        raise ApiError(400, f"the uploaded {suffix} file is not a readable volume (damaged or incomplete)",
                       "check that the file is complete and really is " + suffix) from error
    if image.GetDimension() != 3 or min(image.GetSize()) < 1:
        raise ApiError(400, f"the uploaded {suffix} file is not a 3D volume (dimension {image.GetDimension()})",
                       "upload a 3D CT or MR volume")
    return path


def _add_routes(app: FastAPI, state: ServerState) -> None:  # noqa: C901 - the route table reads best in one place
    settings, store = state.settings, state.store

    def submit(record: JobRecord) -> None:
        try:
            state.engine.submit(record)
        except Exception as error:
            store.finish(record.id, "failed", error="the job queue (broker) is unreachable",
                         fix="check the broker, then submit again")
            raise ApiError(503, "the job queue (broker) is unreachable", "retry later") from error

    @app.get("/v1/health", response_model=Health, tags=["server"])
    def health(_: Principal = Depends(require("status"))) -> Health:
        return Health(status="ok", version=__version__, engine=settings.engine,
                      queued=len(store.list(state="queued", limit=10000)),
                      running=len(store.list(state="running", limit=10000)), pacs=settings.pacs_endpoint or None)

    @app.get("/v1/models", response_model=list[ModelInfo], tags=["models"])
    def models(_: Principal = Depends(require("status"))) -> list[ModelInfo]:
        from aiportal.models.catalog import get_catalog

        return [ModelInfo(id=m.id, title=m.title, modality=m.modality, task=m.task, description=m.description,
                          limitations=m.limitations, version=m.version, license=m.license, family=m.family,
                          devices=list(m.devices), prompts=list(m.prompts),
                          labels=[LabelInfo(value=label.value, name=label.name) for label in m.labels])
                for m in get_catalog().models]

    @app.post("/v1/jobs", response_model=JobView, status_code=201, tags=["jobs"],
              responses={200: {"model": JobView, "description": "the earlier job with this client_request_id"},
                         400: {"model": ErrorBody}, 404: {"model": ErrorBody}, 413: {"model": ErrorBody},
                         415: {"model": ErrorBody}})
    def create_upload_job(
        file: UploadFile = File(..., description="NIfTI, NRRD, MetaImage (.mha), or a DICOM series as .zip"),
        model: str = Form(..., max_length=200),
        consent: bool = Form(False, description="must be true: the uploader confirms the images may be processed"),
        client_request_id: str | None = Form(None, max_length=200),
        params: str = Form("{}", max_length=10000),
        formats: str = Form("nrrd,json", max_length=100),
        deidentify: bool = Form(False),
        principal: Principal = Depends(require("submit")),
    ):
        if not consent:
            raise ApiError(400, "consent is required to upload images",
                           "send consent=true once the patient's consent or the legal basis for processing is "
                           "confirmed")
        if client_request_id and (earlier := store.find_by_request_id(principal.subject, client_request_id)):
            if earlier.model != model:
                raise ApiError(409, f"client request id {client_request_id!r} was already used for another model",
                               "use a new client request id")
            return JSONResponse(job_view(earlier).model_dump(), status_code=200)
        state.model_entry(model)
        suffix = upload_suffix(file.filename)
        chosen_formats = _parse_formats(formats, dicom_source=suffix == ".zip")
        parsed = _parse_params(params)
        job_id = uuid.uuid4().hex
        try:
            model_input = check_upload(save_upload(settings, job_id, file, suffix), suffix,
                                           unpacked_cap(settings.max_upload_bytes))
            record, created = store.create(
                job_id=job_id, owner=principal.subject, model=model, source_kind="upload", formats=chosen_formats,
                client_request_id=client_request_id, params=parsed, input_name=model_input.name,
                deidentify=deidentify or settings.deidentify)
        except BaseException:
            shutil.rmtree(job_folder(settings, job_id), ignore_errors=True)
            raise
        if not created:  # the same request id raced in: keep the first
            shutil.rmtree(job_folder(settings, job_id), ignore_errors=True)
            return JSONResponse(job_view(record).model_dump(), status_code=200)
        submit(record)
        log.info("job %s queued: %s upload by %s", record.id, model, principal.subject)
        return job_view(record)

    @app.post("/v1/jobs/pacs", response_model=JobView, status_code=201, tags=["jobs"],
              responses={200: {"model": JobView}, 400: {"model": ErrorBody}, 404: {"model": ErrorBody}})
    def create_pacs_job(body: PacsJobRequest, principal: Principal = Depends(require("submit"))):
        if not settings.pacs_endpoint:
            raise ApiError(400, "this server has no PACS configured",
                           "start the server with --pacs NAME, or upload the image with POST /v1/jobs")
        state.model_entry(body.model)
        chosen_formats = _parse_formats(body.formats, dicom_source=True)
        if body.push and not {"seg", "sr"} <= set(chosen_formats):
            raise ApiError(400, "push needs the SEG and SR", "ask for formats including seg,sr")
        record, created = store.create(
            owner=principal.subject, model=body.model, source_kind="pacs", formats=chosen_formats,
            client_request_id=body.client_request_id, params=body.params, study_uid=body.study_uid,
            series_uid=body.series_uid, push=body.push, deidentify=body.deidentify or settings.deidentify)
        if not created:
            return JSONResponse(job_view(record).model_dump(), status_code=200)
        submit(record)
        log.info("job %s queued: %s from PACS by %s", record.id, body.model, principal.subject)
        return job_view(record)
