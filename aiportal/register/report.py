"""A registration result as the lines every face shows: what ran (and what ``auto`` picked, and why), the two
independent checks, and every warning, worded as ``aiportal register`` prints them."""

from __future__ import annotations

import numpy as np

from aiportal.register.registration import RegistrationResult


def method_line(result: RegistrationResult) -> str:
    picked = f" ({result.metric_choice.reason})" if result.metric_choice else ""
    return (f"{result.kind} registration: {result.metric}{picked}, metric {result.final_metric:.5g} after "
            f"{result.iterations} iterations in {result.elapsed_s:.1f} s")


def checks_line(result: RegistrationResult) -> str:
    checks = result.summary()
    consistency, edges = checks["consistency_check"], checks["edge_alignment_check"]
    return (f"re-optimised from a perturbed start: {consistency['disagreement_mm']:.2f} mm apart (tolerance "
            f"{consistency['tolerance_mm']:.2f} mm, {'passed' if consistency['passed'] else 'FAILED'}); "
            f"edge alignment sharpness {edges['sharpness']:.2f} (minimum {edges['minimum']:.2f}, "
            f"{'passed' if edges['passed'] else 'FAILED'})")


def motion_line(result: RegistrationResult) -> str:
    """The size of the motion found: rotation angle and shift of the moving → fixed matrix (for affine and
    B-spline, the rotation of its polar decomposition: scaling and shear are not rotation)."""
    matrix = np.asarray(result.matrix_ras, dtype=float)
    left, _, right = np.linalg.svd(matrix[:3, :3])
    rotation = left @ right
    angle = np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1.0, 1.0)))
    part = {"affine": " (linear part)", "bspline": " (linear part, before the warp)"}.get(result.kind, "")
    return f"moving → fixed{part}: rotation {angle:.2f}°, shift {np.linalg.norm(matrix[:3, 3]):.2f} mm"


def warning_lines(result: RegistrationResult) -> list[str]:
    return [f"WARNING: {warning}" for warning in result.warnings]
