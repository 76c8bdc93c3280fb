"""PACS transfer overhead: our DICOMweb layer against plain ``dicomweb-client`` calls, same Orthanc.

The case is built from real data: the 20-slice abdominal CT series (``totalseg/example_ct_dicom``)
decoded and repeated along z into a 512×512×300 series (uncompressed, ≈157 MB) with fresh UIDs,
stored in a real Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) on loopback with HTTP basic
authentication, started by ``Testing/orthanc_server.py``. Its SEG is a highdicom BINARY SEG of
one segment (bone, HU > 300) on all 300 slices.

- **pull, ours**: ``aiportal.pacs.workflow.pull_series`` — QIDO-RS instance listing, WADO-RS
  streamed to one file per instance, completeness check against the listing.
- **pull, plain**: ``DICOMwebClient.retrieve_series`` (whole series in memory) + ``save_as`` of each.
- **push, ours**: ``aiportal.pacs.workflow.push_files`` — STOW-RS, then QIDO-RS verification that
  the instance arrived (also shown without the verification: ``DicomWebClient.store``).
- **push, plain**: ``DICOMwebClient.store_instances``.
Runs alternate (ours, plain, plain, ours, ...) to spread the machine's noise; medians are reported.
Goal: overhead ratio ours / plain ≤ 1.1.

Run: ``.venv/bin/python bench/bench_pacs.py [--repeats 7] [--slices 300]`` (needs dicomweb-client).
Not a test; prints a table and a JSON line. The machine has 2 cores; timings vary by ±30 %.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "Testing"))
sys.path.insert(0, str(REPO))


def _make_seg(series_files: list[Path], out: Path) -> Path:
    import highdicom as hd
    import numpy as np
    import pydicom
    from pydicom.sr.codedict import codes

    datasets = [pydicom.dcmread(path) for path in series_files]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    mask = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) > 300 for ds in datasets])
    algorithm = hd.AlgorithmIdentificationSequence(name="threshold", version="1",
                                                   family=codes.cid7162.ArtificialIntelligence)
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Bone", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Bone, algorithm_type="AUTOMATIC", algorithm_identification=algorithm)
    seg = hd.seg.Segmentation(source_images=datasets, pixel_array=mask.astype(np.uint8), segmentation_type="BINARY",
                              segment_descriptions=[description], series_instance_uid=hd.UID(), series_number=900,
                              sop_instance_uid=hd.UID(), instance_number=1, manufacturer="aiportal-bench",
                              manufacturer_model_name="threshold", software_versions="1", device_serial_number="1")
    seg.save_as(out)
    return out


def _fresh_copy(seg: Path, folder: Path, index: int) -> Path:
    """The SEG with a new SOP Instance UID, so every push stores a new object."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(seg)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    target = folder / f"seg-{index}.dcm"
    ds.save_as(target, enforce_file_format=True)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    options = parser.parse_args()

    import pydicom
    from dicomweb_client import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass
    from orthanc_server import OrthancServer, replicated_series

    from aiportal.pacs.config import PacsEndpoint
    from aiportal.pacs.dicomweb import DicomWebClient
    from aiportal.pacs.workflow import pull_series, push_files

    work = Path(tempfile.mkdtemp(prefix="aiportal-bench-pacs-"))
    server = OrthancServer(work / "orthanc").start()
    try:
        series = replicated_series(options.shared / "totalseg" / "example_ct_dicom", work / "ct", options.slices)
        size_mb = sum(path.stat().st_size for path in series.files) / 1e6
        started = time.monotonic()
        server.upload(series.files)
        print(f"case: {options.slices} slices, {size_mb:.0f} MB, uploaded in {time.monotonic() - started:.1f} s",
              file=sys.stderr)
        seg = _make_seg(series.files, work / "seg.dcm")
        seg_mb = seg.stat().st_size / 1e6
        endpoint = PacsEndpoint("bench", server.dicomweb_url, "basic", server.user, server.password, timeout_s=120)
        plain = DICOMwebClient(server.dicomweb_url, session=create_session_from_user_pass(server.user, server.password),
                               timeout=120)
        ours_client = DicomWebClient(endpoint)

        def pull_ours(index: int) -> float:
            target = work / f"pull-ours-{index}"
            started = time.monotonic()
            pulled = pull_series(endpoint, series.study_uid, series.series_uid, target, protocol="dicomweb")
            elapsed = time.monotonic() - started
            assert len(pulled.files) == options.slices
            shutil.rmtree(target)
            return elapsed

        def pull_plain(index: int) -> float:
            target = work / f"pull-plain-{index}"
            target.mkdir()
            started = time.monotonic()
            for ds in plain.retrieve_series(series.study_uid, series.series_uid):
                ds.save_as(target / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
            elapsed = time.monotonic() - started
            assert len(list(target.iterdir())) == options.slices
            shutil.rmtree(target)
            return elapsed

        def push_ours(index: int) -> float:
            path = _fresh_copy(seg, work, index)
            started = time.monotonic()
            push_files(endpoint, [path], protocol="dicomweb")
            return time.monotonic() - started

        def push_ours_unverified(index: int) -> float:
            path = _fresh_copy(seg, work, 1000 + index)
            started = time.monotonic()
            ours_client.store([path])
            return time.monotonic() - started

        def push_plain(index: int) -> float:
            dataset = pydicom.dcmread(_fresh_copy(seg, work, 2000 + index))
            started = time.monotonic()
            plain.store_instances([dataset])
            return time.monotonic() - started

        runs: dict[str, list[float]] = {name: [] for name in ("pull_ours", "pull_plain", "push_ours",
                                                              "push_ours_unverified", "push_plain")}
        pull_ours(-1), pull_plain(-1)  # warm-up: Orthanc's caches, Python imports
        for index in range(options.repeats):
            order = [("pull_ours", pull_ours), ("pull_plain", pull_plain)]
            pushes = [("push_ours", push_ours), ("push_ours_unverified", push_ours_unverified),
                      ("push_plain", push_plain)]
            if index % 2:
                order.reverse()
                pushes.reverse()
            for name, run in order + pushes:
                runs[name].append(run(index))
        median = {name: statistics.median(values) for name, values in runs.items()}
        result = {
            "slices": options.slices, "series_mb": round(size_mb, 1), "seg_mb": round(seg_mb, 2),
            "repeats": options.repeats, "median_s": {k: round(v, 3) for k, v in median.items()},
            "min_s": {k: round(min(v), 3) for k, v in runs.items()},
            "pull_ratio": round(median["pull_ours"] / median["pull_plain"], 3),
            "push_ratio_verified": round(median["push_ours"] / median["push_plain"], 3),
            "push_ratio_unverified": round(median["push_ours_unverified"] / median["push_plain"], 3),
            "pull_plus_push_ratio": round((median["pull_ours"] + median["push_ours"])
                                          / (median["pull_plain"] + median["push_plain"]), 3),
        }
        print(f"{'':<28}{'ours':>10}{'plain':>10}{'ratio':>8}")
        print(f"{'pull 300-slice series (s)':<28}{median['pull_ours']:>10.3f}{median['pull_plain']:>10.3f}"
              f"{result['pull_ratio']:>8.2f}")
        print(f"{'push SEG + verify (s)':<28}{median['push_ours']:>10.3f}{median['push_plain']:>10.3f}"
              f"{result['push_ratio_verified']:>8.2f}")
        print(f"{'push SEG, no verify (s)':<28}{median['push_ours_unverified']:>10.3f}{median['push_plain']:>10.3f}"
              f"{result['push_ratio_unverified']:>8.2f}")
        print(f"{'pull + push (s)':<28}{median['pull_ours'] + median['push_ours']:>10.3f}"
              f"{median['pull_plain'] + median['push_plain']:>10.3f}{result['pull_plus_push_ratio']:>8.2f}")
        print(json.dumps(result))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
