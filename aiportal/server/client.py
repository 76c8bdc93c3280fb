"""The client of the inference server, used by every face (desktop module, CLI, browser workspace).

GUI-free and blocking-free by design: each call is one HTTP request with a time-out, so a GUI can
call :meth:`ServerClient.status` from a timer just as it polls a local
:class:`~aiportal.segment.SegmentationJob`; :meth:`ServerClient.run` is the blocking batch form::

    client = ServerClient("https://ai.example.org", api_key="aip_...")
    job = client.submit_file("ct.nii.gz", "classic-ct", consent=True)
    job = client.wait(job["id"], progress=lambda fraction, stage: print(f"{fraction:.0%} {stage}"))
    client.download(job["id"], "labels.nrrd", Path("out/labels.nrrd"))

Every failure is an :class:`~aiportal.errors.AIPortalError` with the server's message and fix;
:class:`ServerUnreachable` when the server cannot be reached at all, so that a face can say so and
carry on with local workflows (nothing here imports the web stack or touches the scene).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from aiportal.errors import AIPortalError, CancelledError
from aiportal.progress import CancelToken, ProgressCallback, no_progress

TERMINAL_STATES = ("done", "failed", "cancelled")


class ServerError(AIPortalError):
    """The server answered with an error (``status`` is the HTTP status)."""

    def __init__(self, message: str, fix: str | None = None, status: int = 0) -> None:
        super().__init__(message, fix)
        self.status = status


class ServerUnreachable(ServerError):
    """No answer at all: server down, wrong address, network or TLS problem."""


class ServerClient:
    def __init__(self, base_url: str, *, api_key: str | None = None, token: str | None = None,
                 timeout_s: float = 30.0, upload_timeout_s: float = 600.0, verify_tls: bool | str = True,
                 session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s, self.upload_timeout_s = timeout_s, upload_timeout_s
        self.session = session or requests.Session()
        self.session.verify = verify_tls
        credential = api_key or token
        if credential:
            self.session.headers["Authorization"] = f"Bearer {credential}"

    # -- plumbing ------------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, timeout: float | None = None, stream: bool = False,
                 **kwargs) -> requests.Response:
        url = f"{self.base_url}{path}"
        try:
            answer = self.session.request(method, url, timeout=timeout or self.timeout_s, stream=stream, **kwargs)
        except requests.exceptions.SSLError as error:
            raise ServerUnreachable(f"TLS to the AI server {self.base_url} failed: {_short(error)}",
                                    "check the server certificate (or the CA bundle given to the client)") from error
        except requests.exceptions.Timeout as error:
            waited = timeout or self.timeout_s
            raise ServerUnreachable(f"the AI server {self.base_url} did not answer in {waited:.0f} s",
                                    "check that it is running, or retry later; local segmentation still works"
                                    ) from error
        except requests.exceptions.RequestException as error:
            raise ServerUnreachable(f"the AI server {self.base_url} cannot be reached: {_short(error)}",
                                    "check the address and that it is running; local segmentation still works"
                                    ) from error
        if answer.status_code >= 400:
            raise _server_error(answer)
        return answer

    def _json(self, method: str, path: str, **kwargs) -> Any:
        return self._request(method, path, **kwargs).json()

    # -- server ----------------------------------------------------------------------------------
    def health(self) -> dict:
        return self._json("GET", "/v1/health")

    def available(self) -> bool:
        """True when the server answers and accepts this client's credential."""
        try:
            self.health()
            return True
        except ServerError:
            return False

    def models(self) -> list[dict]:
        return self._json("GET", "/v1/models")

    def install_weights_bundle(self, bundle: Path | str) -> dict:
        """Stream a weights bundle (`aiportal models pack`) to the server, which checks and installs it (admin)."""
        with open(bundle, "rb") as stream:
            return self._json("POST", "/v1/admin/weights", data=stream, timeout=self.upload_timeout_s)

    # -- jobs ------------------------------------------------------------------------------------
    def submit_file(self, path: Path | str, model: str, *, consent: bool, params: dict | None = None,
                    formats: str = "nrrd,json", client_request_id: str | None = None,
                    deidentify: bool = False) -> dict:
        """Upload a volume file (or a DICOM series .zip) as a new job; returns the job.

        ``client_request_id`` (default: a new one) makes a retried submission return the same job.
        """
        path = Path(path)
        if not path.is_file():
            raise AIPortalError(f"{path} is not a file", "give a NIfTI/NRRD file or a .zip of a DICOM series")
        data = {"model": model, "consent": "true" if consent else "false", "params": json.dumps(params or {}),
                "formats": formats, "client_request_id": client_request_id or uuid.uuid4().hex,
                "deidentify": "true" if deidentify else "false"}
        with open(path, "rb") as stream:  # the server names the file itself; send no patient name
            files = {"file": ("upload" + _suffix(path), stream, "application/octet-stream")}
            return self._json("POST", "/v1/jobs", data=data, files=files, timeout=self.upload_timeout_s)

    def submit_pacs(self, study_uid: str, model: str, *, series_uid: str = "", push: bool = False,
                    params: dict | None = None, formats: str = "nrrd,json,seg,sr",
                    client_request_id: str | None = None, deidentify: bool = False) -> dict:
        """A job on a series the server pulls from its PACS; ``push`` stores SEG+SR back when done."""
        body = {"study_uid": study_uid, "series_uid": series_uid, "model": model, "push": push,
                "params": params or {}, "formats": formats, "deidentify": deidentify,
                "client_request_id": client_request_id or uuid.uuid4().hex}
        return self._json("POST", "/v1/jobs/pacs", json=body)

    def status(self, job_id: str) -> dict:
        return self._json("GET", f"/v1/jobs/{job_id}")

    def jobs(self, state: str | None = None) -> list[dict]:
        return self._json("GET", "/v1/jobs", params={"state": state} if state else None)

    def cancel(self, job_id: str) -> dict:
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def events(self, job_id: str, timeout_s: float = 3600.0) -> Iterator[dict]:
        """The job's server-sent events (each a job status) until it ends."""
        answer = self._request("GET", f"/v1/jobs/{job_id}/events", stream=True, timeout=timeout_s)
        with answer:
            for line in answer.iter_lines(decode_unicode=True):
                if line and line.startswith("data: "):
                    yield json.loads(line[len("data: "):])

    def wait(self, job_id: str, *, progress: ProgressCallback = no_progress, timeout_s: float | None = None,
             poll_s: float = 0.5, cancel: CancelToken | None = None) -> dict:
        """Poll until the job ends; returns the final status (whatever the state: check ``state``).

        ``timeout_s`` gives up waiting (the job keeps running on the server); ``cancel`` cancels it there.
        """
        deadline = time.monotonic() + timeout_s if timeout_s else None
        last = None
        while True:
            job = self.status(job_id)
            if (job["fraction"], job["stage"]) != last:
                last = (job["fraction"], job["stage"])
                progress(job["fraction"], job["stage"])
            if job["state"] in TERMINAL_STATES:
                return job
            if cancel is not None and cancel.cancelled:
                self.cancel(job_id)
            if deadline is not None and time.monotonic() > deadline:
                raise ServerError(f"job {job_id} did not finish in {timeout_s:.0f} s (it is {job['state']}, "
                                  f"{job['stage']})", "wait longer, or cancel it")
            time.sleep(poll_s)

    def results(self, job_id: str) -> dict:
        return self._json("GET", f"/v1/jobs/{job_id}/results")

    def download(self, job_id: str, name: str, destination: Path | str) -> Path:
        """One result file (e.g. ``labels.nrrd``, ``segmentation.dcm``) to ``destination``, complete or not at all."""
        destination = Path(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(destination.name + ".part")
        answer = self._request("GET", f"/v1/jobs/{job_id}/results/{name}", stream=True, timeout=self.upload_timeout_s)
        try:
            with answer, open(partial, "wb") as out:
                for chunk in answer.iter_content(1 << 20):
                    out.write(chunk)
            partial.replace(destination)
        finally:
            partial.unlink(missing_ok=True)
        return destination

    def fetch_all(self, job_id: str, folder: Path | str) -> list[Path]:
        """Every result file of a done job into ``folder``."""
        return [self.download(job_id, item["name"], Path(folder) / item["name"])
                for item in self.results(job_id)["files"]]

    def push(self, job_id: str) -> dict:
        return self._json("POST", f"/v1/jobs/{job_id}/push", timeout=self.upload_timeout_s)

    def audit(self, run_id: str | None = None, event: str | None = None, since_seq: int = 0) -> list[dict]:
        params = {key: value for key, value in (("run_id", run_id), ("event", event)) if value}
        return self._json("GET", "/v1/audit", params=dict(params, since_seq=since_seq))

    def run(self, path: Path | str, model: str, out_dir: Path | str, *, consent: bool,
            progress: ProgressCallback = no_progress, timeout_s: float | None = None,
            cancel: CancelToken | None = None, **submit_options) -> dict:
        """Submit, wait, fetch: the remote twin of ``aiportal segment``; raises when the job did not succeed."""
        job = self.submit_file(path, model, consent=consent, **submit_options)
        job = self.wait(job["id"], progress=progress, timeout_s=timeout_s, cancel=cancel)
        if job["state"] == "cancelled":
            raise CancelledError(f"remote job {job['id']}")
        if job["state"] != "done":
            raise ServerError(f"remote job {job['id']} failed: {job['error']}", job.get("fix"))
        self.fetch_all(job["id"], out_dir)
        return job


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _server_error(answer: requests.Response) -> ServerError:
    try:
        body = answer.json()
        message, fix = str(body.get("error") or body), body.get("fix")
    except ValueError:
        message, fix = answer.text[:200] or answer.reason, None
    if answer.status_code == 401:
        fix = fix or "check the API key or token"
    return ServerError(f"AI server: {message} (HTTP {answer.status_code})", fix, answer.status_code)


def _short(error: Exception) -> str:
    text = str(error)
    return text if len(text) < 160 else text[:157] + "..."
