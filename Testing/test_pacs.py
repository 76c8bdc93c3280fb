"""PACS connectivity against a real Orthanc on loopback (DICOMweb and DIMSE), with real data.

One authenticated Orthanc serves the session (``orthanc`` fixture); tests that kill a server
start their own. Every failure case checks that the error names the PACS and the object and
that nothing local was lost.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).parent))
from orthanc_server import OrthancServer, ct_with_uids, missing_requirements, replicated_series  # noqa: E402

from aiportal.pacs import PacsError, PacsUnreachable  # noqa: E402
from aiportal.pacs.config import (  # noqa: E402
    DimsePeer,
    PacsEndpoint,
    add_endpoint,
    check_endpoint,
    get_endpoint,
    list_endpoints,
    remove_endpoint,
)
from aiportal.pacs.model import QueryFilters  # noqa: E402
from aiportal.pacs.workflow import pull_series, push_files, query_series, query_studies  # noqa: E402

NAME = "orthanc"


class Pacs(argparse.Namespace):
    server: OrthancServer
    endpoint: PacsEndpoint
    ct: object  # TestSeries of the 20-slice CT
    dcmqi_files: list[Path]
    dcmqi_study: str
    dcmqi_series: str


def _endpoint(server: OrthancServer, name: str = NAME, **changes) -> PacsEndpoint:
    peer = DimsePeer(server.ae_title, "127.0.0.1", server.dicom_port, server.client_ae_title, server.client_port,
                     listen_host="127.0.0.1")
    endpoint = PacsEndpoint(name=name, dicomweb_url=server.dicomweb_url, auth="basic", username=server.user,
                            password_env="AIPORTAL_TEST_ORTHANC_PASSWORD", timeout_s=20, retries=2, backoff_s=0.1,
                            dimse=peer)
    return replace(endpoint, **changes)


@pytest.fixture(scope="session")
def orthanc(shared_data: Path, tmp_path_factory) -> Pacs:
    missing = missing_requirements()
    if missing:
        pytest.fail(f"the PACS tests need Debian's orthanc and orthanc-dicomweb and gcc; missing: {missing} "
                    "(scripts/system-packages installs them)")
    root = tmp_path_factory.mktemp("pacs")
    server = OrthancServer(root / "orthanc").start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIPORTAL_PACS_CONFIG", str(root / "config" / "pacs.json"))
        patch.setenv("AIPORTAL_TEST_ORTHANC_PASSWORD", server.password)
        try:
            pacs = Pacs()
            pacs.server = server
            pacs.ct = ct_with_uids(shared_data / "totalseg" / "example_ct_dicom", root / "ct")
            server.upload(pacs.ct.files)
            pacs.dcmqi_files = sorted((shared_data / "dcmqi" / "data" / "segmentations" / "ct-3slice").glob("*.dcm"))
            server.upload(pacs.dcmqi_files)
            header = pydicom.dcmread(pacs.dcmqi_files[0], stop_before_pixels=True)
            pacs.dcmqi_study, pacs.dcmqi_series = str(header.StudyInstanceUID), str(header.SeriesInstanceUID)
            pacs.endpoint = _endpoint(server)
            add_endpoint(pacs.endpoint)
            yield pacs
        finally:
            server.stop()


def _pixels(files: list[Path]) -> dict[str, np.ndarray]:
    return {str((ds := pydicom.dcmread(path)).SOPInstanceUID): ds.pixel_array for path in files}


# ---------------------------------------------------------------------------------------------
# Endpoints


def test_endpoint_settings_file_environment_and_check(orthanc: Pacs, tmp_path: Path, monkeypatch):
    path = tmp_path / "pacs.json"
    add_endpoint(replace(orthanc.endpoint, name="second"), path)
    text = path.read_text()
    assert orthanc.server.password not in text, "the password comes from the environment, not the file"
    assert path.stat().st_mode & 0o077 == 0
    assert [e.name for e in list_endpoints(path)] == ["second"]
    assert get_endpoint("second", path).secret_password() == orthanc.server.password
    check = check_endpoint("second", path)
    assert check.ok and "DICOMweb OK" in check.dicomweb and "C-ECHO OK" in check.dimse
    remove_endpoint("second", path)
    with pytest.raises(PacsError, match="No PACS endpoint named 'second'"):
        get_endpoint("second", path)
    # an endpoint defined by the environment alone, with its password there too
    monkeypatch.setenv("AIPORTAL_PACS_ENVPACS_URL", orthanc.server.dicomweb_url)
    monkeypatch.setenv("AIPORTAL_PACS_ENVPACS_USERNAME", orthanc.server.user)
    monkeypatch.setenv("AIPORTAL_PACS_ENVPACS_PASSWORD", orthanc.server.password)
    endpoint = get_endpoint("envpacs", path)
    assert endpoint.auth == "basic" and check_endpoint(endpoint).ok
    monkeypatch.setenv("AIPORTAL_PACS_ENVPACS_PASSWORD", "wrong")
    failed = check_endpoint(get_endpoint("envpacs", path))
    assert not failed.ok and "refused the credentials" in failed.dicomweb and "'envpacs'" in failed.dicomweb


# ---------------------------------------------------------------------------------------------
# Query, pull, segment, push, verify — DICOMweb and DIMSE


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_query_by_each_key(orthanc: Pacs, protocol: str):
    ct = orthanc.ct
    header = pydicom.dcmread(ct.files[0], stop_before_pixels=True)
    date = str(header.StudyDate)
    for filters in (QueryFilters(patient_id=ct.patient_id), QueryFilters(accession_number=ct.accession_number),
                    QueryFilters(date_from=date, date_to=date), QueryFilters(date_from=date[:4] + "0101"),
                    QueryFilters(modality="CT", description="PACS test"),
                    QueryFilters(patient_id=ct.patient_id, modality="CT", date_to=date)):
        found = query_studies(orthanc.endpoint, filters, protocol)
        assert [s.study_uid for s in found] == [ct.study_uid], filters
        assert found[0].patient_id == ct.patient_id and found[0].accession_number == ct.accession_number
    assert query_studies(orthanc.endpoint, QueryFilters(patient_id="NO-SUCH-PATIENT"), protocol) == []
    assert query_studies(orthanc.endpoint, QueryFilters(date_to="19990101"), protocol) == []
    series = query_series(orthanc.endpoint, ct.study_uid, None, protocol)
    assert [(s.series_uid, s.modality, s.number_of_instances) for s in series] == [(ct.series_uid, "CT", 20)]
    assert query_series(orthanc.endpoint, ct.study_uid, QueryFilters(modality="MR"), protocol) == []


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_pull_gives_identical_pixels(orthanc: Pacs, protocol: str, tmp_path: Path, runtime):
    from aiportal.io.dicom_series import read_dicom_series
    from aiportal.pacs.workflow import load_pulled

    ct = orthanc.ct
    fractions = []
    pulled = pull_series(orthanc.endpoint, ct.study_uid, None, tmp_path / "ct", protocol=protocol,
                         progress=lambda fraction, stage: fractions.append(fraction))
    assert pulled.series_uid == ct.series_uid and len(pulled.files) == 20
    assert fractions[-1] == 1.0 and fractions == sorted(fractions)
    original, received = _pixels(ct.files), _pixels(pulled.files)
    assert original.keys() == received.keys()
    assert all(np.array_equal(original[uid], received[uid]) for uid in original)
    volume_original = read_dicom_series(ct.folder)
    volume_pulled = read_dicom_series(pulled.folder)
    assert np.array_equal(volume_original.array, volume_pulled.array)
    assert np.allclose(volume_original.ijk_to_ras, volume_pulled.ijk_to_ras)
    loaded = load_pulled(pulled, runtime)  # into the scene with the project's loader
    assert loaded.source.series_uid == ct.series_uid and loaded.node.GetImageData().GetDimensions()[2] == 20

    # the dcmqi CT; over DIMSE also by C-MOVE to our own storage SCP (Orthanc knows our AE and port)
    endpoints = [orthanc.endpoint]
    if protocol == "dimse":
        endpoints.append(replace(orthanc.endpoint, dimse=replace(orthanc.endpoint.dimse, retrieve="move")))
    for index, endpoint in enumerate(endpoints):
        dcmqi = pull_series(endpoint, orthanc.dcmqi_study, orthanc.dcmqi_series, tmp_path / f"dcmqi-{index}",
                            protocol=protocol)
        assert dcmqi.protocol == ("DICOMweb" if protocol == "dicomweb" else ("C-GET", "C-MOVE")[index])
        original, received = _pixels(orthanc.dcmqi_files), _pixels(dcmqi.files)
        assert original.keys() == received.keys()
        assert all(np.array_equal(original[uid], received[uid]) for uid in original)


def _segment_args(out: Path, protocol: str, study_uid: str) -> argparse.Namespace:
    from aiportal.cli import build_parser

    return build_parser().parse_args(["segment", "--pacs", NAME, "--study", study_uid, "--push", "--protocol",
                                      protocol, "--out", str(out), "--formats", "seg,sr"])


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_segment_from_pacs_pushes_verified_seg_and_sr(orthanc: Pacs, protocol: str, tmp_path: Path):
    from dicomweb_client import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass

    from aiportal.cli import cmd_segment

    ct = orthanc.ct
    assert cmd_segment(_segment_args(tmp_path / "out", protocol, ct.study_uid)) == 0  # `aiportal segment --pacs`
    local = {name: pydicom.dcmread(tmp_path / "out" / name) for name in ("segmentation.dcm", "measurements.dcm")}
    assert local["segmentation.dcm"].Modality == "SEG" and local["measurements.dcm"].Modality == "SR"

    # found by QIDO and read back identical, with a plain DICOMweb client
    client = DICOMwebClient(orthanc.server.dicomweb_url,
                            session=create_session_from_user_pass(orthanc.server.user, orthanc.server.password))
    for ds in local.values():
        assert str(ds.StudyInstanceUID) == ct.study_uid
        series = client.search_for_series(ct.study_uid, search_filters={"Modality": ds.Modality})
        assert str(ds.SeriesInstanceUID) in {pydicom.Dataset.from_json(s).SeriesInstanceUID for s in series}
        remote = client.retrieve_instance(ct.study_uid, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        assert remote == ds, f"{ds.Modality} read back differs"
    referenced = {str(item.ReferencedSOPInstanceUID)
                  for item in local["segmentation.dcm"].ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in ct.files}


def test_cli_query_pull_push(orthanc: Pacs, tmp_path: Path, capsys):
    from aiportal.pacs.cli import main

    ct = orthanc.ct
    assert main(["pacs", "query", NAME, "--patient-id", ct.patient_id]) == 0
    assert ct.study_uid in capsys.readouterr().out
    assert main(["pacs", "query", NAME, "--study", ct.study_uid, "--protocol", "dimse"]) == 0
    assert ct.series_uid in capsys.readouterr().out
    assert main(["pacs", "pull", NAME, "--study", ct.study_uid, "--out", str(tmp_path / "pulled")]) == 0
    assert len(list((tmp_path / "pulled").glob("*.dcm"))) == 20
    assert main(["pacs", "push", NAME, str(ct.files[0])]) == 0
    assert "pushed and verified 1 object" in capsys.readouterr().out
    assert main(["pacs", "pull", "nowhere", "--study", ct.study_uid, "--out", str(tmp_path / "x")]) == 1
    assert "No PACS endpoint named 'nowhere'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Failures: each names the PACS and the object, and loses nothing


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_unknown_study_and_series(orthanc: Pacs, protocol: str, tmp_path: Path):
    unknown = generate_uid()
    with pytest.raises(PacsError, match=rf"Study {unknown} is not on PACS '{NAME}'"):
        pull_series(orthanc.endpoint, unknown, None, tmp_path / "a", protocol=protocol)
    with pytest.raises(PacsError, match=rf"Series {unknown} is not in study {orthanc.ct.study_uid} on PACS '{NAME}'"):
        pull_series(orthanc.endpoint, orthanc.ct.study_uid, unknown, tmp_path / "b", protocol=protocol)
    with pytest.raises(PacsError, match=rf"Study {unknown} is not on PACS '{NAME}'"):
        query_series(orthanc.endpoint, unknown, None, protocol)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not list(tmp_path.iterdir()), "no partial folders are left behind"


def test_wrong_password(orthanc: Pacs, tmp_path: Path):
    endpoint = replace(orthanc.endpoint, password_env="", password="wrong-password")
    with pytest.raises(PacsError, match=rf"PACS '{NAME}' .*refused the credentials \(HTTP 401\) for a study query"):
        query_studies(endpoint, QueryFilters(patient_id=orthanc.ct.patient_id), "dicomweb")
    series = orthanc.ct.series_uid
    with pytest.raises(PacsError, match=rf"refused the credentials .* for the instances of series {series}"):
        pull_series(endpoint, orthanc.ct.study_uid, orthanc.ct.series_uid, tmp_path / "pulled", protocol="dicomweb")
    assert not (tmp_path / "pulled").exists()
    bearer = replace(orthanc.endpoint, auth="bearer", password_env="", token="not-a-token-this-pacs-knows")
    with pytest.raises(PacsError, match=rf"PACS '{NAME}' .*refused the credentials .*check the token of endpoint"):
        query_studies(bearer, QueryFilters(patient_id=orthanc.ct.patient_id), "dicomweb")
    kept = shutil.copy(orthanc.ct.files[0], tmp_path / "result.dcm")
    with pytest.raises(PacsError, match=rf"refused the credentials .*local file\(s\) stay in {tmp_path}"):
        push_files(endpoint, [Path(kept)], protocol="dicomweb")
    assert Path(kept).is_file()


def test_server_down(orthanc: Pacs, tmp_path: Path):
    from processes import free_port

    port = free_port()  # nothing listens there
    endpoint = replace(orthanc.endpoint, dicomweb_url=f"http://127.0.0.1:{port}/dicom-web",
                       dimse=replace(orthanc.endpoint.dimse, port=port))
    for protocol in ("dicomweb", "dimse"):
        with pytest.raises(PacsUnreachable, match=rf"Cannot reach PACS '{NAME}' .*{port}.* for "):
            query_studies(endpoint, QueryFilters(patient_id="x"), protocol)
    with pytest.raises(PacsUnreachable, match=rf"Cannot reach PACS '{NAME}'.*series {orthanc.ct.series_uid}"):
        pull_series(endpoint, orthanc.ct.study_uid, orthanc.ct.series_uid, tmp_path / "pulled")
    kept = Path(shutil.copy(orthanc.ct.files[0], tmp_path / "result.dcm"))
    with pytest.raises(PacsError, match=rf"Cannot reach PACS '{NAME}'.*local file\(s\) stay in {tmp_path}"):
        push_files(endpoint, [kept])
    assert kept.is_file() and not (tmp_path / "pulled").exists()
    # auto: DICOMweb down but DIMSE up -> falls back and says so
    fallback = replace(orthanc.endpoint, dicomweb_url=f"http://127.0.0.1:{port}/dicom-web")
    pulled = pull_series(fallback, orthanc.ct.study_uid, orthanc.ct.series_uid, tmp_path / "fallback")
    assert pulled.protocol == "C-GET" and len(pulled.files) == 20 and "used DIMSE" in pulled.notes[0]


def test_tls_with_a_custom_ca_bundle(orthanc: Pacs, tmp_path: Path):
    from orthanc_server import TlsProxy

    proxy = TlsProxy(tmp_path / "tls", orthanc.server.http_port)
    try:
        trusted = PacsEndpoint(name="tls", dicomweb_url=f"{proxy.url}/dicom-web", auth="basic",
                               username=orthanc.server.user, password=orthanc.server.password,
                               ca_bundle=str(proxy.ca_bundle), retries=1)
        found = query_studies(trusted, QueryFilters(patient_id=orthanc.ct.patient_id), "dicomweb")
        assert [s.study_uid for s in found] == [orthanc.ct.study_uid]
        with pytest.raises(PacsError, match=r"TLS check of PACS 'tls' .* failed for a study query.*set ca_bundle"):
            query_studies(replace(trusted, ca_bundle=""), QueryFilters(patient_id="x"), "dicomweb")
        with pytest.raises(PacsError, match=r"CA bundle .* does not exist"):
            replace(trusted, ca_bundle=str(tmp_path / "missing.pem")).validate()
    finally:
        proxy.stop()


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_server_killed_mid_transfer(shared_data: Path, tmp_path: Path, protocol: str):
    server = OrthancServer(tmp_path / "orthanc", password="kill-test").start()
    try:
        # 60 uncompressed slices (31 MB): more than the sockets can hold, so the kill cuts the transfer
        series = replicated_series(shared_data / "totalseg" / "example_ct_dicom", tmp_path / "ct", 60)
        server.upload(series.files)
        endpoint = replace(_endpoint(server, "doomed"), password_env="", password="kill-test")

        def kill_at_first_instance(fraction: float, stage: str) -> None:
            if stage.startswith("received"):
                server.kill()

        with pytest.raises(PacsError, match=rf"PACS 'doomed' .*series {series.series_uid}") as caught:
            pull_series(endpoint, series.study_uid, series.series_uid, tmp_path / "pulled", protocol=protocol,
                        progress=kill_at_first_instance)
        assert not (tmp_path / "pulled").exists() and not (tmp_path / ".pulled.partial").exists()
        message = str(caught.value)
        assert re.search(r"(Lost the connection to PACS 'doomed'|PACS 'doomed' .* ended the transfer)", message)
        assert re.search(r"after \d+ of 60 instances", message), message
        assert "nothing was kept" in message and "retrying: Cannot reach PACS 'doomed'" in message, message
    finally:
        server.kill()


def test_server_killed_during_push(shared_data: Path, tmp_path: Path):
    server = OrthancServer(tmp_path / "orthanc", password="kill-test").start()
    try:
        series = ct_with_uids(shared_data / "totalseg" / "example_ct_dicom", tmp_path / "results")
        endpoint = replace(_endpoint(server, "doomed"), password_env="", password="kill-test", timeout_s=3)

        def kill_after_first(fraction: float, stage: str) -> None:
            if stage.startswith("stored 1/"):
                server.kill()

        with pytest.raises(PacsError, match=rf"PACS 'doomed'.*local file\(s\) stay in {tmp_path / 'results'}"):
            push_files(endpoint, series.files[:3], protocol="dimse", progress=kill_after_first)
        assert all(path.is_file() for path in series.files)
    finally:
        server.kill()


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_partial_series(orthanc: Pacs, shared_data: Path, tmp_path: Path, protocol: str):
    from aiportal.pacs.dicomweb import DicomWebClient
    from aiportal.pacs.dimse import DimseClient

    series = ct_with_uids(shared_data / "totalseg" / "example_ct_dicom", tmp_path / "ct", patient_id="PARTIAL-1")
    orthanc.server.upload(series.files)
    try:
        client = DicomWebClient(orthanc.endpoint) if protocol == "dicomweb" else DimseClient(orthanc.endpoint)
        listed = client.search_instances(series.study_uid, series.series_uid)
        assert len(listed) == 20
        gone = listed[7].sop_instance_uid
        orthanc.server.delete_instance(gone)  # the PACS loses an instance between listing and transfer
        with pytest.raises(PacsError, match=rf"Partial series: PACS '{NAME}'.* sent 19 of the 20 instances .*series "
                                            rf"{series.series_uid}.*{gone}"):
            client.retrieve_series(series.study_uid, series.series_uid, tmp_path / "pulled", expected=listed)
        assert not (tmp_path / "pulled").exists()
    finally:
        orthanc.server.delete_study(series.study_uid)


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_pacs_rejecting_a_sop_class(orthanc: Pacs, shared_data: Path, tmp_path: Path, protocol: str):
    labelmap = Path(shutil.copy(shared_data / "dcmqi" / "data" / "segmentations" / "sparse-labelmap-noppv.dcm",
                                tmp_path / "labelmap-seg.dcm"))
    with pytest.raises(PacsError) as caught:
        push_files(orthanc.endpoint, [labelmap], protocol=protocol)
    message = str(caught.value)
    uid = str(pydicom.dcmread(labelmap, stop_before_pixels=True).SOPInstanceUID)
    assert f"PACS '{NAME}'" in message and uid in message and str(labelmap) in message
    assert "SOP class" in message and f"stay in {tmp_path}" in message
    assert labelmap.is_file()
