"""Downloading one file the way a hospital network allows: proxy, own CA, resume, clear errors.

* Proxy: ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` as every tool reads them (urllib's own handler,
  CONNECT tunnels for https).
* CA bundle: ``--ca-bundle``, ``AIPORTAL_CA_BUNDLE``, ``REQUESTS_CA_BUNDLE`` or ``SSL_CERT_FILE`` is
  trusted in addition to the system's CAs (a TLS-inspecting proxy re-signs with its own CA).
* Resume: bytes land in ``NAME.part`` next to a ``NAME.part.json`` holding the URL and the server's
  validator (ETag / Last-Modified); the next try asks for ``Range: bytes=N-`` with ``If-Range`` and
  appends when the server answers 206. A dropped connection is retried (resuming) a few times.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from aiportal.digests import file_digest
from aiportal.errors import ModelError
from aiportal.progress import CancelToken, ProgressCallback, no_progress

CA_BUNDLE_ENV = ("AIPORTAL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
TIMEOUT_ENV = "AIPORTAL_DOWNLOAD_TIMEOUT"
CHUNK = 1 << 20
USER_AGENT = "aiportal-weights/1"


@dataclass(frozen=True)
class Transfer:
    """How to reach the network: extra CA bundle, socket timeout, retries after a dropped connection."""

    ca_bundle: str | None = None
    timeout: float | None = None
    retries: int = 3

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        bundle = self.ca_bundle or next((os.environ[n] for n in CA_BUNDLE_ENV if os.environ.get(n)), None)
        if bundle:
            if not Path(bundle).is_file():
                raise ModelError(f"CA bundle {bundle} does not exist",
                                 "point --ca-bundle / AIPORTAL_CA_BUNDLE at your hospital's CA certificate (PEM)")
            context.load_verify_locations(cafile=bundle)
        return context

    def seconds(self) -> float:
        return self.timeout or float(os.environ.get(TIMEOUT_ENV) or 60)


def _human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def describe_progress(name: str, done: int, total: int | None, started: float, start_bytes: int) -> str:
    """``name 12.3 MB / 98.0 MB, 4.1 MB/s, ETA 21 s`` (the stage text of the progress bar)."""
    elapsed = max(time.monotonic() - started, 1e-6)
    rate = (done - start_bytes) / elapsed
    text = f"{name} {_human(done)}" + (f" / {_human(total)}" if total else "") + f", {_human(rate)}/s"
    if total and rate > 0:
        text += f", ETA {max(total - done, 0) / rate:.0f} s"
    return text


def _opener(transfer: Transfer) -> urllib.request.OpenerDirector:
    # ProxyHandler() with no argument reads HTTP(S)_PROXY / NO_PROXY from the environment
    return urllib.request.build_opener(urllib.request.ProxyHandler(),
                                       urllib.request.HTTPSHandler(context=transfer.context()))


def _host(url: str) -> str:
    return urllib.request.urlparse(url).netloc


def _http_error(url: str, error: urllib.error.HTTPError) -> ModelError:
    if error.code == 404:
        return ModelError(f"{url} answered 404 Not Found: the weights file is not there",
                          "the publisher moved it: update aiportal, or get the file another way and "
                          "use `aiportal models import`")
    if error.code in (401, 403):
        return ModelError(f"{url} answered {error.code} {error.reason}: access refused",
                          "check the licence key, or whether your proxy blocks the site")
    if error.code == 407:
        return ModelError(f"the proxy refused {url}: 407 Proxy Authentication Required",
                          "put the proxy's user and password into HTTPS_PROXY (http://user:pass@proxy:port)")
    return ModelError(f"{url} answered {error.code} {error.reason}", "try again later")


DEFAULT_TRANSFER = Transfer()


def download(url: str, target: Path, *, transfer: Transfer = DEFAULT_TRANSFER, expected_size: int | None = None,
             post_json: dict | None = None, progress: ProgressCallback = no_progress,
             cancel: CancelToken | None = None) -> tuple[Path, str]:
    """Download ``url`` into ``target`` (resuming ``target.part``); returns ``target`` and its sha256."""
    part = target.with_name(target.name + ".part")
    meta_path = target.with_name(target.name + ".part.json")
    attempts = 0
    while True:
        try:
            digest = _attempt(url, part, meta_path, transfer, expected_size, post_json, progress, cancel)
            break
        except (TimeoutError, ConnectionError, HTTPException, urllib.error.URLError) as error:
            if isinstance(error, urllib.error.HTTPError):
                raise _http_error(url, error) from None
            reason = getattr(error, "reason", error)
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise ModelError(f"the TLS certificate of {_host(url)} is not trusted ({reason.verify_message})",
                                 "if your network inspects TLS, give its CA certificate with --ca-bundle FILE "
                                 "or AIPORTAL_CA_BUNDLE=FILE") from None
            have = part.stat().st_size if part.exists() else 0
            attempts += 1
            if attempts > transfer.retries or (post_json is not None and attempts > 1):
                slow = isinstance(reason, TimeoutError) or "timed out" in str(reason)
                what = (f"{_host(url)} sent nothing for {transfer.seconds():g} s" if slow
                        else f"the transfer from {_host(url)} broke off ({type(reason).__name__}: {reason})")
                raise ModelError(f"Downloading {target.name}: {what}, after {_human(have)}",
                                 "check the network or proxy (HTTPS_PROXY) and run the same command again: "
                                 "it resumes where it stopped") from None
            progress(0.0, f"{target.name}: connection lost after {_human(have)}, resuming")
            time.sleep(min(0.2 * attempts, 1.0))
    part.replace(target)
    meta_path.unlink(missing_ok=True)
    return target, digest.hexdigest()


def _attempt(url: str, part: Path, meta_path: Path, transfer: Transfer, expected_size: int | None,
             post_json: dict | None, progress: ProgressCallback, cancel: CancelToken | None) -> hashlib._Hash:
    """One request; the sha256 is computed while writing (of the kept part first, when resuming)."""
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    have = part.stat().st_size if part.exists() and meta.get("url") == url and post_json is None else 0
    if expected_size is not None and have == expected_size:
        return file_digest(part)
    headers = {"User-Agent": USER_AGENT}
    data = None
    if post_json is not None:  # a licensed download (TotalSegmentator's server): no resume
        data, headers["Content-Type"] = json.dumps(post_json).encode(), "application/json"
    elif have:
        headers["Range"] = f"bytes={have}-"
        if meta.get("validator"):
            headers["If-Range"] = meta["validator"]
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        response = _opener(transfer).open(request, timeout=transfer.seconds())
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # asked past the end: the part is the whole file (the hash decides)
            return file_digest(part)
        raise
    with response:
        if response.status != 206:
            have = 0  # the server sent the whole file (no range support, or it changed)
        validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
        meta_path.write_text(json.dumps({"url": url, "validator": validator}))
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else expected_size
        started, start_bytes = time.monotonic(), have
        digest = file_digest(part) if have else hashlib.sha256()
        with open(part, "ab" if have else "wb") as writer:
            done = have
            while chunk := response.read(CHUNK):
                writer.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if expected_size is not None and done > expected_size:
                    raise ModelError(f"{url} sent more than the {expected_size} bytes the manifest lists",
                                     "the file changed on the server: update aiportal's manifest")
                progress(done / total if total else 0.0, describe_progress(part.name[:-5], done, total, started,
                                                                          start_bytes))
                if cancel is not None:
                    cancel.check("the download")
        if total is not None and done < total:
            raise ConnectionError(f"got {done} of {total} bytes")
    return digest

