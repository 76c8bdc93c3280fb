"""Per-segment measurement: ours against Slicer's own vtkITKLabelShapeStatistics, same segments, same run.

Segments: the three pyradiomics lesions (brain1, brain2, breast1 MR) and five TotalSegmentator organs
of `totalseg/example_ct_sm.nii.gz` (spleen, kidneys, liver, L1; the reference label map).

- **ours**: ``measure_segment`` (RECIST long/short axes, maximum 3D diameter, volume) plus
  ``compute_statistics`` for the oriented bounding box and centroid.
- **Slicer**: what the Segment Statistics module's labelmap plugin runs: the segment's binary
  labelmap into ``vtkITKLabelShapeStatistics`` (Centroid, OrientedBoundingBox, FeretDiameter) and
  ``vtkImageAccumulate`` for the voxel count. Slicer has no RECIST axes.

Time: best of 3 per segment, in this process for both. Peak memory: each side alone in a child
process under GNU time (peak RSS), next to a child that only loads the data.
Agreement: volume, 3D (Feret) diameter, centroid and sorted OBB edge lengths.

Run: ``.venv/bin/python bench/bench_measure.py``. Not a test; prints a table (2 cores; ±30 %).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
ORGANS = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver", 31: "vertebrae_L1"}
REPEATS = 3


def _load(runtime):
    """[(case name, volume node, segmentation node, segment id)] for every benchmarked segment."""
    import slicer

    from aiportal.io.volumes import array_from_volume, load_volume
    from aiportal.segmentation import ijk_to_ras_vtk, oriented_image, segment_ids

    def segmentation(labels, volume):
        node = runtime.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
            oriented_image(labels.astype(np.uint8), ijk_to_ras_vtk(volume)), node, "", "")
        return node

    cases = []
    for case in ("brain1", "brain2", "breast1"):
        image = load_volume(DATA / "pyradiomics" / f"{case}_image.nrrd", runtime).node
        label = load_volume(DATA / "pyradiomics" / f"{case}_label.nrrd", runtime).node
        node = segmentation(array_from_volume(label) > 0, image)
        cases.append((case, image, node, segment_ids(node)[0]))
    ct = load_volume(DATA / "totalseg" / "example_ct_sm.nii.gz", runtime).node
    labels = array_from_volume(load_volume(DATA / "totalseg" / "example_seg.nii.gz", runtime).node)
    node = segmentation(np.where(np.isin(labels, list(ORGANS)), labels, 0), ct)
    by_value = {node.GetSegmentation().GetSegment(s).GetLabelValue(): s for s in segment_ids(node)}
    cases += [(name, ct, node, by_value[value]) for value, name in ORGANS.items()]
    return cases


def ours(volume, node, segment_id) -> dict:
    from aiportal.export.statistics import compute_statistics
    from aiportal.measure.recist import measure_segment

    recist = measure_segment(node, segment_id, volume)
    stats = compute_statistics(node, volume, [segment_id], modality="CT")[0].values
    return {"volume_ml": recist.volume_ml, "diameter_3d_mm": recist.max_3d_diameter_mm,
            "long_axis_mm": recist.long_axis_mm, "short_axis_mm": recist.short_axis_mm,
            "centroid": list(stats["centroid_ras"]) if "centroid_ras" in stats else None,
            "obb_size_mm": sorted(stats["obb_size_mm"])}


def slicers(volume, node, segment_id) -> dict:
    """Segment Statistics' labelmap plugin path on slicer-core."""
    import slicer
    import vtk

    binary = slicer.vtkOrientedImageData()  # this segment alone, 0/1, cropped to its extent
    node.GetBinaryLabelmapRepresentation(segment_id, binary)
    directions = vtk.vtkMatrix4x4()
    binary.GetDirectionMatrix(directions)
    shape = slicer.vtkITKLabelShapeStatistics()
    shape.SetInputData(binary)
    shape.SetDirections(directions)
    for name in ("Centroid", "OrientedBoundingBox", "FeretDiameter", "Perimeter", "Roundness", "Flatness",
                 "Elongation", "PrincipalMoments", "PrincipalAxes"):
        shape.SetComputeShapeStatistic(name, name in ("Centroid", "OrientedBoundingBox", "FeretDiameter"))
    shape.Update()
    table = shape.GetOutput()
    row = next(r for r in range(table.GetNumberOfRows()) if table.GetColumnByName("LabelValue").GetValue(r) == 1)
    accumulate = vtk.vtkImageAccumulate()
    accumulate.SetInputData(binary)
    accumulate.IgnoreZeroOn()
    accumulate.Update()
    spacing = binary.GetSpacing()

    def vector(name):
        column = table.GetColumnByName(name)
        return [column.GetComponent(row, k) for k in range(column.GetNumberOfComponents())]

    # vtkITK hands ITK the RAS geometry of the vtkOrientedImageData: the centroid comes back in RAS
    centroid = vector("Centroid")
    return {"volume_ml": accumulate.GetVoxelCount() * spacing[0] * spacing[1] * spacing[2] / 1000.0,
            "diameter_3d_mm": vector("FeretDiameter")[0],
            "centroid": centroid,
            "obb_size_mm": sorted(vector("OrientedBoundingBoxSize"))}


def _best_time(function, *args) -> tuple[float, dict]:
    best, result = float("inf"), None
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def _child(only: str) -> None:
    from aiportal.runtime import build_headless_runtime

    cases = _load(build_headless_runtime())
    for _, volume, node, segment_id in cases:
        if only == "ours":
            ours(volume, node, segment_id)
        elif only == "slicer":
            slicers(volume, node, segment_id)


def _peak_mb(only: str) -> float:
    done = subprocess.run(["/usr/bin/time", "-f", "PEAK %M", sys.executable, __file__, "--only", only],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-800:])
    return int(done.stderr.strip().splitlines()[-1].split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["load", "ours", "slicer"], help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.only:
        _child(args.only)
        return
    from aiportal.runtime import build_headless_runtime

    rows = []
    for case, volume, node, segment_id in _load(build_headless_runtime()):
        ours_s, mine = _best_time(ours, volume, node, segment_id)
        slicer_s, theirs = _best_time(slicers, volume, node, segment_id)
        rows.append({"segment": case, "ours_s": ours_s, "slicer_s": slicer_s, "ours": mine, "slicer": theirs})
    print(f"{'segment':<14}{'ours s':>8}{'Slicer s':>10}{'ratio':>7}  {'volume ml ours/Slicer':>24}  "
          f"{'3D diam mm ours/Slicer':>24}  {'centroid Δ mm':>13}  {'OBB Δ mm':>9}  {'long x short mm':>16}")
    for row in rows:
        mine, theirs = row["ours"], row["slicer"]
        centroid = (float(np.linalg.norm(np.subtract(mine["centroid"], theirs["centroid"])))
                    if mine["centroid"] else float("nan"))
        box = float(np.abs(np.subtract(mine["obb_size_mm"], theirs["obb_size_mm"])).max())
        row.update(centroid_difference_mm=centroid, obb_size_difference_mm=box)
        print(f"{row['segment']:<14}{row['ours_s']:8.3f}{row['slicer_s']:10.3f}{row['ours_s'] / row['slicer_s']:7.2f}  "
              f"{mine['volume_ml']:11.3f} /{theirs['volume_ml']:11.3f}  "
              f"{mine['diameter_3d_mm']:11.3f} /{theirs['diameter_3d_mm']:11.3f}  {centroid:13.4f}  {box:9.3f}  "
              f"{mine['long_axis_mm']:7.1f} x{mine['short_axis_mm']:6.1f}")
    peaks = {side: _peak_mb(side) for side in ("load", "ours", "slicer")}
    total_ours, total_slicer = sum(r["ours_s"] for r in rows), sum(r["slicer_s"] for r in rows)
    print(f"total: ours {total_ours:.2f} s, Slicer {total_slicer:.2f} s (ratio {total_ours / total_slicer:.2f}); "
          f"peak RSS: loading only {peaks['load']:.0f} MB, + ours {peaks['ours']:.0f} MB, "
          f"+ Slicer {peaks['slicer']:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "peak_rss_mb": peaks}, indent=2))


if __name__ == "__main__":
    main()
