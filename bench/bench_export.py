"""Label map → segmentation + closed surfaces + DICOM SEG + SR + STL: ours against the peer path.

The case is TotalSegmentator-sized and built from real data: the 20-slice abdominal CT series
(`totalseg/example_ct_dicom`, JPEG 2000) repeated 15 times along z into a 512×512×300 series with
fresh UIDs, and TotalSegmentator's own 31-label result for it repeated the same way.

- **ours** (one process, plus a forked child that encodes SEG + SR meanwhile): load the series,
  import the label map into a segmentation node with terminology and provenance, then
  ``export_results`` with seg, sr, stl (closed surfaces and the statistics for the SR included).
- **peer** (the tools a Slicer user has today, each its own process):
  dcmqi ``itkimage2segimage`` (SEG) + ``tid1500writer`` (SR, given volume and mean per segment,
  computed outside the timing) + Slicer's own import and surface path on slicer-core
  (labelmap → ``ImportLabelmapToSegmentationNode`` → closed surfaces → STL files).
- **surfaces alone**: our volume-true surfaces against Slicer's conversion on the same node, with
  each STL's enclosed volume against the segment's voxel volume.
Each process is measured with GNU time: wall, CPU (user + system) and peak RSS.

Run: ``.venv/bin/python bench/bench_export.py`` (needs the ``bench`` extra: ``pip install -e .[bench]``).
Not a test; prints a table. The machine has 2 cores; numbers vary by ±30 %.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
REPEATS = 15


def _timed(command: list[str]) -> dict:
    """Run a command under GNU time; wall s, CPU s, peak RSS MB."""
    done = subprocess.run(["/usr/bin/time", "-f", "TIME %e %U %S %M", *command], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {done.stderr.strip()[-800:]}")
    wall, user, system, peak_kb = done.stderr.strip().splitlines()[-1].split()[1:]
    return {"wall": float(wall), "cpu": float(user) + float(system), "peak_mb": int(peak_kb) / 1024,
            "stdout": done.stdout}


# ---------------------------------------------------------------------------------------------
# children (each runs in its own process)

def make_case(shared: Path, folder: Path) -> None:
    """The 512×512×300 series, its 31-label map (NRRD, on the series grid) and dcmqi's metadata."""
    import numpy as np
    import pydicom
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    from aiportal.io.dicom_series import read_dicom_series
    from aiportal.io.volumes import (
        array_from_volume,
        ijk_to_ras_matrix,
        load_volume,
        nearest_on_grid,
        save_volume,
        volume_node_from_array,
    )
    from aiportal.models.totalseg_labels import totalsegmentator_labels
    from aiportal.runtime import get_runtime

    source = read_dicom_series(shared / "totalseg/example_ct_dicom")
    reference = load_volume(shared / "totalseg/example_seg_dicom.nii.gz").node
    # the reference is stored on a flipped grid: map it onto the series grid by geometry
    labels, _ = nearest_on_grid(array_from_volume(reference), ijk_to_ras_matrix(reference), source.array.shape,
                                source.ijk_to_ras)
    labels = labels.astype(np.uint8)

    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    step = source.ijk_to_ras[:3, 2]
    ct = folder / "ct"
    ct.mkdir()
    n = 0
    for repeat in range(REPEATS):
        for path, header in zip(source.source.files, source.source.headers, strict=True):
            ds = pydicom.dcmread(path)
            ds.decompress()  # both tools then read the same uncompressed files
            lps_shift = step * (repeat * len(source.source.files)) * np.array([-1, -1, 1])
            ds.ImagePositionPatient = [round(float(v) + float(d), 4) for v, d in
                                       zip(header.ImagePositionPatient, lps_shift, strict=True)]
            ds.SliceLocation = ds.ImagePositionPatient[2]
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = generate_uid()
            ds.InstanceNumber = n + 1
            ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.save_as(ct / f"IMG{n:04d}.dcm", enforce_file_format=True)
            n += 1
    tiled = read_dicom_series(ct)
    label_map = np.tile(labels, (REPEATS, 1, 1))
    node = volume_node_from_array(get_runtime().scene, label_map, tiled.ijk_to_ras, "labels",
                                  "vtkMRMLLabelMapVolumeNode")
    save_volume(node, folder / "labels.nrrd")
    present = sorted(set(np.unique(label_map).tolist()) - {0})
    table = {label.value: label for label in totalsegmentator_labels("total")}

    def code(c):
        return {"CodeValue": c.value, "CodingSchemeDesignator": c.scheme, "CodeMeaning": c.meaning}

    attributes = []
    for value in present:
        label = table[value]
        item = {"labelID": value, "SegmentLabel": label.name, "SegmentDescription": label.name,
                "SegmentedPropertyCategoryCodeSequence": code(label.category),
                "SegmentedPropertyTypeCodeSequence": code(label.type), "SegmentAlgorithmType": "AUTOMATIC",
                "SegmentAlgorithmName": "TotalSegmentator", "recommendedDisplayRGBValue": list(label.color),
                "TrackingIdentifier": f"{label.name} #1", "TrackingUniqueIdentifier": generate_uid()}
        if label.type_modifier:
            item["SegmentedPropertyTypeModifierCodeSequence"] = code(label.type_modifier)
        attributes.append(item)
    (folder / "seg_meta.json").write_text(json.dumps({"ContentCreatorName": "bench", "SeriesDescription": "SEG",
                                                      "SeriesNumber": "300", "InstanceNumber": "1",
                                                      "segmentAttributes": [attributes]}))
    voxel_ml = abs(float(np.linalg.det(tiled.ijk_to_ras[:3, :3]))) / 1000
    hu = tiled.array
    # in segment order (dcmqi numbers segments 1..n in the order of segmentAttributes)
    measurements = [(float(np.count_nonzero(label_map == value) * voxel_ml), float(hu[label_map == value].mean()))
                    for value in present]
    (folder / "measurements.json").write_text(json.dumps(measurements))
    print(json.dumps({"slices": n, "labels": len(present), "shape": list(hu.shape)}))


def run_ours(folder: Path, out: Path) -> None:
    import time

    from aiportal.export.exporter import ExportOptions, export_results
    from aiportal.io.volumes import array_from_volume, load_volume
    from aiportal.models.backend import LabelMapResult
    from aiportal.models.totalseg_labels import totalsegmentator_labels
    from aiportal.provenance import Provenance, now_iso
    from aiportal.segmentation import import_label_map

    stages, start = {}, time.perf_counter()
    loaded = load_volume(folder / "ct")
    labels = array_from_volume(load_volume(folder / "labels.nrrd").node)
    stages["loaded"] = time.perf_counter() - start
    provenance = Provenance("totalsegmentator-total", "2.18.0", "none", {}, "cpu", now_iso(), now_iso())
    node = import_label_map(LabelMapResult(layers=[labels]), totalsegmentator_labels("total"), loaded.node, provenance)
    stages["imported"] = time.perf_counter() - start
    out.mkdir()  # the export builds the closed surfaces itself, while its forked child encodes SEG + SR
    export_results(node, loaded.node, loaded.source, out, ExportOptions(formats=("seg", "sr", "stl")),
                   progress=lambda f, s: None if s.startswith("Statistics: ") else stages.setdefault(
                       s, time.perf_counter() - start))
    stages["total"] = time.perf_counter() - start
    print(json.dumps(stages))


def _imported_case(folder: Path):
    """The case's series and its label map imported as a segmentation node (untimed set-up of a child)."""
    from aiportal.io.volumes import array_from_volume, load_volume
    from aiportal.models.backend import LabelMapResult
    from aiportal.models.totalseg_labels import totalsegmentator_labels
    from aiportal.provenance import Provenance, now_iso
    from aiportal.segmentation import import_label_map

    loaded = load_volume(folder / "ct")
    labels = array_from_volume(load_volume(folder / "labels.nrrd").node)
    provenance = Provenance("totalsegmentator-total", "2.18.0", "none", {}, "cpu", now_iso(), now_iso())
    node = import_label_map(LabelMapResult(layers=[labels]), totalsegmentator_labels("total"), loaded.node, provenance)
    return loaded, labels, node


def run_ours_seg_alone(folder: Path, out: Path) -> None:
    """The SEG step alone (it overlaps the surfaces in the full export, so it is timed on its own here)."""
    import time

    from aiportal.export.dicom_seg import write_seg
    from aiportal.export.dicom_source import export_source

    loaded, _, node = _imported_case(folder)
    start = time.perf_counter()
    write_seg(node, loaded.node, export_source(loaded.source, loaded.node), out / "seg.dcm")
    print(json.dumps({"seg_s": time.perf_counter() - start}))


def run_surfaces_alone(folder: Path, out: Path) -> None:
    """Volume-true surfaces against Slicer's conversion on the same node: time and STL volume error."""
    import time

    import numpy as np
    import vtk

    from aiportal.export.surfaces import export_surfaces, surface_volume_mm3
    from aiportal.io.volumes import ijk_to_ras_matrix
    from aiportal.segmentation import label_value, segment_ids

    loaded, labels, node = _imported_case(folder)
    voxel_mm3 = abs(np.linalg.det(ijk_to_ras_matrix(loaded.node)[:3, :3]))
    counts = np.bincount(labels.ravel())
    report = {}
    for name, volume_true in (("ours", True), ("slicer", False)):
        target = out / name
        target.mkdir(parents=True)
        start = time.perf_counter()
        files = export_surfaces(node, target, volume_true=volume_true)
        report[f"{name}_s"] = time.perf_counter() - start
        errors = {}
        for segment_id, path in zip(segment_ids(node), files, strict=True):
            reader = vtk.vtkSTLReader()
            reader.SetFileName(str(path))
            reader.Update()
            voxels = counts[label_value(node.GetSegmentation().GetSegment(segment_id))] * voxel_mm3
            errors[path.stem] = float(surface_volume_mm3(reader.GetOutput()) / voxels - 1)
        worst = max(errors, key=lambda key: abs(errors[key]))
        report[f"{name}_worst"] = [worst, errors[worst]]
        report[f"{name}_over_3pct"] = int(sum(abs(error) > 0.03 for error in errors.values()))
    print(json.dumps(report))


def run_slicer_surfaces(folder: Path, out: Path) -> None:
    import slicer
    import vtk

    from aiportal.runtime import get_runtime

    runtime = get_runtime()
    labelmap = runtime.volumes.AddArchetypeVolume(str(folder / "labels.nrrd"), "labels", 1)
    node = runtime.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    logic.ImportLabelmapToSegmentationNode(labelmap, node)
    node.CreateClosedSurfaceRepresentation()
    ids = vtk.vtkStringArray()
    node.GetSegmentation().GetSegmentIDs(ids)
    out.mkdir()
    logic.ExportSegmentsClosedSurfaceRepresentationToFiles(str(out), node, ids, "STL", True, 1.0, False)


# ---------------------------------------------------------------------------------------------

def _tid1500_metadata(folder: Path, seg_path: Path) -> Path:
    import pydicom

    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    measurements = json.loads((folder / "measurements.json").read_text())
    groups = []
    for number, item in enumerate(seg.SegmentSequence, start=1):
        volume, mean = measurements[int(item.SegmentNumber) - 1]
        finding = item.SegmentedPropertyTypeCodeSequence[0]
        groups.append({
            "TrackingIdentifier": f"Measurements group {number}", "ReferencedSegment": int(item.SegmentNumber),
            "SourceSeriesForImageSegmentation": seg.ReferencedSeriesSequence[0].SeriesInstanceUID,
            "segmentationSOPInstanceUID": seg.SOPInstanceUID,
            "Finding": {"CodeValue": finding.CodeValue, "CodingSchemeDesignator": finding.CodingSchemeDesignator,
                        "CodeMeaning": finding.CodeMeaning},
            "measurementItems": [
                {"value": f"{volume:.3f}", "quantity": {"CodeValue": "118565006", "CodingSchemeDesignator": "SCT",
                                                        "CodeMeaning": "Volume"},
                 "units": {"CodeValue": "mL", "CodingSchemeDesignator": "UCUM", "CodeMeaning": "milliliter"}},
                {"value": f"{mean:.3f}", "quantity": {"CodeValue": "112031", "CodingSchemeDesignator": "DCM",
                                                      "CodeMeaning": "Attenuation Coefficient"},
                 "units": {"CodeValue": "[hnsf'U]", "CodingSchemeDesignator": "UCUM", "CodeMeaning": "Hounsfield unit"},
                 "derivationModifier": {"CodeValue": "373098007", "CodingSchemeDesignator": "SCT",
                                        "CodeMeaning": "Mean"}},
            ]})
    metadata = {"SeriesDescription": "Measurements", "SeriesNumber": "1001", "InstanceNumber": "1",
                "compositeContext": [seg_path.name], "imageLibrary": sorted(p.name for p in (folder / "ct").iterdir()),
                "observerContext": {"ObserverType": "DEVICE", "DeviceObserverName": "bench",
                                    "DeviceObserverUID": "1.2.3.4"},
                "VerificationFlag": "UNVERIFIED", "CompletionFlag": "COMPLETE", "activitySession": "1",
                "timePoint": "1", "Measurements": groups}
    path = folder / "sr_meta.json"
    path.write_text(json.dumps(metadata))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    children = {
        "make": lambda folder: make_case(args.shared_data, folder),
        "ours": lambda folder: run_ours(folder, folder / "ours"),
        "ours-seg": lambda folder: run_ours_seg_alone(folder, folder),
        "surfaces": lambda folder: run_surfaces_alone(folder, folder / "surfaces-alone"),
        "slicer-surfaces": lambda folder: run_slicer_surfaces(folder, folder / "slicer-stl"),
    }
    parser.add_argument("--child", choices=list(children), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        children[args.child](args.folder)
        return 0

    me = [sys.executable, __file__]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        case = json.loads(_timed([*me, "--child", "make", "--shared-data", str(args.shared_data),
                                  "--folder", str(folder)])["stdout"].strip().splitlines()[-1])
        print(f"case: {case['shape']} voxels (k, j, i), {case['labels']} labels, {case['slices']} DICOM files")
        ours = _timed([*me, "--child", "ours", "--folder", str(folder)])
        stages = json.loads(ours["stdout"].strip().splitlines()[-1])
        peer = {
            "dcmqi itkimage2segimage": _timed([str(BIN / "itkimage2segimage"), "--inputImageList",
                                               str(folder / "labels.nrrd"), "--inputDICOMDirectory", str(folder / "ct"),
                                               "--inputMetadata", str(folder / "seg_meta.json"),
                                               "--outputDICOM", str(folder / "dcmqi_seg.dcm")]),
        }
        peer["dcmqi tid1500writer"] = _timed([str(BIN / "tid1500writer"), "--inputMetadata",
                                              str(_tid1500_metadata(folder, folder / "dcmqi_seg.dcm")),
                                              "--inputImageLibraryDirectory", str(folder / "ct"),
                                              "--inputCompositeContextDirectory", str(folder),
                                              "--outputDICOM", str(folder / "dcmqi_sr.dcm")])
        peer["Slicer import + surfaces + STL"] = _timed([*me, "--child", "slicer-surfaces", "--folder", str(folder)])

        print(f"\n{'path':34s} {'wall s':>7s} {'CPU s':>7s} {'peak MB':>8s}")
        print(f"{'ours (one process)':34s} {ours['wall']:7.2f} {ours['cpu']:7.2f} {ours['peak_mb']:8.0f}")
        for name, row in peer.items():
            print(f"{'  peer: ' + name:34s} {row['wall']:7.2f} {row['cpu']:7.2f} {row['peak_mb']:8.0f}")
        total = {key: sum(row[key] for row in peer.values()) for key in ("wall", "cpu")}
        peak = max(row["peak_mb"] for row in peer.values())
        print(f"{'peer total':34s} {total['wall']:7.2f} {total['cpu']:7.2f} {peak:8.0f}")
        print(f"\nratios ours/peer: wall {ours['wall'] / total['wall']:.2f}, CPU {ours['cpu'] / total['cpu']:.2f}, "
              f"peak memory {ours['peak_mb'] / peak:.2f}")
        seg_stage = json.loads(_timed([*me, "--child", "ours-seg", "--folder", str(folder)])["stdout"]
                               .strip().splitlines()[-1])["seg_s"]
        print("(ours: the SEG + SR encoding runs in a forked child while the surfaces are made; GNU time counts "
              "the child's CPU, and its peak memory is the larger process's, not the sum)")
        print(f"SEG alone: ours {seg_stage:.2f} s (in-process, from the segmentation node) vs dcmqi "
              f"{peer['dcmqi itkimage2segimage']['wall']:.2f} s (process incl. reading the series) "
              f"= {seg_stage / peer['dcmqi itkimage2segimage']['wall']:.2f}")
        print("ours by stage (s since start): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
        surfaces = json.loads(_timed([*me, "--child", "surfaces", "--folder", str(folder)])["stdout"]
                              .strip().splitlines()[-1])
        print(f"surfaces alone (smoothing 0.5, same node): volume-true {surfaces['ours_s']:.2f} s vs Slicer's "
              f"conversion {surfaces['slicer_s']:.2f} s = {surfaces['ours_s'] / surfaces['slicer_s']:.2f}; "
              f"STL vs voxel volume, worst: ours {surfaces['ours_worst'][0]} {surfaces['ours_worst'][1]:+.2%}, "
              f"Slicer {surfaces['slicer_worst'][0]} {surfaces['slicer_worst'][1]:+.2%}; segments off by > 3 %: "
              f"ours {surfaces['ours_over_3pct']}, Slicer {surfaces['slicer_over_3pct']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
