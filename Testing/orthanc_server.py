"""A real Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) for the PACS tests and benchmarks.

Orthanc 1.10 binds every interface and has no bind-address option, so it is started under an
``LD_PRELOAD`` shim (``scripts/bind_loopback.c``, compiled with gcc on first use) that rewrites
its ``bind(0.0.0.0)`` calls to 127.0.0.1. Each server gets free ports, HTTP basic
authentication, its storage in a temporary folder, and a Lua filter that rejects Label Map
Segmentation Storage objects (a PACS that does not support that SOP class, over every protocol).

Also here: the test series, made from real data with pydicom (never hand-built datasets).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import requests
from processes import free_port, log_tail
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parent.parent
SHIM_SOURCE = REPO / "scripts" / "bind_loopback.c"
ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
LABELMAP_SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

_REJECT_LABELMAP_LUA = f"""
function ReceivedInstanceFilter(dicom, origin, info)
  if dicom.SOPClassUID == '{LABELMAP_SEG_STORAGE}' then
    return false
  end
  return true
end
"""


def missing_requirements() -> list[str]:
    """What this machine lacks to run the server (empty when everything is there)."""
    missing = [str(path) for path in (ORTHANC, DICOMWEB_PLUGIN) if not path.exists()]
    if shutil.which("gcc") is None:
        missing.append("gcc")
    return missing


def bind_shim() -> Path:
    """The compiled loopback shim, built once per source version into the temp folder."""
    digest = hashlib.sha256(SHIM_SOURCE.read_bytes()).hexdigest()[:12]
    library = Path(tempfile.gettempdir()) / f"aiportal-bind-loopback-{digest}.so"
    if not library.exists():
        partial = library.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(partial), str(SHIM_SOURCE), "-ldl"], check=True)
        partial.replace(library)
    return library


@dataclass
class OrthancServer:
    """One Orthanc process on loopback; ``start()`` waits until it answers authenticated requests."""

    folder: Path
    user: str = "aiportal-test"
    password: str = "s3cret-pass"
    ae_title: str = "ORTHANC"
    client_ae_title: str = "AIPORTAL"
    client_port: int = 0  # our C-MOVE destination (storage SCP), known to Orthanc as a modality
    http_port: int = 0
    dicom_port: int = 0
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.user, self.password)

    def _config(self) -> dict:
        storage = self.folder / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        lua = self.folder / "reject_labelmap.lua"
        lua.write_text(_REJECT_LABELMAP_LUA)
        return {
            "Name": "AIPORTAL-TEST", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "Plugins": [str(DICOMWEB_PLUGIN)], "LuaScripts": [str(lua)],
            "HttpPort": self.http_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True, "RegisteredUsers": {self.user: self.password},
            "DicomAet": self.ae_title, "DicomPort": self.dicom_port, "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True, "DicomAlwaysAllowFind": True, "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowGet": True, "DicomAlwaysAllowMove": True,
            "DicomModalities": {"aiportal": [self.client_ae_title, "127.0.0.1", self.client_port]},
            "UnknownSopClassAccepted": False, "StableAge": 1, "HttpTimeout": 60,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado",
                         "Host": f"127.0.0.1:{self.http_port}", "Ssl": False,
                         "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        }

    def start(self, timeout_s: float = 30.0) -> OrthancServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.http_port = self.http_port or free_port()
        self.dicom_port = self.dicom_port or free_port()
        self.client_port = self.client_port or free_port()
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self._config(), indent=2))
        environment = {**os.environ, "LD_PRELOAD": str(bind_shim())}
        log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115 - kept open for the process' life
        self.process = subprocess.Popen([str(ORTHANC), str(config)], stdout=log, stderr=subprocess.STDOUT,
                                        env=environment, cwd=self.folder)
        log.close()
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if requests.get(f"{self.url}/system", auth=self.auth, timeout=2).status_code == 200:
                    self._check_loopback_only()
                    return self
            except requests.ConnectionError as error:
                last_error = error
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout_s} s ({last_error}): {self.log_tail()}")

    def _check_loopback_only(self) -> None:
        """Refuse to run a test server that listens beyond loopback (the shim did not apply)."""
        text = (self.folder / "orthanc.log").read_text(errors="replace")
        for port in (self.http_port, self.dicom_port):
            if f"0.0.0.0:{port} -> 127.0.0.1" not in text:
                self.stop()
                raise RuntimeError(f"Orthanc port {port} was not rebound to loopback: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.folder / "orthanc.log", lines)

    def stop(self) -> None:
        """SIGTERM (Orthanc stops cleanly in about a second), SIGKILL if it does not."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL: the server dies at once, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    # -- REST helpers for the tests (the product talks DICOMweb / DIMSE only) --------------------
    def upload(self, files: list[Path]) -> list[str]:
        """Store files through Orthanc's REST API; returns Orthanc's instance ids."""
        ids = []
        with requests.Session() as session:
            session.auth = self.auth
            for path in files:
                answer = session.post(f"{self.url}/instances", data=Path(path).read_bytes(), timeout=60)
                answer.raise_for_status()
                ids.append(answer.json()["ID"])
        return ids

    def delete_instance(self, sop_instance_uid: str) -> None:
        found = requests.post(f"{self.url}/tools/lookup", data=sop_instance_uid, auth=self.auth, timeout=10).json()
        for item in found:
            if item["Type"] == "Instance":
                requests.delete(f"{self.url}/instances/{item['ID']}", auth=self.auth, timeout=10).raise_for_status()

    def delete_study(self, study_uid: str) -> None:
        found = requests.post(f"{self.url}/tools/lookup", data=study_uid, auth=self.auth, timeout=10).json()
        for item in found:
            if item["Type"] == "Study":
                requests.delete(f"{self.url}/studies/{item['ID']}", auth=self.auth, timeout=30).raise_for_status()


class TlsProxy:
    """HTTPS in front of a server on loopback, with a certificate from a throw-away CA.

    Orthanc 1.10.1 from Debian crashes (SIGSEGV) on its first HTTPS request when ``SslEnabled``
    is on, so TLS is terminated here instead, as a hospital's reverse proxy would.
    """

    def __init__(self, folder: Path, target_port: int) -> None:
        import ssl

        folder.mkdir(parents=True, exist_ok=True)
        self.ca_bundle = folder / "test-ca.pem"
        make_test_certificates(self.ca_bundle, folder / "server.pem")
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(folder / "server.pem")
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while self.running:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed by stop()
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            secure = self.context.wrap_socket(client, server_side=True)
        except OSError:  # the client refused our certificate: that is what one test checks
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        threading.Thread(target=_pump, args=(upstream, secure), daemon=True).start()
        _pump(secure, upstream)

    def stop(self) -> None:
        self.running = False
        self.listener.close()


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(1 << 16):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, target):
            with contextlib.suppress(OSError):
                end.close()


def make_test_certificates(ca_path: Path, server_path: Path) -> None:
    """A throw-away certificate authority (``ca_path``, PEM) and a server certificate for 127.0.0.1
    signed by it (``server_path``: key + certificate, as Orthanc wants them in one file)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    # RSA: Orthanc 1.10's HTTPS server (civetweb) crashes on EC server keys
    ca_key, server_key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aiportal test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
              .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key = server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                   serialization.NoEncryption())
    server_path.write_bytes(key + server.public_bytes(serialization.Encoding.PEM))


# ---------------------------------------------------------------------------------------------
# Test series from real data


@dataclass
class TestSeries:
    folder: Path
    files: list[Path]
    study_uid: str
    series_uid: str
    patient_id: str
    accession_number: str


def ct_with_uids(source_folder: Path, out_folder: Path, *, patient_id: str = "PACS-TEST-001",
                 patient_name: str = "Test^Pacs", accession: str = "ACC-0001",
                 description: str = "PACS test CT") -> TestSeries:
    """A copy of a real CT series with Study/Series/SOP (Class) UIDs filled in where they are empty.

    TotalSegmentator's example CT is anonymised with empty UIDs; a PACS needs them. Everything
    else, including the compressed pixel data, is kept as it is.
    """
    out_folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    files = []
    for number, path in enumerate(sorted(p for p in Path(source_folder).iterdir() if p.is_file()), start=1):
        dataset = pydicom.dcmread(path)
        sop_class = str(dataset.get("SOPClassUID", "") or dataset.file_meta.MediaStorageSOPClassUID or CT_IMAGE_STORAGE)
        sop_instance = str(dataset.get("SOPInstanceUID", "") or "") or generate_uid()
        dataset.SOPClassUID, dataset.SOPInstanceUID = sop_class, sop_instance
        dataset.file_meta.MediaStorageSOPClassUID = sop_class
        dataset.file_meta.MediaStorageSOPInstanceUID = sop_instance
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series_uid
        dataset.FrameOfReferenceUID = str(dataset.get("FrameOfReferenceUID", "") or "") or frame_uid
        dataset.PatientID, dataset.PatientName, dataset.AccessionNumber = patient_id, patient_name, accession
        dataset.StudyDescription = description
        dataset.StudyID = dataset.get("StudyID", "") or "1"
        dataset.SeriesNumber = dataset.get("SeriesNumber", "") or 1
        dataset.InstanceNumber = dataset.get("InstanceNumber", "") or number
        target = out_folder / f"{sop_instance}.dcm"
        dataset.save_as(target, enforce_file_format=True)
        files.append(target)
    return TestSeries(out_folder, files, study_uid, series_uid, patient_id, accession)


def replicated_series(source_folder: Path, out_folder: Path, slices: int, *, uncompressed: bool = True,
                      patient_id: str = "PACS-BENCH-001") -> TestSeries:
    """A ``slices``-long CT series made by stacking the real slices of ``source_folder`` again and
    again, each copy with new UIDs and moved along the slice normal so the stack stays one volume."""
    out_folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for path in sorted(p for p in Path(source_folder).iterdir() if p.is_file()):
        dataset = pydicom.dcmread(path)
        if uncompressed and dataset.file_meta.TransferSyntaxUID.is_compressed:
            dataset.decompress()
        sources.append(dataset)
    sources.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    spacing = (float(sources[-1].ImagePositionPatient[2]) - float(sources[0].ImagePositionPatient[2])) / (
        len(sources) - 1)
    z0 = float(sources[0].ImagePositionPatient[2])
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    files = []
    for k in range(slices):
        dataset = sources[k % len(sources)].copy()
        sop_instance = generate_uid()
        dataset.SOPClassUID = CT_IMAGE_STORAGE
        dataset.SOPInstanceUID = sop_instance
        dataset.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        dataset.file_meta.MediaStorageSOPInstanceUID = sop_instance
        if uncompressed:
            dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series_uid
        dataset.FrameOfReferenceUID = frame_uid
        dataset.PatientID, dataset.PatientName = patient_id, "Bench^Pacs"
        dataset.AccessionNumber, dataset.StudyID, dataset.SeriesNumber = "ACC-BENCH", "1", 1
        dataset.InstanceNumber = k + 1
        x, y, _ = (float(v) for v in dataset.ImagePositionPatient)
        dataset.ImagePositionPatient = [x, y, round(z0 + k * spacing, 3)]
        dataset.SliceLocation = round(z0 + k * spacing, 3)
        target = out_folder / f"{sop_instance}.dcm"
        dataset.save_as(target, enforce_file_format=True)
        files.append(target)
    return TestSeries(out_folder, files, study_uid, series_uid, patient_id, "ACC-BENCH")
