# ruff: noqa: B008  (FastAPI declares parameters with Depends/File/Query defaults)
"""A MONAI Label-compatible subset, so that MONAI Label's own clients (its Slicer plugin, OHIF,
``monailabel.client.MONAILabelClient``) can use this server for inference.

- ``GET /info/``: the app description MONAI Label clients read (models with their labels).
- ``POST /infer/{model}?image=ID&output=image|json|all``: multipart ``file`` (the image, as the
  client uploads it) and ``params`` (a JSON string). The request waits for the job and answers like
  MONAI Label: ``output=image`` the label map (NRRD), ``json`` the result description, ``all``
  (the default) both as ``multipart/form-data`` parts ``params`` and ``image``.

The same authentication applies (``Authorization: Bearer``, which MONAI Label's client sends
when given a token). Upload consent, which MONAI Label's API has no field for, is given with
``consent: true`` in ``params`` or ``?consent=true``. Each call becomes a normal job: visible in
``/v1/jobs``, audited, with its results kept like any other.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid

from fastapi import Depends, FastAPI, File, Form, Query, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response

from aiportal import __version__
from aiportal.server.auth import Principal


def add_monailabel_routes(app: FastAPI, state) -> None:
    from aiportal.server.app import ApiError, _parse_params, check_upload, require, save_upload, upload_suffix
    from aiportal.server.engine import job_folder, results_folder
    from aiportal.server.limits import unpacked_cap

    settings, store = state.settings, state.store

    def info(_: Principal = Depends(require("status"))) -> dict:
        from aiportal.models.catalog import get_catalog

        models = {entry.id: {"type": "segmentation", "dimension": 3, "description": entry.description,
                             "labels": {label.name: label.value for label in entry.labels}}
                  for entry in get_catalog().models}
        labels = sorted({name for model in models.values() for name in model["labels"]})
        return {"name": "AI Portal", "description": "AI Portal inference server (MONAI Label-compatible subset)",
                "version": __version__, "labels": labels, "models": models, "trainers": {}, "strategies": {},
                "scoring": {}, "train_stats": {}, "datastore": {"total": 0, "completed": 0}}

    app.get("/info/", tags=["monailabel"])(info)
    app.get("/info", tags=["monailabel"], include_in_schema=False)(info)

    @app.post("/infer/{model}", tags=["monailabel"], responses={
        200: {"content": {"multipart/form-data": {}, "application/octet-stream": {}, "application/json": {}}},
        400: {}, 404: {}, 504: {}})
    async def infer(model: str, image: str = Query("", max_length=200),
                    output: str = Query("all", pattern="^(image|json|all)$"),
                    consent: bool = Query(False),
                    file: UploadFile = File(..., description="the image: NIfTI, NRRD, .mha or a DICOM .zip"),
                    params: str = Form("{}", max_length=10000),
                    principal: Principal = Depends(require("submit"))):
        parsed = _parse_params(params)
        if not (consent or parsed.pop("consent", False) is True):
            raise ApiError(400, "consent is required to upload images",
                           'add "consent": true to params (or ?consent=true) once processing is allowed')
        parsed.pop("client_id", None)  # MONAI Label's client adds its id; not a model parameter
        state.model_entry(model)
        suffix = upload_suffix(file.filename)
        job_id = uuid.uuid4().hex
        try:
            target = await asyncio.to_thread(save_upload, settings, job_id, file, suffix)
            model_input = await asyncio.to_thread(check_upload, target, suffix, unpacked_cap(settings.max_upload_bytes))
            record, _ = store.create(job_id=job_id, owner=principal.subject, model=model, source_kind="upload",
                                     formats=("nrrd", "json"), params=parsed, input_name=model_input.name,
                                     deidentify=settings.deidentify)
        except BaseException:
            shutil.rmtree(job_folder(settings, job_id), ignore_errors=True)
            raise
        state.engine.submit(record)
        deadline = time.monotonic() + (settings.job_timeout_s or 3600.0)
        while not (record := await asyncio.to_thread(store.get, job_id)).terminal:
            if time.monotonic() > deadline:
                raise ApiError(504, f"job {job_id} did not finish in time", f"follow it with GET /v1/jobs/{job_id}")
            await asyncio.sleep(0.2)
        if record.state != "done":
            raise ApiError(400 if record.state == "failed" else 409, f"job {job_id} {record.state}: {record.error}",
                           record.fix)
        store.mark_fetched(job_id)
        labels_path = results_folder(settings, job_id) / "labels.nrrd"
        description = {"job_id": job_id, "image": image, "model": model, "label_names":
                       {label.name: label.value for label in state.model_entry(model).labels},
                       "volumes_ml": record.result.get("volumes_ml", {}), "run_id": record.result.get("run_id")}
        if output == "image":
            return FileResponse(labels_path, media_type="application/octet-stream", filename="labels.nrrd")
        if output == "json":
            return JSONResponse(description)
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n"
                f"Content-Type: application/json\r\n\r\n{json.dumps(description)}\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"labels.nrrd\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode()
        body += labels_path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        return Response(body, media_type=f"multipart/form-data; boundary={boundary}")
