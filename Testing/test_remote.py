"""AI Segment on the inference server through the same job interface as a local run (RemoteSegmentationJob)."""

from __future__ import annotations

import pytest
from server_fixtures import ApiServer

from aiportal.errors import AIPortalError
from aiportal.io.volumes import load_volume
from aiportal.remote import RemoteSegmentationJob
from aiportal.segment import SegmentationJob
from aiportal.segmentation import segment_voxel_counts
from aiportal.server.client import ServerClient


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    api = ApiServer(tmp_path_factory.mktemp("remote-server"), args=["--executor", "thread", "--workers", "1"])
    key = api.key("desktop", "read,submit")
    api.start()
    yield api, key
    api.stop()


def _volumes_by_name(node) -> dict[str, int]:
    segmentation = node.GetSegmentation()
    return {segmentation.GetSegment(s).GetName(): count for s, count in segment_voxel_counts(node).items()}


def test_remote_job_gives_the_local_result_with_the_servers_provenance(server, runtime, shared_data):
    api, key = server
    volume = load_volume(shared_data / "totalseg" / "example_ct_sm.nii.gz", runtime).node
    local = SegmentationJob(volume, "classic-ct", runtime=runtime, executor="thread").run()
    stages: list[str] = []
    remote = RemoteSegmentationJob(volume, "classic-ct", ServerClient(api.url, api_key=key), consent=True,
                                   runtime=runtime).run(progress=lambda fraction, stage: stages.append(stage))
    assert _volumes_by_name(remote.segmentation_node) == _volumes_by_name(local.segmentation_node)
    assert remote.provenance.model_id == "classic-ct" and remote.provenance.run_id != local.provenance.run_id
    assert any(stage.startswith("server: ") for stage in stages)
    assert any(note.startswith(f"computed on {api.url}") for note in remote.notes)


def test_no_consent_no_upload_and_an_unreachable_server_is_a_clear_error(server, runtime, shared_data):
    api, key = server
    volume = load_volume(shared_data / "totalseg" / "example_ct_sm.nii.gz", runtime).node
    with pytest.raises(AIPortalError, match="needs consent"):
        RemoteSegmentationJob(volume, "classic-ct", ServerClient(api.url, api_key=key), consent=False)
    job = RemoteSegmentationJob(volume, "classic-ct", ServerClient("http://127.0.0.1:9", api_key=key), consent=True,
                                runtime=runtime)
    job.start()
    assert job.wait(60).state == "failed"
    with pytest.raises(AIPortalError, match=r"127.0.0.1:9 cannot be reached.*local segmentation still works"):
        job.finish()
    wrong_key = RemoteSegmentationJob(volume, "classic-ct", ServerClient(api.url, api_key="wrong"), consent=True,
                                      runtime=runtime)
    with pytest.raises(AIPortalError, match=r"invalid API key .*HTTP 401"):
        wrong_key.run()
