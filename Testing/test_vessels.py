"""Vessel analysis: analytic tubes with known diameters on anisotropic and rotated grids, TotalSegmentator's
pulmonary artery report (real masks, their diameters per landmark), and `aiportal measure --vessels --sr`
on a real DICOM series (vessels.json, markups, the SR's diameters read back, dciodvfy)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel
import numpy as np
import pydicom
import pytest
from dicom_validation import dciodvfy_errors
from PIL import Image
from pydicom.sr.codedict import codes
from scipy import ndimage
from scipy.spatial import cKDTree

from aiportal.vessels.analysis import measure_vessel
from aiportal.vessels.centerline import tubularity, vessel_grid
from aiportal.vessels.cross_section import measure_cross_section, plane_basis
from aiportal.vessels.flat import disc_plane, measure_disc


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    return (np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
            @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]))


def tube_phantom(curve: np.ndarray, radii: np.ndarray, spacing, rotation: np.ndarray,
                 branches: tuple[tuple[np.ndarray, np.ndarray], ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Voxels whose centre lies within radius(s) of a densely sampled curve (or of a branch curve), on a grid
    with this spacing and direction matrix (origin off the curve by a fraction of a voxel, as in a real scan)."""
    spacing = np.asarray(spacing, dtype=float)
    every = np.vstack([curve] + [b for b, _ in branches])
    widest = max([radii.max()] + [r.max() for _, r in branches])
    local = every @ rotation
    low = local.min(0) - widest - 6.0 + np.array([0.37, 0.21, 0.13]) * spacing
    counts = np.ceil((local.max(0) + widest + 6.0 - low) / spacing).astype(int)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = rotation * spacing
    ijk_to_ras[:3, 3] = rotation @ low
    k, j, i = np.indices(counts[::-1]).reshape(3, -1)
    ras = np.column_stack([i, j, k]) @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]
    inside = np.zeros(len(ras), dtype=bool)
    for line, line_radii in ((curve, radii), *branches):  # each curve on its own: a branch never carves its parent
        distance, nearest = cKDTree(line).query(ras, distance_upper_bound=line_radii.max() + 2)
        found = np.isfinite(distance)
        inside[found] |= distance[found] <= line_radii[nearest[found]]
    return inside.reshape(counts[::-1]), ijk_to_ras

DISC_NORMAL = np.array([0.3, 0.2, 0.93]) / np.linalg.norm([0.3, 0.2, 0.93])  # 22° to the grid's k axis


def tilted_disc(diameter: float, spacing, rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 3 mm thick disc of ``diameter`` mm across ``DISC_NORMAL``: its mask, the ball it was cut from, ijk-to-RAS."""
    ball, ijk_to_ras = tube_phantom(np.zeros((1, 3)), np.array([diameter / 2 + 2]), spacing, rotation)
    k, j, i = np.indices(ball.shape).reshape(3, -1)
    ras = np.column_stack([i, j, k]) @ ijk_to_ras[:3, :3].T + ijk_to_ras[:3, 3]
    height = ras @ DISC_NORMAL
    disc = (np.abs(height) <= 1.5) & (np.linalg.norm(ras - height[:, None] * DISC_NORMAL, axis=1) <= diameter / 2)
    return disc.reshape(ball.shape), ball, ijk_to_ras



_S = np.linspace(0.0, 80.0, 801)
_STRAIGHT = np.column_stack([np.zeros_like(_S), np.zeros_like(_S), _S])
_THETA = np.linspace(0.0, np.pi, 1000)
_ARC = np.column_stack([40 * np.cos(_THETA), 40 * np.sin(_THETA), np.zeros_like(_THETA)])
_T = np.linspace(0.0, 2 * np.pi, 1000)
_HELIX = np.column_stack([25 * np.cos(_T), 25 * np.sin(_T), 8 * _T])
TUBES = {
    "straight, 0.8x0.8x2.5 mm, rotated": (_STRAIGHT, np.full(len(_S), 10.0), (0.8, 0.8, 2.5), _rotation(0.3, 0.5, 0.7)),
    "torus arc, 0.7x0.7x2 mm, rotated": (_ARC, np.full(len(_THETA), 8.0), (0.7, 0.7, 2.0), _rotation(0.2, -0.4, 0.9)),
    "helix, 0.75x0.75x1.5 mm, rotated": (_HELIX, np.full(len(_T), 5.0), (0.75, 0.75, 1.5), _rotation(0.5, 0.1, 0.3)),
    "tapered 24 -> 10 mm, 0.9x0.9x1.5": (_STRAIGHT, np.linspace(12, 5, len(_S)), (0.9, 0.9, 1.5),
                                         _rotation(0.1, 0.6, 0)),
}


@pytest.mark.parametrize("case", TUBES)
def test_analytic_tubes_diameters_within_a_millimetre(case):
    curve, radii, spacing, rotation = TUBES[case]
    mask, ijk_to_ras = tube_phantom(curve, radii, spacing, rotation)
    vessel = measure_vessel(mask, ijk_to_ras, case)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(curve, axis=0), axis=1))])
    centres = np.array([s.section.center for s in vessel.sections])
    off, nearest = cKDTree(curve).query(centres)
    # away from the rounded caps of the phantom, every section is a disc of the curve's radius there
    body = (arc[nearest] > radii[nearest] + 3) & (arc[nearest] < arc[-1] - radii[nearest] - 3)
    truth = 2 * radii[nearest[body]]
    sections = [s.section for s, inside in zip(vessel.sections, body, strict=True) if inside]
    assert len(sections) >= 0.9 * (arc[-1] - 2 * radii.max() - 6)  # one per millimetre
    assert np.abs([s.max_diameter_mm for s in sections] - truth).max() < 1.0
    assert np.abs([s.perpendicular_diameter_mm for s in sections] - truth).max() < 1.0
    assert np.abs(np.array([s.area_mm2 for s in sections]) / (np.pi * truth**2 / 4) - 1).max() < 0.06
    assert off[body].max() < 1.0  # the centreline runs along the curve
    assert len(vessel.centreline.paths) == 1 and not vessel.warnings
    # the centreline reaches the tips of the rounded ends: the curve plus both radii
    assert vessel.centerline_length_mm == pytest.approx(arc[-1] + radii[0] + radii[-1], abs=4.0)
    assert vessel.max_diameter_mm == pytest.approx(2 * radii.max(), abs=1.0)


def test_the_same_tube_on_a_plain_and_a_rotated_anisotropic_grid_measures_the_same():
    quarter = _ARC[: len(_ARC) // 2]
    plain_mask = tube_phantom(quarter, np.full(len(quarter), 8.0), (1.0, 1.0, 1.0), np.eye(3))
    plain = measure_vessel(*plain_mask)
    rotated = measure_vessel(*tube_phantom(quarter, np.full(len(quarter), 8.0), (0.6, 0.9, 2.0),
                                           _rotation(0.7, 0.3, -0.5)))
    assert abs(plain.max_diameter_mm - rotated.max_diameter_mm) < 1.0
    assert abs(plain.centerline_length_mm - rotated.centerline_length_mm) < 3.0
    assert tubularity(*plain_mask) > 3


def test_aortic_arch_with_branches_measures_the_ascending_aneurysm_not_the_arch():
    """The case RECIST gets wrong: an arch whose axial 'long axis' spans ascending to descending aorta. Ascending
    Ø 32 mm, arch and descending Ø 28 mm, three Ø 8 mm branches off the top of the arch; 1.2 x 1.2 x 2 mm voxels."""
    ascending = np.column_stack([np.full(200, -35.0), np.zeros(200), np.linspace(0, 60, 200)])
    theta = np.linspace(np.pi, 0, 600)
    arch = np.column_stack([35 * np.cos(theta), np.zeros(600), 60 + 35 * np.sin(theta)])
    descending = np.column_stack([np.full(400, 35.0), np.zeros(400), np.linspace(60, -60, 400)])
    aorta = np.vstack([ascending, arch, descending])
    radii = np.concatenate([np.full(200, 16.0), np.full(1000, 14.0)])
    branches = tuple((np.column_stack([np.full(200, x), np.zeros(200), np.linspace(90, 125, 200)]), np.full(200, 4.0))
                     for x in (-12.0, 0.0, 12.0))
    vessel = measure_vessel(*tube_phantom(aorta, radii, (1.2, 1.2, 2.0), _rotation(0.1, 0.0, 0.4), branches), "aorta")
    true_length = np.linalg.norm(np.diff(aorta, axis=0), axis=1).sum() + 16 + 14
    assert vessel.centerline_length_mm == pytest.approx(true_length, abs=5.0)
    assert len(vessel.centreline.paths) == 4  # the aorta and its three branches, no thinning spurs
    assert vessel.max_diameter_mm == pytest.approx(32.0, abs=1.0)
    assert vessel.maximum.section.center[2] < 60  # in the ascending aorta
    assert all(s.excluded for s in vessel.sections if s.path > 0 and np.linalg.norm(
        s.section.center - vessel.centreline.paths[s.path].junction) < 10)


def test_a_round_lesion_is_not_tubular():
    k, j, i = np.indices((40, 40, 40))
    ball = (k - 20) ** 2 + (j - 20) ** 2 + (i - 20) ** 2 <= 15**2
    assert tubularity(ball, np.diag([1.0, 1.0, 1.0, 1.0])) < 1.5


# TotalSegmentator's pulmonary report (pulmonary_report.json, "version" 0.2.0 of the report, diameters in cm): per
# landmark, the plane is the landmark disc's own (PCA) plane through its centre, and the diameters are those of the
# landmark DISC predicted by its landmark model (pul_*.nii.gz), not of the pulmonary artery cut by that plane: the discs
# are 1-25 % smaller in area than the artery there. (TotalSegmentator 2.18 measures the artery cut by the plane and
# dilated by a voxel instead: up to 4.5 mm more than the json; bench/bench_vessels.py prints all of them.)
LANDMARKS = {"1": "pul_annulus", "2": "pul_sinotubular_junction", "3": "pul_bifurcation", "4": "pul_left_start",
             "5": "pul_right_start"}


def _nifti_mask(path) -> tuple[np.ndarray, np.ndarray]:
    image = nibabel.load(path)
    return np.asarray(image.dataobj).transpose(2, 1, 0) > 0, image.affine


@functools.lru_cache(maxsize=1)
def measured_pulmonary_artery(folder: Path):
    """The pulmonary artery mask of TotalSegmentator's report, its affine and our vessel analysis (made once)."""
    mask, affine = _nifti_mask(folder / "models" / "pulmonary_artery.nii.gz")
    return mask, affine, measure_vessel(mask, affine, "pulmonary_artery")


def _voxel_section_area(mask: np.ndarray, affine: np.ndarray, centre: np.ndarray, normal: np.ndarray) -> float:
    """Area (mm²) of the mask's voxels (as cubes) cut by a plane, in the piece around ``centre``: 0.1 mm samples."""
    u, v = plane_basis(normal)
    offsets = np.arange(-30.0, 30.0 + 1e-9, 0.1)
    plane = (centre + offsets[:, None, None] * u + offsets[None, :, None] * v).reshape(-1, 3)
    ijk = np.round(np.linalg.solve(affine[:3, :3], (plane - affine[:3, 3]).T)).astype(int)[::-1]
    inside_image = np.all((ijk >= 0) & (ijk < np.array(mask.shape)[:, None]), axis=0)
    cut = np.zeros(len(plane), bool)
    cut[inside_image] = mask[tuple(ijk[:, inside_image])]
    pieces, _ = ndimage.label(cut.reshape(len(offsets), len(offsets)))
    middle = len(offsets) // 2
    return float(ndimage.binary_fill_holes(pieces == pieces[middle, middle]).sum()) * 0.01


def pulmonary_comparison(folder: Path) -> list[dict]:
    """Ours beside TotalSegmentator's per landmark: its disc measured on its plane (the json's quantity), the artery
    cut by that plane, and our centreline's nearest section."""
    report = json.loads((folder / "pulmonary_report.json").read_text())["landmarks"]
    mask, affine, vessel = measured_pulmonary_artery(folder)
    grid = vessel_grid(mask, affine)
    centres = np.array([s.section.center for s in vessel.sections])
    rows = []
    for key, landmark in report.items():
        disc_mask, disc_affine = _nifti_mask(folder / "models" / f"{LANDMARKS[key]}.nii.gz")
        centre, normal, _ = disc_plane(disc_mask, disc_affine)
        disc = measure_disc(disc_mask, disc_affine)
        at_plane = measure_cross_section(grid, centre, normal, 40.0)
        nearest = vessel.sections[int(np.argmin(np.linalg.norm(centres - centre, axis=1)))].section
        rows.append({
            "landmark": landmark["name"],
            "theirs_mm": float(np.linalg.norm(np.subtract(landmark["end"], landmark["start"]))),
            "theirs_perpendicular_mm": float(np.linalg.norm(np.subtract(landmark["end_pd"], landmark["start_pd"]))),
            "theirs_area_mm2": 100 * landmark["area"],
            "ours_disc_mm": disc.max_diameter_mm,
            "ours_disc_perpendicular_mm": disc.perpendicular_diameter_mm,
            "ours_disc_area_mm2": disc.area_mm2,
            "ours_at_their_plane_mm": at_plane.max_diameter_mm,
            "ours_at_their_plane_perpendicular_mm": at_plane.perpendicular_diameter_mm,
            "ours_at_their_plane_area_mm2": at_plane.area_mm2,
            "voxel_section_area_mm2": _voxel_section_area(mask, affine, centre, normal),
            "ours_on_centreline_mm": nearest.max_diameter_mm,
            "ours_on_centreline_perpendicular_mm": nearest.perpendicular_diameter_mm,
            "plane_angle_deg": float(np.degrees(np.arccos(min(1.0, abs(normal @ nearest.normal))))),
        })
    return rows, vessel


def test_pulmonary_artery_against_totalsegmentator_report(shared_data):
    rows, vessel = pulmonary_comparison(shared_data / "totalseg" / "pulmonary_report")
    # main pulmonary artery, and one branch (left and right PA form the main path from end to end)
    assert len(vessel.centreline.paths) == 2 and 100 < vessel.centerline_length_mm < 160
    # the json's quantity, the landmark disc on its plane: max diameter within 1 mm at 4 of 5 landmarks; the
    # sinotubular junction's disc measures 26.5 mm against the json's 25.4 (TotalSegmentator 2.18's own code on
    # the same disc: 26.7), so the json was not made from this disc exactly
    disc = np.array([r["ours_disc_mm"] - r["theirs_mm"] for r in rows])
    assert np.abs(disc).max() < 1.2 and np.count_nonzero(np.abs(disc) < 1.0) >= 4
    assert np.abs([r["ours_disc_perpendicular_mm"] - r["theirs_perpendicular_mm"] for r in rows]).max() < 1.0
    # areas within 6 % (the json's are rounded to 0.1 cm²)
    assert np.abs([r["ours_disc_area_mm2"] / r["theirs_area_mm2"] - 1 for r in rows]).max() < 0.06
    # the artery cut by the same plane: the area of its voxels there (exact, 0.1 mm samples) within 3 %, and larger
    # than the disc (the discs stop short of the wall) at every landmark but the annulus
    for row in rows:
        assert row["ours_at_their_plane_area_mm2"] == pytest.approx(row["voxel_section_area_mm2"], rel=0.03)
    assert sum(r["ours_at_their_plane_area_mm2"] > 1.05 * r["ours_disc_area_mm2"] for r in rows) >= 4
    differences = np.array([r["ours_at_their_plane_mm"] - r["theirs_mm"] for r in rows])
    assert np.abs(differences).max() < 2.0 and np.abs(differences).mean() < 1.2
    on_centreline = np.array([r["ours_on_centreline_mm"] - r["theirs_mm"] for r in rows])
    assert np.abs(on_centreline).max() < 2.0


@pytest.mark.parametrize(("diameter", "spacing", "rotation"), [
    (24.0, (1.5, 1.5, 1.5), _rotation(0.3, 0.5, 0.7)), (18.0, (0.8, 0.8, 2.0), _rotation(0.6, -0.2, 0.4)),
    (30.0, (0.7, 0.7, 1.0), np.eye(3))])
def test_a_tilted_disc_is_measured_on_its_own_plane(diameter, spacing, rotation):
    """A 3 mm thick disc (a landmark drawn across a vessel), tilted 22° to the grid, on anisotropic rotated grids."""
    disc, ball, ijk_to_ras = tilted_disc(diameter, spacing, rotation)
    section = measure_disc(disc, ijk_to_ras)
    assert section.max_diameter_mm == pytest.approx(diameter, abs=1.0)
    assert section.perpendicular_diameter_mm == pytest.approx(diameter, abs=1.0)
    assert section.area_mm2 == pytest.approx(np.pi * diameter**2 / 4, rel=0.05)
    assert abs(section.normal @ DISC_NORMAL) > np.cos(np.radians(2))
    with pytest.raises(ValueError, match="not a disc"):
        measure_disc(ball, ijk_to_ras)


def _segmentation_with(runtime, volume_node, masks: dict[str, np.ndarray], path):
    from aiportal.segmentation import ijk_to_ras_vtk, oriented_image, save_segmentation

    node = runtime.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "vessels")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    for name, mask in masks.items():
        node.AddSegmentFromBinaryLabelmapRepresentation(oriented_image(mask.astype(np.uint8),
                                                                       ijk_to_ras_vtk(volume_node)), name, (1, 0, 0))
    return save_segmentation(node, path)


def test_cli_measure_vessels_writes_json_markups_and_sr(shared_data, runtime, tmp_path):
    from aiportal.io.volumes import array_from_volume, ijk_to_ras_matrix, load_volume, nearest_on_grid

    series = shared_data / "totalseg" / "example_ct_dicom"
    ct = load_volume(series, runtime)
    reference = nibabel.load(shared_data / "totalseg" / "example_seg_dicom.nii.gz")
    labels, _ = nearest_on_grid(np.asarray(reference.dataobj).transpose(2, 1, 0).astype(np.int16), reference.affine,
                                array_from_volume(ct.node).shape, ijk_to_ras_matrix(ct.node))
    seg_path = _segmentation_with(runtime, ct.node, {"aorta": labels == 52, "spleen": labels == 1},
                                  tmp_path / "in.seg.nrrd")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "aiportal.cli", "measure", str(seg_path), "--volume", str(series),
                           "--vessels", "aorta", "--sr", "--assign-uids", "--key-images", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (aorta,) = json.loads((out / "vessels.json").read_text())["vessels"]
    assert aorta["name"] == "aorta" and 20 < aorta["max_diameter_mm"] < 35
    assert 30 < aorta["centerline_length_mm"] < 45  # 20 slices of 2 mm, the aorta running through them
    steps = np.diff([s["arc_mm"] for s in aorta["cross_sections"]])
    assert steps.max() <= 1.0 + 1e-6 and len(aorta["cross_sections"]) >= 30
    assert "aorta: max diameter" in done.stdout
    assert {p.name for p in (out / "axes").iterdir()} >= {"aorta centerline.mrk.json", "aorta max diameter.mrk.json",
                                                          "aorta perpendicular diameter.mrk.json",
                                                          "spleen long axis.mrk.json"}
    line = json.loads((out / "axes" / "aorta max diameter.mrk.json").read_text())["markups"][0]["controlPoints"]
    assert np.linalg.norm(np.subtract(line[0]["position"], line[1]["position"])) == pytest.approx(
        aorta["max_diameter_mm"], abs=0.01)
    measured = json.loads((out / "measurements.json").read_text())["measurements"]
    assert [m["segment_name"] for m in measured] == ["spleen"]  # the vessel is not measured with RECIST

    assert dciodvfy_errors(out / "measurements.dcm") == []
    (capture,) = (out / "key_images").glob("*.dcm")  # the spleen's key image, as DICOM Secondary Capture
    assert dciodvfy_errors(capture) == []
    assert np.array_equal(pydicom.dcmread(capture).pixel_array, np.asarray(Image.open(capture.with_suffix(".png"))))
    library = [item for item in pydicom.dcmread(out / "measurements.dcm").ContentSequence
               if item.ConceptNameCodeSequence[0].CodeMeaning == "Image Library"]
    assert library[0].ContentSequence[0].ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        pydicom.dcmread(capture, stop_before_pixels=True).SOPInstanceUID
    report = hd.sr.srread(out / "measurements.dcm")
    groups = report.content.get_image_measurement_groups()
    vessel_group = next(g for g in groups if g.get_measurements(name=codes.SCT.Diameter))
    (diameter,) = vessel_group.get_measurements(name=codes.SCT.Diameter)
    assert diameter.value == pytest.approx(aorta["max_diameter_mm"], abs=0.005)
    assert diameter.unit == codes.UCUM.Millimeter and diameter.derivation == codes.SCT.Maximum
    (perpendicular,) = vessel_group.get_measurements(name=codes.SCT.PerpendicularAxis)
    assert perpendicular.value == pytest.approx(aorta["max_diameter_perpendicular_mm"], abs=0.005)
    stored = np.asarray(diameter.referenced_coordinates[0].value, dtype=float) * np.array([-1.0, -1.0, 1.0])
    assert np.allclose(stored, aorta["max_diameter_endpoints_ras"], atol=1e-2)
    (length,) = vessel_group.get_measurements(name=codes.cid7470.PathLength)
    assert length.value == pytest.approx(aorta["centerline_length_mm"], abs=0.005)


def test_segment_in_the_scene_measures_as_its_array_and_places_its_lines(shared_data, runtime, tmp_path):
    """Through Slicer (NIfTI loaded into RAS, segment exported on the volume's grid) the pulmonary artery
    measures exactly as its array does; the lines are placed at the maximum and tied to the segment."""
    from aiportal.errors import InputError
    from aiportal.io.volumes import load_volume
    from aiportal.measure.recist import SEGMENT_ID_ATTRIBUTE
    from aiportal.segmentation import load_segmentation, segment_ids
    from aiportal.vessels.report import add_vessel_markups, measure_vessels

    mask, _, direct = measured_pulmonary_artery(shared_data / "totalseg" / "pulmonary_report")
    volume = load_volume(shared_data / "totalseg" / "pulmonary_report" / "models" / "pulmonary_artery.nii.gz",
                         runtime).node
    path = _segmentation_with(runtime, volume, {"pulmonary_artery": mask}, tmp_path / "pa.seg.nrrd")
    node = load_segmentation(path, runtime)
    (vessel,) = measure_vessels(node, volume, ["pulmonary_artery"])
    assert vessel.max_diameter_mm == pytest.approx(direct.max_diameter_mm, abs=1e-6)
    assert np.allclose(vessel.maximum.section.center, direct.maximum.section.center, atol=1e-6)
    curve, longest, across = add_vessel_markups(runtime.scene, vessel, node)
    assert longest.GetLineLengthWorld() == pytest.approx(vessel.max_diameter_mm, abs=1e-6)
    assert across.GetLineLengthWorld() == pytest.approx(vessel.maximum.section.perpendicular_diameter_mm, abs=1e-6)
    assert curve.GetCurveLengthWorld() == pytest.approx(vessel.centerline_length_mm, rel=0.02)
    assert longest.GetAttribute(SEGMENT_ID_ATTRIBUTE) == segment_ids(node)[0]
    assert vessel.summary().startswith(f"pulmonary_artery: max diameter {vessel.max_diameter_mm:.1f} mm")
    with pytest.raises(InputError, match="No segment named aorta"):
        measure_vessels(node, volume, ["aorta"])


def test_cli_refuses_sr_without_dicom_and_unknown_vessels_in_one_line(shared_data, runtime, tmp_path, capsys):
    from aiportal.cli import main
    from aiportal.io.volumes import load_volume

    nifti = shared_data / "totalseg" / "pulmonary_report" / "models" / "pulmonary_artery.nii.gz"
    mask, _ = _nifti_mask(nifti)
    seg_path = _segmentation_with(runtime, load_volume(nifti, runtime).node, {"pulmonary_artery": mask},
                                  tmp_path / "pa.seg.nrrd")
    common = ["measure", str(seg_path), "--volume", str(nifti), "--out", str(tmp_path / "out")]
    assert main([*common, "--vessels", "pulmonary_artery", "--sr"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("aiportal: error: --sr needs a DICOM --volume") and "\n" not in error
    assert main([*common, "--vessels", "pulmonary_artery,aorta"]) == 1
    error = capsys.readouterr().err.strip()
    assert "No segment named aorta" in error and "use one of: pulmonary_artery" in error and "\n" not in error
    assert not (tmp_path / "out").exists()


def test_a_thin_vessel_on_thick_slices_is_measured_with_a_warning():
    short = _STRAIGHT[:400]
    vessel = measure_vessel(*tube_phantom(short, np.full(len(short), 4.0), (0.7, 0.7, 5.0), _rotation(0.5, 0.3, 0.2)))
    assert any("coarse for a vessel" in warning for warning in vessel.warnings)
    assert vessel.as_json()["warnings"] == vessel.warnings


def test_a_short_straight_piece_of_vessel_is_tubular_by_its_cross_sections_and_a_lesion_is_not():
    """Without terminology: a 60 mm piece of a 16 mm vessel (path over width 5, under the ratio of 8) and the same
    piece tapering 20 -> 12 mm are tubes by their steady round sections; an ellipsoid lesion of the same ratio
    (70 x 16 x 16 mm) swells and narrows, and a flat one (60 x 16 x 8 mm) is oval: neither is."""
    from aiportal.measure.lesions import TUBULAR_RATIO, tubularity

    piece = _STRAIGHT[:601]
    rotation = _rotation(0.2, 0.4, 0.1)
    for radii in (np.full(len(piece), 8.0), np.linspace(10.0, 6.0, len(piece))):
        mask, ijk_to_ras = tube_phantom(piece, radii, (0.8, 0.8, 2.0), rotation)
        shape = tubularity(mask, ijk_to_ras[:3, :3])
        assert 4 <= shape.ratio < TUBULAR_RATIO and shape.tubular, shape.describe()
        assert shape.sections.area_variation < 0.06 and "cross-section stays round" in shape.describe()
    k, j, i = np.indices((60, 60, 120)) * np.array([2.0, 0.8, 0.8])[:, None, None, None]
    for semi_axes in ((8.0, 8.0, 35.0), (4.0, 8.0, 30.0)):
        lesion = ((k - 60) / semi_axes[0]) ** 2 + ((j - 24) / semi_axes[1]) ** 2 + ((i - 48) / semi_axes[2]) ** 2 <= 1
        shape = tubularity(lesion, np.diag([0.8, 0.8, 2.0]))
        assert 4 <= shape.ratio < TUBULAR_RATIO and not shape.tubular, (semi_axes, shape.sections)


def test_chord_of_an_outline_thinner_than_the_line_spacing_is_zero_not_a_crash():
    # a sliver outline (0.01 mm wide across 0.5 mm line spacing) once crashed `segment --formats sr,sc`
    # through the tubularity check of a bone segment
    from aiportal.vessels.cross_section import longest_perpendicular_chord

    sliver = np.array([[0.0, 0.0], [0.01, 1.0], [0.0, 2.0], [0.0, 0.0]])
    start, end, length = longest_perpendicular_chord(sliver, np.array([1.0, 0.0]), 0.5)
    assert length == 0.0 and np.array_equal(start, end)
    wide = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 3.0], [0.0, 3.0], [0.0, 0.0]])
    assert abs(longest_perpendicular_chord(wide, np.array([1.0, 0.0]), 0.1)[2] - 3.0) < 1e-9
