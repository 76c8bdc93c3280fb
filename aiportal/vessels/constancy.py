"""Whether a short mask is a piece of a vessel: a tube keeps a round cross-section whose size changes
smoothly along its centreline (constant, or tapering); a lesion or an organ of the same length over
width swells and narrows, or is oval.

Measured on the sections that count (:mod:`aiportal.vessels.analysis`, 1 mm apart) of the main path,
a radius away from its ends (a segment's end is rounded or cut at a slant): the equivalent-circle
diameter's scatter about its straight-line trend along the centreline (twice its standard deviation
over its mean: about the area's relative variation), the median of maximum over perpendicular
diameter (roundness), and the centreline's length over the median maximum diameter. On
TotalSegmentator's example (``example_seg``, 1.5 x 1.5 x 3 mm): the 90 mm cut of abdominal aorta
scatters by 5 % with roundness 1.13 over 4.1 diameters, the spinal cord 7 % / 1.19. The organs and
lesions with a path over width of 4-8 are oval or swell: the stomach 8 % / 1.24 (the closest: a
roundness limit of 1.2 separates it from the aorta by only 0.04-0.07 either side), ribs 6-9 % /
1.35-1.40, adrenals, vertebrae 5-42 % / 1.56-1.83, the pyradiomics brain lesion 1.4 diameters long.
The inferior vena cava is oval (1.50): it is told apart by its terminology only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aiportal.vessels.analysis import measure_vessel

MAX_AREA_VARIATION = 0.10  # scatter of the section's size about its trend along the centreline
MAX_ROUNDNESS = 1.2  # median of maximum over perpendicular diameter
MIN_LENGTH_OVER_DIAMETER = 3.0  # centreline length over median maximum diameter
# fewer sections that count (1 mm apart) cannot tell a steady size from a lesion's swelling: a 4 x 4 x 16 mm bar
# is no vessel one could measure apart
MIN_SECTIONS = 20


@dataclass
class SectionConstancy:
    area_variation: float  # 2 x std of the equivalent diameter about its linear trend / its mean
    roundness: float  # median max / perpendicular diameter
    length_over_diameter: float
    sections: int

    @property
    def tube(self) -> bool:
        return (self.sections >= MIN_SECTIONS and self.area_variation <= MAX_AREA_VARIATION
                and self.roundness <= MAX_ROUNDNESS and self.length_over_diameter >= MIN_LENGTH_OVER_DIAMETER)

    def describe(self) -> str:
        return (f"its cross-section stays round (diameters {self.roundness:.2f}:1) and its area within "
                f"{100 * self.area_variation:.0f} % of its trend along {self.length_over_diameter:.1f} diameters")


def section_constancy(mask_kji: np.ndarray, linear: np.ndarray) -> SectionConstancy:
    """Cross-sections along the main centreline of ``mask_kji`` (voxel axes i, j, k are the columns of
    ``linear``, mm): how much their area varies and how round they are."""
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = linear
    vessel = measure_vessel(mask_kji, ijk_to_ras, "segment")
    kept = [s for s in vessel.sections if s.path == 0 and not s.excluded]
    if kept:  # leave out the ends (a radius each): a segment's end is rounded, or cut at a slant
        radius = float(np.median([s.section.max_diameter_mm for s in kept])) / 2.0
        length = vessel.centreline.paths[0].length_mm
        kept = [s for s in kept if radius <= s.arc_mm <= length - radius]
    counted = [s.section for s in kept]
    if len(counted) < 5:
        return SectionConstancy(np.inf, np.inf, 0.0, len(counted))
    # equivalent-circle diameter about its straight-line trend along the centreline: a tapering vessel is a tube
    # too, a lesion swells and narrows
    arc = np.array([s.arc_mm for s in kept])
    equivalent = 2.0 * np.sqrt(np.array([s.area_mm2 for s in counted]) / np.pi)
    trend = np.polyval(np.polyfit(arc, equivalent, 1), arc)
    scatter = (equivalent - trend) / equivalent.mean()  # ~ half the area's relative variation
    longest = np.array([s.max_diameter_mm for s in counted])
    across = np.maximum([s.perpendicular_diameter_mm for s in counted], 1e-6)
    return SectionConstancy(float(2.0 * scatter.std()), float(np.median(longest / across)),
                            float(vessel.centerline_length_mm / np.median(longest)), len(counted))
